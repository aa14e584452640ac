"""``experiments/fetch_costknob_report.py`` on a recorded whole run (SafeFetchPush seed 266, rule vs fixed)."""

from pathlib import Path

import pytest

from experiments import fetch_costknob_report as report

RUN = Path(__file__).resolve().parent.parent / "experiments" / "results" / "fetch_push_costknob" / "forked_s266_cpu"


def test_the_tail_reads_the_last_evaluations_and_windows():
    """Seed 266's fixed arm ended on a low-cost checkpoint (3.34) far below its recent evaluations (mean 11.3); the
    tail shows both, and the rule's recent costs (mean 1.3)."""
    tails = {}
    for arm in ("rule", "fixed"):
        ev = report.evaluations(RUN / arm)
        windows = report.training_windows(RUN / arm, 20000, 220000)
        assert ev.step.iloc[-1] == windows.index[-1] == 500000
        tails[arm] = report.tail(ev, windows, 5)
    rule, fixed = tails["rule"], tails["fixed"]
    assert fixed["final_eval_cost"] == pytest.approx(3.34)
    assert fixed["eval_cost"] == pytest.approx((22.52 + 2.44 + 19.9 + 8.22 + 3.34) / 5, abs=0.02)
    assert (fixed["eval_cost_min"], fixed["eval_cost_max"]) == pytest.approx((2.44, 22.52), abs=0.01)
    assert rule["eval_cost"] == pytest.approx(1.284, abs=0.005) and rule["final_eval_cost"] == pytest.approx(2.48)
    assert rule["train_cost"] == pytest.approx(1.532, abs=0.005)
    assert fixed["train_cost"] == pytest.approx(8.814, abs=0.005)
    assert rule["eval_success"] == fixed["eval_success"] == pytest.approx(0.988)


def test_main_prints_the_tail_table(capsys):
    report.main([str(RUN), "--arms", "rule", "fixed", "--from-step", "220000", "--last", "3"])
    out = capsys.readouterr().out
    table = out.split("== the tail: each arm's last 3 evaluations")[1].splitlines()
    assert "final_eval_cost" in table[1] and table[2].split()[0] == "rule" and table[3].split()[0] == "fixed"
    assert float(table[3].split()[1 + table[1].split().index("final_eval_cost")]) == pytest.approx(3.34)

"""The PickAndPlace decision suite is built from a judged run's audit log, labelled with the rule's decisions."""

from pathlib import Path

import yaml

from experiments import fetch_decision_suite
from rl_manager.bench_decisions import load_suite, run_suite

RUN = Path(__file__).resolve().parent.parent / "experiments/results/fetch_pick_costknob/forked_s267/rule"


def test_the_suite_holds_the_judged_boundaries_and_the_rule_repeats_them(tmp_path):
    out = tmp_path / "suite.yaml"
    fetch_decision_suite.main([str(RUN), "-o", str(out)])
    scenarios = yaml.safe_load(out.read_text())["scenarios"]
    names = [s["name"] for s in scenarios]
    # every 40k from 120k, the 320k price, and not the last boundary (400k)
    assert names == [f"forked_s267_{k}k" for k in (120, 160, 200, 240, 280, 320, 360)]
    price = scenarios[names.index("forked_s267_320k")]
    assert price["category"] == "price" and price["expect"] == [{"action": "adjust", "knobs": {"cost_penalty": "up"}}]
    assert {s["category"] for s in scenarios} == {"learning", "price", "after"}
    results = run_suite(load_suite(str(out)), "rule")
    assert all(r["correct"] for r in results)

"""The README's first command: ``python -m rl_manager.demo`` (real PPO runs, a tiny budget)."""

from __future__ import annotations

import json
import sys

import pytest

from rl_manager import demo


def test_demo_runs_both_arms_and_reports_them(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "-n", "40960", "--eval-freq", "10240", "--heldout-episodes", "4"]
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    assert "fixed (none)" in printed and "managed (rule)" in printed
    for arm, manager in demo.ARMS.items():
        summary = json.loads((out / arm / "summary.json").read_text())
        assert summary["manager"]["manager"] == manager and summary["timesteps"] >= 40960
        assert 0.0 <= demo.summarize(out / arm)["safe_success"] <= 1.0
    assert demo.summarize(out / "fixed")["interventions"] == 0
    assert demo.last_step(out / "managed") > 0
    assert (out / "demo.png").stat().st_size > 10_000
    # run again into the same folder: the demo replaces its own earlier runs (it refused to start before)
    assert demo.main(["--out", str(out), "-n", "20480", "--eval-freq", "10240", "--heldout-episodes", "4"]) == 0
    assert json.loads((out / "managed" / "summary.json").read_text())["timesteps"] == 20480


def test_demo_reports_a_failed_run(tmp_path, monkeypatch):
    def command(manager, run_dir, args):  # the fixed arm's process dies
        return [sys.executable, "-c", f"raise SystemExit({int(manager == 'none')})"]

    monkeypatch.setattr(demo, "train_command", command)
    with pytest.raises(RuntimeError, match="the fixed run failed"):
        demo.main(["--out", str(tmp_path)])

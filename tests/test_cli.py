import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = sorted((ROOT / "experiments" / "snapshots").glob("*.json"))


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("path", SNAPSHOTS, ids=lambda p: p.stem)
def test_decide_on_shipped_examples(path):
    out = run("rl_manager.decide", "--snapshot", str(path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["decision"]["action"] in {
        "no_action",
        "adjust",
        "rollback_to_best",
        "rollback_and_consolidate",
        "stop_training",
    }
    assert result["proposer"] == "rule"


def test_shipped_examples_exist():
    assert len(SNAPSHOTS) >= 3


def test_decide_invalid_input_exits_2(tmp_path):
    assert run("rl_manager.decide", "--snapshot", str(tmp_path / "missing.json")).returncode == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = run("rl_manager.decide", "--snapshot", str(bad))
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"position": {"step": -1}, "knobs": []}))
    out = run("rl_manager.decide", "--snapshot", str(wrong))
    assert out.returncode == 2 and "position.step" in out.stderr


def test_bench_decisions_on_visible_suite():
    out = run("rl_manager.bench_decisions", "--manager", "rule")
    assert out.returncode == 0, out.stderr
    summary = out.stdout.strip().splitlines()[-1]
    fields = dict(part.split("=") for part in summary.split() if "=" in part)
    assert int(fields["scenarios"]) >= 30
    assert float(fields["invalid_rate"]) == 0.0
    assert 0.0 <= float(fields["accuracy"]) <= 1.0


def test_console_script_dispatches_to_the_tools(capsys):
    from rl_manager.cli import COMMANDS, main

    assert set(COMMANDS) == {"train", "compare", "audit", "decide", "bench", "schema", "llm"}
    assert main(["schema"]) == 0 and "TelemetrySnapshot" in capsys.readouterr().out
    assert main(["decide", "--snapshot", str(SNAPSHOTS[0])]) == 0
    assert json.loads(capsys.readouterr().out)["proposer"] == "rule"
    assert main(["nope"]) == 2 and main([]) == 2
    out = run("rl_manager.cli", "audit", "show", str(ROOT / "missing"))
    assert out.returncode == 2

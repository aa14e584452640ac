import json
import subprocess
import sys

import pytest

from rl_manager.audit import AuditLog, AuditLogError, read_audit
from rl_manager.schema import NoAction


def test_append_and_read(tmp_path):
    log = AuditLog(tmp_path, run_id="r1")
    for i in range(3):
        log.append(step=i, decision=NoAction(reason=f"n{i}"))
    records = read_audit(tmp_path)
    assert [r.seq for r in records] == [0, 1, 2]
    assert all(r.run_id == "r1" for r in records)


def test_torn_last_line_is_skipped_and_repaired(tmp_path):
    log = AuditLog(tmp_path, run_id="r1")
    log.append(step=1, decision=NoAction())
    log.append(step=2, decision=NoAction())
    path = tmp_path / "audit.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # a kill mid-write
    assert [r.seq for r in read_audit(path)] == [0]
    resumed = AuditLog(tmp_path, run_id="r1")
    assert resumed.next_seq == 1
    resumed.append(step=3, decision=NoAction())
    records = read_audit(path)
    assert [r.seq for r in records] == [0, 1]
    for line in path.read_text().splitlines():
        json.loads(line)  # every line is whole again


def test_corruption_in_the_middle_raises(tmp_path):
    log = AuditLog(tmp_path, run_id="r1")
    log.append(step=1)
    path = tmp_path / "audit.jsonl"
    path.write_text("garbage\n" + path.read_text())
    with pytest.raises(AuditLogError, match="line 1"):
        read_audit(path)


def test_show_cli(tmp_path):
    log = AuditLog(tmp_path, run_id="r1")
    log.append(step=7, proposer="rule", decision=NoAction(reason="fine"))
    out = subprocess.run(
        [sys.executable, "-m", "rl_manager.audit", "show", str(tmp_path)], capture_output=True, text=True, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["seq", "step", "eval"]
    assert "no_action" in lines[2] and "rule" in lines[2]  # lines[1] rules off the header
    missing = subprocess.run(
        [sys.executable, "-m", "rl_manager.audit", "show", str(tmp_path / "nope")], capture_output=True
    )
    assert missing.returncode == 2


def _log_decisions(tmp_path):
    from rl_manager.core import decide
    from rl_manager.managers import RuleManager
    from tests.test_rule import flat_collapsed

    log = AuditLog(tmp_path, run_id="r1")
    snap = flat_collapsed()
    out = decide(snap, RuleManager())
    log.append(
        evaluation_index=snap.position.evaluation_index,
        snapshot=snap,
        menu=out.menu,
        attempts=out.attempts,
        decision=out.decision,
        applied=True,
        changes=out.changes,
    )
    return snap, out


def test_replay_manager_repeats_the_logged_decisions(tmp_path):
    from rl_manager.core import decide
    from rl_manager.managers.replay import ReplayManager

    snap, original = _log_decisions(tmp_path)
    replayed = decide(snap, ReplayManager(tmp_path))
    assert replayed.decision == original.decision and replayed.changes == original.changes


def test_verify_detects_a_tampered_log(tmp_path):
    from rl_manager.audit import verify

    _log_decisions(tmp_path)
    assert verify(read_audit(tmp_path)) == []
    path = tmp_path / "audit.jsonl"
    record = json.loads(path.read_text())
    change = record["attempts"][0]["raw_reply"]
    record["attempts"][0]["raw_reply"] = change.replace('"adjust"', '"stop_training"')
    path.write_text(json.dumps(record) + "\n")
    problems = verify(read_audit(tmp_path))
    assert problems and "seq 0" in problems[0]
    out = subprocess.run([sys.executable, "-m", "rl_manager.audit", "verify", str(tmp_path)], capture_output=True)
    assert out.returncode == 1


def test_an_archived_gzipped_log_is_read(tmp_path):
    import gzip

    from rl_manager.audit import AuditLog, read_audit

    log = AuditLog(tmp_path, "run")
    log.append(kind="note", message="kept")
    plain = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    assert [r.message for r in read_audit(tmp_path)] == ["kept"]


def test_redecide_lists_the_boundaries_another_manager_decides_otherwise(tmp_path):
    """The rule repeats its own logged decision; a manager that keeps the recipe does not; and the CLI reads
    an archived log (committed runs keep ``audit.jsonl.gz``)."""
    import gzip

    from rl_manager.audit import redecide
    from rl_manager.managers import RuleManager, make_manager

    _, original = _log_decisions(tmp_path)
    assert original.decision.action == "adjust"
    assert redecide(read_audit(tmp_path), RuleManager()) == []
    [(record, mine)] = redecide(read_audit(tmp_path), make_manager("none"))
    assert record.decision == original.decision and mine.action == "no_action"
    plain = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    cli = [sys.executable, "-m", "rl_manager.audit", "redecide", str(tmp_path)]
    same = subprocess.run(cli, capture_output=True, text=True)
    assert same.returncode == 0 and "1 decisions, 0 differ" in same.stdout
    other = subprocess.run([*cli, "--manager", "none"], capture_output=True, text=True)
    assert other.returncode == 1 and "recorded ('adjust'" in other.stdout and "now ('no_action', ())" in other.stdout

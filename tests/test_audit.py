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
    assert "no_action" in lines[1] and "rule" in lines[1]
    missing = subprocess.run(
        [sys.executable, "-m", "rl_manager.audit", "show", str(tmp_path / "nope")], capture_output=True
    )
    assert missing.returncode == 2

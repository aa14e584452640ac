"""Crash safety: a run killed at any moment resumes, with its audit log continued and verified.

The kills are real (``SIGKILL`` of a ``python -m rl_manager.train`` process on tiny budgets); the
many-kill soak is ``experiments/kill_soak.py`` (a slow test runs a short one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rl_manager.audit import read_audit, verify
from rl_manager.controller import STATE_FILENAME, Controller
from rl_manager.io import atomic_path
from rl_manager.knobs import ManagerError
from rl_manager.train import main
from tests.fakes import FakeAdapter, Scripted, adjust, make_controller, observation

ROOT = Path(__file__).resolve().parents[1]
#: knobs the optimiser trains between boundaries (PPO's ``log_std``): equal to the audit at a boundary only
TRAINED = ("action_std",)
TINY = ["--env", "PlanarReacher", "--recipe", "conservative", "--manager", "rule", "--eval-episodes", "2"]
TINY += ["--heldout-episodes", "2", "-v", "0", "-params", "n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:2"]
TINY += ["policy_kwargs:{net_arch: [16]}"]


def start_run(run: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rl_manager.train", "--run-dir", str(run), "-n", "20000", "--eval-freq", "256"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*cmd, *extra, *TINY], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """``SIGKILL`` ``proc`` as soon as ``ready()`` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def n_records(run: Path) -> int:
    path = run / "audit.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def shrink_budget(run: Path, n: int) -> None:
    config = (run / "config.yml").read_text().replace("n_timesteps: 20000", f"n_timesteps: {n}")
    (run / "config.yml").write_text(config)


def check_complete(run: Path, budget: int) -> list:
    """Every invariant of a finished run: budget reached, audit whole and verified, final knobs audited."""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timesteps"] == budget
    records = read_audit(run)
    assert [r.seq for r in records] == list(range(len(records)))
    assert len({r.run_id for r in records}) == 1
    assert verify(records) == []
    final, audited = summary["manager"]["knobs_final"], records[-1].knobs_after
    assert set(final) == set(audited)
    assert untrained(final) == untrained(audited)
    assert not list(run.glob(".*partial*"))  # no temporary file left behind
    # every knob change is audited: each record starts from the knobs the one before it left
    chain = [r for r in records if r.knobs_after]
    for prev, nxt in zip(chain[:-1], chain[1:], strict=True):
        assert untrained(nxt.knobs_before) == untrained(prev.knobs_after), (prev.seq, nxt.seq)
    return records


def untrained(knobs: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in knobs.items() if k not in TRAINED}


def test_killed_before_the_first_checkpoint_resumes_from_scratch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start_run(run, "--save-freq", "100000", "--save-interval", "1000")
    kill_when(proc, lambda: n_records(run) >= 3)
    assert not (run / "last_model.zip").exists()
    before = read_audit(run)
    shrink_budget(run, 1536)
    assert main(["--resume", str(run)]) == 0
    records = check_complete(run, 1536)
    assert records[: len(before)] == before  # nothing already written is lost
    (resumed,) = [r for r in records if r.kind == "resume"]
    assert resumed.step == 0 and f"steps 0..{before[-1].step}" in resumed.message
    assert resumed.knobs_before == records[resumed.seq - 1].knobs_after == resumed.knobs_after  # knobs restored
    state = json.loads((run / STATE_FILENAME).read_text())
    assert state["ledger"]["counts"]["resumes"] == 1 and state["ledger"]["counts"]["lost_steps"] == before[-1].step


def test_killed_after_a_checkpoint_loses_only_the_segment_after_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start_run(run, "--save-freq", "512")
    kill_when(proc, lambda: (run / "last_model.zip").exists() and n_records(run) >= 4)
    from stable_baselines3 import PPO

    saved_at = PPO.load(run / "last_model.zip", device="cpu").num_timesteps
    before = read_audit(run)
    shrink_budget(run, 2048)
    assert main(["--resume", str(run)]) == 0
    records = check_complete(run, 2048)
    (resumed,) = [r for r in records if r.kind == "resume"]
    assert resumed.step == saved_at > 0
    assert resumed.knobs_before == records[resumed.seq - 1].knobs_after  # (a reconciling note may come first)
    lost = before[-1].step - saved_at
    expected = f"steps {saved_at}..{before[-1].step} are trained again" if lost > 0 else "nothing lost"
    assert expected in resumed.message


def test_time_based_checkpoint(tmp_path: Path) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from rl_manager.callback import LastCheckpoint

    model = PPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1), n_steps=64, batch_size=64, n_epochs=1)
    saver = LastCheckpoint(tmp_path, save_freq=10**9, save_interval_s=0.0)
    model.learn(192, callback=saver)  # three rollouts: saved as the 2nd and 3rd start (on-policy: at rollout starts)
    assert PPO.load(tmp_path / "last_model.zip").num_timesteps == 128  # the step rule alone never fires
    saver = LastCheckpoint(tmp_path / "steps", save_freq=10**9, save_interval_s=None)
    (tmp_path / "steps").mkdir()
    model.learn(64, callback=saver)
    assert not (tmp_path / "steps" / "last_model.zip").exists()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_kill_between_audit_and_state_is_reconciled(tmp_path: Path) -> None:
    ctl, adapter = make_controller(tmp_path, Scripted([{"action": "no_action"}, adjust(learning_rate=5e-4)]))
    ctl.probation = None
    ctl.boundary(observation(1000, 0.5))
    stale_state = (tmp_path / STATE_FILENAME).read_bytes()
    ctl.boundary(observation(2000, 0.5))  # record 1 written; then "killed" before its state was saved
    (tmp_path / STATE_FILENAME).write_bytes(stale_state)
    fresh = FakeAdapter()
    again = Controller(fresh, "none", run_dir=tmp_path, knobs=fresh.knobs(), fallback=None)
    again.start(resumed_at=0)
    records = read_audit(tmp_path)
    note, resumed = records[-2:]
    assert note.kind == "note" and "records 1..1" in note.message
    assert note.knobs_before == records[1].knobs_after and note.knobs_after == fresh.values == resumed.knobs_after
    assert fresh.values["learning_rate"] == pytest.approx(1e-3)  # the state's knobs (the adjust is superseded)
    assert again.state.evaluation_index == 0


def test_request_in_flight_at_the_kill_is_audited_as_abandoned(tmp_path: Path) -> None:
    gate = threading.Event()
    ctl, _ = make_controller(tmp_path, Scripted(gate=gate), async_decisions=True)
    ctl.boundary(observation(1000, 0.5))  # submits a request that never returns: the process dies
    assert json.loads((tmp_path / STATE_FILENAME).read_text())["pending_request"] == 0
    gate.set()
    fresh = FakeAdapter()
    again = Controller(fresh, "none", run_dir=tmp_path, knobs=fresh.knobs(), fallback=None, async_decisions=True)
    again.start(resumed_at=1000)
    kinds = [r.kind for r in read_audit(tmp_path)]
    assert kinds == ["abandoned", "resume"] and again.counts["abandoned"] == 1
    again.close()


@pytest.mark.parametrize("content", ["{not json", '{"telemetry": {"evaluation_index": "x"}}', "[1, 2]", ""])
def test_corrupt_state_is_a_clear_error_and_nothing_is_lost(tmp_path: Path, content: str, capsys) -> None:
    ctl, _ = make_controller(tmp_path)
    ctl.boundary(observation(1000, 0.5))
    audit = (tmp_path / "audit.jsonl").read_bytes()
    (tmp_path / STATE_FILENAME).write_text(content)
    fresh = FakeAdapter()
    with pytest.raises(ManagerError, match=f"(?s){STATE_FILENAME}: not a valid manager state.*move"):
        Controller(fresh, "none", run_dir=tmp_path, knobs=fresh.knobs()).start()
    assert (tmp_path / "audit.jsonl").read_bytes() == audit and (tmp_path / STATE_FILENAME).read_text() == content


def test_foreign_state_is_refused(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    for folder in (mine, other):
        ctl, _ = make_controller(folder)
        ctl.boundary(observation(1000, 0.5))
    shutil.copy(other / STATE_FILENAME, mine / STATE_FILENAME)  # a state copied from another run
    fresh = FakeAdapter()
    with pytest.raises(ManagerError, match="belongs to run"):
        Controller(fresh, "none", run_dir=mine, knobs=fresh.knobs()).start()


def test_train_resume_with_a_corrupt_state_exits_2(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["--run-dir", str(run), "-n", "256", "--eval-freq", "128", *TINY]) == 0
    (run / STATE_FILENAME).write_text("{torn")
    assert main(["--resume", str(run)]) == 2
    assert "not a valid manager state" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_soak_short(tmp_path: Path) -> None:
    """A short kill soak (the full one, >= 20 kills over PPO and SAC runs, is in FAULTS.md)."""
    from experiments import kill_soak

    out = tmp_path / "soak.json"
    args = ["--algos", "ppo", "sac", "--runs", "1", "--kills-per-run", "2", "--scale", "0.15", "--max-delay", "6"]
    assert kill_soak.main([*args, "--folder", str(tmp_path / "runs"), "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["kills"] == 4 and figures["runs_completed"] == 2 and figures["audit_verify_mismatches"] == 0


def test_resume_from_a_checkpoint_before_the_first_boundary_is_audited(tmp_path: Path) -> None:
    """Killed after a checkpoint but before any boundary (no manager state yet): the resume is still recorded."""
    fresh = FakeAdapter()
    ctl = Controller(fresh, "none", run_dir=tmp_path, knobs=fresh.knobs(), fallback=None)
    ctl.start(resumed_at=9_000)
    (record,) = read_audit(tmp_path)
    assert record.kind == "resume" and record.step == 9_000 and "before the first boundary" in record.message
    assert ctl.counts["resumes"] == 1
    again = Controller(FakeAdapter(), "none", run_dir=tmp_path / "new", knobs=fresh.knobs(), fallback=None)
    again.start(resumed_at=0)  # a new run: nothing to record
    assert read_audit(tmp_path / "new") == []


def test_resume_without_the_replay_buffer_refills_one_first(tmp_path: Path) -> None:
    """A checkpoint whose replay buffer is gone (deleted, or never copied beside it): the run continues on an
    empty buffer, collecting ``learning_starts`` steps before its first update, instead of HER failing to sample
    before an episode has ended."""
    run = tmp_path / "run"
    args = ["--env", "FetchReach", "--algo", "sac", "--manager", "none", "--eval-freq", "200", "--eval-episodes", "1"]
    args += [
        "--heldout-episodes",
        "1",
        "-v",
        "0",
        "-params",
        "policy_kwargs:{net_arch: [16]}",
        "batch_size:32",
        "learning_starts:60",
    ]
    assert main(["--run-dir", str(run), "-n", "200", *args]) == 0
    (run / "last_replay_buffer.pkl").unlink()
    config = (run / "config.yml").read_text().replace("n_timesteps: 200", "n_timesteps: 400")
    (run / "config.yml").write_text(config)
    assert main(["--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["timesteps"] == 400

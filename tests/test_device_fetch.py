"""``experiments/device_fetch.sh``: ``poll`` waits for unfinished runs and returns as soon as all are done (the lent
machine goes back 30 s after a call, so a poll that returns early loses the next call's runs); ``start`` trains the
task ``ENV`` names."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "device_fetch.sh"


def _script(tmp_path: Path) -> Path:
    """A copy of the script in a copy of its folder layout under ``tmp_path`` (it links ``rl_manager/envs`` there)."""
    (tmp_path / "experiments").mkdir(exist_ok=True)
    (tmp_path / "rl_manager").mkdir(exist_ok=True)
    return Path(shutil.copy(SCRIPT, tmp_path / "experiments" / SCRIPT.name))


def _poll(tmp_path: Path, wait_s: int, **env: str) -> float:
    """Seconds one ``poll OUT WAIT_S`` call took (``env``: further variables, ``NOBEST=1`` unless given)."""
    script = _script(tmp_path)
    start = time.monotonic()
    subprocess.run(
        ["bash", str(script), "poll", str(tmp_path / "out"), str(wait_s)],
        env={"PATH": os.environ["PATH"], "RES": str(tmp_path / "res"), "NOBEST": "1", **env},
        capture_output=True,
        timeout=60,
    )
    assert (tmp_path / "out" / "runs.tgz").is_file()
    return time.monotonic() - start


def test_poll_waits_for_an_unfinished_run_and_returns_once_all_are_done(tmp_path):
    runs = tmp_path / "res"
    (runs / "b").mkdir(parents=True)
    (runs / "b" / "stdout.log").write_text("  20000 steps\n")
    assert _poll(tmp_path, 3) >= 3  # one run, still training (grep -L's exit status 1 once ended this at once)
    (runs / "a").mkdir()
    (runs / "a" / "stdout.log").write_text("done: 10 steps in 1s; held-out ...\n")
    assert _poll(tmp_path, 3) >= 3  # one finished, one still training
    (runs / "b" / "stdout.log").write_text("done: 20 steps in 1s\n")
    assert _poll(tmp_path, 30) < 3
    (runs / "chain.log").write_text("started trunk\n")  # a chain not yet through its held-out
    assert _poll(tmp_path, 3) >= 3
    (runs / "b" / "stdout.log").write_text("  20000 steps\n")  # a run the forked chain's gate killed: it never ends
    (runs / "chain.log").write_text("trunk at chance at the gate (300000 steps: success 0.04): runs stopped\n")
    assert _poll(tmp_path, 30) < 3


@pytest.mark.parametrize(("flag", "model"), [("FINAL", "final"), ("LAST", "last")])
def test_poll_brings_the_models_back_with_final_or_last(tmp_path, flag, model):
    """``FINAL=1``: each run's final model comes back in parts under the size limit, joined again by ``cat``, with
    its observation statistics (``--evaluate`` needs them beside a normalising recipe's model); ``LAST=1`` its
    latest checkpoint's model (a run that outlives the device time has no final one)."""
    run = tmp_path / "res" / "rule"
    (run / "run").mkdir(parents=True)
    (run / "stdout.log").write_text("done: 10 steps in 1s\n")
    data = os.urandom(16 * 2**20 + 1)  # over one 15-MiB part
    (run / "run" / f"{model}_model.zip").write_bytes(data)
    (run / "run" / f"{model}_model_vecnormalize.pkl").write_bytes(b"stats")
    _poll(tmp_path, 0)
    assert not list((tmp_path / "out").glob(f"{model}_*"))  # not without the flag
    _poll(tmp_path, 0, **{flag: "1"})
    parts = sorted((tmp_path / "out").glob(f"{model}_rule.zip.*"))
    assert len(parts) == 2 and b"".join(p.read_bytes() for p in parts) == data
    assert (tmp_path / "out" / f"{model}_rule_vecnormalize.pkl").read_bytes() == b"stats"


def test_start_trains_the_env_named_by_env(tmp_path):
    """``ENV`` picks the task ``start`` trains (FetchPush in ``fetch_push_costknob``); FetchPickAndPlace without it."""
    script = _script(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"  # records its arguments instead of training
    fake.write_text('#!/usr/bin/env bash\necho "$@" > "$RES/argv.$$"\n')
    fake.chmod(0o755)
    for env_name, expected in (("FetchPush", "FetchPush"), (None, "FetchPickAndPlace")):
        res = tmp_path / f"res_{expected}"
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RES": str(res)} | ({"ENV": env_name} if env_name else {})
        subprocess.run(["bash", str(script), "start", "trunk", "7"], env=env, timeout=30)
        deadline = time.monotonic() + 20
        while not list(res.glob("argv.*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        argv = next(res.glob("argv.*")).read_text().split()
        assert argv[argv.index("--env") + 1] == expected
        assert argv[argv.index("--seed") + 1] == "7"


def test_start_refuses_a_name_that_already_holds_a_run(tmp_path):
    """A run folder left by an earlier chain (its ``fixed`` arm) stops ``start`` before the detached launch, whose
    own refusal no call would see."""
    script = _script(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"  # records that it ran
    fake.write_text('#!/usr/bin/env bash\ntouch "$RES/launched"\n')
    fake.chmod(0o755)
    res = tmp_path / "res"
    (res / "fixed" / "run").mkdir(parents=True)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RES": str(res)}
    done = subprocess.run(["bash", str(script), "start", "fixed", "250"], env=env, capture_output=True, text=True)
    time.sleep(1)
    assert done.returncode == 1 and "exists" in done.stderr
    assert not (res / "launched").exists()
    subprocess.run(["bash", str(script), "start", "other", "250"], env=env, timeout=30)  # a new name launches
    deadline = time.monotonic() + 20
    while not (res / "launched").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (res / "launched").exists()


def test_forked_refuses_the_runs_of_an_earlier_chain(tmp_path):
    """A machine still warm keeps the last chain's runs; a new ``forked`` chain started on top of them would fail in
    its detached ``start`` (seed 275's first launch): it refuses before launching, with nothing written."""
    script = _script(tmp_path)
    res = tmp_path / "res"
    (res / "rule" / "run").mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "RES": str(res)}
    done = subprocess.run(["bash", str(script), "forked", "7"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "rule exists" in done.stderr
    assert not (res / "chain.log").exists()


def test_costknob_refuses_an_unknown_arm_before_the_trunk(tmp_path):
    """An arm the chain cannot branch (``pen`` without its penalty, a typo) stops it before any device time goes
    into the trunk; ``penX`` arms (no manager, penalty X) are branched (a CPU smoke test in fetch_pick_costknob)."""
    script = _script(tmp_path)
    for arms in ("fixed pen", "rule fixd"):
        res = tmp_path / "res"
        done = subprocess.run(
            ["bash", str(script), "costknob", "7"],
            env={"PATH": os.environ["PATH"], "RES": str(res), "ARMS": arms},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2 and "unknown arm" in done.stderr
        assert not (res / "chain.log").exists()


def _forked(tmp_path: Path, name: str, **env: str) -> Path:
    """The ``forked`` chain on a tiny conservative PaperReacher PPO run on the CPU, waited for; its results folder."""
    res = tmp_path / name
    env = {
        "PATH": os.environ["PATH"],
        "RES": str(res),
        "ENV": "PaperReacher",
        "RECIPE": "conservative",
        "DEV": "cpu",
        "EF": "256",
        "HELDOUT": "4",
        "XARGS": "--save-interval 100000 --heldout-episodes 2",
        "PARAMS": "n_envs:2 n_steps:64 batch_size:64 n_epochs:2 policy_kwargs:{net_arch:[16]}",
        **env,
    }
    subprocess.run(["bash", str(_script(tmp_path)), "forked", "3"], env=env, timeout=30, check=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        log = (res / "chain.log").read_text() if (res / "chain.log").exists() else ""
        if "evaluated" in log or "runs stopped" in log:
            return res
        time.sleep(1)
    raise AssertionError(f"the chain did not end: {log}")


def _assert_stopped(res: Path) -> None:
    """The chain in ``res`` stopped its runs: the rule run was killed long before its budget, nothing left running."""
    time.sleep(2)
    assert not (res / "rule" / "run" / "summary.json").exists()
    assert subprocess.run(["pgrep", "-f", str(res)], capture_output=True).returncode == 1


def test_forked_chain_branches_the_fixed_arm_at_the_rules_first_move(tmp_path):
    """``forked``: the rule-managed run writes its fork just before its first move; the chain continues that copy
    with no manager (the fixed arm) and evaluates both final models held-out."""
    from rl_manager.audit import read_audit

    # (a screen at chance lets the runs go on when the policy's entropy is under its bound)
    res = _forked(tmp_path, "res", BUDGET="2048", SCREEN="1024", MAX_ENTROPY="1000", MIN_SUCCESS="2")
    rule = [r for r in read_audit(res / "rule" / "run") if r.kind == "decision"]
    step = json.loads((res / "forkpt" / "run" / "fork.json").read_text())["step"]
    assert step == next(r.step for r in rule if r.applied)
    assert f"forked at step {step}" in (res / "chain.log").read_text()
    fixed = read_audit(res / "fixed" / "run")
    assert "resume" in [r.kind for r in fixed] and not any(r.applied for r in fixed)
    assert json.loads((res / "fixed" / "run" / "summary.json").read_text())["timesteps"] == 2048
    for arm in ("rule", "fixed"):
        assert "4 episodes of" in (res / arm / "heldout.log").read_text()


def test_forked_chain_stops_both_runs_at_chance_at_the_gate(tmp_path):
    res = _forked(tmp_path, "res", BUDGET="204800", GATE="1024", MIN_SUCCESS="2")
    assert "runs stopped" in (res / "chain.log").read_text()
    _assert_stopped(res)


def test_forked_chain_stops_both_runs_at_the_screen_when_the_entropy_is_over_its_bound(tmp_path):
    res = _forked(tmp_path, "res", BUDGET="204800", SCREEN="1024", MAX_ENTROPY="-1000", MIN_SUCCESS="2")
    assert "at chance at the screen (1024 steps: success" in (res / "chain.log").read_text()
    _assert_stopped(res)

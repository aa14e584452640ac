"""``compare --backend ray``: the same grid gives the same run files as the process backend."""

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs the 'ray' extra")

from rl_manager.audit import read_audit  # noqa: E402
from rl_manager.compare import Grid, run_grid  # noqa: E402
from rl_manager.ray_backend import run_grid_ray  # noqa: E402

GRID = Grid.model_validate(
    {
        "name": "tiny",
        "seeds": [3],
        "n_timesteps": 1024,
        "eval_freq": 256,
        "eval_episodes": 3,
        "heldout_episodes": 2,
        "params": ["n_envs:2", "n_steps:128", "batch_size:64", "n_epochs:2", "policy_kwargs:{net_arch: [16]}"],
        "arms": [
            {"name": "fixed", "env": "PaperReacher", "algo": "ppo", "recipe": "conservative", "manager": "none"},
            {"name": "managed", "env": "PaperReacher", "algo": "ppo", "recipe": "conservative", "manager": "rule"},
        ],
    }
)


def _files(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    ev = np.load(run_dir / "evaluations.npz")
    decisions = [(r.step, r.decision.action if r.decision else None, r.knobs_after) for r in read_audit(run_dir)]
    return summary["heldout"], {k: ev[k] for k in ev.files}, decisions


def test_ray_backend_reproduces_the_process_backend(tmp_path):
    a, b = tmp_path / "process", tmp_path / "ray"
    assert all(code == 0 for _, code, _ in run_grid(GRID, a, workers=2))
    results = run_grid_ray(GRID, b, num_cpus=1)
    assert sorted(rid for rid, _, _ in results) == ["fixed/s3", "managed/s3"]
    assert all(code == 0 for _, code, _ in results)
    for arm in ("fixed", "managed"):
        heldout_a, curves_a, decisions_a = _files(a / "runs" / arm / "s3")
        heldout_b, curves_b, decisions_b = _files(b / "runs" / arm / "s3")
        assert heldout_a == heldout_b
        for key, values in curves_a.items():
            np.testing.assert_array_equal(values, curves_b[key])
        assert decisions_a == decisions_b and len(decisions_a) == 4
    # finished runs are skipped on a second call, as in the process backend
    assert {status for _, _, status in run_grid_ray(GRID, b)} == {"skipped (done)"}


def _train_processes(run_dir):
    import subprocess

    out = subprocess.run(["pgrep", "-f", f"rl_manager.train.*{run_dir}"], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def _parent(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("PPid:"))


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_the_run_resumed(tmp_path):
    import os
    import signal
    import threading
    import time

    grid = GRID.model_copy(update={"n_timesteps": 40960, "eval_freq": 2048, "arms": GRID.arms[1:]})
    results = []
    thread = threading.Thread(target=lambda: results.extend(run_grid_ray(grid, tmp_path, max_retries=2)))
    thread.start()
    run_dir = tmp_path / "runs" / "managed" / "s3"
    deadline = time.monotonic() + 300
    while not (run_dir / "audit.jsonl").exists() or len(read_audit(run_dir)) < 3:  # a few decisions in
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.5)
    (train,) = _train_processes(run_dir)
    worker = _parent(train)
    os.kill(worker, signal.SIGKILL)  # the Ray worker dies; its training process dies with it
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert [(rid, code) for rid, code, _ in results] == [("managed/s3", 0)]
    assert not _train_processes(run_dir)
    records = read_audit(run_dir)
    assert any(r.kind == "resume" for r in records)
    assert [r.seq for r in records] == list(range(len(records)))
    assert json.loads((run_dir / "summary.json").read_text())["timesteps"] == 40960

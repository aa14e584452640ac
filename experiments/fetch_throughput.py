"""Env steps per second of TQC+HER recipes on FetchPickAndPlace, measured in one run (issue 16).

Each configuration trains for ``--seconds`` of wall time after its warm-up (``learning_starts``) on the
same machine and seed, and the table gives its env steps/s, gradient steps/s and the ratio to the zoo
recipe's env steps/s measured in the same run. A configuration is ``zoo`` (rl-zoo3's recipe: one env,
one gradient step of 2,048 samples per env step) or ``vN-gG-bB``: N envs stepping in worker processes
(``vec_env: subproc``), G gradient steps of B samples per vector step (replay ratio G/N). HER's
relabelling runs in the learner's process (:class:`rl_manager.vec_env.LocalComputeReward`); a ``-ipc``
suffix (``v16-g4-b4096-ipc``) measures SB3's default instead, one pipe round trip to a worker per batch.
The update is :class:`rl_manager.fast_tqc.FastTQC`'s; a ``-sb3`` suffix (``zoo-sb3``, ``v16-g4-b4096-sb3``)
measures sb3-contrib's own ``TQC.train`` instead (the same update, synchronised at every gradient step);
``-fused`` gives the optimisers PyTorch's fused Adam (one kernel per step; CUDA only); ``-nograph`` turns off
FastTQC's CUDA graph of the gradient step (its loop without host syncs only); ``-devbuf`` samples HER's
batches on the device (:class:`rl_manager.device_her.DeviceHerReplayBuffer`) instead of SB3's numpy sampler;
``-tf32`` lets CUDA matmuls use TensorFloat-32; ``-norm`` normalises observations (the recipe key ``normalize``:
``{norm_reward: false, clip_obs: 5.0}``; with ``-devbuf`` applied to HER's batches on the device).

::

    python experiments/fetch_throughput.py --device cuda --seconds 120 zoo v16-g16-b2048 v16-g8-b4096 v16-g4-b4096

Throughput only: whether a configuration still learns is judged by training it (``python -m
rl_manager.train --env FetchPickAndPlace -params n_envs:16 vec_env:subproc gradient_steps:8 ...``).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from sb3_contrib import TQC
from stable_baselines3.common.callbacks import BaseCallback

import rl_manager.envs  # noqa: F401  (registers the env ids)
from rl_manager.train import _build_model, load_recipe, make_train_env, normalize_env
from rl_manager.vec_env import LocalComputeReward

ENV_ID = "rl_manager/SafeFetchPickAndPlace-v0"


def overrides(name: str) -> dict[str, Any]:
    """Recipe overrides of a configuration name (``zoo`` or ``vN-gG-bB``)."""
    suffixes = r"(?:-ipc)?(?:-sb3)?(?:-fused)?(?:-nograph)?(?:-devbuf)?(?:-tf32)?(?:-norm)?"
    flags: dict[str, Any] = {"cuda_graph": False} if "-nograph" in name else {}
    if "-tf32" in name:
        flags["tf32"] = True  # the recipe key: TensorFloat-32 matmuls on CUDA
    if "-devbuf" in name:
        flags["replay_buffer_class"] = "DeviceHerReplayBuffer"
    if "-norm" in name:
        flags["normalize"] = {"norm_reward": False, "clip_obs": 5.0}
    if re.fullmatch(r"zoo" + suffixes, name):
        return flags
    m = re.fullmatch(r"v(\d+)-g(\d+)-b(\d+)" + suffixes, name)
    if m is None:
        raise SystemExit(f"configuration {name!r}: expected zoo or vN-gG-bB (e.g. v16-g8-b4096)")
    n, g, b = (int(x) for x in m.groups())
    return flags | {
        "n_envs": n,
        "vec_env": "subproc",
        "train_freq": 1,
        "gradient_steps": g,
        "batch_size": b,
    }


class Clock(BaseCallback):
    """Stops training ``seconds`` after the warm-up and records the env and gradient steps of that window."""

    def __init__(self, seconds: float, warmup: int) -> None:
        super().__init__()
        self.seconds, self.warmup = seconds, warmup
        self.start: tuple[float, int, int] | None = None
        self.rates: tuple[float, float] = (0.0, 0.0)

    def _on_step(self) -> bool:
        updates = int(getattr(self.model, "_n_updates", 0))
        if self.start is None:
            if self.num_timesteps >= self.warmup and updates > 0:
                self.start = (time.perf_counter(), self.num_timesteps, updates)
            return True
        elapsed = time.perf_counter() - self.start[0]
        if elapsed < self.seconds:
            return True
        self.rates = ((self.num_timesteps - self.start[1]) / elapsed, (updates - self.start[2]) / elapsed)
        return False


def measure(name: str, args: argparse.Namespace) -> tuple[float, float]:
    recipe = load_recipe("tqc", ENV_ID, "tuned", None) | overrides(name)
    if "-fused" in name:
        recipe["policy_kwargs"] = dict(recipe.get("policy_kwargs") or {}) | {"optimizer_kwargs": {"fused": True}}
    env = make_train_env(ENV_ID, recipe, seed=args.seed)
    if "-ipc" in name and isinstance(env, LocalComputeReward):
        env = env.venv  # SB3's default: compute_reward through the worker pipe
    env = normalize_env(env, recipe)
    config = {"algo": "tqc", "recipe": recipe, "seed": args.seed, "tensorboard_log": None, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        model = _build_model(config, env, Path(tmp), None, cls=TQC if "-sb3" in name else None)
        clock = Clock(args.seconds, int(recipe.get("learning_starts", 100)))
        model.learn(10**9, callback=clock)
    env.close()
    return clock.rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", help="zoo and/or vN-gG-bB")
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=60.0, help="measured wall time per configuration")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"device {args.device}, {args.seconds:.0f} s per configuration, env {ENV_ID}")
    print("| configuration | env steps/s | gradient steps/s | replay ratio | env steps/s vs zoo |")
    print("|---|---|---|---|---|", flush=True)
    zoo = None
    for name in args.configs:  # each row as soon as it is measured: a run cut short keeps its rows
        steps, updates = measure(name, args)
        if name.startswith("zoo") and zoo is None:
            zoo = steps  # the first zoo configuration is the reference
        ratio = f"{steps / zoo:.2f}" if zoo else "-"
        replay = updates / steps if steps else float("nan")
        print(f"| {name} | {steps:.1f} | {updates:.1f} | {replay:.3f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()

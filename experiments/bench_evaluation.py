"""Evaluation overhead of the paired evaluator next to PPO training (issue 11, item 5).

Trains PPO (16 envs x 128 steps per update, the paper's protocol) and runs a
:class:`~rl_manager.evaluation.PairedEvaluator` every ``--every`` updates, timing both::

    python experiments/bench_evaluation.py --env rl_manager/PlanarReacher-v0 --episodes 100
    python experiments/bench_evaluation.py --env rl_manager/PaperReacher-v0 --episodes 100 --stochastic

It prints the evaluation seconds per boundary, the training seconds per ``--every`` updates and the
ratio eval / (eval + train); the target is <= 0.15 at 100 episodes every 10 updates. ``--cells``
splits the episodes over difficulty ids (``--cells easy,medium,hard`` with an env id whose
``Easy``/``Medium``/``Hard`` variants are registered).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.envs  # noqa: F401  (registers the env ids)
from rl_manager.evaluation import CellSpec, PairedEvaluator


class _TimedEval(BaseCallback):
    """Evaluates every ``every`` rollouts and accumulates the time spent."""

    def __init__(self, evaluator: PairedEvaluator, every: int) -> None:
        super().__init__()
        self.evaluator, self.every = evaluator, every
        self.rollouts, self.eval_times, self.results = 0, [], []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        if self.rollouts % self.every == 0:
            start = time.perf_counter()
            metrics = self.evaluator.evaluate(self.model)
            self.eval_times.append(time.perf_counter() - start)
            self.results.append(metrics)


def _cells(env_id: str, cells: str | None, episodes: int) -> list[CellSpec]:
    if not cells:
        return [CellSpec("all", env_id, episodes)]
    names = [c.strip() for c in cells.split(",") if c.strip()]
    base = env_id.rsplit("-v", 1)
    per_cell = max(1, episodes // len(names))
    return [CellSpec(n, f"{base[0]}{n.capitalize()}-v{base[1]}", per_cell) for n in names]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="rl_manager/PlanarReacher-v0")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes per boundary (all cells)")
    p.add_argument("--cells", default=None, help="comma-separated difficulties (one cell each)")
    p.add_argument("--every", type=int, default=10, help="PPO updates between boundaries")
    p.add_argument("--boundaries", type=int, default=3, help="boundaries to time")
    p.add_argument("--stochastic", action="store_true", help="add the stochastic pass")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    th.set_num_threads(args.threads)

    env = make_vec_env(args.env, n_envs=16, seed=args.seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=128,
        batch_size=256,
        n_epochs=6,
        learning_rate=3e-4,
        policy_kwargs={"net_arch": [64, 64]},
        seed=args.seed,
        device="cpu",
    )
    evaluator = PairedEvaluator(_cells(args.env, args.cells, args.episodes), 1_000_000, stochastic=args.stochastic)
    evaluator.evaluate(model)  # builds the envs once (not counted: a run does it once)
    timed = _TimedEval(evaluator, args.every)
    updates = args.every * args.boundaries
    start = time.perf_counter()
    model.learn(updates * 16 * 128, callback=timed)
    total = time.perf_counter() - start
    eval_s = float(np.mean(timed.eval_times))
    train_s = (total - sum(timed.eval_times)) / args.boundaries
    out = {
        "env": args.env,
        "episodes_per_boundary": evaluator.n_episodes,
        "stochastic_pass": args.stochastic,
        "cells": [c.name for c in evaluator.cells],
        "boundaries": args.boundaries,
        "eval_s_per_boundary": round(eval_s, 3),
        "eval_s_each": [round(t, 3) for t in timed.eval_times],
        f"train_s_per_{args.every}_updates": round(train_s, 3),
        "ratio_eval_over_total": round(eval_s / (eval_s + train_s), 4),
        "mean_ep_length_each": [round(m.mean_ep_length or 0.0, 1) for m in timed.results],
        "torch_threads": args.threads,
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

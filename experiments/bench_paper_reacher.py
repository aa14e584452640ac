"""Steps per second of ``PaperReacherEnv``: raw env, env behind gym.make, and resets alone.

``python experiments/bench_paper_reacher.py [--steps 200000] [--difficulty train]``

Actions are drawn in advance (uniform in [-1, 1]) so that the figure is the env's own cost; an
episode that ends (termination or the 120-step cap, counted here as the registered TimeLimit would)
is reset in the timed loop.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rl_manager.envs.paper_reacher import PaperReacherEnv

EPISODE_CAP = 120


def bench_raw(difficulty: str, steps: int, seed: int = 0) -> tuple[float, int]:
    """Steps/s of the bare env with resets included; return (steps/s, episodes)."""
    env = PaperReacherEnv(difficulty=difficulty)
    actions = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(steps, 2)).astype(np.float32)
    env.reset(seed=seed)
    episodes, t = 0, 0
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, _, _ = env.step(actions[i])
        t += 1
        if terminated or t >= EPISODE_CAP:
            env.reset()
            episodes, t = episodes + 1, 0
    return steps / (time.perf_counter() - start), episodes


def bench_made(env_id: str, steps: int, seed: int = 0) -> float:
    """Steps/s through ``gym.make`` (TimeLimit, OrderEnforcing, PassiveEnvChecker)."""
    import gymnasium as gym
    import rl_manager.envs  # noqa: F401

    env = gym.make(env_id)
    actions = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(steps, 2)).astype(np.float32)
    env.reset(seed=seed)
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[i])
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def bench_resets(difficulty: str, n: int, seed: int = 0) -> float:
    """Resets per second (the rejection sampler alone)."""
    env = PaperReacherEnv(difficulty=difficulty)
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(n):
        env.reset()
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--resets", type=int, default=5_000)
    p.add_argument("--difficulty", default=None, help="one difficulty (default: all four)")
    args = p.parse_args()
    for difficulty in [args.difficulty] if args.difficulty else ["train", "easy", "medium", "hard"]:
        rate, episodes = bench_raw(difficulty, args.steps)
        print(
            f"{difficulty:>6}: raw env {rate:,.0f} steps/s ({episodes} episodes), "
            f"resets {bench_resets(difficulty, args.resets):,.0f}/s"
        )
    print(
        f"gym.make('rl_manager/PaperReacher-v0'): {bench_made('rl_manager/PaperReacher-v0', args.steps):,.0f} steps/s"
    )


if __name__ == "__main__":
    main()

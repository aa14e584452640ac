"""Steps per second of ``PaperReacherEnv``: raw env, env behind gym.make, and resets alone.

``python experiments/bench_paper_reacher.py [--steps 200000] [--difficulty train] [--ppo 50000 --recipe tuned]``

With ``--ppo N`` it also trains SB3 PPO with a ``PaperReacher`` recipe of ``experiments/hyperparams/ppo.yml``
for N steps on one torch thread (set ``OMP_NUM_THREADS=1`` too) and prints the training steps/s.

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


def bench_ppo(recipe_name: str, steps: int, seed: int = 0) -> tuple[float, float]:
    """Train PPO with a ``PaperReacher`` recipe for ``steps``; return (steps/s, rollout-share of wall time)."""
    from pathlib import Path

    import torch as th
    import yaml
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    import rl_manager.envs  # noqa: F401
    import rl_manager.policies  # noqa: F401  (registers SplitLRMlpPolicy)

    th.set_num_threads(1)
    path = Path(__file__).resolve().parent / "hyperparams" / "ppo.yml"
    recipe = dict(yaml.safe_load(path.read_text())["PaperReacher"][recipe_name])
    for key in ("n_timesteps", "quick_timesteps", "targets", "manager_knobs"):
        recipe.pop(key, None)
    env = make_vec_env(
        "rl_manager/PaperReacher-v0", n_envs=recipe.pop("n_envs"), seed=seed, env_kwargs=recipe.pop("env_kwargs", None)
    )

    class RolloutTimer(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rollout_s, self._t = 0.0, 0.0

        def _on_rollout_start(self) -> None:
            self._t = time.perf_counter()

        def _on_rollout_end(self) -> None:
            self.rollout_s += time.perf_counter() - self._t

        def _on_step(self) -> bool:
            return True

    model = PPO(recipe.pop("policy"), env, seed=seed, device="cpu", **recipe)
    timer = RolloutTimer()
    start = time.perf_counter()
    model.learn(steps, callback=timer)
    elapsed = time.perf_counter() - start
    env.close()
    return model.num_timesteps / elapsed, timer.rollout_s / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--resets", type=int, default=5_000)
    p.add_argument("--difficulty", default=None, help="one difficulty (default: all four)")
    p.add_argument("--ppo", type=int, default=0, metavar="N", help="also train PPO for N steps and time it")
    p.add_argument("--recipe", default="tuned", help="PaperReacher recipe for --ppo")
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
    if args.ppo:
        rate, rollout_share = bench_ppo(args.recipe, args.ppo)
        print(
            f"PPO {args.recipe} ({args.ppo} steps, 1 thread): {rate:,.0f} steps/s, "
            f"{rollout_share:.0%} of wall time collecting rollouts"
        )


if __name__ == "__main__":
    main()

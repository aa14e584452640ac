"""Print environment steps/s per registered ``rl_manager/`` id under random actions.

Usage::

    python experiments/bench_envs.py --steps 20000 --seed 0

Steps/s include resets (one process, one env, no vectorisation). For the planar reacher it also
prints episode outcome rates of random actions and of a greedy joint-space controller that drives
straight to the nearest inverse-kinematics solution and ignores the obstacle (a difficulty probe).
"""

from __future__ import annotations

import argparse
import math
import time

import gymnasium as gym
import numpy as np

import rl_manager.envs
from rl_manager.envs.reacher import PlanarReacherEnv


def steps_per_second(env_id: str, steps: int, seed: int) -> float:
    env = gym.make(env_id)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def greedy_action(env: PlanarReacherEnv) -> np.ndarray:
    """Full-speed joint-space move to the IK solution closest to the current pose."""
    q = env.data.qpos.copy()
    best = None
    for sol in env._ik(env.target):
        delta = (sol - q + math.pi) % (2 * math.pi) - math.pi
        if best is None or np.abs(delta).sum() < np.abs(best).sum():
            best = delta
    if best is None:
        return np.zeros(2, dtype=np.float32)
    return np.clip(best / (env.max_joint_speed * env.dt), -1.0, 1.0).astype(np.float32)


def reacher_rates(env_id: str, episodes: int, seed: int, greedy: bool) -> tuple[float, float]:
    env = gym.make(env_id)
    env.action_space.seed(seed)
    base = env.unwrapped
    safe = collisions = 0
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        done = False
        while not done:
            action = greedy_action(base) if greedy else env.action_space.sample()
            _, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        safe += int(info["safe_success"])
        collisions += int(info["collision"])
    return safe / episodes, collisions / episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for env_id in rl_manager.envs.registered_ids():
        line = f"{env_id:40s} {steps_per_second(env_id, args.steps, args.seed):9.0f} steps/s"
        if "PlanarReacher" in env_id:
            rs, rc = reacher_rates(env_id, args.episodes, args.seed, greedy=False)
            gs, gc = reacher_rates(env_id, args.episodes, args.seed, greedy=True)
            line += f"  random: safe_success={rs:.2f} collision={rc:.2f}"
            line += f"  greedy: safe_success={gs:.2f} collision={gc:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()

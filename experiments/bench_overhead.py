"""Overhead of ``ManagerCallback`` (rule manager): env steps/s with and without it.

Arms, run interleaved (the order rotated each round) with the same seed and budget:

- ``plain``: no callback;
- ``eval``: SB3 ``EvalCallback`` with the manager's evaluation schedule (the evaluation cost alone);
- ``noop``: ``ManagerCallback`` with the no-op manager and the same evaluation schedule: the same
  training trajectory as ``eval`` (same seeds, no recipe change), plus the manager's telemetry,
  guard, audit log and TensorBoard records;
- ``managed``: ``ManagerCallback`` with the rule manager (its decisions change the recipe, so its
  later training, and so its speed, differ for reasons other than overhead).

Printed: median steps/s per arm, the ratio noop/eval (the manager machinery's overhead, target
>= 0.99), managed/plain, and the share of wall time the rule-managed runs spent in decision
boundaries (telemetry, decision, actuation, audit; evaluation excluded).

    python experiments/bench_overhead.py --steps 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.envs  # noqa: F401
from rl_manager.callback import ManagerCallback

#: seconds spent in ManagerCallback.boundary (telemetry, decision, actuation, audit), evaluation excluded
SELF_TIME: list[float] = []


def run(arm: str, env_id: str, steps: int, eval_freq: int, episodes: int, seed: int) -> float:
    env = make_vec_env(env_id, n_envs=8, seed=seed, monitor_kwargs={"info_keywords": ("is_success", "episode_cost")})
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=512, policy_kwargs={"net_arch": [64, 64]}, seed=seed)
    freq = max(1, eval_freq // env.num_envs)
    with tempfile.TemporaryDirectory() as tmp:
        callback = None
        if arm == "eval":
            callback = EvalCallback(eval_env, eval_freq=freq, n_eval_episodes=episodes, verbose=0)
        elif arm in ("noop", "managed"):
            callback = ManagerCallback(
                "none" if arm == "noop" else "rule",
                run_dir=tmp,
                eval_env=eval_env,
                eval_freq=freq,
                n_eval_episodes=episodes,
            )
            boundary = callback.boundary

            def timed(metrics):
                t0 = time.perf_counter()
                try:
                    return boundary(metrics)
                finally:
                    spent[0] += time.perf_counter() - t0

            callback.boundary = timed
        spent = [0.0]
        start = time.perf_counter()
        model.learn(steps, callback=callback)
        elapsed = time.perf_counter() - start
        if arm == "managed":
            SELF_TIME.append(spent[0] / elapsed)
    return model.num_timesteps / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="rl_manager/PlanarReacher-v0")
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--eval-freq", type=int, default=5_000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rates: dict[str, list[float]] = {"plain": [], "eval": [], "noop": [], "managed": []}
    arms = list(rates)
    for r in range(args.repeats):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:  # rotate the order: no position bias
            rates[arm].append(run(arm, args.env, args.steps, args.eval_freq, args.eval_episodes, args.seed))
    med = {arm: statistics.median(v) for arm, v in rates.items()}
    for arm, v in rates.items():
        print(f"{arm:8s} steps/s median {med[arm]:8.1f}  runs {[round(x, 1) for x in v]}")
    print(f"ratio noop/eval     {med['noop'] / med['eval']:.3f}  (the manager machinery's overhead; target >= 0.99)")
    print(f"ratio managed/plain {med['managed'] / med['plain']:.3f}  (including evaluation episodes)")
    share = statistics.median(SELF_TIME)
    print(
        f"manager self-time share {100 * share:.2f}% of training wall time (decision boundaries, evaluation excluded)"
    )


if __name__ == "__main__":
    main()

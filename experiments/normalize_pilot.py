"""Pilot: does observation normalisation let TQC+HER learn FetchPush on the 2-core CPU recipe?

The CPU recipe (TQC+HER, 128×3 networks, batches of 256, a gradient step every 2 env steps) stayed at chance on
``rl_manager/SafeFetchPush-v0`` to 500k steps (seed 253) and 300k (seed 255). OpenAI's HER implementation
normalises observations and goals with running statistics; rl-zoo3 does so for FetchReach (``normalize: true``)
but not for Push or PickAndPlace, and neither does this project's recipe. This script trains the same recipe
with and without :class:`~stable_baselines3.common.vec_env.VecNormalize` (observations only, clipped at 5, as
rl-zoo3's default; rewards untouched), outside the manager: one factor, plain SB3.

Every ``--eval-freq`` steps it writes one JSON line to ``RUN/evals.jsonl``: success and episode cost of
``--eval-episodes`` deterministic episodes on an env seeded apart from training. Every ``--save-freq`` steps it
saves the model, replay buffer and normaliser to ``RUN/ckpt/`` so that a later session can continue it
(``--resume``).

``OMP_NUM_THREADS=1 python experiments/normalize_pilot.py --seed 256 --normalize -n 600000 --run RUN``

``--heldout N`` trains nothing: it plays ``N`` deterministic episodes of the model in ``RUN/ckpt`` (with its
normaliser, frozen) on an env seeded ``seed + 20000``, the same scenes for both arms of a seed, and writes each
episode's figures to ``RUN/heldout_episodes.json`` for ``experiments/heldout_pairs.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch as th
from sb3_contrib import TQC
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, sync_envs_normalization

import rl_manager.envs  # noqa: F401  (registers rl_manager/SafeFetch*)
from rl_manager.telemetry import evaluate as rl_evaluate

ENV_ID = "rl_manager/SafeFetchPush-v0"


def evaluate(model: TQC, train_env: VecEnv, eval_env: VecEnv, n_episodes: int) -> dict[str, float]:
    """Success rate and mean episode cost of ``n_episodes`` deterministic episodes."""
    if isinstance(eval_env, VecNormalize):
        sync_envs_normalization(train_env, eval_env)
    successes, costs = [], []
    obs = eval_env.reset()
    cost = 0.0
    while len(successes) < n_episodes:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, dones, infos = eval_env.step(action)
        cost += float(infos[0].get("cost", 0.0))
        if dones[0]:
            successes.append(float(infos[0].get("is_success", 0.0)))
            costs.append(cost)
            cost = 0.0
    return {"success": float(np.mean(successes)), "cost": float(np.mean(costs))}


class Pilot(BaseCallback):
    """Evaluations and resumable checkpoints every so many env steps."""

    def __init__(self, run: Path, eval_env: VecEnv, eval_freq: int, eval_episodes: int, save_freq: int) -> None:
        super().__init__()
        self.run, self.eval_env = run, eval_env
        self.eval_freq, self.eval_episodes, self.save_freq = eval_freq, eval_episodes, save_freq
        self.start = time.time()

    def _on_step(self) -> bool:
        step = self.num_timesteps
        if step % self.eval_freq == 0:
            row = {"step": step, "wall_s": round(time.time() - self.start, 1)}
            row.update(evaluate(self.model, self.training_env, self.eval_env, self.eval_episodes))
            row["ent_coef"] = float(th.exp(self.model.log_ent_coef.detach()).item())
            with open(self.run / "evals.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        if step % self.save_freq == 0:
            save(self.model, self.run)
        return True


def save(model: TQC, run: Path) -> None:
    """Model, replay buffer and (if any) normaliser, replaced as a set."""
    ckpt = run / "ckpt"
    ckpt.mkdir(exist_ok=True)
    model.save(ckpt / "model.zip")
    model.save_replay_buffer(ckpt / "buffer.pkl")
    if model.get_vec_normalize_env() is not None:
        model.get_vec_normalize_env().save(str(ckpt / "vecnormalize.pkl"))
    (ckpt / "step.txt").write_text(str(model.num_timesteps))


def heldout(ckpt: Path, seed: int, n_episodes: int, dest: Path) -> None:
    """``n_episodes`` deterministic episodes of the checkpoint's model on scenes seeded ``seed + 20000``."""
    env = make_vec_env(ENV_ID, n_envs=1, seed=seed + 20_000)
    stats = ckpt / "vecnormalize.pkl"
    if stats.is_file():
        env = VecNormalize.load(str(stats), env)
        env.training = False
    model = TQC.load(ckpt / "model.zip", env=env, device="cpu")
    result = rl_evaluate(model, env, n_episodes, deterministic=True)
    env.close()
    dest.write_text(json.dumps({"deterministic/all": result.episodes()}))
    metrics = result.metrics()
    print(f"step {(ckpt / 'step.txt').read_text()}: success {metrics.success_rate}, cost {metrics.mean_cost} -> {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--normalize", action="store_true")
    parser.add_argument("-n", type=int, default=600_000)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from RUN/ckpt")
    parser.add_argument("--eval-freq", type=int, default=20_000)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--save-freq", type=int, default=100_000)
    parser.add_argument("--heldout", type=int, default=0, help="only play this many held-out episodes of RUN/ckpt")
    args = parser.parse_args()
    args.run.mkdir(parents=True, exist_ok=True)
    th.set_num_threads(1)

    if args.heldout:
        heldout(args.run / "ckpt", args.seed, args.heldout, args.run / "heldout_episodes.json")
        return
    env = make_vec_env(ENV_ID, n_envs=1, seed=args.seed)
    eval_env = make_vec_env(ENV_ID, n_envs=1, seed=args.seed + 10_000)
    ckpt = args.run / "ckpt"
    if args.normalize:
        if args.resume:
            env = VecNormalize.load(str(ckpt / "vecnormalize.pkl"), env)
        else:
            env = VecNormalize(env, norm_obs=True, norm_reward=False, clip_obs=5.0)
        eval_env = VecNormalize(eval_env, training=False, norm_obs=True, norm_reward=False, clip_obs=5.0)
    if args.resume:
        model = TQC.load(ckpt / "model.zip", env=env, device="cpu")
        model.load_replay_buffer(ckpt / "buffer.pkl")
    else:
        model = TQC(
            "MultiInputPolicy",
            env,
            buffer_size=1_000_000,
            batch_size=256,
            gamma=0.95,
            learning_rate=1e-3,
            tau=0.05,
            learning_starts=1000,
            train_freq=2,
            replay_buffer_class=HerReplayBuffer,
            replay_buffer_kwargs={"goal_selection_strategy": "future", "n_sampled_goal": 4},
            policy_kwargs={"net_arch": [128, 128, 128], "n_critics": 2},
            seed=args.seed,
            device="cpu",
        )
        (args.run / "config.json").write_text(json.dumps(vars(args), default=str, indent=1))
    callback = Pilot(args.run, eval_env, args.eval_freq, args.eval_episodes, args.save_freq)
    model.learn(args.n - model.num_timesteps, callback=callback, reset_num_timesteps=not args.resume)
    save(model, args.run)


if __name__ == "__main__":
    main()

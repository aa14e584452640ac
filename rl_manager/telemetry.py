"""Telemetry: observe a live SB3 run (what :class:`~rl_manager.callback.ManagerCallback` reports).

Sources: evaluation episodes (return, success and cost from ``info``), ``ep_info_buffer`` /
``ep_success_buffer`` (Monitor ``info_keywords`` carry ``episode_cost``), the values the algorithm
logs under ``train/*`` (captured by a :class:`LoggerCapture` output format) and an entropy estimate
for SAC/TQC from the actor's log-probabilities on replay-buffer observations. What is remembered
across evaluations (history, best, interventions) lives in :mod:`rl_manager.state`.

Users' envs name things differently: the info keys meaning success and cost are settings; a
missing key leaves the metric ``None`` (absent) instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter
from stable_baselines3.common.vec_env import VecEnv, unwrap_vec_normalize

from rl_manager.schema import AlgoHealth, EvalMetrics, TrainWindow

# the run state moved to the SB3-free :mod:`rl_manager.state`; these names stay importable here
from rl_manager.state import InterventionTracker, TelemetryState, choose_score, score_of  # noqa: E402,F401


def _mean(values: list[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


def _finite_or_none(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------ evaluation
@dataclass
class EvalResult:
    """Per-episode evaluation results; ``successes``/``costs`` are ``None`` when the env has no such key.

    ``goals`` holds, for goal-conditioned envs (dict observations with ``desired_goal`` and
    ``achieved_goal``), each episode's ``[desired_goal, achieved_goal]`` at its first step: the scene,
    e.g. where a Fetch object starts and where it must go. ``cost_terms`` holds each episode's cost per term, for
    envs that report terms as ``<cost_key>_<term>`` in ``info`` (the Fetch cost wrapper's ``cost_table_contact``).
    """

    returns: list[float]
    lengths: list[int]
    successes: list[float] | None
    costs: list[float] | None
    goals: list[list[list[float]]] | None = None
    cost_terms: dict[str, list[float]] | None = None

    def episodes(self) -> dict[str, list[Any]]:
        """Every episode's figures as lists in episode order (for per-episode and paired analyses)."""
        out: dict[str, list[Any]] = {"return": [round(r, 4) for r in self.returns]}
        if self.successes is not None:
            out["success"] = [int(x > 0) for x in self.successes]
        if self.costs is not None:
            out["cost"] = [round(c, 4) for c in self.costs]
        if self.goals is not None:
            out["goal"] = self.goals
        for term, costs in (self.cost_terms or {}).items():
            out[f"cost_{term}"] = [round(c, 4) for c in costs]
        return out

    def metrics(self) -> EvalMetrics:
        """Aggregate into :class:`~rl_manager.schema.EvalMetrics`."""
        violation = safe = None
        if self.costs is not None:
            violation = float(np.mean([c > 0 for c in self.costs]))
            if self.successes is not None:
                safe = float(np.mean([s > 0 and c <= 0 for s, c in zip(self.successes, self.costs, strict=True)]))
        return EvalMetrics(
            n_episodes=len(self.returns),
            mean_return=_mean(self.returns),
            std_return=float(np.std(self.returns)) if self.returns else None,
            success_rate=_mean(self.successes),
            mean_cost=_mean(self.costs),
            violation_rate=violation,
            safe_success_rate=safe,
            mean_ep_length=_mean([float(x) for x in self.lengths]),
        )


def evaluate(
    model: BaseAlgorithm,
    env: VecEnv,
    n_episodes: int,
    *,
    deterministic: bool = True,
    success_key: str = "is_success",
    cost_key: str = "cost",
) -> EvalResult:
    """Run ``n_episodes`` evaluation episodes, collecting success and cost from ``info``."""
    n_envs = env.num_envs
    running_cost = np.zeros(n_envs)
    successes: list[float] = []
    costs: list[float] = []
    seen = {"success": False, "cost": False}
    space = getattr(env.observation_space, "spaces", {})
    with_goals = "desired_goal" in space and "achieved_goal" in space
    normalizer = unwrap_vec_normalize(env)  # scenes are recorded in the env's own units, not normalised ones
    start: list[list[list[float]]] = [[] for _ in range(n_envs)]
    goals: list[list[list[float]]] = []
    prefix = f"{cost_key}_"
    running_terms: list[dict[str, float]] = [{} for _ in range(n_envs)]
    terms: dict[str, list[float]] = {}

    def on_step(local: dict[str, Any], _globals: dict[str, Any]) -> None:
        i, info = local["i"], local["info"]
        if with_goals and local["current_lengths"][i] == 1:  # the observation this episode started from
            obs = local["observations"] if normalizer is None else normalizer.unnormalize_obs(local["observations"])
            start[i] = [np.round(obs[k][i], 4).tolist() for k in ("desired_goal", "achieved_goal")]
        if cost_key in info:
            seen["cost"] = True
            running_cost[i] += float(info[cost_key])
        for key, value in info.items():
            if key.startswith(prefix) and isinstance(value, (int, float, np.number)):
                term = key[len(prefix) :]
                running_terms[i][term] = running_terms[i].get(term, 0.0) + float(value)
        if local["done"]:
            if success_key in info:
                seen["success"] = True
                successes.append(float(info[success_key]))
            costs.append(float(running_cost[i]))
            goals.append(start[i])
            for term in terms.keys() | running_terms[i].keys():  # (a term first seen now: 0 in earlier episodes)
                terms.setdefault(term, [0.0] * (len(costs) - 1)).append(running_terms[i].get(term, 0.0))
            running_cost[i], running_terms[i] = 0.0, {}

    returns, lengths = evaluate_policy(
        model,
        env,
        n_eval_episodes=n_episodes,
        deterministic=deterministic,
        return_episode_rewards=True,
        callback=on_step,
    )
    return EvalResult(
        returns=[float(r) for r in returns],
        lengths=[int(n) for n in lengths],
        successes=successes if seen["success"] else None,
        costs=costs if seen["cost"] else None,
        goals=goals if with_goals else None,
        cost_terms=terms or None,
    )


# ------------------------------------------------------------------------------------ training
class LoggerCapture(KVWriter):
    """An SB3 logger output format that keeps the latest value of every key it is given."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.latest.update(key_values)

    def close(self) -> None:
        pass


def train_window(model: BaseAlgorithm, episode_cost_key: str = "episode_cost") -> TrainWindow:
    """Rolling-window training metrics from ``ep_info_buffer``/``ep_success_buffer``."""
    infos = list(model.ep_info_buffer or [])
    if not infos:
        return TrainWindow()
    costs = [float(i[episode_cost_key]) for i in infos if episode_cost_key in i]
    lengths = [float(i["l"]) for i in infos]
    cost_rate = sum(costs) / sum(lengths) if costs and len(costs) == len(infos) and sum(lengths) > 0 else None
    return TrainWindow(
        n_episodes=len(infos),
        mean_return=_mean([float(i["r"]) for i in infos]),
        success_rate=_mean([float(s) for s in model.ep_success_buffer]) if model.ep_success_buffer else None,
        mean_episode_cost=_mean(costs),
        cost_rate=cost_rate,
        mean_ep_length=_mean(lengths),
    )


def _replay_entropy(model: BaseAlgorithm, batch_size: int = 256) -> float | None:
    """SAC/TQC policy entropy estimate: ``-E[log pi(a|s)]`` on replay observations (RNG untouched)."""
    buffer = getattr(model, "replay_buffer", None)
    actor = getattr(model, "actor", None)
    if buffer is None or actor is None or not hasattr(actor, "action_log_prob") or buffer.size() < batch_size:
        return None
    np_state, th_state = np.random.get_state(), th.random.get_rng_state()
    try:
        obs = buffer.sample(batch_size, env=model._vec_normalize_env).observations
        with th.no_grad():
            _, log_prob = actor.action_log_prob(obs)
        return float(-log_prob.mean().item())
    finally:
        np.random.set_state(np_state)
        th.random.set_rng_state(th_state)


def algo_health(model: BaseAlgorithm, logged: dict[str, Any]) -> AlgoHealth:
    """Algorithm health from the logged ``train/*`` values (and the replay buffer for SAC/TQC)."""

    def get(key: str) -> float | None:
        return _finite_or_none(logged.get(f"train/{key}"))

    entropy_loss = get("entropy_loss")
    entropy = -entropy_loss if entropy_loss is not None else _replay_entropy(model)
    return AlgoHealth(
        entropy=entropy,
        ent_coef=get("ent_coef"),
        action_std=get("std"),
        policy_loss=get("policy_gradient_loss") if get("policy_gradient_loss") is not None else get("policy_loss"),
        value_loss=get("value_loss"),
        actor_loss=get("actor_loss"),
        critic_loss=get("critic_loss"),
        approx_kl=get("approx_kl"),
        clip_fraction=get("clip_fraction"),
        explained_variance=get("explained_variance"),
    )

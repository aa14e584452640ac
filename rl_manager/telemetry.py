"""Telemetry: collect raw signals of a live SB3 run into a :class:`~rl_manager.schema.TelemetrySnapshot`.

Sources: evaluation episodes (return, success and cost from ``info``), ``ep_info_buffer`` /
``ep_success_buffer`` (Monitor ``info_keywords`` carry ``episode_cost``), the values the algorithm
logs under ``train/*`` (captured by a :class:`LoggerCapture` output format), an entropy estimate
for SAC/TQC from the actor's log-probabilities on replay-buffer observations, the evaluation
history, the best checkpoint and the measured effect of past interventions.

Users' envs name things differently: the info keys meaning success and cost are settings; a
missing key leaves the metric ``None`` (absent) instead of failing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from pydantic import Field
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter
from stable_baselines3.common.vec_env import VecEnv

from rl_manager.schema import (
    AlgoHealth,
    BestCheckpoint,
    EvalMetrics,
    HistoryRow,
    InterventionOutcome,
    ResolvedChange,
    StrictModel,
    TrainWindow,
)


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
    """Per-episode evaluation results; ``successes``/``costs`` are ``None`` when the env has no such key."""

    returns: list[float]
    lengths: list[int]
    successes: list[float] | None
    costs: list[float] | None

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

    def on_step(local: dict[str, Any], _globals: dict[str, Any]) -> None:
        i, info = local["i"], local["info"]
        if cost_key in info:
            seen["cost"] = True
            running_cost[i] += float(info[cost_key])
        if local["done"]:
            if success_key in info:
                seen["success"] = True
                successes.append(float(info[success_key]))
            costs.append(float(running_cost[i]))
            running_cost[i] = 0.0

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


# ------------------------------------------------------------------------------------ state
class TelemetryState(StrictModel):
    """What the collector remembers across evaluations (saved for ``--resume``)."""

    evaluation_index: int = -1
    history: list[HistoryRow] = Field(default_factory=list)
    best: BestCheckpoint | None = None
    interventions: list[InterventionOutcome] = Field(default_factory=list)
    last_rollback_at: int | None = None
    knob_last_changed: dict[str, int] = Field(default_factory=dict)
    score_name: str | None = None


def choose_score(metrics: EvalMetrics, training: TrainWindow) -> str:
    """The run's score: safe success if cost and success are measured, else success, else return."""
    if metrics.safe_success_rate is not None:
        return "safe_success_rate"
    if metrics.success_rate is not None:
        return "success_rate"
    if metrics.n_episodes == 0 and training.success_rate is not None:
        return "train_success_rate"
    return "mean_return" if metrics.n_episodes else "train_mean_return"


def score_of(name: str, metrics: EvalMetrics, training: TrainWindow) -> float | None:
    """Read the named score from evaluation or training metrics."""
    if name.startswith("train_"):
        return getattr(training, name[len("train_") :])
    return getattr(metrics, name)


class InterventionTracker:
    """Measures the score change after each applied intervention over the next ``k`` evaluations.

    :param k: evaluations measured after an intervention.
    :param tolerance: score change (scaled by ``max(1, |score before|)``) treated as noise.
    :param keep: interventions kept (and shown in snapshots).
    :param rate_episodes: episodes per evaluation when the score is a rate; the noise threshold then
        widens to two binomial standard errors of the difference (before vs. the mean after).
    """

    def __init__(self, k: int = 3, tolerance: float = 0.05, keep: int = 4, rate_episodes: int | None = None) -> None:
        self.k, self.tolerance, self.keep = k, tolerance, keep
        #: evaluation episodes behind a rate score: the noise threshold widens to 2 standard errors
        self.rate_episodes = rate_episodes

    def record(
        self, state: TelemetryState, action: str, changes: list[ResolvedChange], expected: str, step: int
    ) -> None:
        """Remember an applied intervention taken at the current evaluation."""
        before = state.history[-1].score if state.history else None
        state.interventions.append(
            InterventionOutcome(
                evaluation_index=state.evaluation_index,
                step=step,
                action=action,  # type: ignore[arg-type]
                changes=changes,
                expected_outcome=expected,
                score_before=before,
            )
        )
        del state.interventions[: -self.keep]

    def measure(self, state: TelemetryState, score: float | None) -> None:
        """Add a new evaluation's score to every intervention still being measured."""
        for item in state.interventions:
            if item.evaluation_index >= state.evaluation_index or len(item.scores_after) >= self.k:
                continue
            item.scores_after = [*item.scores_after, score]
            measured = [s for s in item.scores_after if s is not None and math.isfinite(s)]
            if len(item.scores_after) < 2 or item.score_before is None or not math.isfinite(item.score_before):
                continue
            if not measured:
                item.verdict = "worse"  # non-finite scores after a change
                continue
            delta = float(np.mean(measured)) - item.score_before
            thr = self.tolerance * max(1.0, abs(item.score_before))
            n = self.rate_episodes
            if n and 0.0 <= item.score_before <= 1.0:
                p = min(0.95, max(0.05, item.score_before))
                thr = max(thr, 2.0 * math.sqrt(p * (1 - p) * (1 / n + 1 / (n * len(measured)))))
            item.verdict = "improved" if delta > thr else "worse" if delta < -thr else "neutral"

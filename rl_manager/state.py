"""Run state shared by every integration: what the controller remembers across evaluations.

Nothing here imports Stable-Baselines3 or torch: :class:`TelemetryState` (saved for resume),
the score of a run (:func:`choose_score`, :func:`score_of`) and :class:`InterventionTracker`,
which measures the score (and the cost) after each applied intervention.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from rl_manager.schema import (
    BestCheckpoint,
    EvalMetrics,
    HistoryRow,
    InterventionOutcome,
    ResolvedChange,
    StrictModel,
    TrainWindow,
)

#: score of a supervised run: the negated validation loss (higher is better)
NEG_VAL_LOSS = "neg_val_loss"


class TelemetryState(StrictModel):
    """What the controller remembers across evaluations (saved for resume).

    ``history`` keeps every evaluation of the run; snapshots show only the last few rows.
    """

    evaluation_index: int = -1
    history: list[HistoryRow] = Field(default_factory=list)
    best: BestCheckpoint | None = None
    interventions: list[InterventionOutcome] = Field(default_factory=list)
    last_rollback_at: int | None = None
    knob_last_changed: dict[str, int] = Field(default_factory=dict)
    score_name: str | None = None


def choose_score(metrics: EvalMetrics, training: TrainWindow) -> str:
    """The run's score: safe success if cost and success are measured, else success, else return."""
    if metrics.val_loss is not None:
        return NEG_VAL_LOSS
    if metrics.safe_success_rate is not None:
        return "safe_success_rate"
    if metrics.success_rate is not None:
        return "success_rate"
    if metrics.n_episodes == 0 and training.success_rate is not None:
        return "train_success_rate"
    return "mean_return" if metrics.n_episodes else "train_mean_return"


def score_of(name: str, metrics: EvalMetrics, training: TrainWindow) -> float | None:
    """Read the named score from evaluation or training metrics (``neg_val_loss``: ``-val_loss``)."""
    if name == NEG_VAL_LOSS:
        loss = metrics.val_loss
        return -loss if loss is not None and math.isfinite(loss) else float("nan")
    if name.startswith("train_"):
        return getattr(training, name[len("train_") :])
    return getattr(metrics, name)


class InterventionTracker:
    """Measures the score (and cost) change after each applied intervention over the next ``k`` evaluations.

    :param k: evaluations measured after an intervention.
    :param tolerance: score change (scaled by ``max(1, |score before|)``) treated as noise.
    :param keep: interventions kept (and shown in snapshots).
    :param rate_episodes: episodes per evaluation when the score is a rate; the noise threshold then
        widens to two binomial standard errors of the difference (before vs. the mean after).
    """

    def __init__(self, k: int = 3, tolerance: float = 0.05, keep: int = 4, rate_episodes: int | None = None) -> None:
        self.k, self.tolerance, self.keep = k, tolerance, keep
        self.rate_episodes = rate_episodes

    def record(
        self, state: TelemetryState, action: str, changes: list[ResolvedChange], expected: str, step: int
    ) -> None:
        """Remember an applied intervention taken at the current evaluation (score and cost of its row)."""
        row = state.history[-1] if state.history else None
        state.interventions.append(
            InterventionOutcome(
                evaluation_index=state.evaluation_index,
                step=step,
                action=action,  # type: ignore[arg-type]
                changes=changes,
                expected_outcome=expected,
                score_before=row.score if row else None,
                cost_before=row.mean_cost if row else None,
            )
        )
        del state.interventions[: -self.keep]

    def measure(self, state: TelemetryState, score: float | None, cost: float | None = None) -> None:
        """Add a new evaluation's score and cost to every intervention still being measured."""
        for item in state.interventions:
            if item.evaluation_index >= state.evaluation_index or len(item.scores_after) >= self.k:
                continue
            item.scores_after = [*item.scores_after, score]
            item.costs_after = [*item.costs_after, cost]
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

"""Verified interventions: every applied change is on probation until measured.

"Never hurts a good run" is a property of the controller, not a hope about the manager: when an
``adjust`` is applied, the controller keeps an in-memory checkpoint of the run as it was just before
the change and opens a :class:`Trial`. At each later evaluation :meth:`Probation.judge` compares the
paired score after the change with the score before it:

- significantly worse (one-sided test beyond ``z_early`` standard errors after one evaluation, or
  beyond ``z_final`` once ``window`` evaluations are in) → ``revert``: the controller restores the
  pre-change checkpoint and knobs, and the move is recorded as failed (never repeated);
- ``window`` evaluations without significant harm → ``kept``;
- otherwise ``pending``.

For rate scores (success, safe success) the standard error is binomial on the evaluation episodes
behind each figure; for other scores (returns, negative losses) a relative tolerance stands in for it.
The class is pure bookkeeping: it never touches a model, which is the adapter's job.

>>> p = Probation(window=2)
>>> p.open(Trial(evaluation_index=3, step=300, score_before=0.60, n_before=200, changes=[]))
>>> p.judge(0.58, 200)
'pending'
>>> p.judge(0.40, 200)
'revert'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from rl_manager.schema import ResolvedChange

Verdict = Literal["pending", "kept", "revert"]


@dataclass
class Trial:
    """One change on probation.

    :param evaluation_index: evaluation at which the change was applied.
    :param step: env step of the change.
    :param score_before: the paired score measured just before the change.
    :param n_before: evaluation episodes behind ``score_before`` when it is a rate (else ``None``).
    :param changes: the knob changes (before → after).
    :param checkpoint: the adapter's opaque in-memory checkpoint taken before the change.
    :param knobs_before: every knob's value before the change.
    """

    evaluation_index: int
    step: int
    score_before: float
    n_before: int | None
    changes: list[ResolvedChange]
    checkpoint: Any = None
    knobs_before: dict[str, float] = field(default_factory=dict)
    scores_after: list[float] = field(default_factory=list)
    n_after: list[int | None] = field(default_factory=list)

    def describe(self) -> str:
        """``knob a→b, ...`` for audit messages."""
        return ", ".join(f"{c.knob} {c.before:.4g}→{c.after:.4g}" for c in self.changes) or "no knob change"


class Probation:
    """Judges one change at a time against the paired score it started from.

    :param window: evaluations after which a change that did no significant harm is kept.
    :param z_final: one-sided z threshold on the mean of the scores after the change, at the end.
    :param z_early: z threshold for reverting after a single evaluation (clear harm only).
    :param tolerance: for non-rate scores, the drop (× ``max(1, |before|)``) that counts as harm.
    """

    def __init__(self, window: int = 3, z_final: float = 1.645, z_early: float = 2.576, tolerance: float = 0.05):
        if window < 1:
            raise ValueError(f"probation window must be >= 1, got {window}")
        self.window, self.z_final, self.z_early, self.tolerance = window, z_final, z_early, tolerance
        self.active: Trial | None = None

    def open(self, trial: Trial) -> None:
        """Put ``trial`` on probation (a trial still open must be judged or closed first)."""
        self.active = trial

    def close(self) -> Trial | None:
        """End the open trial without a verdict (e.g. superseded by a rollback); return it."""
        trial, self.active = self.active, None
        return trial

    def harm_z(self, trial: Trial) -> float:
        """How many standard errors the mean score after the change lies *below* the score before it."""
        after = [s for s in trial.scores_after if math.isfinite(s)]
        if not after:
            return math.inf  # non-finite scores after a change: harmful
        mean_after = sum(after) / len(after)
        drop = trial.score_before - mean_after
        n_after = [n for n in trial.n_after if n]
        if trial.n_before and n_after and 0.0 <= trial.score_before <= 1.0:
            # binomial standard error of (before − mean after); clip p away from 0/1 so that a
            # perfect before-score does not make every lost episode "significant"
            p_b = min(0.97, max(0.03, trial.score_before))
            p_a = min(0.97, max(0.03, mean_after))
            se = math.sqrt(p_b * (1 - p_b) / trial.n_before + p_a * (1 - p_a) / sum(n_after))
        else:
            se = self.tolerance * max(1.0, abs(trial.score_before)) / self.z_final
        return drop / se

    def judge(self, score: float | None, n_episodes: int | None = None) -> Verdict:
        """Add the latest evaluation's score to the open trial and return the verdict.

        :param score: the run's score at this evaluation (``None``/NaN counts as non-finite).
        :param n_episodes: evaluation episodes behind ``score`` when it is a rate.
        """
        trial = self.active
        if trial is None:
            return "kept"
        trial.scores_after.append(float("nan") if score is None else float(score))
        trial.n_after.append(n_episodes)
        z = self.harm_z(trial)
        if z > self.z_early or (len(trial.scores_after) >= self.window and z > self.z_final):
            return "revert"
        if len(trial.scores_after) >= self.window:
            return "kept"
        return "pending"

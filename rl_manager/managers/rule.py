"""The deterministic rule manager: the offline default and the fallback of the LLM manager.

Rules are checked in this order; the first that fires decides. "Exploration", "regularisation"
and so on are knob *roles* (:data:`~rl_manager.schema.KnobRole`); a rule uses the knobs of that
role that the menu offers, in menu order.

=====  ============================================  =============================================
 #     condition (from the snapshot)                  decision
=====  ============================================  =============================================
 1     a loss, return or score is NaN/inf             rollback + consolidate (LR down), else
                                                      rollback, else LR ×0.25
 2     stop gate open (target met twice)              stop_training
 3     rollback gate open (score ≥ margin below       rollback_and_consolidate (LR down, else any
       best for 2 evaluations) and, for a rate,       conservative change), else rollback_to_best
       the drop exceeds 2 standard errors of the
       best (binomial, evaluation episodes)
 — while the latest intervention has < 2 measured evaluations after it, or fewer than
   ``min_evaluations`` evaluations exist: no_action (wait) —
 3b    the latest adjust was measured worse           move its knobs back toward their old values
 4     diverging: latest training loss > 5× the       LR ×0.5 (×0.25 past 20×)
       median of earlier ones, or PPO approx KL
       > 0.08, while the score is below its best
 5     unsafe on the last 2 evaluations: evaluation   cost penalty ×2, else exploration ×0.5, else
       or training episode cost over the limit, or    LR ×0.5
       evaluation violation rate over the target,
       unless success is rising and cost is not
 6     overfitting: validation loss rose on the       regularisation up (×2 / next value) and
       last 2 evaluations while training loss fell    LR ×0.5
 7     exploration collapsed (entropy down ≥ 1 nat    exploration ×2
       or by half, action std < 0.1, or the
       exploration knob within ×2 of its floor)
       and success flat below target
 8     stuck: success flat below 0.1 for 3            LR ×2 if LR sits in the lower half of its
       evaluations, no collapse signal                (log) range, else exploration ×1.5, else wait
 9     plateau: no new best for 4 evaluations,        LR ×0.5
       ≥ 30% of the budget used, below target
 10    otherwise (incl. a dip within the noise)       no_action
=====  ============================================  =============================================

Memory: a (knob, direction) pair whose past intervention was measured ``worse`` is never proposed
again; the rule moves on to its next candidate knob, and to no_action when none is left. A pair
measured ``neutral`` (no effect) is tried after the other knobs of the same role. A knob is never
moved against its latest change unless that change was measured ``worse`` (no oscillation).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from rl_manager.managers.base import Manager, Proposal
from rl_manager.schema import (
    ActionSpace,
    Adjust,
    Decision,
    KnobChange,
    KnobMenu,
    KnobOption,
    NoAction,
    RollbackAndConsolidate,
    RollbackToBest,
    StopTraining,
    TelemetrySnapshot,
)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _nonfinite(values: Iterable[float | None]) -> bool:
    return any(v is not None and not math.isfinite(v) for v in values)


def _flat(values: list[float], tol: float = 0.05) -> bool:
    return len(values) >= 3 and max(values) - min(values) < tol


class RuleManager(Manager):
    """Deterministic expert rules (see the module docstring for the table).

    :param divergence_ratio: training-loss ratio (latest / median of earlier) that counts as
        diverging.
    :param kl_limit: PPO approx KL above which the LR is lowered.
    :param plateau_evals: evaluations without a new best that count as a plateau.
    :param min_measured: measured evaluations needed after the latest intervention before a
        non-urgent rule may act again.
    :param min_evaluations: evaluations needed before a non-urgent rule may act (warm-up).
    """

    name = "rule"

    def __init__(
        self,
        divergence_ratio: float = 5.0,
        kl_limit: float = 0.08,
        plateau_evals: int = 4,
        min_measured: int = 2,
        min_evaluations: int = 3,
    ) -> None:
        self.min_evaluations = min_evaluations
        self.divergence_ratio = divergence_ratio
        self.kl_limit = kl_limit
        self.plateau_evals = plateau_evals
        self.min_measured = min_measured

    # ---------------------------------------------------------------------------------------
    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        return Proposal(reply=self.rule_decision(snapshot, menu))

    def rule_decision(self, snapshot: TelemetrySnapshot, menu: ActionSpace) -> Decision:
        """Apply the rule table."""
        moves = [
            ((c.knob, "up" if c.after > c.before else "down"), i.verdict)
            for i in snapshot.interventions
            for c in i.changes
        ]
        self._worse = {move for move, verdict in moves if verdict == "worse"}
        self._neutral = {move for move, verdict in moves if verdict == "neutral"}
        # the latest change of each knob: reversing it is allowed only once it was measured worse
        self._last_move = {knob: (direction, verdict) for (knob, direction), verdict in moves}
        for rule in (self._non_finite, self._stop, self._regression):
            decision = rule(snapshot, menu)
            if decision is not None:
                return decision
        if len(snapshot.history) < self.min_evaluations:
            return NoAction(reason=f"warm-up: fewer than {self.min_evaluations} evaluations")
        if self._waiting(snapshot):
            return NoAction(reason="waiting to measure the effect of the latest intervention")
        for rule in (
            self._undo_harm,
            self._diverging,
            self._unsafe,
            self._overfitting,
            self._collapse,
            self._stuck,
            self._plateau,
        ):
            decision = rule(snapshot, menu)
            if decision is not None:
                return decision
        return NoAction(reason="no rule fired: keep the recipe", expected_outcome="training continues as it is")

    # --------------------------------------------------------------------------- helpers
    def _option(
        self, knob: KnobMenu, direction: str, factor: float, options: list[KnobOption] | None = None
    ) -> KnobOption | None:
        """The option closest (in log space) to ``current × factor`` in ``direction``."""
        if (knob.name, direction) in self._worse:
            return None
        last = self._last_move.get(knob.name)
        if last is not None and last[0] != direction and last[1] != "worse":
            return None  # no oscillation: do not undo a change that was not measured harmful
        base = knob.current if options is None or knob.best_value is None else knob.best_value
        options = knob.options if options is None else options
        moves = [o for o in options if (o.value > base if direction == "up" else o.value < base)]
        if not moves:
            return None
        if base > 0 and all(o.value > 0 for o in moves):
            target = math.log(base * factor)
            return min(moves, key=lambda o: abs(math.log(o.value) - target))
        target = base * factor
        return min(moves, key=lambda o: abs(o.value - target))

    def _change(self, menu: ActionSpace, role: str, direction: str, factor: float) -> KnobChange | None:
        # a lever whose last use changed nothing is tried after the others
        knobs = sorted(menu.knobs, key=lambda k: (k.name, direction) in self._neutral)
        for knob in knobs:
            if knob.role == role:
                option = self._option(knob, direction, factor)
                if option is not None:
                    return KnobChange(knob=knob.name, value=option.value)
        return None

    def _adjust(
        self, menu: ActionSpace, moves: list[tuple[str, str, float]], reason: str, expected: str
    ) -> Decision | None:
        if "adjust" not in menu.actions:
            return None
        changes = []
        for role, direction, factor in moves:
            change = self._change(menu, role, direction, factor)
            if change is not None and all(c.knob != change.knob for c in changes):
                changes.append(change)
            if len(changes) >= menu.max_changes:
                break
        if not changes:
            return None
        return Adjust(changes=changes, reason=reason, expected_outcome=expected)

    def _rollback(self, menu: ActionSpace, reason: str) -> Decision | None:
        if "rollback_and_consolidate" in menu.actions:
            for role in ("learning_rate", None):
                for knob in menu.knobs:
                    if knob.conservative_options and (role is None or knob.role == role):
                        base = knob.current if knob.best_value is None else knob.best_value
                        direction = "down" if knob.conservative_options[0].value < base else "up"
                        option = self._option(
                            knob, direction, 0.5 if direction == "down" else 2.0, knob.conservative_options
                        )
                        if option is not None:
                            return RollbackAndConsolidate(
                                change=KnobChange(knob=knob.name, value=option.value),
                                reason=reason,
                                expected_outcome="score returns to the best level and stays there",
                            )
        if "rollback_to_best" in menu.actions:
            return RollbackToBest(reason=reason, expected_outcome="score returns to the best level")
        return None

    def _improving(self, s: TelemetrySnapshot, n: int = 3, min_gain: float = 0.05) -> bool:
        """Whether success (else the score) rose by ``min_gain`` over the last ``n`` evaluations."""
        success = self._success_series(s, n)
        series = success or [r.score for r in s.history[-n:] if _finite(r.score)]
        if len(series) < n:
            return False
        scale = 1.0 if success else max(1.0, abs(series[0]))
        return series[-1] - series[0] >= min_gain * scale and series[-1] >= max(series[:-1])

    @staticmethod
    def _cost_rising(s: TelemetrySnapshot, n: int = 3) -> bool:
        """Whether a cost signal (violation rate, evaluation or training cost) rose over the last ``n`` evaluations."""
        rows = s.history[-n:]
        for key in ("violation_rate", "mean_cost", "train_episode_cost"):
            series = [getattr(r, key) for r in rows]
            if len(series) == n and all(_finite(v) for v in series):
                if series[-1] >= max(series[:-1]) and series[-1] > series[0]:
                    return True
        return False

    @staticmethod
    def _deteriorating(s: TelemetrySnapshot) -> bool:
        """Whether the latest score is missing, non-finite or below the best one."""
        latest = s.history[-1].score if s.history else None
        if latest is None or not math.isfinite(latest) or s.best is None:
            return True
        return latest < s.best.score

    @staticmethod
    def _success_series(snapshot: TelemetrySnapshot, n: int = 3) -> list[float]:
        values = []
        for row in snapshot.history[-n:]:
            v = row.safe_success_rate if row.safe_success_rate is not None else row.success_rate
            if _finite(v):
                values.append(v)
        return values if len(values) == min(n, len(snapshot.history)) else []

    # --------------------------------------------------------------------------- rules
    def _non_finite(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        h, e, t = s.health, s.evaluation, s.training
        signals = [
            h.policy_loss,
            h.value_loss,
            h.actor_loss,
            h.critic_loss,
            h.q_mean,
            h.entropy,
            h.grad_norm,
            e.mean_return,
            e.val_loss,
            t.train_loss,
            t.mean_return,
        ]
        if s.history:
            last = s.history[-1]
            signals += [last.score, last.train_loss, last.val_loss]
        if not _nonfinite(signals):
            return None
        reason = "non-finite training signals (NaN/inf): the run diverged"
        return self._rollback(menu, reason) or self._adjust(
            menu, [("learning_rate", "down", 0.25)], reason, "finite losses at a lower learning rate"
        )

    def _stop(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        if "stop_training" in menu.actions:
            return StopTraining(
                reason="the target was met on consecutive evaluations", expected_outcome="keep the solved policy"
            )
        return None

    def _regression(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        if "rollback_to_best" not in menu.actions or s.best is None:
            return None
        # a rate measured on few episodes is noisy: the drop must also exceed 2 standard errors
        n = s.evaluation.n_episodes
        if s.score_name.endswith("rate") and n > 0 and 0.0 <= s.best.score <= 1.0:
            noise = 2.0 * math.sqrt(s.best.score * (1.0 - s.best.score) / n)
            latest = s.history[-1].score if s.history else None
            if latest is not None and math.isfinite(latest) and s.best.score - latest < noise:
                return None
        return self._rollback(menu, "the score stayed well below the best checkpoint")

    def _undo_harm(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        last = next((i for i in reversed(s.interventions) if i.action == "adjust"), None)
        if last is None or last.verdict != "worse" or "adjust" not in menu.actions:
            return None
        changes = []
        for c in last.changes:
            knob = menu.knob(c.knob)
            if knob is None:
                continue
            back = "down" if c.after > c.before else "up"
            moves = [o for o in knob.options if (o.value < knob.current if back == "down" else o.value > knob.current)]
            if moves:
                option = min(moves, key=lambda o: abs(o.value - c.before))
                changes.append(KnobChange(knob=knob.name, value=option.value))
        if not changes:
            return None
        return Adjust(
            changes=changes[: menu.max_changes],
            reason="the latest change was measured worse: move it back",
            expected_outcome="the score recovers to its level before that change",
        )

    def _diverging(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        losses = [r.train_loss for r in s.history if _finite(r.train_loss)]
        ratio = 0.0
        if len(losses) >= 3:
            earlier = statistics.median(abs(x) for x in losses[:-1])
            if earlier > 0:
                ratio = abs(losses[-1]) / earlier
        kl = s.health.approx_kl
        if not self._deteriorating(s):
            return None  # a loss jump while the score holds (e.g. after a reward-weight change) is not divergence
        if ratio > self.divergence_ratio or (_finite(kl) and kl > self.kl_limit):
            factor = 0.25 if ratio > 4 * self.divergence_ratio else 0.5
            moves = [("learning_rate", "down", factor)]
            if _finite(kl) and kl > self.kl_limit:
                moves.append(("clip_range", "down", 0.5))
            return self._adjust(
                menu, moves, f"training is unstable (loss ratio {ratio:.3g}, approx KL {kl})", "losses stabilise"
            )
        return None

    def _unsafe(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        t = s.targets

        def over(cost: float | None, rate: float | None, train_cost: float | None) -> bool:
            limit = t.cost_limit
            return (
                (limit is not None and _finite(cost) and cost > limit)
                or (limit is not None and _finite(train_cost) and train_cost > limit)
                or (t.max_violation_rate is not None and _finite(rate) and rate > t.max_violation_rate)
            )

        rows = s.history[-2:]
        if len(rows) < 2 or not all(over(r.mean_cost, r.violation_rate, r.train_episode_cost) for r in rows):
            return None
        if self._improving(s) and not self._cost_rising(s):
            return None  # a policy still learning to succeed, no less safely, is not cut back yet
        e = s.evaluation
        reason = (
            f"safety limits exceeded on 2 evaluations (evaluation cost {e.mean_cost}, violation rate "
            f"{e.violation_rate}, training episode cost {s.training.mean_episode_cost})"
        )
        expected = "fewer safety violations"
        return (
            self._adjust(menu, [("cost_penalty", "up", 2.0)], reason, expected)
            or self._adjust(menu, [("exploration", "down", 0.5)], reason, expected)
            or self._adjust(menu, [("learning_rate", "down", 0.5)], reason, expected)
        )

    def _overfitting(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        rows = [r for r in s.history if _finite(r.val_loss) and _finite(r.train_loss)][-3:]
        if len(rows) < 3:
            return None
        val_up = rows[2].val_loss > rows[1].val_loss > rows[0].val_loss
        train_down = rows[2].train_loss < rows[0].train_loss
        if not (val_up and train_down):
            return None
        return self._adjust(
            menu,
            [("regularization", "up", 2.0), ("learning_rate", "down", 0.5)],
            "validation loss rising while training loss falls: overfitting",
            "validation loss stops rising",
        )

    def _waiting(self, s: TelemetrySnapshot) -> bool:
        if not s.interventions:
            return False
        last = s.interventions[-1]
        if last.action == "no_action":
            return False
        return last.verdict == "pending" and len(last.scores_after) < self.min_measured

    def _collapsed(self, s: TelemetrySnapshot, menu: ActionSpace) -> bool:
        entropies = [r.entropy for r in s.history if _finite(r.entropy)]
        if len(entropies) >= 2:
            first, last = entropies[0], entropies[-1]
            if first - last >= 1.0 or (first > 0 and last < 0.5 * first):
                return True
        if _finite(s.health.action_std) and s.health.action_std < 0.1:
            return True
        for knob in menu.knobs:
            if knob.role == "exploration" and knob.low > 0 and knob.current <= 2 * knob.low:
                return True
        # a knob pinned at the floor has no "down" option and may be absent from the menu
        for spec in s.knobs:
            if spec.role == "exploration" and spec.value <= max(2 * spec.low, 1e-12) and spec.value < spec.high:
                return True
        return False

    def _collapse(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        target = s.targets.success_rate if s.targets.success_rate is not None else 1.0
        success = self._success_series(s)
        if not (_flat(success) and success[-1] < target and self._collapsed(s, menu)):
            return None
        return self._adjust(
            menu,
            [("exploration", "up", 2.0)],
            "exploration collapsed while success is flat below the target",
            "more diverse experience and rising success",
        )

    def _stuck(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        success = self._success_series(s)
        if not (_flat(success) and max(success) < 0.1):
            return None
        for knob in menu.knobs:
            if knob.role == "learning_rate" and knob.low > 0 and knob.current > 0:
                span = math.log(knob.high / knob.low)
                if span > 0 and math.log(knob.current / knob.low) < span / 2:
                    d = self._adjust(
                        menu,
                        [("learning_rate", "up", 2.0)],
                        "no progress at a small learning rate",
                        "success starts rising",
                    )
                    if d is not None:
                        return d
        decision = self._adjust(
            menu, [("exploration", "up", 1.5)], "no progress: explore more", "success starts rising"
        )
        return decision or NoAction(reason="no progress, and no lever left to try now")

    def _plateau(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        best = s.best
        progress = s.position.progress
        if best is None or progress is None or progress < 0.3:
            return None
        if s.position.evaluation_index - best.evaluation_index < self.plateau_evals:
            return None
        success = self._success_series(s, 1)
        target = s.targets.success_rate
        if target is not None and success and success[-1] >= target:
            return None
        return self._adjust(
            menu,
            [("learning_rate", "down", 0.5)],
            "score plateaued: decay the learning rate",
            "finer updates, a new best",
        )

"""The deterministic rule manager: the offline default and the fallback of the LLM manager.

The manager first diagnoses the run's *state* from low-noise signals (paired evaluations with
their Wilson intervals, PPO approx KL and clip fraction of the last update, the action std's history,
loss ratios), then acts on it. States are checked in this order; the first that fires decides.
"Exploration", "cost penalty" and so on are knob *roles* (:data:`~rl_manager.schema.KnobRole`); a
rule uses the knobs of that role that the menu offers, in menu order.

=====  ==============  ======================================  ==========================================
 #     state           condition (from the snapshot)           decision
=====  ==============  ======================================  ==========================================
 1     non-finite      a loss, return or score is NaN/inf      rollback + consolidate (LR down), else
                                                               rollback, else LR ×0.25
 2     solved          stop gate open (target met twice)       stop_training
 3     exploding       action std ≥ ``explode_ratio`` × its    exploration down at once (action std to
       exploration     first recorded value (and > 1), or      the option nearest its start, entropy
                       ≥ ``std_ceiling``                       bonus down), no waiting
 4     regressed       rollback gate open and the drop         rollback_and_consolidate (LR down), else
                       exceeds the noise (the best's           rollback_to_best (the controller keeps the
                       interval, or 2 binomial s.e.); not      current recipe)
                       again to a best that predates the last
                       rollback (that one led to no new best)  (PPO: no consolidation while the mean
                       nor to a best of significantly lower    approx KL of the last 2 boundaries is
                       task success; while the cost is         below its target: it only slows the
                       unpriced or the learn-first hold (7)    recovery)
                       is on, the drop must be in the task's
                       success, not the safe score alone
 — warm-up (< ``min_evaluations`` evaluations) or the latest intervention still on probation
   (< ``min_measured`` evaluations measured after it): no_action —
 4b    harmed          the latest adjust was measured worse    move its knobs back toward their old values
 5     diverging       approx KL > ``diverge_kl_factor`` ×     LR ×0.5 (×0.25 past 20× loss), clip down
                       target KL, or training loss > 5× the    on a KL blow-up
                       median of earlier ones, while the
                       score is below its best (off-policy:
                       beyond 2 binomial s.e., as for 4: a
                       critic's loss spikes at chance too)
 6     starved         PPO: approx KL < target/4 and clip      one bold combined move: LR ×``bold_lr``,
                       fraction < ``starved_clip`` (updates    reward weights back toward balance (cost
                       far smaller than the trust region),     penalty down when it is > ``max_ratio`` ×
                       success not significantly rising        the success bonus; success bonus up when
                                                               the penalty outweighs it), exploration up
                                                               when it sits at its floor
 6b    starved         no approx KL (off-policy): success      the same bold combined move: LR
       (off-policy)    < 0.05 on 3 evaluations, LR in the      ×``bold_lr`` and exploration ×2 when at
                       lower half of its (log) range           its floor or collapsed
 7     unsafe          the task is being solved (success ≥     cost penalty up (×2; ×3 capped at
                       ``solving_success``) and violations     ``unsafe_ratio`` × the success bonus where
                       are high for the run: violation rate    one exists: toward balance, never past
                       above the target and ≥ half the         it), success bonus down toward the
                       success rate, on the last 2             penalty, else exploration down under a
                       evaluations, and not falling; or the    ``cost_limit`` or (without a bonus) once
                       episode cost over ``cost_limit`` on 2   the action std grew past its start; never
                       evaluations, once solving or while the  LR down (it only slows a learning policy)
                       entropy bonus is far above usual.       (not again while the latest measured
                       With no success bonus (and usual        safety move left the cost within 10% of
                       exploration): only once success         its level and the cost is not rising
                       reaches its target on both, or past     beyond its noise: the run's own level);
                       ``price_hold`` of the budget once its   with no bonus, a penalty at zero rises
                       success stops rising (trend t <         to the middle of its offered values;
                       ``trend_t``) (learn the task first: a   over a ``cost_limit``, the penalty rises
                       price set while it is being learned     after a move that did not lower the cost
                       can block the skill that avoids the     too (Lagrangian)
                       cost)
 7b    over-priced     a cost penalty at its top (no success   the penalty one offered step down, toward
                       bonus) under a ``cost_limit``: mean     ×0.75 and not below ×0.5 (the other half
                       evaluation cost of the last 3           of the Lagrange multiplier's update: it
                       evaluations and the latest training     falls while the constraint has slack); not
                       episode cost ≤ half the limit, success  twice in a row, not after a step down
                       ≥ ``solving_success``, not improving    measured worse; the *unsafe* rule may undo
                                                               it when the limit is broken again
 8     overfitting     validation loss rose on the last 2      regularisation up and LR ×0.5
                       evaluations while training loss fell
                       and lies below the validation loss
 9     learning        success (or score) rose significantly   no_action
                       over the last 3 evaluations (rise
                       above 2 s.e. of the difference)
 10    collapsed       entropy down ≥ 1 nat or by half (not    exploration ×2
                       under automatic entropy tuning: there
                       the entropy falls to its target by
                       design), or action std < 0.1 (the
                       exploration knob at its floor only
                       where exploration is not measured);
                       success flat; return not improving (†)
 11    under-stepping  PPO: approx KL of the latest update     LR ×1.5 (rl_games' KL-adaptive rule)
                       < target/2 and the mean clip fraction
                       of the last 2 boundaries <
                       ``healthy_clip`` (a clip fraction that
                       high means the clip range, not the LR,
                       bounds the update)
 11b   clip-bound      PPO: the same small KL at a mean clip   clip range ×1.5, up to ``clip_cap`` (a
                       fraction ≥ ``healthy_clip``             clip range of 0.1 holds the KL low at any
                                                               LR: the LR ladder stalls behind it)
 11c   over-stepping   PPO: approx KL of the latest update     LR ÷1.5 (the other half of the KL-adaptive
                       > 2× target, and not *learning* (9):    rule)
                       smaller steps fine-tune a run whose
                       progress has slowed, they only slow
                       one that is still learning
 12    stuck           success flat below 0.1 for 3            LR sits in the lower half of its (log)
                       evaluations, ≥ ``stuck_progress`` of    range: one bold move, LR ×``bold_lr`` and
                       the budget used, return not             exploration ×2 when at its floor (the
                       improving (†); with the cost unpriced,  off-policy starved state); else
                       the task's success too (its mean over   exploration ×1.5 (not a target entropy
                       the 3 under 0.1)                        that the entropy exceeds by over 1 nat:
                                                               the tuner cannot hold it down already;
                                                               a target entropy once: not again while
                                                               an earlier raise shown was not measured
                                                               ``improved``)
 13    plateau         no new best score for                   LR ×0.5, once: not again unless the last
                       ``plateau_evals`` evaluations and no    decay was measured ``improved``
                       new best mean return either, ≥ 30% of
                       the budget used, success flat, return
                       not improving (†); PPO: only while the
                       updates are large (mean approx KL of
                       the last 2 boundaries ≥ target: halving
                       an LR that already steps below its
                       target only slows a run, the opposite
                       of the under-stepping rule); not while
                       success never left the *stuck* level
                       (< 0.1) over the history shown
 14    otherwise       (incl. a dip within the noise)          no_action
=====  ==============  ======================================  ==========================================

(†) *improving*: the least-squares slope of the evaluations' mean return (else score) over the last
``trend_window`` evaluations is ``trend_t`` standard errors above zero. Success lags the return on a task
that learns slowly (PlanarReacher's tuned recipe stays below 0.1 success for 300k steps while its
return climbs), and a run that is still learning is left alone.

The cost-penalty/success-bonus ratio is kept within [1/``max_ratio``, ``max_ratio``]: the manager
never rebuilds the lopsided reward of a too-cautious recipe (a penalty 10× the bonus teaches the
policy not to move), and it moves a lopsided reward back toward balance.

*The KL ladder* (11, 11c) reads the latest update, a low-noise signal measured at every boundary: its moves
may undo each other (as the KL-adaptive rule's do; never another rule's move), and the rules that wait for
success rates to be measured (``min_measured`` evaluations) wait on the latest intervention *outside* the
ladder, so that a stream of ladder moves does not hold the slower rules (e.g. *unsafe*) back.

Memory: a (knob, direction) pair whose past intervention was measured ``worse`` is never proposed
again; the rule moves on to its next candidate knob, and to no_action when none is left. A pair
measured ``neutral`` (no effect) is tried after the other knobs of the same role. A knob is never
moved against its latest change unless that change was measured ``worse`` (no oscillation).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from rl_manager.managers.base import Manager, Proposal, finite
from rl_manager.schema import (
    ActionSpace,
    Adjust,
    Decision,
    KnobChange,
    KnobMenu,
    KnobOption,
    KnobSpec,
    NoAction,
    RollbackAndConsolidate,
    RollbackToBest,
    StopTraining,
    TelemetrySnapshot,
)

#: expected outcomes that tag the unsafe and plateau rules' moves in the intervention history
SAFETY_OUTCOME = "fewer safety violations at a similar success rate"
PLATEAU_OUTCOME = "finer updates, a new best"
#: expected outcome that tags the stuck rule's moves
STUCK_OUTCOME = "success starts rising"
#: expected outcome of the KL ladder's LR moves (under-stepping, over-stepping)
LADDER_OUTCOME = "approx KL toward its target"
#: expected outcome of the over-priced rule's step down of a cost penalty (the Lagrange multiplier's descent)
SLACK_OUTCOME = "episode cost up toward its limit, fewer goals given up for safety"
#: success below which a run has not left the floor: *stuck* when flat there, and never a *plateau*
STUCK_SUCCESS = 0.1


def _nonfinite(values: Iterable[float | None]) -> bool:
    return any(v is not None and not math.isfinite(v) for v in values)


def _diff_noise(p0: float, p1: float, n: int) -> float:
    """Two binomial standard errors of the difference between two rates, each measured on ``n`` episodes."""
    return 2.0 * math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n)


def _at_floor(knob: KnobSpec) -> bool:
    """Whether a knob sits within 2× of a positive lower bound, or at a lower bound of 0 or below (a target entropy
    of -4 over [-16, -1] is not at its floor)."""
    return knob.value <= (2 * knob.low if knob.low > 0 else knob.low + 1e-12)


def _flat(values: list[float], tol: float = 0.05) -> bool:
    return len(values) >= 3 and max(values) - min(values) < tol


def _trend_t(values: list[float]) -> float:
    """The t statistic of the least-squares slope of ``values`` against their index (0 under 4 values)."""
    n = len(values)
    if n < 4:
        return 0.0
    mx, my = (n - 1) / 2, statistics.fmean(values)
    sxx = sum((x - mx) ** 2 for x in range(n))
    slope = sum((x - mx) * (y - my) for x, y in enumerate(values)) / sxx
    sse = sum((y - my - slope * (x - mx)) ** 2 for x, y in enumerate(values))
    se = math.sqrt(sse / (n - 2) / sxx)
    if se == 0.0:
        return math.copysign(math.inf, slope) if slope else 0.0
    return slope / se


class RuleManager(Manager):
    """Deterministic expert rules (see the module docstring for the table).

    :param divergence_ratio: training-loss ratio (latest / median of earlier) that counts as
        diverging.
    :param target_kl: PPO approx KL per update that the learning rate aims at (the under-stepping
        rule raises the LR below half of it, as KL-adaptive schedules do).
    :param diverge_kl_factor: approx KL above ``diverge_kl_factor × target_kl`` counts as diverging.
    :param starved_clip: clip fraction under which (with approx KL < target/4) a PPO run is starved.
    :param healthy_clip: clip fraction from which the clip range bounds a PPO update: the
        under-stepping rule does not raise the LR then, whatever the approx KL (a small clip range
        keeps the KL low at any LR).
    :param clip_cap: largest PPO clip range the *clip-bound* rule raises it to (PPO's usual 0.2).
    :param bold_lr: LR factor of the starved state's combined move.
    :param max_ratio: largest cost-penalty/success-bonus ratio (and its inverse) the manager builds.
    :param unsafe_ratio: largest cost-penalty/success-bonus ratio the *unsafe* rule raises the penalty to
        (balance by default: it rebalances a lopsided reward and leaves a balanced one alone).
    :param solving_success: (unsafe) success rate from which the task counts as being solved.
    :param explode_ratio: action std this many times its first recorded value counts as exploding.
    :param std_ceiling: action std above which exploration counts as exploding in any case.
    :param plateau_evals: evaluations without a new best that count as a plateau.
    :param min_measured: measured evaluations needed after the latest intervention before a
        non-urgent rule may act again.
    :param min_evaluations: evaluations needed before a non-urgent rule may act (warm-up).
    :param trend_window: evaluations over which the mean return's trend is fitted (the *improving* gate).
    :param trend_t: t statistic of that trend's slope from which the run counts as improving.
    :param stuck_progress: fraction of the budget before which a slow start is not called *stuck*.
    :param price_hold: (unsafe) fraction of the budget until which a cost penalty with no success bonus beside it
        waits for success to reach its target before it is raised (learn the task first, then price its cost).
    """

    name = "rule"

    def __init__(
        self,
        divergence_ratio: float = 5.0,
        target_kl: float = 0.01,
        diverge_kl_factor: float = 8.0,
        starved_clip: float = 0.01,
        healthy_clip: float = 0.1,
        clip_cap: float = 0.2,
        bold_lr: float = 3.0,
        max_ratio: float = 2.0,
        unsafe_ratio: float = 1.0,
        solving_success: float = 0.2,
        explode_ratio: float = 3.0,
        std_ceiling: float = 3.0,
        plateau_evals: int = 4,
        min_measured: int = 2,
        min_evaluations: int = 3,
        trend_window: int = 6,
        trend_t: float = 2.0,
        stuck_progress: float = 0.25,
        price_hold: float = 0.75,
    ) -> None:
        self.min_evaluations = min_evaluations
        self.divergence_ratio = divergence_ratio
        self.target_kl = target_kl
        self.kl_limit = diverge_kl_factor * target_kl
        self.starved_clip = starved_clip
        self.healthy_clip = healthy_clip
        self.clip_cap = clip_cap
        self.bold_lr = bold_lr
        self.max_ratio = max_ratio
        self.unsafe_ratio = unsafe_ratio
        self.solving_success = solving_success
        self.explode_ratio = explode_ratio
        self.std_ceiling = std_ceiling
        self.plateau_evals = plateau_evals
        self.min_measured = min_measured
        self.trend_window = trend_window
        self.trend_t = trend_t
        self.stuck_progress = stuck_progress
        self.price_hold = price_hold
        self._held = ""

    # ---------------------------------------------------------------------------------------
    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        return Proposal(reply=self.rule_decision(snapshot, menu))

    def rule_decision(self, snapshot: TelemetrySnapshot, menu: ActionSpace) -> Decision:
        """Apply the rule table."""
        moves = [
            (
                (c.knob, "up" if c.after > c.before else "down"),
                i.verdict,
                i.expected_outcome in (LADDER_OUTCOME, SLACK_OUTCOME),
            )
            for i in snapshot.interventions
            for c in i.changes
        ]
        self._worse = {move for move, verdict, _ in moves if verdict == "worse"}
        self._neutral = {move for move, verdict, _ in moves if verdict == "neutral"}
        # the latest change of each knob: reversing it is allowed only once it was measured worse (or, for the
        # KL ladder, when the ladder made it; for a cost penalty's step down, when the cost limit is broken again)
        self._last_move = {knob: (direction, verdict, ladder) for (knob, direction), verdict, ladder in moves}
        self._held = self._learning_first(snapshot)
        for rule in (self._non_finite, self._stop, self._exploding, self._regression):
            decision = rule(snapshot, menu)
            if decision is not None:
                return decision
        if len(snapshot.history) < self.min_evaluations:
            return NoAction(reason=f"warm-up: fewer than {self.min_evaluations} evaluations")
        # (rule, evaluations that must be measured after the latest intervention before it may act):
        # rules on low-noise signals (approx KL) wait one interval, rules on success rates wait longer
        rules = (
            (self._undo_harm, self.min_measured),
            (self._diverging, 1),
            (self._starved, 1),
            (self._starved_off_policy, self.min_measured),
            (self._unsafe, self.min_measured),
            (self._over_priced, self.min_measured),
            (self._overfitting, self.min_measured),
            (self._collapse, self.min_measured),
            (self._under_stepping, 1),
            (self._clip_bound, 1),
            (self._learning, 0),
            (self._over_stepping, 1),
            (self._stuck, self.min_measured),
            (self._plateau, self.min_measured),
        )
        waiting = False
        for rule, measured in rules:
            if self._waiting(snapshot, measured):
                waiting = True
                continue
            decision = rule(snapshot, menu)
            if decision is not None:
                if self._held and isinstance(decision, NoAction):
                    decision = decision.model_copy(update={"reason": f"{decision.reason}; {self._held}"})
                return decision
        held = f"; {self._held}" if self._held else ""
        if waiting:
            return NoAction(reason=f"waiting to measure the effect of the latest intervention{held}")
        return NoAction(reason=f"no rule fired: keep the recipe{held}", expected_outcome="training continues as it is")

    # --------------------------------------------------------------------------- helpers
    def _option(
        self,
        knob: KnobMenu,
        direction: str,
        factor: float,
        options: list[KnobOption] | None = None,
        base: float | None = None,
        floor: float | None = None,
        cap: float | None = None,
        reverse: bool = False,
    ) -> KnobOption | None:
        """The option closest (in log space) to ``current × factor`` in ``direction``, within [floor, cap]
        (``reverse``: the KL ladder may undo its own latest change of the knob)."""
        if (knob.name, direction) in self._worse:
            return None
        last = self._last_move.get(knob.name)
        if last is not None and last[0] != direction and last[1] != "worse" and not (reverse and last[2]):
            return None  # no oscillation: do not undo a change that was not measured harmful
        if base is None:
            base = knob.current if options is None or knob.best_value is None else knob.best_value
        options = knob.options if options is None else options
        moves = [
            o
            for o in options
            if (o.value > base if direction == "up" else o.value < base)
            and (floor is None or o.value >= floor * (1 - 1e-9))
            and (cap is None or o.value <= cap * (1 + 1e-9))
        ]
        if not moves:
            return None
        if base > 0 and all(o.value > 0 for o in moves):
            target = math.log(base * factor)
            return min(moves, key=lambda o: abs(math.log(o.value) - target))
        target = base * factor
        return min(moves, key=lambda o: abs(o.value - target))

    def _change(
        self,
        menu: ActionSpace,
        role: str,
        direction: str,
        factor: float,
        cap: float | None = None,
        reverse: bool = False,
    ) -> KnobChange | None:
        # a lever whose last use changed nothing is tried after the others
        knobs = sorted(menu.knobs, key=lambda k: (k.name, direction) in self._neutral)
        for knob in knobs:
            if knob.role == role:
                option = self._option(knob, direction, factor, base=knob.current, cap=cap, reverse=reverse)
                if option is not None:
                    return KnobChange(knob=knob.name, value=option.value)
        return None

    def _adjust(
        self,
        menu: ActionSpace,
        moves: list[tuple[str, str, float]],
        reason: str,
        expected: str,
        reverse: bool = False,
    ) -> Decision | None:
        if "adjust" not in menu.actions:
            return None
        changes = []
        for role, direction, factor in moves:
            change = self._change(menu, role, direction, factor, reverse=reverse)
            if change is not None and all(c.knob != change.knob for c in changes):
                changes.append(change)
            if len(changes) >= menu.max_changes:
                break
        if not changes:
            return None
        return Adjust(changes=changes, reason=reason, expected_outcome=expected)

    def _rollback(self, menu: ActionSpace, reason: str, consolidate: bool = True) -> Decision | None:
        if consolidate and "rollback_and_consolidate" in menu.actions:
            for role in ("learning_rate", None):
                for knob in menu.knobs:
                    if knob.conservative_options and (role is None or knob.role == role):
                        # the rollback keeps the recipe in force: consolidate from it (the menu's options
                        # lie beyond both it and the best checkpoint's value)
                        direction = "down" if knob.conservative_options[0].value < knob.current else "up"
                        option = self._option(
                            knob,
                            direction,
                            0.5 if direction == "down" else 2.0,
                            knob.conservative_options,
                            base=knob.current,
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
        series = success or [r.score for r in s.history[-n:] if finite(r.score)]
        if len(series) < n:
            return False
        scale = 1.0 if success else max(1.0, abs(series[0]))
        return series[-1] - series[0] >= min_gain * scale and series[-1] >= max(series[:-1])

    @staticmethod
    def _cost_rising(s: TelemetrySnapshot, n: int = 3) -> bool:
        """Whether a cost signal (violation rate, evaluation or training cost) rose over the last ``n``
        evaluations beyond its noise: 2 binomial s.e. for the violation rate, 10% for the costs."""
        rows = s.history[-n:]
        episodes = s.evaluation.n_episodes or 0
        for key in ("violation_rate", "mean_cost", "train_episode_cost"):
            series = [getattr(r, key) for r in rows]
            if len(series) == n and all(finite(v) for v in series):
                p0, p1 = series[0], series[-1]
                if key == "violation_rate" and episodes:
                    margin = _diff_noise(p0, p1, episodes)
                else:
                    margin = 0.1 * abs(p0)
                if p1 >= max(series[:-1]) and p1 - p0 > margin:
                    return True
        return False

    @staticmethod
    def _deteriorating(s: TelemetrySnapshot, noise: bool = True) -> bool:
        """Whether the latest score is missing, non-finite or below the best one; with ``noise``, beyond its noise
        for a rate measured on few episodes (2 binomial s.e. at the best's rate).

        Without the noise, any evaluation short of the best read as a fall: at chance (a success of 0.00-0.02
        after a best of 0.04-0.06 on 50 episodes) a one-evaluation spike of the critic's loss (ratio 7.7-14.4,
        gone at the next evaluation) then counted as divergence and the learning rate was halved, on
        FetchPickAndPlace seeds 254, 260 and 262 (``fetch_pick_costknob``)."""
        latest = s.history[-1].score if s.history else None
        if latest is None or not math.isfinite(latest) or s.best is None:
            return True
        n = s.evaluation.n_episodes
        if noise and s.score_name.endswith("rate") and n > 0 and 0.0 <= s.best.score <= 1.0:
            return s.best.score - latest >= 2.0 * math.sqrt(s.best.score * (1.0 - s.best.score) / n)
        return latest < s.best.score

    def _success_series(self, snapshot: TelemetrySnapshot, n: int = 3) -> list[float]:
        """The last ``n`` evaluations' safe success (the task's success while the learn-first hold is on; below
        ``solving_success`` the hold is off, and an unpriced cost holds this series at the floor: see *stuck*)."""
        values = []
        for row in snapshot.history[-n:]:
            safe = row.safe_success_rate if not self._held else None
            v = safe if safe is not None else row.success_rate
            if finite(v):
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
        last = s.position.last_rollback_at
        if last is not None and s.best.evaluation_index < last:
            # the last rollback returned to this best and no new best came of it: going back again only
            # replays that failure (a lucky early evaluation drew a run back 4 times so, never to progress)
            return None
        if not self._deteriorating(s):
            return None  # a rate measured on few episodes is noisy: the drop must also exceed 2 standard errors
        if not self._rollback_keeps_the_task(s):
            return None
        kl = self._kl(s)
        # PPO updates already below their target: a consolidation (LR down first) only slows the recovery,
        # as for plateau; the rollback alone keeps the recipe in force
        small_steps = bool(kl) and statistics.fmean(kl) < self.target_kl
        return self._rollback(menu, "the score stayed well below the best checkpoint", consolidate=not small_steps)

    @staticmethod
    def _best_success(s: TelemetrySnapshot) -> float | None:
        """The best checkpoint's task success (from its history row where the controller did not record it)."""
        if s.best is None:
            return None
        if s.best.success_rate is not None:
            return s.best.success_rate
        return next((r.success_rate for r in s.history if r.evaluation_index == s.best.evaluation_index), None)

    def _rollback_keeps_the_task(self, s: TelemetrySnapshot) -> bool:
        """Whether a rollback to the best checkpoint (by score) keeps the task's success: not when that checkpoint
        succeeds significantly less often than the latest evaluation (2 binomial s.e. of the difference); and while
        the cost is unpriced (a cost penalty at 0, no success bonus) or the learn-first hold is on, only when the
        latest success fell significantly below the checkpoint's (a best whose success is not known gets none).

        With a safe-success score and the cost unpriced, the policy does not see the cost, and the best checkpoint
        can be one that has not started to move (no cost, success by chance): on FetchPickAndPlace seed 249
        (``fetch_pick_costknob``) it was the 20k model (safe success 0.12, cost 0), and the rule would have rolled
        the run back to it at 140k (success 0.06, at chance) and at 400k and 420k while success climbed (0.54,
        0.70). A drop of the safe score that the task's success does not share is the cost appearing: a matter for
        the price (the *unsafe* rule, in its time), not for going back."""
        latest = s.history[-1].success_rate if s.history else None
        best = self._best_success(s)
        n = s.evaluation.n_episodes
        by_success = bool(self._held) or self._unpriced(s)
        if latest is None or best is None or not (finite(latest) and finite(best) and n > 0):
            return not by_success
        noise = _diff_noise(best, latest, n)
        if latest - best > noise:
            return False
        return not by_success or best - latest > noise

    def _undo_harm(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        last = next((i for i in reversed(s.interventions) if i.action == "adjust"), None)
        if last is None or last.verdict != "worse" or "adjust" not in menu.actions:
            return None
        changes = []
        for c in last.changes:
            knob = menu.knob(c.knob)
            if knob is None:
                continue
            if math.isclose(knob.current, c.before, rel_tol=1e-6):
                continue  # already reverted (the controller's probation restores the old value)
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
        losses = [r.train_loss for r in s.history if finite(r.train_loss)]
        ratio = 0.0
        if len(losses) >= 3:
            earlier = statistics.median(abs(x) for x in losses[:-1])
            if earlier > 0:
                ratio = abs(losses[-1]) / earlier
        kl = s.health.approx_kl
        blown = finite(kl) and kl > self.kl_limit
        # a loss jump while the score holds (e.g. after a reward-weight change) is not divergence; off-policy (no
        # approx KL), "holds" means within the score's noise (a critic's loss spikes now and then at chance)
        if not self._deteriorating(s, noise=not self._kl(s)):
            return None
        if ratio > self.divergence_ratio or blown:
            factor = 0.25 if ratio > 4 * self.divergence_ratio else 0.5
            moves = [("learning_rate", "down", factor)]
            if blown:
                moves.append(("clip_range", "down", 0.5))
            return self._adjust(
                menu, moves, f"training is unstable (loss ratio {ratio:.3g}, approx KL {kl})", "losses stabilise"
            )
        return None

    def _unsafe_state(self, s: TelemetrySnapshot) -> bool | None:
        """``None`` when the last 2 evaluations are safe enough for the run; ``True`` when they broke an explicit
        episode-cost limit; ``False`` when only their violation rate is high for the run."""
        t = s.targets
        rows = s.history[-2:]
        if len(rows) < 2:
            return None

        thrashing = self._high_exploration(s)

        def over_limit(r) -> bool:  # an explicit episode-cost constraint (Safety-Gymnasium's EpCost <= d) ...
            limit = t.cost_limit
            if limit is None or not any(finite(c) and c > limit for c in (r.mean_cost, r.train_episode_cost)):
                return False
            # ... judged once the task is being solved, or when the cost comes from an entropy bonus far
            # above the usual range: a random early policy's cost is no reason to cut exploration
            return thrashing or not finite(r.success_rate) or r.success_rate >= self.solving_success

        n = s.evaluation.n_episodes

        def high_for_run(r) -> bool:  # violations beyond the target's noise, on a task being solved
            rate, success, target = r.violation_rate, r.success_rate, t.max_violation_rate
            if not (finite(rate) and target is not None):
                return False
            noise = 2.0 * math.sqrt(max(target, 0.05) * (1 - target) / n) if n else 0.0
            if rate <= target + noise:
                return False
            return not finite(success) or success >= self.solving_success

        if all(over_limit(r) for r in rows):
            return True
        return False if all(high_for_run(r) for r in rows) else None

    def _unsafe(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        constrained = self._unsafe_state(s)
        if constrained is None or self._held:
            return None
        penalty, bonus = self._weights(s)
        weighed = penalty is not None and bonus is not None and bonus.value > 0
        # an explicit episode-cost constraint broken on 2 evaluations (of a task learned, or with a success bonus)
        # is priced while success still rises and until the penalty reaches its top, as a Lagrange multiplier rises
        # while EpCost > d whatever the return: pricing the cost cuts neither exploration nor the LR (the probation
        # still reverts a raise measured worse)
        pricing = constrained and self._change(menu, "cost_penalty", "up", 2.0, reverse=True) is not None
        if not pricing and self._improving(s) and not self._cost_rising(s):
            return None  # a policy still learning to succeed, no less safely, is not cut back yet
        if not pricing and self._safety_move_failed(s) and not self._cost_rising(s):
            return None  # the run's own cost level: the last safety move did not lower it, do not escalate
        e = s.evaluation
        reason = (
            f"unsafe for this run on 2 evaluations (evaluation cost {e.mean_cost}, violation rate "
            f"{e.violation_rate} at success {e.success_rate}, training episode cost {s.training.mean_episode_cost})"
        )
        expected = SAFETY_OUTCOME
        changes: list[KnobChange] = []
        if penalty is not None:
            # next to a success bonus the penalty rises toward balance, never past it: a balanced reward is the
            # recipe's choice and its violations at mid-training are the run's own level
            cap = self.unsafe_ratio * bonus.value if weighed else None
            change = self._change(menu, "cost_penalty", "up", 3.0 if weighed else 2.0, cap=cap, reverse=True)
            if change is not None and not weighed and penalty.value <= 0:
                change = self._first_price(menu, change)
            if change is not None:
                changes.append(change)
            new_penalty = change.value if change is not None else penalty.value
            if weighed and new_penalty < bonus.value:  # a cheap violation next to a large bonus
                floor = new_penalty / self.unsafe_ratio  # the ratio stays within bounds after both moves
                option = self._named_option(menu, bonus.name, "down", 0.5, floor=floor)
                if option is not None:
                    changes.append(KnobChange(knob=bonus.name, value=option.value))
        high_bonus = self._change(menu, "exploration", "down", 0.5) if self._high_exploration(s) else None
        if high_bonus is not None:
            changes.append(high_bonus)
        if changes and "adjust" in menu.actions:
            return Adjust(changes=changes[: menu.max_changes], reason=reason, expected_outcome=expected)
        # exploration down: under an explicit episode-cost limit, or once it has grown past the recipe's
        # start; a lower LR (or, without a constraint, less exploration than the recipe's own) only slows
        # a learning policy down: its cost is the run's own level
        stds = [r.action_std for r in s.history if finite(r.action_std)]
        if constrained or (not weighed and len(stds) >= 2 and stds[-1] > stds[0]):
            return self._adjust(menu, [("exploration", "down", 0.5)], reason, expected)
        return None

    def _learning_first(self, s: TelemetrySnapshot) -> str:
        """Why a run that is unsafe for its cost gets no safety move yet ("" when it gets one): the task is learned
        first.

        A price set while the policy is still learning the task can keep it from learning the skill that avoids
        the cost. On FetchPickAndPlace seed 240 every arm priced from 200-220k (success 0.2-0.4) stayed near 0.5
        held-out success, the share of goals met by pushing, while the unpriced arm learned to lift (0.97 at
        480k); the top penalty set at 400k, once the unpriced run had learned, cut the held-out cost by 99 % at a
        success 0.05 *higher* (``experiments/results/fetch_pick_costknob``). So, with no success bonus in the
        reward, the *unsafe* rule waits until success reaches the run's target on the 2 evaluations that broke
        the limit, or until ``price_hold`` of the budget is spent (a run that never learns is still priced, with
        time left for the price's ladder to act) and its success has stopped rising (the least-squares slope of the
        last ``trend_window`` evaluations' success under ``trend_t`` standard errors: a run still learning at the
        deadline is the case the hold exists for; replayed on seed 249's run, a 520k budget's deadline priced it
        at 400k, at success 0.54 and climbing, and now at 500k, at 0.94). Meanwhile the rules that judge progress
        read the task's success, not the safe success that the unpriced cost holds down. Success unmeasured, no
        target, a success bonus (the balance rules price the cost against it) or exploration far above usual (an
        entropy bonus over 0.01 or an action std over 1: the cost is the thrashing's) hold nothing."""
        target, rows = s.targets.success_rate, s.history[-2:]
        _, bonus = self._weights(s)
        std = s.health.action_std
        thrashing = self._high_exploration(s) or (finite(std) and std > 1.0)
        if target is None or (bonus is not None and bonus.value > 0) or thrashing:
            return ""
        if self._unsafe_state(s) is None or not all(finite(r.success_rate) for r in rows):
            return ""
        if all(r.success_rate >= target for r in rows):
            return ""
        total = s.position.total_steps
        late = bool(total) and s.position.step >= self.price_hold * total
        recent = [r.success_rate for r in s.history[-self.trend_window :] if finite(r.success_rate)]
        if late and _trend_t(recent) < self.trend_t:  # (the slope only matters past the deadline)
            return ""
        when = (
            f"past {self.price_hold:.0%} of the budget, but its success still rises"
            if late
            else f"safety moves from {self.price_hold:.0%} of the budget on"
        )
        return (
            f"unsafe for the run, but no safety move yet: success {rows[-2].success_rate:.3g}, "
            f"{rows[-1].success_rate:.3g} on the last 2 evaluations, not both at its target {target:g}; the task is "
            f"learned first ({when})"
        )

    def _over_priced(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        """The cost penalty one step down while the episode-cost constraint has slack.

        The *unsafe* rule raises the penalty as a Lagrange multiplier rises while ``EpCost > d``; a multiplier
        also falls while ``EpCost < d``. Without that half the price only ratchets up: on SafeFetchReach
        (v25/v26, 40k steps) the priced runs ended at cost 0.00 against a limit of 2, with 1-6 % of the goals
        given up (those the reach touches the table for), where a price below a reward step makes reaching
        them worth a small cost again. The slack is judged on 60 evaluation episodes (3 evaluations) and the
        latest training window, at half the limit, so that a single touching episode (cost ~45 in a 20-episode
        evaluation: 2.25 > 2) does not flip the price back and forth. Only a price at its top steps down: the
        ratchet's end, not a recipe's own penalty in mid-training."""
        limit = s.targets.cost_limit
        penalty, bonus = self._weights(s)
        if limit is None or penalty is None or penalty.value < penalty.high or (bonus is not None and bonus.value > 0):
            return None  # below its top the price is the recipe's (or still rising); next to a bonus the balance
            # rules move it
        knob = menu.knob(penalty.name)
        last = self._last_move.get(penalty.name)
        if knob is None or "adjust" not in menu.actions or (last is not None and last[0] == "down"):
            return None
        if (knob.name, "down") in self._worse:
            return None
        rows = s.history[-3:]
        costs = [r.mean_cost for r in rows]
        if len(rows) < 3 or not all(finite(c) for c in costs) or statistics.fmean(costs) > limit / 2:
            return None
        train = s.training.mean_episode_cost
        if finite(train) and train > limit / 2:
            return None
        if not all(finite(r.success_rate) and r.success_rate >= self.solving_success for r in rows):
            return None
        if self._improving(s):
            return None
        steps = [o for o in knob.options if 0.5 * knob.current * (1 - 1e-9) <= o.value < knob.current]
        if not steps:
            return None
        option = min(steps, key=lambda o: abs(math.log(o.value / (0.75 * knob.current))))
        return Adjust(
            changes=[KnobChange(knob=knob.name, value=option.value)],
            reason=(
                f"over-priced: mean evaluation cost {statistics.fmean(costs):.3g} over the last 3 evaluations and "
                f"training episode cost {train} at most half the limit {limit:g}: the cost penalty one step down"
            ),
            expected_outcome=SLACK_OUTCOME,
        )

    @staticmethod
    def _first_price(menu: ActionSpace, change: KnobChange) -> KnobChange:
        """The first raise of a cost penalty from zero with no success bonus beside it: the offered value at the
        geometric middle of the positive ones. A ×2 ladder from zero starts at the smallest value, which prices a
        violation far below a reward step (``SafeFetch*``'s 0.05 of a sparse reward's 1: no measurable effect
        in the v14 grid), and each of its later steps waits for its own measurement."""
        knob = menu.knob(change.knob)
        positive = [o.value for o in knob.options if o.value > 0] if knob is not None else []
        if not positive:
            return change
        middle = math.sqrt(min(positive) * max(positive))
        return KnobChange(knob=change.knob, value=min(positive, key=lambda v: abs(math.log(v / middle))))

    @staticmethod
    def _safety_move_failed(s: TelemetrySnapshot, min_drop: float = 0.1) -> bool:
        """Whether the latest measured safety move left the episode cost within ``min_drop`` (relative) of
        its level before the move: cost penalty and exploration cuts that do not lower the cost only trade
        success for nothing."""
        for i in reversed(s.interventions):
            if i.expected_outcome != SAFETY_OUTCOME or i.verdict == "pending":
                continue
            after = [c for c in i.costs_after if finite(c)]
            if not (after and finite(i.cost_before)) or i.cost_before <= 0:
                return False
            return statistics.fmean(after) > (1.0 - min_drop) * i.cost_before
        return False

    # --------------------------------------------------------------------------- new states
    @staticmethod
    def _weights(s: TelemetrySnapshot):
        """The cost-penalty and success-bonus knob specs, if the recipe exposes them."""
        penalty = next((k for k in s.knobs if k.role == "cost_penalty"), None)
        bonus = next((k for k in s.knobs if k.name == "success_bonus"), None)
        return penalty, bonus

    @classmethod
    def _unpriced(cls, s: TelemetrySnapshot) -> bool:
        """Whether the recipe exposes a cost penalty and leaves the cost unpriced: the penalty at 0, no success
        bonus (the policy does not see the cost)."""
        penalty, bonus = cls._weights(s)
        return penalty is not None and penalty.value <= 0 and (bonus is None or bonus.value <= 0)

    @staticmethod
    def _high_exploration(s: TelemetrySnapshot) -> bool:
        """An entropy bonus well above the usual range (> 0.01) or an action std above 1."""
        for k in s.knobs:
            if k.role == "exploration" and (
                (k.name == "ent_coef" and k.value > 0.01) or (k.name == "action_std" and k.value > 1.0)
            ):
                return True
        return False

    def _named_option(
        self,
        menu: ActionSpace,
        name: str,
        direction: str,
        factor: float,
        floor: float | None = None,
        cap: float | None = None,
    ) -> KnobOption | None:
        knob = menu.knob(name)
        if knob is None or "adjust" not in menu.actions:
            return None
        return self._option(knob, direction, factor, base=knob.current, floor=floor, cap=cap)

    @staticmethod
    def _last_updates(s: TelemetrySnapshot, name: str, n: int = 2) -> list[float]:
        """A PPO update statistic (``approx_kl``, ``clip_fraction``) of the last update at the latest ``n``
        boundaries (history rows, else health)."""
        values = [getattr(r, name) for r in s.history[-n:] if finite(getattr(r, name))]
        if not values and finite(getattr(s.health, name)):
            values = [getattr(s.health, name)]
        return values

    def _kl(self, s: TelemetrySnapshot) -> list[float]:
        """The approx KL of the last update at the latest 2 boundaries."""
        return self._last_updates(s, "approx_kl")

    def _rising(self, s: TelemetrySnapshot, n: int = 3) -> bool:
        """Whether success (else the score) rose by more than 2 s.e. of the difference over ``n`` evaluations."""
        series = self._success_series(s, n)
        rate = bool(series)
        series = series or [r.score for r in s.history[-n:] if finite(r.score)]
        if len(series) < n:
            return False
        episodes = s.evaluation.n_episodes
        if rate and episodes:
            p0, p1 = series[0], series[-1]
            noise = _diff_noise(p0, p1, episodes)
            return p1 - p0 > max(noise, 0.02)
        return series[-1] - series[0] >= 0.05 * max(1.0, abs(series[0])) and series[-1] >= max(series[:-1])

    def _returns(self, s: TelemetrySnapshot) -> list[float]:
        """The evaluations' mean returns (else scores) over the trend window."""
        rows = s.history[-self.trend_window :]
        values = [r.mean_return for r in rows if finite(r.mean_return)]
        if len(values) < len(rows):
            values = [r.score for r in rows if finite(r.score)]
        return values if len(values) == len(rows) else []

    def _improving_return(self, s: TelemetrySnapshot) -> bool:
        """Whether the mean return (else the score) rises: a least-squares trend over the last
        ``trend_window`` evaluations whose slope is ``trend_t`` standard errors above zero. Success rates
        lag on a task that learns slowly; the return shows the progress first."""
        return _trend_t(self._returns(s)) >= self.trend_t

    def _exploding(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        stds = [r.action_std for r in s.history if finite(r.action_std)]
        latest = s.health.action_std if finite(s.health.action_std) else (stds[-1] if stds else None)
        if latest is None:
            return None
        start = stds[0] if stds else latest
        if not (latest >= self.std_ceiling or (latest > 1.0 and latest >= self.explode_ratio * start)):
            return None
        changes = []
        std_knob = menu.knob("action_std")
        if std_knob is not None and "adjust" in menu.actions:
            downs = [o for o in std_knob.options if o.value < std_knob.current]
            if downs:
                target = math.log(max(start, 1e-6))
                changes.append(
                    KnobChange(knob="action_std", value=min(downs, key=lambda o: abs(math.log(o.value) - target)).value)
                )
        ent = menu.knob("ent_coef")
        if ent is not None and "adjust" in menu.actions:
            downs = [o for o in ent.options if o.value < ent.current]
            if downs:
                changes.append(KnobChange(knob="ent_coef", value=min(downs, key=lambda o: o.value).value))
        reason = f"exploration is exploding: action std {latest:.3g} (started at {start:.3g})"
        if changes:
            return Adjust(
                changes=changes, reason=reason, expected_outcome="action std back near its start, purposeful actions"
            )
        return self._adjust(menu, [("exploration", "down", 0.25)], reason, "exploration back to its start")

    def _starved(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        kl = self._kl(s)
        clip = s.health.clip_fraction
        if not kl or max(kl) >= self.target_kl / 4 or not (finite(clip) and clip < self.starved_clip):
            return None
        if self._rising(s):
            return None
        if "adjust" not in menu.actions:
            return None
        reason = (
            f"starved: approx KL {max(kl):.2g} < target/4 and clip fraction {clip:.2g}: updates far smaller "
            f"than the trust region allows"
        )
        changes: list[KnobChange] = []
        lr = self._change(menu, "learning_rate", "up", self.bold_lr)
        if lr is not None:
            changes.append(lr)
        changes += self._rebalance(s, menu)
        if len(changes) < menu.max_changes and self._exploration_at_floor(s):
            change = self._change(menu, "exploration", "up", 2.0)
            if change is not None:
                changes.append(change)
        if not changes:
            return None
        return Adjust(
            changes=changes[: menu.max_changes],
            reason=reason,
            expected_outcome="larger policy updates (KL toward its target) and rising success",
        )

    def _starved_off_policy(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        """No approx KL to show it (SAC, TD3, DQN...): no success at all on 3 evaluations at an LR in the
        lower half of its (log) range. The same bold combined move as the PPO starved state, at once: the
        ladder of single ×2 moves, each waiting for its measurement, is too slow for a short budget."""
        if self._kl(s) or "adjust" not in menu.actions:
            return None
        success = self._success_series(s)
        if len(success) < 3 or max(success) >= 0.05:
            return None
        lr = self._small_lr(menu)
        if lr is None:
            return None
        changes = self._bold_changes(menu, self._exploration_at_floor(s) or self._collapsed(s, menu))
        if not changes:
            return None
        return Adjust(
            changes=changes,
            reason=f"starved: no success on 3 evaluations at a small learning rate ({lr.current:.2g})",
            expected_outcome="larger updates and exploration, success starts rising",
        )

    @staticmethod
    def _small_lr(menu: ActionSpace):
        """The learning-rate knob if it sits in the lower half of its (log) range, else None."""
        for knob in menu.knobs:
            if knob.role == "learning_rate" and knob.low > 0 and knob.current > 0:
                span = math.log(knob.high / knob.low)
                if span > 0 and math.log(knob.current / knob.low) < span / 2:
                    return knob
        return None

    def _bold_changes(self, menu: ActionSpace, explore: bool) -> list[KnobChange]:
        """LR ×``bold_lr``, and exploration ×2 with it when ``explore`` (as far as the menu allows)."""
        changes = [c for c in [self._change(menu, "learning_rate", "up", self.bold_lr)] if c]
        if changes and explore and len(changes) < menu.max_changes:
            up = self._change(menu, "exploration", "up", 2.0)
            if up is not None:
                changes.append(up)
        return changes

    @staticmethod
    def _exploration_at_floor(s: TelemetrySnapshot) -> bool:
        """Whether an exploration knob sits at (or within 2× of) its lower bound."""
        return any(k.role == "exploration" and _at_floor(k) for k in s.knobs)

    @staticmethod
    def _entropy_target(s: TelemetrySnapshot) -> float | None:
        """The target entropy of a run whose entropy coefficient is tuned toward it (SAC/TQC ``ent_coef="auto"``),
        else ``None``."""
        return next((k.value for k in s.knobs if k.name == "target_entropy"), None)

    @staticmethod
    def _recent_entropy(s: TelemetrySnapshot, n: int = 3) -> float | None:
        """The median policy entropy of the latest ``n`` boundaries (robust to a single batch's estimate far off:
        a saturated squashed Gaussian reads tens of nats below its level), else the health's, else ``None``."""
        values = [r.entropy for r in s.history[-n:] if finite(r.entropy)]
        if values:
            return statistics.median(values)
        return s.health.entropy if finite(s.health.entropy) else None

    def _rebalance(self, s: TelemetrySnapshot, menu: ActionSpace) -> list[KnobChange]:
        """Reward weights back toward balance when the cost penalty outweighs the success bonus > max_ratio×."""
        penalty, bonus = self._weights(s)
        if penalty is None or bonus is None or bonus.value <= 0 or penalty.value <= self.max_ratio * bonus.value:
            return []
        changes = []
        option = self._named_option(menu, penalty.name, "down", 0.25, floor=bonus.value)
        if option is not None:
            changes.append(KnobChange(knob=penalty.name, value=option.value))
        new_penalty = option.value if option is not None else penalty.value
        if new_penalty > self.max_ratio * bonus.value:
            up = self._named_option(menu, bonus.name, "up", 2.0, cap=new_penalty)
            if up is not None:
                changes.append(KnobChange(knob=bonus.name, value=up.value))
        return changes

    def _under_stepping(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        """The latest update's KL below half its target (rl_games' KL-adaptive LR) while the clip fraction,
        averaged over the last 2 boundaries, shows the clip range is not what bounds the update."""
        kl, clip = self._kl(s), self._last_updates(s, "clip_fraction")
        if not kl or kl[-1] >= self.target_kl / 2:
            return None
        if clip and statistics.fmean(clip) >= self.healthy_clip:
            return None
        return self._adjust(
            menu,
            [("learning_rate", "up", 1.5)],
            f"approx KL {kl[-1]:.2g} below half its target {self.target_kl:g} and mean clip fraction under "
            f"{self.healthy_clip:g}: the learning rate under-steps",
            LADDER_OUTCOME,
            reverse=True,
        )

    def _over_stepping(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        """The latest update's KL above twice its target: LR ÷1.5, the other half of the KL-adaptive rule
        (late in a healthy run its updates grow past the trust region; smaller steps fine-tune the policy)."""
        kl = self._kl(s)
        if not kl or kl[-1] <= 2 * self.target_kl:
            return None
        return self._adjust(
            menu,
            [("learning_rate", "down", 1 / 1.5)],
            f"approx KL {kl[-1]:.2g} above twice its target {self.target_kl:g}: the learning rate over-steps",
            LADDER_OUTCOME,
            reverse=True,
        )

    def _clip_bound(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        """Small approx KL at the last 2 boundaries while the clip fraction is high: the policy reaches the
        clip boundary on many samples, so a larger LR only clips more; the clip range is the bound."""
        kl, clip = self._kl(s), self._last_updates(s, "clip_fraction")
        if not kl or kl[-1] >= self.target_kl / 2:
            return None
        if not clip or statistics.fmean(clip) < self.healthy_clip:
            return None
        knob = menu.knob("clip_range")
        if knob is None or "adjust" not in menu.actions:
            return None
        option = self._option(knob, "up", 1.5, base=knob.current, cap=self.clip_cap)
        if option is None:
            return None
        return Adjust(
            changes=[KnobChange(knob=knob.name, value=option.value)],
            reason=(
                f"clip-bound: approx KL {kl[-1]:.2g} below half its target {self.target_kl:g} "
                f"at a clip fraction of {statistics.fmean(clip):.2g}: the clip range, not the learning rate, "
                "bounds the update"
            ),
            expected_outcome="larger policy updates within the usual clip range, faster progress",
        )

    def _learning(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        if self._rising(s):
            return NoAction(reason="learning: success rose beyond the noise", expected_outcome="keep improving")
        return None

    @staticmethod
    def _generalisation_gap(s: TelemetrySnapshot) -> bool:
        """Training loss falling over the last 3 evaluations and below the validation loss (a gap to close)."""
        rows = [r for r in s.history if finite(r.val_loss) and finite(r.train_loss)][-3:]
        return len(rows) == 3 and rows[2].train_loss < rows[0].train_loss and rows[2].train_loss < rows[2].val_loss

    def _overfitting(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        rows = [r for r in s.history if finite(r.val_loss) and finite(r.train_loss)][-3:]
        if len(rows) < 3:
            return None
        val_up = rows[2].val_loss > rows[1].val_loss > rows[0].val_loss
        # a training loss above the validation loss (e.g. on an early plateau) leaves no gap to overfit
        if not (val_up and self._generalisation_gap(s)):
            return None
        return self._adjust(
            menu,
            [("regularization", "up", 2.0), ("learning_rate", "down", 0.5)],
            "validation loss rising while training loss falls: overfitting",
            "validation loss stops rising",
        )

    @staticmethod
    def _waiting(s: TelemetrySnapshot, measured: int) -> bool:
        """Whether the latest intervention has fewer than ``measured`` evaluations measured after it (for
        rules that need more than one, the latest outside the KL ladder: its moves are judged on the KL)."""
        interventions = s.interventions
        if measured > 1:
            interventions = [i for i in interventions if i.expected_outcome != LADDER_OUTCOME]
        if not interventions or measured <= 0:
            return False
        last = interventions[-1]
        if last.action == "no_action":
            return False
        return last.verdict == "pending" and len(last.scores_after) < measured

    def _collapsed(self, s: TelemetrySnapshot, menu: ActionSpace) -> bool:
        entropies = [r.entropy for r in s.history if finite(r.entropy)]
        # Under automatic entropy tuning the entropy falls to its target by design (and the tuner pushes it back up
        # from below): a fall is the tuner at work, not a collapse.
        if len(entropies) >= 2 and self._entropy_target(s) is None:
            first, last = entropies[0], entropies[-1]
            if first - last >= 1.0 or (first > 0 and last < 0.5 * first):
                return True
        if finite(s.health.action_std) and s.health.action_std < 0.1:
            return True
        if entropies or finite(s.health.action_std):
            return False  # the policy's exploration is measured and has not collapsed: a knob at its
            # floor (an entropy bonus of 0) is the recipe's choice, not a collapse
        for knob in menu.knobs:
            if knob.role == "exploration" and knob.low > 0 and knob.current <= 2 * knob.low:
                return True
        # a knob pinned at the floor has no "down" option and may be absent from the menu
        for spec in s.knobs:
            if spec.role == "exploration" and _at_floor(spec) and spec.value < spec.high:
                return True
        return False

    def _collapse(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        target = s.targets.success_rate if s.targets.success_rate is not None else 1.0
        success = self._success_series(s)
        if not (_flat(success) and success[-1] < target and self._collapsed(s, menu)):
            return None
        if self._improving_return(s):
            return None
        return self._adjust(
            menu,
            [("exploration", "up", 2.0)],
            "exploration collapsed while success is flat below the target",
            "more diverse experience and rising success",
        )

    def _stuck(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        success = self._success_series(s)
        if not (_flat(success) and max(success) < STUCK_SUCCESS):
            return None
        task = [r.success_rate for r in s.history[-3:] if finite(r.success_rate)]
        if self._unpriced(s) and task and statistics.fmean(task) >= STUCK_SUCCESS:
            # the safe success sits at the floor because the cost is left unpriced, not because the task is not
            # being learned: the learn-first hold (7) is not on below ``solving_success``. On FetchPickAndPlace seed
            # 260 (``fetch_pick_costknob``, "seed 260's forked test") this rule raised the target entropy at 300k,
            # 340k and 380k at task success 0.14-0.26; the fixed copy of the run reached 0.98 by 560k, the managed
            # one 0.42
            return None
        progress = s.position.progress
        if progress is not None and progress < self.stuck_progress:
            return None  # the slow start of a slow task is not "stuck"
        if self._improving_return(s):
            return None
        changes = self._bold_changes(menu, self._exploration_at_floor(s)) if self._small_lr(menu) else []
        if changes:  # one bold combined move, as in the starved states
            return Adjust(
                changes=changes, reason="no progress at a small learning rate", expected_outcome=STUCK_OUTCOME
            )
        target, entropy = self._entropy_target(s), self._recent_entropy(s)
        if target is not None and entropy is not None and entropy > target + 1.0:
            return NoAction(
                reason=f"no progress, but the policy entropy ({entropy:.3g}) sits over 1 nat above its target "
                f"({target:g}) already: a higher target adds no exploration"
            )
        if target is not None and any(
            i.expected_outcome == STUCK_OUTCOME and i.verdict != "improved" and c.knob == "target_entropy"
            for i in s.interventions
            for c in i.changes
        ):
            # a target entropy is a setpoint the tuner holds (-dim(A), the recipe's): one raise per stuck spell, as
            # the plateau rule's one decay, not compounded without measured progress. On FetchPickAndPlace seed 260
            # and SafeFetchPush seed 263 (``fetch_pick_costknob``, ``fetch_push_costknob``) four and five raises
            # took it from -4 to its bound during the slow start; the fixed copies of both runs learned, the managed
            # ones did not. (A fixed entropy bonus left low by a conservative recipe is still raised step by step:
            # there the raises are the rescue.)
            return NoAction(
                reason=f"no progress, and the earlier raise of the target entropy (now {target:g}) brought none: "
                "not compounded"
            )
        decision = self._adjust(menu, [("exploration", "up", 1.5)], "no progress: explore more", STUCK_OUTCOME)
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
        shown = self._success_series(s, len(s.history))
        if shown and max(shown) < STUCK_SUCCESS:
            return None  # never off the floor: a stuck or slow run, no plateau to fine-tune
        if any(i.expected_outcome == PLATEAU_OUTCOME and i.verdict != "improved" for i in s.interventions):
            return None  # one decay that brought no new best is not compounded into a starved run
        returns = [r.mean_return for r in s.history]
        k = self.plateau_evals
        if all(finite(v) for v in returns) and len(returns) > k and max(returns[-k:]) > max(returns[:-k]):
            return None  # the mean return still sets new bests: progress has not stopped
        if self._improving_return(s):
            return None
        kl = self._kl(s)
        if kl and statistics.fmean(kl) < self.target_kl:
            return None  # small updates: the LR is not what keeps the score from rising
        return self._adjust(
            menu,
            [("learning_rate", "down", 0.5)],
            "score plateaued: decay the learning rate",
            PLATEAU_OUTCOME,
        )

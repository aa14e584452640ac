"""Rule managers for supervised runs (issue 15): the library's rule table with the moves an engineer makes on
a language model's curves. :class:`SupervisedRuleManager` (``"supervised_rule"``) is the one to use; the other
classes are its earlier versions, kept because the TinyStories experiments name them
(``experiments/tinystories/``, reports in ``experiments/results/tinystories_v{2,3,4}/``).

On TinyStories (a 2M-parameter word model, an overfitting recipe: lr 3e-3, no regularisation), 5 fresh seeds,
:class:`SupervisedRuleManager` reached a best validation loss 4.15 % below early stopping's and within 1 % of a
tuned recipe's, and kept it to the end (the library's :class:`~rl_manager.managers.RuleManager`: 0.3 % below early
stopping). That was measured with the menu of ``experiments/tinystories/train_lm.py`` (its ``--restart-knob``,
dropout 0-0.5, weight decay 0-1 and label smoothing 0-0.2 as listed values) and ``GateConfig(rollback_margin=0.02)``;
on other tasks it is untested.

Versions (each subclass changes its parent for ``kind == "supervised"`` snapshots only; RL snapshots get the
library's rules):

1. :class:`RegularizeFirstRuleManager`: overfitting answered with regularisation first, and a rollback
   consolidated by regularisation instead of an LR cut;
2. :class:`BoldRegularizeRuleManager`: one bold regularisation step per signal, at most two LR halvings;
3. :class:`EarlySignalsRuleManager`: an early LR cut with new optimiser moments (``optimizer_restarts`` knob,
   :func:`rl_manager.supervised.optimizer_restart_knob`) on a starting plateau, and one bold regularisation move
   at the overfitting onset (a widening generalisation gap);
4. :class:`OnsetAnnealRuleManager`: either early move made bolder (dropout with the plateau cut, an LR halving
   with the onset move); :class:`SupervisedRuleManager` is it with both.
"""

from __future__ import annotations

import math

from rl_manager.managers.base import finite
from rl_manager.managers.rule import RuleManager
from rl_manager.schema import (
    ActionSpace,
    Adjust,
    Decision,
    KnobChange,
    RollbackAndConsolidate,
    TelemetrySnapshot,
)


class RegularizeFirstRuleManager(RuleManager):
    """Version 1 (issue 15, tinystories_v2). On TinyStories the library's rules only stop the damage: the LR is
    halved at every overfitting signal and the run ends on the early-stopping model. Two changes:

    1. **rollback consolidated by regularisation**: when the rollback gate is open and the run is overfitting
       (validation loss above its best while the training loss still falls), roll back to the best weights *and
       raise a regularisation knob* (dropout, weight decay, label smoothing, in menu order) instead of cutting the
       LR; the rollback keeps the regularisation raised since the best.
    2. **overfitting adjust without the LR cut**: regularisation up alone; the LR is halved only when no
       regularisation knob can move.
    """

    name = "rule_regularize_first"

    @staticmethod
    def _train_falling(s: TelemetrySnapshot) -> bool:
        rows = [r for r in s.history if finite(r.train_loss)][-3:]
        return len(rows) == 3 and rows[-1].train_loss < rows[0].train_loss

    @staticmethod
    def _overfitting_signal(s: TelemetrySnapshot) -> bool:
        """Validation loss rising over the last 3 evaluations while the training loss fell."""
        rows = [r for r in s.history if finite(r.val_loss) and finite(r.train_loss)][-3:]
        return (
            len(rows) == 3
            and rows[2].val_loss > rows[1].val_loss > rows[0].val_loss
            and rows[2].train_loss < rows[0].train_loss
        )

    def _regression(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        if s.kind != "supervised" or "rollback_and_consolidate" not in menu.actions or not self._train_falling(s):
            return super()._regression(s, menu)
        for knob in menu.knobs:
            if knob.role != "regularization" or not knob.conservative_options:
                continue
            # the rollback keeps the current value: move up from it (or from the best's, if higher)
            base = max(knob.current, knob.best_value if knob.best_value is not None else knob.current)
            higher = [o for o in knob.conservative_options if o.value > base]
            option = self._option(knob, "up", 2.0, higher, base=base) if higher else None
            if option is not None:
                return RollbackAndConsolidate(
                    change=KnobChange(knob=knob.name, value=option.value),
                    reason="validation loss well above its best while training loss falls: overfitting; "
                    "back to the best weights with more regularisation",
                    expected_outcome="validation loss returns to its best and improves on it",
                )
        return super()._regression(s, menu)

    def _overfitting(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        if s.kind != "supervised":
            return super()._overfitting(s, menu)
        if not self._overfitting_signal(s):
            return None
        reason = "validation loss rising while training loss falls: overfitting"
        return self._adjust(
            menu, [("regularization", "up", 2.0)], reason, "validation loss stops rising"
        ) or self._adjust(menu, [("learning_rate", "down", 0.5)], reason, "validation loss stops rising")


#: expected outcome that tags the bold overfitting moves (their LR cuts are counted)
BOLD_OUTCOME = "validation loss below its best: more regularisation, fewer steps on memorised data"


class BoldRegularizeRuleManager(RuleManager):
    """Proposal v2, from the audit logs of the 5-seed grid: one *bold* regularisation step per overfitting
    signal instead of the smallest listed one, from the best weights where the rollback gate allows it,
    and at most ``max_lr_cuts`` LR halvings by the overfitting rule (the library halves the LR at every
    signal: 3e-3 fell to 2e-5 and training stopped).

    A bold step moves a regularisation knob to the listed value nearest twice its value, or, from 0,
    to the second-smallest listed value above 0 (dropout 0 → 0.2 with 0, 0.1, 0.2, 0.3, 0.5).
    """

    name = "rule_bold_regularize"

    def __init__(self, *args, max_lr_cuts: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_lr_cuts = max_lr_cuts

    def _bold(self, menu: ActionSpace, consolidate: bool) -> KnobChange | None:
        for knob in menu.knobs:
            if knob.role != "regularization" or (knob.name, "up") in self._worse:
                continue
            base = knob.current if knob.best_value is None else max(knob.current, knob.best_value)
            options = knob.conservative_options if consolidate else knob.options
            higher = sorted((o for o in options if o.value > base), key=lambda o: o.value)
            if not higher:
                continue
            if base <= 0:
                choice = higher[min(1, len(higher) - 1)]
            else:
                choice = min(higher, key=lambda o: abs(math.log(o.value / (2 * base))))
            return KnobChange(knob=knob.name, value=choice.value)
        return None

    def _lr_cuts(self, s: TelemetrySnapshot) -> int:
        return sum(
            1
            for i in s.interventions
            if i.expected_outcome == BOLD_OUTCOME
            and any(c.knob == "learning_rate" and c.after < c.before for c in i.changes)
        )

    def _regression(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        if (
            s.kind == "supervised"
            and "rollback_and_consolidate" in menu.actions
            and RegularizeFirstRuleManager._train_falling(s)
        ):
            change = self._bold(menu, consolidate=True)
            if change is not None:
                return RollbackAndConsolidate(
                    change=change,
                    reason="validation loss well above its best while training loss falls: overfitting; "
                    "back to the best weights with a bold regularisation step",
                    expected_outcome=BOLD_OUTCOME,
                )
        return super()._regression(s, menu)

    def _overfitting(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        if s.kind != "supervised":
            return super()._overfitting(s, menu)
        if not RegularizeFirstRuleManager._overfitting_signal(s) or "adjust" not in menu.actions:
            return None
        changes = [c for c in [self._bold(menu, consolidate=False)] if c is not None]
        if self._lr_cuts(s) < self.max_lr_cuts:
            lr = self._change(menu, "learning_rate", "down", 0.5)
            if lr is not None:
                changes.append(lr)
        if not changes:
            return None
        return Adjust(
            changes=changes[: menu.max_changes],
            reason="validation loss rising while training loss falls: overfitting",
            expected_outcome=BOLD_OUTCOME,
        )


#: name of the optimiser-restart knob (:func:`rl_manager.supervised.optimizer_restart_knob`): raising it clears the
#: optimiser's moments
RESTART_KNOB = "optimizer_restarts"
#: expected outcome that tags the early LR cut (it is made once per run)
LR_TOO_HIGH_OUTCOME = "the validation loss leaves its starting plateau and falls below the high-LR run's minimum"
#: expected outcome that tags the bold regularisation move at the overfitting onset (made once per run)
GAP_ONSET_OUTCOME = "the generalisation gap widens more slowly; the validation minimum holds longer"


class EarlySignalsRuleManager(BoldRegularizeRuleManager):
    """Proposal v3 (issue 15, tinystories_v3): act on the two early signals an engineer reads off the curves,
    each with one bold move, then fall back on :class:`BoldRegularizeRuleManager`.

    1. **Learning rate too high** (checked from the second evaluation, before the library's warm-up): within
       the first ``early_fraction`` of the budget, the validation loss improved by less than
       ``plateau_gain`` (relative) over the latest evaluation interval while the training loss is still
       above it (under-fitting, so not an overfitting plateau). Answer, once per run: the LR to the listed
       option nearest ``lr_cut`` × the LR, and, where the menu has the :data:`RESTART_KNOB` knob, new
       optimiser moments.
    2. **Overfitting onset** (before the validation loss rises): the relative generalisation gap
       ``(val - train) / val`` reached ``gap_onset`` and widened over each of the last 2 intervals.
       Answer, once per run: dropout and weight decay up to the listed values nearest ``bold_dropout``
       and ``bold_weight_decay`` (moves up only).
    3. The bold overfitting rule of :class:`BoldRegularizeRuleManager` acts only where a generalisation
       gap exists (training loss below the validation loss).

    Evidence (``experiments/results/tinystories_v3/README.md``; logs of seeds 10-14 and of the sweep seed
    100, and short dev runs on seeds 100-102): every logged lr 3e-3 run improved its validation loss by at
    most 0.7 % between steps 20 and 40 (the unigram plateau at ~4.8), every lr 1e-3 / 5e-4 run by 3.3 % or
    more, except lr 1e-3 with dropout 0.5 (0.9 %); dev seed 102 at lr 3e-3 improved by 1.03 %, hence 2 %.
    An LR cut alone on the plateau (dev seed 100) left the run on it for 100 more steps; with new moments
    it left it at once. The gap reached 5 % and kept widening 0-2 evaluations before the validation
    minimum in most logged runs.

    :param early_fraction: fraction of the budget within which the plateau counts as "LR too high".
    :param plateau_gain: relative improvement of the validation loss per interval under which it is a plateau.
    :param lr_cut: LR factor asked for (the menu's nearest option is taken: ×0.25 of the default multipliers).
    :param gap_onset: relative generalisation gap from which a widening gap counts as the overfitting onset.
    :param bold_dropout: dropout the onset move aims at.
    :param bold_weight_decay: weight decay the onset move aims at.
    """

    name = "rule_early_signals"

    def __init__(
        self,
        *args,
        early_fraction: float = 0.1,
        plateau_gain: float = 0.02,
        lr_cut: float = 1 / 3,
        gap_onset: float = 0.05,
        bold_dropout: float = 0.3,
        bold_weight_decay: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.early_fraction = early_fraction
        self.plateau_gain = plateau_gain
        self.lr_cut = lr_cut
        self.gap_onset = gap_onset
        self.bold_dropout = bold_dropout
        self.bold_weight_decay = bold_weight_decay

    @staticmethod
    def _done(s: TelemetrySnapshot, outcome: str) -> bool:
        """Whether a decision tagged ``outcome`` was already made in this run."""
        return any(i.expected_outcome == outcome for i in s.interventions)

    def rule_decision(self, snapshot: TelemetrySnapshot, menu: ActionSpace) -> Decision:
        """The rule table of :class:`BoldRegularizeRuleManager`; the early LR rule acts where that keeps the recipe."""
        decision = super().rule_decision(snapshot, menu)  # also sets the memory of moves used by ``_option``
        if decision.action == "no_action" and snapshot.kind == "supervised":
            return self._lr_too_high(snapshot, menu) or decision
        return decision

    def _lr_too_high(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        progress = s.position.progress
        if progress is None or progress > self.early_fraction or self._done(s, LR_TOO_HIGH_OUTCOME):
            return None
        rows = [r for r in s.history if finite(r.val_loss) and finite(r.train_loss)][-2:]
        if len(rows) < 2 or rows[1].train_loss < rows[1].val_loss or "adjust" not in menu.actions:
            return None
        if rows[1].val_loss < rows[0].val_loss * (1 - self.plateau_gain):
            return None
        changes = [
            KnobChange(knob=k.name, value=o.value)
            for k in menu.knobs
            if k.role == "learning_rate"
            for o in [self._option(k, "down", self.lr_cut, base=k.current)]
            if o is not None
        ][:1]
        if not changes:
            return None
        restart = menu.knob(RESTART_KNOB)
        if restart is not None:  # new moments: the ones of the plateau keep the run on it (dev probes, README)
            higher = [o for o in restart.options if o.value > restart.current]
            if higher:
                changes.append(KnobChange(knob=RESTART_KNOB, value=min(o.value for o in higher)))
        return Adjust(
            changes=changes,
            reason=f"validation loss flat (< {100 * self.plateau_gain:g}% better) on its starting plateau while the "
            "training loss is above it: the learning rate is too high",
            expected_outcome=LR_TOO_HIGH_OUTCOME,
        )

    def _overfitting(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        # the bold rule only where a generalisation gap exists (training loss below the validation loss): on dev
        # seed 101 it fired on a stall at step 140 with the training loss above the validation loss
        decision = super()._overfitting(s, menu) if self._generalisation_gap(s) else None
        if decision is not None or s.kind != "supervised" or self._done(s, GAP_ONSET_OUTCOME):
            return decision
        rows = [r for r in s.history if finite(r.val_loss) and finite(r.train_loss) and r.val_loss > 0][-3:]
        if len(rows) < 3 or "adjust" not in menu.actions:
            return None
        gaps = [(r.val_loss - r.train_loss) / r.val_loss for r in rows]
        if not (gaps[2] >= self.gap_onset and gaps[2] > gaps[1] > gaps[0]):
            return None
        changes = []
        for knob_name, target in (("dropout", self.bold_dropout), ("weight_decay", self.bold_weight_decay)):
            knob = menu.knob(knob_name)
            if knob is None or (knob_name, "up") in self._worse or knob.current >= target:
                continue
            higher = [o for o in knob.options if o.value > knob.current]
            if higher:
                changes.append(KnobChange(knob=knob_name, value=min(higher, key=lambda o: abs(o.value - target)).value))
        if not changes:
            return None
        return Adjust(
            changes=changes[: menu.max_changes],
            reason=f"generalisation gap {100 * gaps[2]:.0f}% of the validation loss and widening: overfitting onset",
            expected_outcome=GAP_ONSET_OUTCOME,
        )


class OnsetAnnealRuleManager(EarlySignalsRuleManager):
    """Proposal v4 (issue 15, tinystories_v4): :class:`EarlySignalsRuleManager` with up to two bolder early moves.

    v3's runs (seeds 15-19) reached their best 160-360 steps after the plateau cut, at 3.98-4.08, while the tuned
    recipe (lr 1e-3, dropout 0.3 from the start) reaches 3.88-3.97; seed 16 left the plateau by itself and never
    got an LR cut, so its best was early stopping's. Two candidate answers, chosen between on the dev seeds only:

    - ``onset_lr_factor``: the overfitting-onset move also multiplies the LR by this factor (the listed option
      nearest it), an annealing step at the moment the generalisation gap opens, when a lower LR usually buys a
      lower minimum; on seed 16 it is the only LR move before the minimum.
    - ``plateau_dropout``: the plateau move (LR cut + new moments) also sets dropout to the listed value nearest
      this, so that the descent from the plateau is the tuned recipe's.

    :param onset_lr_factor: LR factor of the onset move (``None``: v3's move, regularisation only).
    :param plateau_dropout: dropout set by the plateau move (``None``: v3's move).
    """

    name = "rule_onset_anneal"

    def __init__(
        self, *args, onset_lr_factor: float | None = 0.5, plateau_dropout: float | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.onset_lr_factor = onset_lr_factor
        self.plateau_dropout = plateau_dropout

    def _with(self, decision: Decision | None, menu: ActionSpace, role: str, target: float, relative: bool):
        """``decision`` with one more change: the knob of ``role`` to the listed option nearest ``target``
        (× the current value where ``relative``), where the decision has room for it."""
        if not isinstance(decision, Adjust) or len(decision.changes) >= menu.max_changes:
            return decision
        changed = {c.knob for c in decision.changes}
        for knob in menu.knobs:
            if knob.name in changed or (knob.role != role and knob.name != role):
                continue
            if relative:
                option = self._option(knob, "down", target, base=knob.current)
            else:
                higher = [o for o in knob.options if o.value > knob.current]
                option = min(higher, key=lambda o: abs(o.value - target)) if higher else None
            if option is not None:
                changes = [*decision.changes, KnobChange(knob=knob.name, value=option.value)]
                return decision.model_copy(update={"changes": changes})
        return decision

    def _lr_too_high(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        decision = super()._lr_too_high(s, menu)
        if self.plateau_dropout is None:
            return decision
        return self._with(decision, menu, "dropout", self.plateau_dropout, relative=False)

    def _overfitting(self, s: TelemetrySnapshot, menu: ActionSpace) -> Decision | None:
        decision = super()._overfitting(s, menu)
        if self.onset_lr_factor is None or decision is None or decision.expected_outcome != GAP_ONSET_OUTCOME:
            return decision
        return self._with(decision, menu, "learning_rate", self.onset_lr_factor, relative=True)


class SupervisedRuleManager(OnsetAnnealRuleManager):
    """The rule manager for supervised runs: the library's rules, plus the early LR cut with new optimiser moments
    and dropout 0.3 on a starting plateau, and dropout, weight decay and an LR halving at the overfitting onset
    (``tinystories_v4``'s ``proposed_v4_both``, chosen on dev seeds, judged on fresh ones; module docstring).

    Give it an ``optimizer_restarts`` knob (:func:`rl_manager.supervised.optimizer_restart_knob`) for the plateau
    move's new moments; without one that move cuts the LR only.
    """

    name = "supervised_rule"

    def __init__(
        self, *args, onset_lr_factor: float | None = 0.5, plateau_dropout: float | None = 0.3, **kwargs
    ) -> None:
        super().__init__(*args, onset_lr_factor=onset_lr_factor, plateau_dropout=plateau_dropout, **kwargs)

"""A *proposed* change of the rule manager's overfitting handling, run here as an experiment arm only.

The library's rule manager (``rl_manager/managers/rule.py``, not changed here) answers overfitting with
"regularisation up and LR ×0.5" and, once the rollback gate opens, with a rollback consolidated by an
LR cut. On TinyStories that only stops the damage: the LR is halved again and again and the run ends
on the early-stopping model (issue 15). This subclass changes two things, for supervised runs only:

1. **rollback consolidated by regularisation**: when the rollback gate is open and the run is
   overfitting (validation loss above its best while the training loss still falls), roll back to the
   best weights *and raise a regularisation knob* (dropout, weight decay, label smoothing, in menu
   order) instead of cutting the LR; the rollback keeps the regularisation raised since the best.
2. **overfitting adjust without the LR cut**: regularisation up alone; the LR is halved only when no
   regularisation knob can move.

Everything else (the other rules, the memory of moves measured worse, the guard, probation) is the
library's. The patch that would make this the library's behaviour is in the issue-15 report.
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
    """The rule manager with the two changes of the module docstring (supervised runs only)."""

    name = "rule_regularize_first"

    @staticmethod
    def _train_falling(s: TelemetrySnapshot) -> bool:
        rows = [r for r in s.history if finite(r.train_loss)][-3:]
        return len(rows) == 3 and rows[-1].train_loss < rows[0].train_loss

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
        rows = [r for r in s.history if finite(r.val_loss) and finite(r.train_loss)][-3:]
        if len(rows) < 3:
            return None
        if not (rows[2].val_loss > rows[1].val_loss > rows[0].val_loss and rows[2].train_loss < rows[0].train_loss):
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
        rows = [r for r in s.history if finite(r.val_loss) and finite(r.train_loss)][-3:]
        if len(rows) < 3:
            return None
        if not (rows[2].val_loss > rows[1].val_loss > rows[0].val_loss and rows[2].train_loss < rows[0].train_loss):
            return None
        if "adjust" not in menu.actions:
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

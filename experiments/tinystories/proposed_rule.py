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

from rl_manager.managers.base import finite
from rl_manager.managers.rule import RuleManager
from rl_manager.schema import ActionSpace, Decision, KnobChange, RollbackAndConsolidate, TelemetrySnapshot


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

"""Keep-best: a baseline that never tunes, only returns to (and ends on) the best checkpoint.

It proposes ``rollback_to_best`` whenever the menu offers it (the rollback gate is open: the score
stayed below the best by the gate's margin for its patience) and ``no_action`` otherwise. Its
:attr:`KeepBestManager.end_on_best` tells the training loop to finish on the best checkpoint,
which makes the arm "early stopping with patience" on a fixed recipe.
"""

from __future__ import annotations

from rl_manager.managers.base import Manager, Proposal
from rl_manager.schema import ActionSpace, Decision, NoAction, RollbackToBest, TelemetrySnapshot


class KeepBestManager(Manager):
    """No knob changes; rolls back to the best checkpoint whenever the rollback gate is open."""

    name = "keep_best"
    #: the training loop should restore the best checkpoint at the end of training
    end_on_best: bool = True

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        return Proposal(reply=self.keep_best_decision(snapshot, menu))

    @staticmethod
    def keep_best_decision(snapshot: TelemetrySnapshot, menu: ActionSpace) -> Decision:
        """Roll back when the menu offers it, else wait."""
        if "rollback_to_best" in menu.actions:
            best = snapshot.best
            where = f" (evaluation {best.evaluation_index}, score {best.score:.3g})" if best else ""
            return RollbackToBest(
                reason=f"the score stayed below the best checkpoint{where}: return to it",
                expected_outcome="the score returns to the best checkpoint's level",
            )
        why = menu.closed.get("rollback_to_best", "rollback not offered")
        return NoAction(reason=f"keep the recipe; no rollback ({why})")

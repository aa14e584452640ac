"""The no-op manager: the unmanaged (fixed-recipe) arm, with the same telemetry and audit."""

from __future__ import annotations

from rl_manager.managers.base import Manager, Proposal
from rl_manager.schema import ActionSpace, NoAction, TelemetrySnapshot


class NoneManager(Manager):
    """Always proposes ``no_action``: a fixed recipe, evaluated and audited like a managed run."""

    name = "none"

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        return Proposal(reply=NoAction(reason="unmanaged run: fixed recipe"))

"""The manager interface: a manager turns (snapshot, menu) into a proposed decision."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from rl_manager.schema import ActionSpace, TelemetrySnapshot


@dataclass
class Proposal:
    """A manager's raw reply and what it cost.

    :param reply: the proposal (JSON text for an LLM, a decision for offline managers).
    :param prompt: the exact prompt sent, if any.
    :param latency_s: wall-clock time taken by :meth:`Manager.propose`.
    """

    reply: Any
    prompt: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class Manager(ABC):
    """Base class of managers. Managers never see the model; the guard checks what they say.

    Subclasses implement :meth:`_propose`.
    """

    #: name recorded as the proposer in the audit log
    name: str = "manager"

    def propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None = None) -> Proposal:
        """Propose a decision.

        :param snapshot: the telemetry at this decision point.
        :param menu: the actions and knob values allowed now.
        :param feedback: the guard's message about a rejected previous attempt (a re-ask).
        :return: the proposal, timed.
        """
        start = time.perf_counter()
        proposal = self._propose(snapshot, menu, feedback)
        proposal.latency_s = time.perf_counter() - start
        return proposal

    @abstractmethod
    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        """Implement in subclasses."""

"""The manager interface: a manager turns (snapshot, menu) into a proposed decision."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from rl_manager.schema import ActionSpace, KnobMenu, KnobRole, TelemetrySnapshot


class ProposalFailed(Exception):
    """A manager's request that failed after its prompt was built (a timeout, a dead endpoint).

    The audit records the prompt that was sent and names the cause, as for a reply.

    :param cause: the exception the request raised.
    :param prompt: the exact prompt sent.
    """

    def __init__(self, cause: Exception, prompt: str | None) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.prompt = prompt


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


# ------------------------------------------------------------------------------------------
# Helpers shared by the offline managers
# ------------------------------------------------------------------------------------------
def finite(x: float | None) -> bool:
    """Whether ``x`` is a number and finite."""
    return x is not None and math.isfinite(x)


def log_distance(a: float, b: float) -> float:
    """``|log a - log b|`` for positive values; two non-positive values compare linearly, and a
    non-positive value is infinitely far from a positive one."""
    if a > 0 and b > 0:
        return abs(math.log(a) - math.log(b))
    if a <= 0 and b <= 0:
        return abs(a - b)
    return math.inf


def find_knob(
    snapshot: TelemetrySnapshot, menu: ActionSpace, role: KnobRole, prefer: str
) -> tuple[str | None, KnobMenu | None, str]:
    """Find the knob of ``role`` (the one named ``prefer`` first).

    :param snapshot: the telemetry (all knobs, offered or not).
    :param menu: the menu (knobs that can move now).
    :param role: the knob role to look for.
    :param prefer: the name to prefer among knobs of that role.
    :return: ``(name, menu entry or None, why it is not offered)``; ``name`` is ``None`` when the
        run has no knob of that role.
    """
    names = [k.name for k in snapshot.knobs if k.role == role]
    names += [k.name for k in menu.knobs if k.role == role and k.name not in names]
    if not names:
        return None, None, f"the run has no {role} knob"
    name = prefer if prefer in names else names[0]
    entry = menu.knob(name)
    if entry is not None:
        return name, entry, ""
    why = menu.closed.get(f"knob:{name}", "no value is offered")
    return name, None, f"{name} cannot change now ({why})"

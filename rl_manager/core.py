"""One decision, end to end: propose → guard → (one re-ask) → fallback.

:func:`decide` is what the :class:`~rl_manager.controller.Controller` (behind the SB3 callback and the
PyTorch loop), the decide CLI and the benchmarks call; it returns a :class:`~rl_manager.schema.AuditRecord`-ready
:class:`Outcome` and never raises on a manager's failure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from rl_manager.guard import Guard
from rl_manager.managers.base import Manager, ProposalFailed
from rl_manager.menu import GateConfig, build_action_space
from rl_manager.schema import (
    ActionSpace,
    Attempt,
    Decision,
    NoAction,
    ResolvedChange,
    RollbackAndConsolidate,
    RollbackToBest,
    TelemetrySnapshot,
)

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """The guarded result of one decision point."""

    decision: Decision
    changes: list[ResolvedChange]
    menu: ActionSpace
    attempts: list[Attempt] = field(default_factory=list)
    proposer: str = ""
    fallback: str | None = None

    @property
    def validation_errors(self) -> list[str]:
        """All guard errors over all attempts."""
        return [e for a in self.attempts for e in a.errors]

    @property
    def latency_s(self) -> float:
        return sum(a.latency_s for a in self.attempts)

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens or 0 for a in self.attempts)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens or 0 for a in self.attempts)

    def audit_fields(self) -> dict:
        """The :class:`~rl_manager.schema.AuditRecord` fields this outcome fills."""
        return {
            "proposer": self.proposer,
            "menu": self.menu,
            "attempts": self.attempts,
            "validation_errors": self.validation_errors,
            "fallback": self.fallback,
            "decision": self.decision,
            "latency_s": self.latency_s,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    def knobs_after(self, snapshot: TelemetrySnapshot) -> dict[str, float]:
        """The recipe this decision leads to (a rollback restores the best checkpoint's knobs)."""
        knobs = snapshot.knob_values()
        if isinstance(self.decision, RollbackToBest | RollbackAndConsolidate) and snapshot.best is not None:
            knobs.update({k: v for k, v in snapshot.best.knobs.items() if k in knobs})
        knobs.update({c.knob: c.after for c in self.changes})
        return knobs


#: counters every integration keeps (see :class:`~rl_manager.controller.Controller`)
LEDGER_COUNTS = (
    "decisions",
    "applied",
    "rejected_attempts",
    "fallbacks",
    "stale",
    "abandoned",
    "rollbacks",
    "revalidation_rejected",
)


@dataclass
class DecisionLedger:
    """Decision counters, manager latency and token totals of one run (summary, TensorBoard, resume).

    :param counts: counters by name; those of :data:`LEDGER_COUNTS` always exist.
    """

    counts: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        for name in LEDGER_COUNTS:
            self.counts.setdefault(name, 0)

    def add(self, outcome: Outcome, applied: bool) -> None:
        """Count one decision point."""
        self.counts["decisions"] += 1
        self.counts["applied"] += int(applied and outcome.decision.action != "no_action")
        self.counts["rejected_attempts"] += sum(1 for a in outcome.attempts if a.errors)
        self.counts["fallbacks"] += int(outcome.fallback is not None)
        self.latency_s += outcome.latency_s
        self.prompt_tokens += outcome.prompt_tokens
        self.completion_tokens += outcome.completion_tokens

    def summary(self) -> dict[str, float | int]:
        """The counters and totals as written to ``summary.json``."""
        return {
            **self.counts,
            "latency_s_total": round(self.latency_s, 6),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def redactor(manager: Manager):
    """A function that masks ``manager``'s API key (``settings.api_key_value()``, if it has one) in a text.

    An endpoint may echo the key back, in an error message or in a reply; what is recorded is masked.
    """
    settings = getattr(manager, "settings", None)
    key = settings.api_key_value() if hasattr(settings, "api_key_value") else None
    if not key:
        return lambda text: text
    return lambda text: text.replace(key, "***")


def _attempt(manager: Manager, snapshot: TelemetrySnapshot, menu: ActionSpace, guard: Guard, feedback: str | None):
    redact = redactor(manager)
    start = time.perf_counter()
    try:
        proposal = manager.propose(snapshot, menu, feedback)
    except Exception as exc:  # a dead endpoint or a buggy manager must not stop training
        latency = time.perf_counter() - start  # the time a failure cost (a timeout's wait) is part of the decision's
        failed = exc if isinstance(exc, ProposalFailed) else None
        cause = failed.cause if failed is not None else exc
        message = redact(f"manager error: {type(cause).__name__}: {cause}")
        logger.warning("manager %s failed: %s", manager.name, message)
        prompt = redact(failed.prompt) if failed is not None and failed.prompt else None
        return Attempt(proposer=manager.name, prompt=prompt, errors=[message], latency_s=latency), None
    review = guard.review(proposal.reply, menu)
    reply = proposal.reply
    if not isinstance(reply, str):
        reply = reply.model_dump_json() if hasattr(reply, "model_dump_json") else repr(reply)
    reply = redact(reply)
    errors = [redact(e) for e in review.errors]
    if review.decision is not None:  # its free text may quote the key too
        text = {k: redact(getattr(review.decision, k)) for k in ("reason", "expected_outcome")}
        review.decision = review.decision.model_copy(update=text)
    if proposal.finish_reason == "length":
        # a truncated reply is a failure even if it happens to parse; named first whatever else the guard found
        # (a cut-off string is "not valid JSON"), so that the log and a re-ask say why: the reply was too long
        errors = ["reply was cut off at the token limit (finish_reason=length): a shorter reply fits", *errors]
        review.decision = None
    attempt = Attempt(
        proposer=manager.name,
        prompt=redact(proposal.prompt) if proposal.prompt else proposal.prompt,  # (a 2-stage prompt quotes a reply)
        raw_reply=reply,
        errors=errors,
        latency_s=proposal.latency_s,
        prompt_tokens=proposal.prompt_tokens,
        completion_tokens=proposal.completion_tokens,
        finish_reason=proposal.finish_reason,
    )
    return attempt, (review if not errors else None)


def decide(
    snapshot: TelemetrySnapshot,
    manager: Manager,
    *,
    gates: GateConfig | None = None,
    fallback: Manager | None = None,
    max_reasks: int = 1,
    guard: Guard | None = None,
) -> Outcome:
    """Take one guarded decision.

    :param snapshot: telemetry at this decision point.
    :param manager: the primary manager.
    :param gates: gate configuration for the menu.
    :param fallback: manager used when the primary fails every attempt (``None``: no-op).
    :param max_reasks: re-asks of the primary manager, each showing the guard's message.
    :param guard: the guard (a default one if ``None``).
    :return: the outcome; a no-op if nothing valid was proposed.
    """
    guard = guard or Guard()
    menu = build_action_space(snapshot, gates)
    attempts: list[Attempt] = []
    feedback: str | None = None
    for _ in range(1 + max_reasks):
        attempt, review = _attempt(manager, snapshot, menu, guard, feedback)
        attempts.append(attempt)
        if review is not None:
            return Outcome(review.decision, review.changes, menu, attempts, proposer=manager.name)
        if attempt.raw_reply is None:  # transport/manager error: re-asking will not help
            break
        feedback = "The proposal was rejected:\n" + "\n".join(f"- {e}" for e in attempt.errors)
    if fallback is not None and fallback is not manager:
        attempt, review = _attempt(fallback, snapshot, menu, guard, None)
        attempts.append(attempt)
        if review is not None:
            return Outcome(
                review.decision, review.changes, menu, attempts, proposer=fallback.name, fallback=fallback.name
            )
    reason = f"fallback: no valid proposal from {manager.name}"
    return Outcome(NoAction(reason=reason), [], menu, attempts, proposer=manager.name, fallback="no_action")

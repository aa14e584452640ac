"""The guard: the only path from a proposed decision to a change.

:meth:`Guard.review` checks a proposal (JSON text, a dict, or a :data:`~rl_manager.schema.Decision`)
against the current :class:`~rl_manager.schema.ActionSpace`:

- the action is known and offered now (structural actions only while their gate is open);
- the fields are exactly those of the action (no extras, no missing ones, strict types:
  booleans and strings are not numbers);
- an adjust changes 1 to ``max_changes`` distinct knobs, every value one of the values offered
  for that knob; a consolidation makes one change from the knob's conservative options;
- every change changes something.

A rejection carries readable messages that can be shown to an LLM in a re-ask. The guard never
raises: an unexpected error becomes a rejection.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from rl_manager.menu import same_value
from rl_manager.schema import (
    ActionSpace,
    Adjust,
    Decision,
    DecisionAdapter,
    KnobChange,
    KnobMenu,
    KnobOption,
    ResolvedChange,
    RollbackAndConsolidate,
)

logger = logging.getLogger(__name__)

#: Longest reply text the guard will parse.
MAX_REPLY_CHARS = 20_000


@dataclass
class Review:
    """The guard's verdict on one proposal.

    :param decision: the validated decision, values replaced by the menu's exact values
        (``None`` when rejected).
    :param changes: the knob changes it makes (before/after).
    :param errors: why it was rejected (empty when accepted).
    """

    decision: Decision | None = None
    changes: list[ResolvedChange] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the proposal was accepted."""
        return self.decision is not None and not self.errors

    @property
    def message(self) -> str:
        """A readable rejection message for a re-ask."""
        if self.ok:
            return "accepted"
        return "The proposal was rejected:\n" + "\n".join(f"- {e}" for e in self.errors)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _fmt_options(options: list[KnobOption]) -> str:
    return ", ".join(_fmt(o.value) for o in options)


class _DuplicateKey(Exception):
    """A JSON object names the same key twice (``json`` would keep the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey(next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])))
    return obj


def parse_reply(reply: Any) -> tuple[dict | None, str | None]:
    """Turn a reply into a JSON object, or return the reason it is not one.

    Text may be wrapped in a Markdown code fence; nothing else is repaired. An object that repeats a
    key is refused (which of the two values was meant is unknowable).
    """
    if isinstance(reply, BaseModel):
        return reply.model_dump(mode="python"), None
    if isinstance(reply, dict):
        return reply, None
    if isinstance(reply, bytes):
        try:
            reply = reply.decode("utf-8")
        except UnicodeDecodeError:
            return None, "reply is not UTF-8 text"
    if not isinstance(reply, str):
        return None, f"reply must be a JSON object, got {type(reply).__name__}"
    text = reply.strip()
    if not text:
        return None, "reply is empty"
    if len(text) > MAX_REPLY_CHARS:
        return None, f"reply is longer than {MAX_REPLY_CHARS} characters"
    if text.startswith("```"):
        text = text.strip("`").strip()
        if text.lower().startswith("json"):
            text = text[4:]
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        return None, f"reply is ambiguous: the key {exc.args[0]!r} appears twice in one object"
    except (ValueError, RecursionError) as exc:  # ValueError: also numbers past Python's 4,300-digit limit
        return None, f"reply is not valid JSON: {exc}"
    if not isinstance(obj, dict):
        return None, f"reply must be a JSON object, got {type(obj).__name__}"
    return obj, None


def _validation_messages(exc: ValidationError) -> list[str]:
    messages = []
    for err in exc.errors(include_url=False)[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "reply"
        messages.append(f"{loc}: {err['msg']}")
    return messages


class Guard:
    """Audits proposals against a menu. Stateless: all state is in the menu."""

    def review(self, reply: Any, menu: ActionSpace) -> Review:
        """Check ``reply`` against ``menu``; never raises.

        :param reply: the proposal (JSON text, dict or Decision).
        :param menu: the menu offered for this decision.
        :return: the verdict.
        """
        try:
            return self._review(reply, menu)
        except Exception as exc:  # the guard must never break the training loop
            logger.exception("guard failed on a proposal")
            return Review(errors=[f"internal guard error: {type(exc).__name__}: {exc}"])

    def _review(self, reply: Any, menu: ActionSpace) -> Review:
        obj, problem = parse_reply(reply)
        if obj is None:
            return Review(errors=[problem or "unreadable reply"])
        action = obj.get("action")
        if not isinstance(action, str):
            return Review(errors=[f"'action' must be one of {menu.actions}"])
        if action not in menu.actions:
            why = menu.closed.get(action)
            known = action in {"no_action", "adjust", "rollback_to_best", "rollback_and_consolidate", "stop_training"}
            if not known:
                return Review(errors=[f"unknown action {action!r}; offered now: {menu.actions}"])
            return Review(errors=[f"action {action!r} is not available now ({why}); offered now: {menu.actions}"])
        try:
            decision = DecisionAdapter.validate_python(obj, strict=True)
        except ValidationError as exc:
            return Review(errors=_validation_messages(exc))
        if isinstance(decision, Adjust):
            return self._review_adjust(decision, menu)
        if isinstance(decision, RollbackAndConsolidate):
            return self._review_consolidate(decision, menu)
        return Review(decision=decision)

    def _resolve(
        self,
        change: KnobChange,
        knob: KnobMenu | None,
        options: list[KnobOption],
        where: str,
        base: float | None = None,
    ) -> tuple[ResolvedChange | None, str | None]:
        if knob is None:
            return None, f"{where}: knob {change.knob!r} is not offered now (unknown or in cooldown)"
        if not math.isfinite(change.value):
            return None, f"{where}: value for {change.knob} must be finite"
        before = knob.current if base is None else base
        for option in options:
            if same_value(option.value, change.value):
                if same_value(option.value, before):
                    return None, f"{where}: {change.knob} is already {_fmt(before)}"
                return ResolvedChange(knob=knob.name, before=before, after=option.value), None
        return None, (
            f"{where}: {_fmt(change.value)} is not offered for {change.knob} "
            f"(current {_fmt(knob.current)}); offered: {_fmt_options(options) or 'none'}"
        )

    def _review_adjust(self, decision: Adjust, menu: ActionSpace) -> Review:
        if len(decision.changes) > menu.max_changes:
            return Review(errors=[f"changes: at most {menu.max_changes} knobs per decision"])
        errors: list[str] = []
        resolved: list[ResolvedChange] = []
        for i, change in enumerate(decision.changes):
            knob = menu.knob(change.knob)
            r, err = self._resolve(change, knob, knob.options if knob else [], f"changes.{i}")
            if err:
                errors.append(err)
            elif r is not None:
                resolved.append(r)
        if errors:
            return Review(errors=errors)
        exact = decision.model_copy(update={"changes": [KnobChange(knob=r.knob, value=r.after) for r in resolved]})
        return Review(decision=exact, changes=resolved)

    def _review_consolidate(self, decision: RollbackAndConsolidate, menu: ActionSpace) -> Review:
        knob = menu.knob(decision.change.knob)
        options = knob.conservative_options if knob else []
        # the rollback keeps the recipe in force: the change is made from the current value
        r, err = self._resolve(decision.change, knob, options, "change")
        if err or r is None:
            return Review(errors=[(err or "change rejected") + " (a consolidation must be a conservative change)"])
        exact = decision.model_copy(update={"change": KnobChange(knob=r.knob, value=r.after)})
        return Review(decision=exact, changes=[r])

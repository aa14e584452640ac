"""The LLM manager: asks an OpenAI-compatible chat endpoint for a decision.

Works with any server that speaks the OpenAI chat-completions API (OpenAI, vLLM, Ollama,
llama.cpp ``llama-server``) through the official ``openai`` client. The reply is returned as
text; :func:`rl_manager.core.decide` always re-validates it with the guard, re-asks once with
the guard's message and falls back otherwise. Client errors (timeouts, HTTP errors, dropped
connections) propagate to :func:`~rl_manager.core.decide`, which logs them and falls back.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from rl_manager.guard import parse_reply
from rl_manager.managers.base import Manager, Proposal, ProposalFailed
from rl_manager.prompt import (
    build_compact_messages,
    build_messages,
    fold_problem,
    menu_schema,
    render_messages,
    rule_advice,
)
from rl_manager.schema import ActionSpace, DecisionAdapter, TelemetrySnapshot
from rl_manager.settings import LLMSettings

logger = logging.getLogger(__name__)

#: key sent in place of a missing API key (local servers ignore it; the client requires one)
NO_KEY = "no-key"
#: the second request of a two-stage decision
FORMAT_REQUEST = "Now write that decision as one JSON object, with knob values copied from the menu."
#: longest prose kept as the decision's reason
MAX_REASON_CHARS = 1000


def is_strict_compatible(schema: dict[str, Any]) -> bool:
    """Whether ``schema`` meets OpenAI's strict structured-output rules (as far as checked here).

    Checked: the root is an object (not ``anyOf``/``oneOf``), every object lists all its
    properties as required and sets ``additionalProperties: false``, and no ``oneOf`` or
    ``default`` appears anywhere.

    :param schema: a JSON schema.
    """
    if schema.get("type") != "object" or "anyOf" in schema or "oneOf" in schema:
        return False

    def ok(node: Any) -> bool:
        if isinstance(node, list):
            return all(ok(n) for n in node)
        if not isinstance(node, dict):
            return True
        if "oneOf" in node or "default" in node:
            return False
        if node.get("type") == "object":
            props = node.get("properties", {})
            if node.get("additionalProperties") is not False or set(node.get("required", [])) != set(props):
                return False
        return all(ok(v) for k, v in node.items() if k not in ("const", "enum"))

    return ok(schema)


class BudgetExceeded(RuntimeError):
    """The run's LLM budget (calls or tokens) is spent; :func:`~rl_manager.core.decide` falls back."""


def decision_response_format(mode: str, menu: ActionSpace | None = None) -> dict[str, Any] | None:
    """The ``response_format`` request field for ``mode``.

    :param mode: ``menu_schema``, ``json_schema``, ``json_object`` or ``none``.
    :param menu: the menu of this decision (``menu_schema`` only).
    :return: the field, or ``None`` to leave it out.
    :raises ValueError: for an unknown mode, or ``menu_schema`` without a menu.
    """
    if mode == "menu_schema":
        if menu is None:
            raise ValueError("menu_schema needs the menu of the decision")
        schema = menu_schema(menu)
        return {
            "type": "json_schema",
            "json_schema": {"name": "decision", "schema": schema, "strict": is_strict_compatible(schema)},
        }
    if mode == "none":
        return None
    if mode == "json_object":
        return {"type": "json_object"}
    if mode == "json_schema":
        schema = DecisionAdapter.json_schema()
        # The decision union is a ``oneOf`` at the root, which OpenAI's strict mode refuses; servers
        # that compile schemas to grammars (llama.cpp, vLLM) enforce it anyway. The guard re-validates.
        return {
            "type": "json_schema",
            "json_schema": {"name": "decision", "schema": schema, "strict": is_strict_compatible(schema)},
        }
    raise ValueError(f"unknown response_format mode {mode!r}; choose menu_schema, json_schema, json_object or none")


class LLMManager(Manager):
    """Proposes decisions with an LLM behind an OpenAI-compatible endpoint.

    :param settings: connection and sampling settings (``None``: read from ``RL_MANAGER_*``).
    :param client: an ``openai.OpenAI`` client to use instead of building one (tests, proxies).
    """

    name = "llm"

    def __init__(self, settings: LLMSettings | None = None, client: Any | None = None) -> None:
        self.settings = settings if settings is not None else LLMSettings()
        if client is None:
            try:
                from openai import OpenAI
            except ImportError as exc:  # pragma: no cover - openai is a dependency of the llm extra
                raise ImportError("LLMManager needs the 'openai' package: pip install 'rl_manager[llm]'") from exc
            client = OpenAI(
                base_url=self.settings.base_url,
                api_key=self.settings.api_key_value() or NO_KEY,
                timeout=self.settings.timeout_s,
                max_retries=self.settings.max_retries,
            )
        self._client = client
        if self.settings.response_format != "menu_schema":  # validates the mode now, not at the first call
            decision_response_format(self.settings.response_format)
        #: requests sent and prompt + completion tokens used so far (the budget guard counts these)
        self.calls = 0
        self.tokens_used = 0

    def __repr__(self) -> str:
        s = self.settings
        return f"LLMManager(model={s.model!r}, base_url={s.base_url!r}, response_format={s.response_format!r})"

    def budget(self) -> dict[str, int | None]:
        """Calls and tokens used so far, with their limits (for the run summary)."""
        s = self.settings
        return {
            "calls": self.calls,
            "max_calls": s.max_calls,
            "tokens": self.tokens_used,
            "max_tokens_run": s.max_tokens_run,
        }

    def messages(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> list[dict[str, str]]:
        """The chat messages of one request, in the configured prompt style."""
        if self.settings.prompt == "full":
            return build_messages(snapshot, menu, feedback)
        # a schema-constrained reply needs no list of reply shapes in the prompt
        formats = self.settings.response_format not in ("menu_schema", "json_schema")
        advice = rule_advice(snapshot, menu) if self.settings.advice else None
        return build_compact_messages(
            snapshot, menu, feedback, formats=formats, advice=advice, examples=self.settings.examples
        )

    def request_kwargs(self, messages: list[dict[str, str]], menu: ActionSpace | None = None) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for ``messages``."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
        }
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if menu is not None or s.response_format != "menu_schema":
            response_format = decision_response_format(s.response_format, menu)
            if response_format is not None:
                kwargs["response_format"] = response_format
        return kwargs

    def _call(self, messages: list[dict[str, str]], **overrides: Any) -> tuple[str | None, Any, Any]:
        """One request (budget-checked and counted): the reply text, the choice and the usage."""
        s = self.settings
        if s.max_calls is not None and self.calls >= s.max_calls:
            raise BudgetExceeded(f"LLM budget spent: {self.calls} calls (max_calls={s.max_calls})")
        if s.max_tokens_run is not None and self.tokens_used >= s.max_tokens_run:
            raise BudgetExceeded(f"LLM budget spent: {self.tokens_used} tokens (max_tokens_run={s.max_tokens_run})")
        self.calls += 1
        kwargs = {**self.request_kwargs(messages), **overrides}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            response = self._client.chat.completions.create(**kwargs)
        except Exception as exc:  # the audit keeps what was sent
            raise ProposalFailed(exc, render_messages(messages)) from exc
        usage = response.usage
        if usage is not None:
            self.tokens_used += int(usage.prompt_tokens or 0) + int(usage.completion_tokens or 0)
        if not response.choices:
            raise ProposalFailed(RuntimeError("the server returned no choices"), render_messages(messages))
        choice = response.choices[0]
        text = choice.message.content if choice.message is not None else None
        logger.debug(
            "llm reply: finish_reason=%s, %s prompt / %s completion tokens",
            choice.finish_reason,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
        )
        return text, choice, usage

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        s = self.settings
        if s.two_stage and s.prompt == "compact" and s.response_format == "menu_schema":
            return self._propose_two_stage(snapshot, menu, feedback)
        messages = self.messages(snapshot, menu, feedback)
        text, choice, usage = self._call(messages, response_format=decision_response_format(s.response_format, menu))
        if text is not None and s.prompt == "compact":
            text = fold_problem(text)
        return Proposal(
            reply=text if text is not None else "",
            prompt=render_messages(messages),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            finish_reason=choice.finish_reason,
        )

    def _propose_two_stage(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        """Decide in prose, then format at temperature 0 with the menu schema (the paper's two stages).

        The second request repeats the first conversation, so a server with a prompt cache
        (llama.cpp) only processes the prose and one more line. The prose becomes the reason.
        """
        s = self.settings
        advice = rule_advice(snapshot, menu) if s.advice else None
        messages = build_compact_messages(
            snapshot, menu, feedback, formats=False, two_stage=True, advice=advice, examples=s.examples
        )
        prose, first, usage1 = self._call(messages, max_tokens=s.prose_tokens, response_format=None)
        prose = (prose or "").strip()
        if not prose or first.finish_reason not in ("stop", "length"):
            no_prose = RuntimeError(f"no prose decision (finish_reason={first.finish_reason!r})")
            raise ProposalFailed(no_prose, render_messages(messages))
        messages = [*messages, {"role": "assistant", "content": prose}, {"role": "user", "content": FORMAT_REQUEST}]
        # one knob per adjust: the prose names one move, and a small model pads a list with more
        schema = menu_schema(menu, problem=False, reason=False, max_changes=1)
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "decision", "schema": schema, "strict": False},
        }
        text, choice, usage2 = self._call(messages, temperature=0.0, response_format=response_format)
        reply = text if text is not None else ""
        obj, _ = parse_reply(reply)  # the guard's reading: a repeated key must reach the guard whole
        if isinstance(obj, dict):  # the prose is the reason; the guard judges the rest
            reply = json.dumps({"reason": prose[:MAX_REASON_CHARS], **obj})
        tokens = [(u.prompt_tokens, u.completion_tokens) for u in (usage1, usage2) if u is not None]
        return Proposal(
            reply=reply,
            prompt=render_messages(messages),
            prompt_tokens=sum(p or 0 for p, _ in tokens) if tokens else None,
            completion_tokens=sum(c or 0 for _, c in tokens) if tokens else None,
            finish_reason=choice.finish_reason,
        )

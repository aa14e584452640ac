"""Settings of the LLM manager, read from ``RL_MANAGER_*`` environment variables.

=============================  ==============================================================
variable                       meaning
=============================  ==============================================================
``RL_MANAGER_BASE_URL``        OpenAI-compatible endpoint (``None``: the OpenAI API)
``RL_MANAGER_MODEL``           model name sent with each request
``RL_MANAGER_API_KEY``         API key (falls back to ``OPENAI_API_KEY``)
``RL_MANAGER_TIMEOUT_S``       seconds per request (at most 60; the client's own default is 600)
``RL_MANAGER_MAX_RETRIES``     transport retries done by the ``openai`` client
``RL_MANAGER_TEMPERATURE``     sampling temperature
``RL_MANAGER_SEED``            sampling seed (``None``: not sent)
``RL_MANAGER_MAX_TOKENS``      largest reply, in tokens
``RL_MANAGER_RESPONSE_FORMAT`` ``menu_schema`` (default: a schema of this decision's menu, reason first),
                               ``json_schema`` (the static decision schema), ``json_object`` or ``none``
``RL_MANAGER_PROMPT``          ``compact`` (default; ~800-3,000 tokens, trimmed to ``PROMPT_TOKEN_BUDGET``)
                               or ``full`` (the long prompt)
``RL_MANAGER_TWO_STAGE``       decide in prose, then format with the menu schema (default false: it
                               scored lower on the visible suite with the 1.5B model)
``RL_MANAGER_ADVICE``          show the rule manager's reading of the snapshot (its state and proposal) in
                               the compact prompt, as one more computed signal (default false)
``RL_MANAGER_EXAMPLES``        end the compact system prompt with one worked example per problem (default false)
``RL_MANAGER_MAX_CALLS``       budget guard: most LLM requests per run (``None``: no limit)
``RL_MANAGER_MAX_TOKENS_RUN``  budget guard: most prompt + completion tokens per run
=============================  ==============================================================

The key is a :class:`~pydantic.SecretStr`: ``repr``, ``str`` and ``model_dump`` show it masked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ResponseFormat = Literal["menu_schema", "json_schema", "json_object", "none"]
PromptStyle = Literal["compact", "full"]


class LLMSettings(BaseSettings):
    """Connection and sampling settings of :class:`~rl_manager.managers.llm.LLMManager`.

    :param base_url: OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8080/v1`` for llama.cpp's
        ``llama-server``; ``None`` uses the OpenAI API.
    :param model: model name.
    :param api_key: API key; ``RL_MANAGER_API_KEY`` or else ``OPENAI_API_KEY``. Local servers
        usually need none.
    :param timeout_s: timeout of one request in seconds (0 < timeout_s <= 60).
    :param max_retries: retries of the ``openai`` client on connection errors, 429 and 5xx.
    :param temperature: sampling temperature.
    :param seed: sampling seed, or ``None`` to leave it out of the request.
    :param max_tokens: largest reply in tokens; a reply cut off at this length is a failure.
    :param response_format: ``menu_schema`` (the server enforces a schema of this decision's menu:
        a non-empty ``reason`` first, the allowed actions and knob values as enums),
        ``json_schema`` (the static decision schema), ``json_object`` (the server enforces JSON)
        or ``none`` (the prompt alone asks for JSON).
    :param prompt: ``compact`` (short; the reading notes, menu split into lower/higher values) or
        ``full`` (every section of the telemetry).
    :param two_stage: with the compact prompt and ``menu_schema``: decide in prose first (at most
        ``prose_tokens``), then format that decision with the menu schema at temperature 0.
    :param prose_tokens: largest prose answer of a two-stage decision.
    :param advice: with the compact prompt: add the deterministic rule manager's reading (the state
        its table diagnoses and the decision it proposes) as a section the model may adopt or overrule.
    :param examples: with the compact prompt: end the system message with worked examples, one short case per
        problem of the table (signals -> reply), for a small model.
    :param max_calls: budget guard: most requests per manager (run); past it the manager raises
        and :func:`~rl_manager.core.decide` falls back. ``None``: unlimited.
    :param max_tokens_run: budget guard: most prompt + completion tokens per manager (run).
    """

    model_config = SettingsConfigDict(
        env_prefix="RL_MANAGER_",
        extra="ignore",
        populate_by_name=True,
        validate_assignment=True,
        hide_input_in_errors=True,
    )

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RL_MANAGER_API_KEY", "OPENAI_API_KEY"),
    )
    timeout_s: float = Field(default=60.0, gt=0, le=60)
    max_retries: int = Field(default=1, ge=0, le=5)
    temperature: float = Field(default=0.2, ge=0, le=2)
    seed: int | None = 0
    max_tokens: int = Field(default=512, ge=16, le=32_768)
    response_format: ResponseFormat = "menu_schema"
    prompt: PromptStyle = "compact"
    two_stage: bool = False
    prose_tokens: int = Field(default=96, ge=16, le=1024)
    advice: bool = False
    examples: bool = False
    max_calls: int | None = Field(default=None, ge=0)
    max_tokens_run: int | None = Field(default=None, ge=0)

    def api_key_value(self) -> str | None:
        """The key in clear text, for the HTTP client only; never log it."""
        return None if self.api_key is None else self.api_key.get_secret_value()

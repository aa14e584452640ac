"""Pydantic v2 schemas shared by every part of the manager.

All models forbid extra fields. Non-finite floats are serialised as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` so that every audit record stays strict JSON and NaN
telemetry survives a round trip.

``python -m rl_manager.schema`` prints the JSON schemas of the public models.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

#: Multipliers offered for a knob unless its spec lists others (the paper's menu).
DEFAULT_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)

#: What a knob does, as far as the rule manager is concerned. For every role a *larger* value
#: means "more" of it: more exploration, more regularisation, a heavier cost penalty, a larger
#: step. Actuators expose knobs in that orientation.
KnobRole = Literal[
    "learning_rate", "exploration", "regularization", "cost_penalty", "clip_range", "loss_weight", "other"
]

_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.]{0,63}$"


class StrictModel(BaseModel):
    """Base model: unknown fields are rejected, NaN/inf serialise as strings."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# Knobs
# --------------------------------------------------------------------------------------------
class KnobSpec(StrictModel):
    """A tunable knob: its current value, absolute bounds and the moves it allows.

    :param name: knob name, e.g. ``learning_rate``.
    :param value: current (effective) value.
    :param low: absolute lower bound.
    :param high: absolute upper bound.
    :param multipliers: factors the value may be multiplied by (result clamped into bounds).
    :param values: absolute values the knob may be set to (e.g. a clip range of 0.1/0.2/0.3).
    :param scale: ``log`` or ``linear``, a hint for displays and interpolation.
    :param role: what the knob controls (see :data:`KnobRole`).
    :param conservative: direction of a *conservative* change (used by rollback-and-consolidate),
        ``down`` for a learning rate, ``up`` for a cost penalty; ``None`` if it has none.
    :param cooldown: evaluations after a change during which the knob cannot change again.
    :param last_changed_at: evaluation index of the last applied change, if any.
    :param description: free text shown to an LLM.
    """

    name: str = Field(pattern=_NAME_PATTERN)
    value: float = Field(allow_inf_nan=False)
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    values: tuple[float, ...] = ()
    scale: Literal["log", "linear"] = "log"
    role: KnobRole = "other"
    conservative: Literal["down", "up"] | None = None
    cooldown: int = Field(default=1, ge=0)
    last_changed_at: int | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> KnobSpec:
        if self.low > self.high:
            raise ValueError(f"knob {self.name!r}: low {self.low} > high {self.high}")
        if not self.low <= self.value <= self.high:
            raise ValueError(f"knob {self.name!r}: value {self.value} outside [{self.low}, {self.high}]")
        for m in self.multipliers:
            if not (math.isfinite(m) and m > 0):
                raise ValueError(f"knob {self.name!r}: multipliers must be finite and > 0, got {m}")
        for v in self.values:
            if not math.isfinite(v):
                raise ValueError(f"knob {self.name!r}: listed values must be finite, got {v}")
        if not self.multipliers and not self.values:
            raise ValueError(f"knob {self.name!r}: needs multipliers or listed values")
        return self


class KnobOption(StrictModel):
    """One value a knob may be set to now, with the multiplier that yields it (if any)."""

    value: float
    multiplier: float | None = None


class KnobMenu(StrictModel):
    """The choices offered for one knob at one decision point."""

    name: str
    role: KnobRole
    current: float
    low: float
    high: float
    options: list[KnobOption]
    #: value at the best checkpoint (what a rollback restores); conservative options move from it
    best_value: float | None = None
    conservative_options: list[KnobOption] = Field(default_factory=list)


ActionName = Literal["no_action", "adjust", "rollback_to_best", "rollback_and_consolidate", "stop_training"]


class ActionSpace(StrictModel):
    """The menu: every action and knob value that a proposal may use right now.

    Choices that would not change anything are absent; structural actions are listed in
    ``actions`` only while their gate is open, and ``closed`` says why the others are not.
    """

    actions: list[ActionName]
    knobs: list[KnobMenu]
    max_changes: int = 3
    closed: dict[str, str] = Field(default_factory=dict)

    def knob(self, name: str) -> KnobMenu | None:
        """Return the menu entry of knob ``name`` or ``None``."""
        for k in self.knobs:
            if k.name == name:
                return k
        return None


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------
class KnobChange(StrictModel):
    """Set ``knob`` to ``value``, which must be one of the values offered in the menu."""

    knob: str = Field(min_length=1, max_length=64)
    value: float


class _DecisionBase(StrictModel):
    reason: str = Field(default="", max_length=2000)
    expected_outcome: str = Field(default="", max_length=2000)


class NoAction(_DecisionBase):
    """Keep the recipe as it is."""

    action: Literal["no_action"] = "no_action"


class Adjust(_DecisionBase):
    """Change 1-3 knobs to values offered in the menu."""

    action: Literal["adjust"] = "adjust"
    changes: list[KnobChange] = Field(min_length=1, max_length=3)

    @field_validator("changes")
    @classmethod
    def _unique_knobs(cls, changes: list[KnobChange]) -> list[KnobChange]:
        names = [c.knob for c in changes]
        if len(set(names)) != len(names):
            raise ValueError(f"each knob may appear once, got {names}")
        return changes


class RollbackToBest(_DecisionBase):
    """Restore the best checkpoint (weights and optimiser state; recipe of that checkpoint)."""

    action: Literal["rollback_to_best"] = "rollback_to_best"


class RollbackAndConsolidate(_DecisionBase):
    """Restore the best checkpoint and make exactly one conservative change."""

    action: Literal["rollback_and_consolidate"] = "rollback_and_consolidate"
    change: KnobChange


class StopTraining(_DecisionBase):
    """End training: the target has been met."""

    action: Literal["stop_training"] = "stop_training"


Decision = Annotated[
    NoAction | Adjust | RollbackToBest | RollbackAndConsolidate | StopTraining,
    Field(discriminator="action"),
]
DecisionAdapter: TypeAdapter[Decision] = TypeAdapter(Decision)


def knob_changes(decision: Decision) -> list[KnobChange]:
    """The knob changes a decision asks for: an adjust's ``changes``, a consolidation's one ``change``."""
    if isinstance(decision, Adjust):
        return list(decision.changes)
    if isinstance(decision, RollbackAndConsolidate):
        return [decision.change]
    return []


class ResolvedChange(StrictModel):
    """A validated knob change: the value before and after."""

    knob: str
    before: float
    after: float


# --------------------------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------------------------
class RunPosition(StrictModel):
    """Where the run is."""

    step: int = Field(ge=0)
    total_steps: int | None = Field(default=None, ge=1)
    evaluation_index: int = Field(default=0, ge=0)
    wall_time_s: float | None = None
    last_rollback_at: int | None = None

    @property
    def progress(self) -> float | None:
        """Fraction of the budget used, or ``None`` without a budget."""
        return None if self.total_steps is None else min(1.0, self.step / self.total_steps)


class RateInterval(StrictModel):
    """A 95% Wilson score interval of a rate measured on ``n`` episodes."""

    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)


class EvalCell(StrictModel):
    """Evaluation results of one cell (a difficulty, or the stochastic policy) of a paired scene set."""

    name: str
    n_episodes: int = Field(default=0, ge=0)
    mean_return: float | None = None
    success_rate: float | None = None
    safe_success_rate: float | None = None
    violation_rate: float | None = None
    mean_cost: float | None = None


class EvalMetrics(StrictModel):
    """Evaluation results. ``None`` means the metric is absent for this task.

    With a paired scene set (the same evaluation seeds at every boundary) ``paired`` is true and
    the rates carry Wilson intervals; ``cells`` break the figures down per difficulty and
    ``stochastic`` holds the same scenes played with the stochastic policy.
    """

    n_episodes: int = Field(default=0, ge=0)
    mean_return: float | None = None
    std_return: float | None = None
    success_rate: float | None = None
    mean_cost: float | None = None
    violation_rate: float | None = None
    safe_success_rate: float | None = None
    mean_ep_length: float | None = None
    val_loss: float | None = None
    paired: bool = False
    success_ci: RateInterval | None = None
    safe_success_ci: RateInterval | None = None
    violation_ci: RateInterval | None = None
    cells: list[EvalCell] = Field(default_factory=list)
    stochastic: EvalCell | None = None


class TrainWindow(StrictModel):
    """Rolling-window training metrics (episodes finished recently, or training loss)."""

    n_episodes: int = Field(default=0, ge=0)
    mean_return: float | None = None
    success_rate: float | None = None
    mean_episode_cost: float | None = None
    cost_rate: float | None = None
    mean_ep_length: float | None = None
    train_loss: float | None = None


class AlgoHealth(StrictModel):
    """Algorithm health signals; any may be absent."""

    entropy: float | None = None
    ent_coef: float | None = None
    action_std: float | None = None
    policy_loss: float | None = None
    value_loss: float | None = None
    actor_loss: float | None = None
    critic_loss: float | None = None
    q_mean: float | None = None
    approx_kl: float | None = None
    clip_fraction: float | None = None
    explained_variance: float | None = None
    grad_norm: float | None = None
    clipped_action_fraction: float | None = None


class HistoryRow(StrictModel):
    """One past evaluation (oldest first in :attr:`TelemetrySnapshot.history`)."""

    evaluation_index: int
    step: int
    score: float | None = None
    mean_return: float | None = None
    success_rate: float | None = None
    safe_success_rate: float | None = None
    mean_cost: float | None = None
    violation_rate: float | None = None
    train_episode_cost: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    entropy: float | None = None
    value_loss: float | None = None
    approx_kl: float | None = None
    clip_fraction: float | None = None
    action_std: float | None = None
    explained_variance: float | None = None
    clipped_action_fraction: float | None = None
    stochastic_safe_success_rate: float | None = None
    score_ci: RateInterval | None = None


class BestCheckpoint(StrictModel):
    """The best evaluation so far and the recipe it was reached with.

    :param success_rate: the task's success at that evaluation (where measured): with a safe-success score, the best
        checkpoint by score can be a policy that has not learned the task (one that does not move yet incurs no cost)
    """

    evaluation_index: int
    step: int
    score: float
    knobs: dict[str, float] = Field(default_factory=dict)
    success_rate: float | None = None


class InterventionOutcome(StrictModel):
    """A past applied intervention and the *measured* change of the score after it.

    :param score_before: score at the evaluation where the decision was taken.
    :param scores_after: scores of the following evaluations (up to ``k``, usually 3).
    :param verdict: ``improved`` / ``worse`` / ``neutral`` once measured, else ``pending``.
    """

    evaluation_index: int
    step: int
    action: ActionName
    changes: list[ResolvedChange] = Field(default_factory=list)
    expected_outcome: str = ""
    score_before: float | None = None
    scores_after: list[float | None] = Field(default_factory=list)
    cost_before: float | None = None
    costs_after: list[float | None] = Field(default_factory=list)
    verdict: Literal["improved", "worse", "neutral", "pending"] = "pending"


class Targets(StrictModel):
    """What "done" and "unsafe" mean for this run.

    :param success_rate: evaluation (safe) success rate that counts as solved.
    :param max_violation_rate: largest fraction of evaluation episodes with a violation
        still counted as solved.
    :param cost_limit: episode-cost limit ``d`` of the constraint ``EpCost <= d``.
    """

    success_rate: float | None = Field(default=0.85, ge=0, le=1)
    max_violation_rate: float | None = Field(default=0.15, ge=0, le=1)
    cost_limit: float | None = Field(default=None, ge=0)


class TelemetrySnapshot(StrictModel):
    """Everything a manager sees at one decision point."""

    schema_version: Literal[1] = 1
    run_id: str = ""
    task: str = Field(default="", max_length=200)
    algo: str = Field(default="", max_length=50)
    kind: Literal["rl", "supervised"] = "rl"
    score_name: str = "success_rate"
    position: RunPosition
    knobs: list[KnobSpec]
    evaluation: EvalMetrics = Field(default_factory=EvalMetrics)
    training: TrainWindow = Field(default_factory=TrainWindow)
    health: AlgoHealth = Field(default_factory=AlgoHealth)
    history: list[HistoryRow] = Field(default_factory=list)
    best: BestCheckpoint | None = None
    interventions: list[InterventionOutcome] = Field(default_factory=list)
    targets: Targets = Field(default_factory=Targets)

    @field_validator("knobs")
    @classmethod
    def _unique_knobs(cls, knobs: list[KnobSpec]) -> list[KnobSpec]:
        names = [k.name for k in knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate knob names: {names}")
        return knobs

    def knob_values(self) -> dict[str, float]:
        """Current knob values by name."""
        return {k.name: k.value for k in self.knobs}


# --------------------------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------------------------
class Attempt(StrictModel):
    """One proposal from one proposer and what the guard said of it."""

    proposer: str
    prompt: str | None = None
    raw_reply: str | None = None
    errors: list[str] = Field(default_factory=list)
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class AuditRecord(StrictModel):
    """One self-contained audit-log line.

    ``kind`` is ``decision`` for a decision point, ``stale`` for an async reply discarded as too
    old, ``abandoned`` for a request still pending at the end of a run (or lost in a kill),
    ``resume`` where an interrupted run continues (the lost segment in ``message``), ``note`` for
    anything else worth keeping (reverts, errors outside a decision).
    """

    run_id: str
    seq: int = Field(ge=0)
    time: str
    kind: Literal["decision", "stale", "abandoned", "resume", "note"] = "decision"
    step: int = 0
    evaluation_index: int = 0
    proposer: str = ""
    snapshot: TelemetrySnapshot | None = None
    menu: ActionSpace | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    validation_errors: list[str] = Field(default_factory=list)
    fallback: str | None = None
    decision: Decision | None = None
    applied: bool = False
    changes: list[ResolvedChange] = Field(default_factory=list)
    knobs_before: dict[str, float] = Field(default_factory=dict)
    knobs_after: dict[str, float] = Field(default_factory=dict)
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    message: str = ""
    #: evaluation index at which an async decision was requested (``None``: decided synchronously)
    requested_at: int | None = None


#: Models whose JSON schemas ``python -m rl_manager.schema`` prints.
PUBLIC_MODELS: dict[str, type[BaseModel] | TypeAdapter] = {
    "KnobSpec": KnobSpec,
    "ActionSpace": ActionSpace,
    "Decision": DecisionAdapter,
    "TelemetrySnapshot": TelemetrySnapshot,
    "AuditRecord": AuditRecord,
}


def json_schemas() -> dict[str, dict]:
    """Return the JSON schema of every public model."""
    out: dict[str, dict] = {}
    for name, model in PUBLIC_MODELS.items():
        out[name] = model.json_schema() if isinstance(model, TypeAdapter) else model.model_json_schema()
    return out


def main() -> None:
    """Print the JSON schemas (``python -m rl_manager.schema``)."""
    print(json.dumps(json_schemas(), indent=2))


if __name__ == "__main__":
    main()

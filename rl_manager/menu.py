"""Build the menu (:class:`~rl_manager.schema.ActionSpace`) from a snapshot and the gates.

The menu is a pure function of the snapshot and a :class:`GateConfig`: the same snapshot always
yields the same menu, which is what makes the audit log replayable.
"""

from __future__ import annotations

import math

from pydantic import Field

from rl_manager.schema import (
    ActionName,
    ActionSpace,
    EvalMetrics,
    HistoryRow,
    KnobMenu,
    KnobOption,
    KnobSpec,
    StrictModel,
    TelemetrySnapshot,
)

#: Relative tolerance under which two knob values count as equal.
REL_TOL = 1e-9


class GateConfig(StrictModel):
    """Eligibility gates for structural actions (defaults follow the paper).

    :param rollback_margin: the score must stay at least this far below the best score ...
    :param rollback_patience: ... for this many consecutive evaluations before a rollback is
        offered. The margin is scaled by ``max(1, |best score|)`` so that it is absolute for
        rates in [0, 1] and relative for returns or losses.
    :param rollback_cooldown: evaluations after a rollback during which no new rollback is offered.
    :param stop_patience: consecutive evaluations that must meet :class:`~rl_manager.schema.Targets`
        before ``stop_training`` is offered.
    :param allow_stop: offer ``stop_training`` at all.
    :param max_changes: largest number of knobs an ``adjust`` may change.
    """

    rollback_margin: float = Field(default=0.10, ge=0)
    rollback_patience: int = Field(default=2, ge=1)
    rollback_cooldown: int = Field(default=3, ge=0)
    stop_patience: int = Field(default=2, ge=1)
    allow_stop: bool = True
    max_changes: int = Field(default=3, ge=1, le=3)


def round_sig(x: float, digits: int = 6) -> float:
    """Round ``x`` to ``digits`` significant digits (menu values print and parse back exactly)."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def same_value(a: float, b: float) -> bool:
    """Whether two knob values are equal up to :data:`REL_TOL` (and float formatting)."""
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-15)


def knob_options(spec: KnobSpec) -> list[KnobOption]:
    """Every value ``spec`` may move to now, sorted, deduplicated, excluding no-op choices.

    Multiplied values are clamped into the bounds; several multipliers clamping to the same
    value are shown once (with the multiplier closest to 1).
    """
    options: list[KnobOption] = []

    def add(value: float, multiplier: float | None) -> None:
        value = round_sig(min(spec.high, max(spec.low, value)))
        if same_value(value, spec.value):
            return
        for i, existing in enumerate(options):
            if same_value(existing.value, value):
                # keep the gentlest multiplier that reaches this value
                if multiplier is not None and (
                    existing.multiplier is None or abs(math.log(multiplier)) < abs(math.log(existing.multiplier))
                ):
                    options[i] = KnobOption(value=value, multiplier=multiplier)
                return
        options.append(KnobOption(value=value, multiplier=multiplier))

    for m in spec.multipliers:
        if not math.isclose(m, 1.0):
            add(spec.value * m, m)
    for v in spec.values:
        if spec.low <= v <= spec.high:
            add(v, None)
    return sorted(options, key=lambda o: o.value)


def _conservative(spec: KnobSpec, best_value: float | None) -> list[KnobOption]:
    """Conservative moves beyond both the value in force and the best checkpoint's value.

    A rollback keeps the recipe in force (``Controller.rollback(keep_recipe=True)``), so a consolidation
    must be more conservative than the current value (it never raises an LR already cut since the best,
    and is never a no-op), and than the best's value.
    """
    if spec.conservative is None:
        return []
    if best_value is None:
        base = spec.value
    else:
        base = min(spec.value, best_value) if spec.conservative == "down" else max(spec.value, best_value)
    options = knob_options(spec.model_copy(update={"value": min(spec.high, max(spec.low, base))}))
    if spec.conservative == "down":
        return [o for o in options if o.value < base]
    return [o for o in options if o.value > base]


def margin_for(best_score: float, gates: GateConfig) -> float:
    """The rollback margin for a best score (absolute for rates, relative for large scales)."""
    return gates.rollback_margin * max(1.0, abs(best_score))


def rollback_gate(snapshot: TelemetrySnapshot, gates: GateConfig) -> str | None:
    """Return ``None`` if a rollback may be offered, else the reason it may not."""
    best = snapshot.best
    if best is None:
        return "no best checkpoint yet"
    pos = snapshot.position
    if pos.last_rollback_at is not None and pos.evaluation_index - pos.last_rollback_at < gates.rollback_cooldown:
        return f"rollback cooldown: last rollback at evaluation {pos.last_rollback_at}"
    recent = _recent(snapshot.history, gates.rollback_patience)
    if recent is None:
        return f"needs {gates.rollback_patience} evaluations after the best"
    margin = margin_for(best.score, gates)
    for row in recent:
        if row.evaluation_index <= best.evaluation_index:
            return f"needs {gates.rollback_patience} evaluations after the best"
        if row.score is None or not math.isfinite(row.score):
            continue  # a non-finite score counts as below the best
        if best.score - row.score < margin:
            return (
                f"score must stay >= {margin:.3g} below the best ({best.score:.3g}) for "
                f"{gates.rollback_patience} evaluations"
            )
    return None


def _recent(history: list[HistoryRow], n: int) -> list[HistoryRow] | None:
    return history[-n:] if len(history) >= n else None


def meets_targets(row: HistoryRow | EvalMetrics, snapshot: TelemetrySnapshot) -> bool:
    """Whether one evaluation (a history row, or the metrics of a confirmation) meets the snapshot's targets: safe
    success where measured, the violation rate and, under an episode-cost constraint, the evaluation's mean episode
    cost (a run over its cost limit is not done: on SafeFetchReach's reckless start a stop at the success target,
    cost 2–3× the limit, ended the managed runs before the fixed runs' late drop in violations)."""
    t = snapshot.targets
    if t.success_rate is None:
        return False
    row_success = row.safe_success_rate if row.safe_success_rate is not None else row.success_rate
    row_violation = row.violation_rate
    if row_success is None or not math.isfinite(row_success) or row_success < t.success_rate:
        return False
    if t.max_violation_rate is not None and row_violation is not None:
        if not math.isfinite(row_violation) or row_violation > t.max_violation_rate:
            return False
    if t.cost_limit is not None and row.mean_cost is not None:
        if not math.isfinite(row.mean_cost) or row.mean_cost > t.cost_limit:
            return False
    return True


def stop_gate(snapshot: TelemetrySnapshot, gates: GateConfig) -> str | None:
    """Return ``None`` if ``stop_training`` may be offered, else the reason it may not."""
    if not gates.allow_stop:
        return "stopping is disabled"
    if snapshot.targets.success_rate is None:
        return "no success target"
    recent = _recent(snapshot.history, gates.stop_patience)
    if recent is None:
        return f"needs {gates.stop_patience} evaluations meeting the target"
    for row in recent:
        if not meets_targets(row, snapshot):
            return f"needs {gates.stop_patience} consecutive evaluations meeting the target"
    t = snapshot.targets
    for cell in snapshot.evaluation.cells:  # the paper's gate: every cell (difficulty) meets it too
        rate = cell.safe_success_rate if cell.safe_success_rate is not None else cell.success_rate
        if (rate is not None and rate < t.success_rate) or (
            t.max_violation_rate is not None
            and cell.violation_rate is not None
            and cell.violation_rate > t.max_violation_rate
        ):
            return f"evaluation cell {cell.name!r} misses the target"
    return None


def build_action_space(snapshot: TelemetrySnapshot, gates: GateConfig | None = None) -> ActionSpace:
    """Build the menu for ``snapshot``.

    Knobs in cooldown or without any effective choice are left out. ``adjust`` is offered only
    if some knob can move, ``rollback_and_consolidate`` only if the rollback gate is open and
    some knob can move conservatively. At the boundary that ends the budget no step trains after
    the decision: no knob is offered and no stop, only a rollback (which sets the final model).
    """
    gates = gates or GateConfig()
    pos = snapshot.position
    idx = pos.evaluation_index
    knobs: list[KnobMenu] = []
    closed: dict[str, str] = {}
    spent = pos.progress == 1.0  # (None without a budget)
    for spec in [] if spent else snapshot.knobs:
        if spec.last_changed_at is not None and idx - spec.last_changed_at < spec.cooldown:
            closed[f"knob:{spec.name}"] = f"cooldown until evaluation {spec.last_changed_at + spec.cooldown}"
            continue
        options = knob_options(spec)
        if not options:
            continue
        best_value = snapshot.best.knobs.get(spec.name) if snapshot.best else None
        if best_value is not None and not math.isfinite(best_value):
            best_value = None
        knobs.append(
            KnobMenu(
                name=spec.name,
                role=spec.role,
                current=spec.value,
                low=spec.low,
                high=spec.high,
                options=options,
                best_value=best_value,
                conservative_options=_conservative(spec, best_value),
            )
        )
    actions: list[ActionName] = ["no_action"]
    no_steps = "the budget is spent: no step trains after this decision"
    if knobs:
        actions.append("adjust")
    else:
        closed["adjust"] = no_steps if spent else "no knob can change"
    why_not_rollback = rollback_gate(snapshot, gates)
    if why_not_rollback is None:
        actions.append("rollback_to_best")
        if any(k.conservative_options for k in knobs):
            actions.append("rollback_and_consolidate")
        else:
            closed["rollback_and_consolidate"] = no_steps if spent else "no conservative change available"
    else:
        closed["rollback_to_best"] = closed["rollback_and_consolidate"] = why_not_rollback
    why_not_stop = no_steps if spent else stop_gate(snapshot, gates)
    if why_not_stop is None:
        actions.append("stop_training")
    else:
        closed["stop_training"] = why_not_stop
    return ActionSpace(actions=actions, knobs=knobs, max_changes=gates.max_changes, closed=closed)

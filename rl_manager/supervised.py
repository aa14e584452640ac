"""``TorchManager``: the bounded manager for a plain PyTorch training loop (no SB3).

The loop reports its training loss every step (or now and then) and its validation loss at each
evaluation; every report with a validation loss is a *decision boundary*. The manager's
decisions, once the guard has validated them, are applied to the optimiser's ``param_groups``
(learning rate, weight decay), to the model's :class:`torch.nn.Dropout` modules, and to any other
knob exposed as an attribute or a pair of callables (label smoothing, a loss weight). A rollback
restores deep copies of the best model and optimiser ``state_dict`` together with the recipe of
that checkpoint; ``stop_training`` makes :meth:`TorchManager.report` return ``False``.

Decisions are asynchronous by default (:class:`~rl_manager.async_runner.AsyncDecider`): a request
is submitted at a boundary and :meth:`TorchManager.report` returns at once; a reply is
re-validated against the menu of the *current* snapshot and applied at the first boundary after
it arrives; a reply older than ``max_age`` boundaries is discarded and logged as ``stale``; a
request still pending at :meth:`TorchManager.close` is logged as ``abandoned``. The audit log is
the same ``audit.jsonl`` as the RL side.

Adopting it in an existing loop::

    from rl_manager.supervised import TorchManager

    tm = TorchManager(optimizer, model=model, manager="rule", run_dir="runs/lm", total_steps=n_steps)
    for step in range(1, n_steps + 1):
        loss = train_step(model, optimizer)                 # your code
        val = evaluate(model) if step % eval_every == 0 else None
        if not tm.report(step, train_loss=loss, val_loss=val):
            break                                           # the manager stopped training
    tm.close()                                              # logs a pending request as abandoned

Label smoothing or a loss weight becomes a knob with
``attribute_knob(criterion, "label_smoothing", role="regularization", low=0.0, high=0.3, values=(...))``
passed in ``extra_knobs``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch as th
from torch import nn

from rl_manager.async_runner import AsyncDecider, AsyncResult, revalidate
from rl_manager.audit import AuditLog
from rl_manager.core import DecisionLedger, Outcome, decide
from rl_manager.guard import Guard
from rl_manager.managers import Manager, make_manager
from rl_manager.menu import GateConfig
from rl_manager.schema import (
    DEFAULT_MULTIPLIERS,
    BestCheckpoint,
    Decision,
    EvalMetrics,
    HistoryRow,
    KnobRole,
    KnobSpec,
    ResolvedChange,
    RunPosition,
    Targets,
    TelemetrySnapshot,
    TrainWindow,
)
from rl_manager.telemetry import InterventionTracker, TelemetryState

logger = logging.getLogger(__name__)

#: name of the score of a supervised run: the negated validation loss (higher is better)
SCORE_NAME = "neg_val_loss"
#: dropout values offered by default (multipliers cannot move a dropout of 0)
DROPOUT_VALUES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
#: weight-decay values offered by default (multipliers cannot move a weight decay of 0)
WEIGHT_DECAY_VALUES: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)


class SupervisedManagerError(RuntimeError):
    """A misuse of :class:`TorchManager` (bad knob, report after close, rollback without a best)."""


# ---------------------------------------------------------------------------------------------- knobs
@dataclass
class TorchKnob:
    """A knob of a PyTorch training loop: bounds, allowed moves, and how to read and write it.

    :param name: knob name shown to the manager.
    :param read: returns the value in force.
    :param write: sets a value (already clamped into ``[low, high]``).
    :param low: absolute lower bound.
    :param high: absolute upper bound.
    :param role: what the knob does (see :data:`~rl_manager.schema.KnobRole`).
    :param multipliers: factors it may be multiplied by.
    :param values: absolute values it may be set to.
    :param scale: ``log`` or ``linear``.
    :param conservative: direction of a conservative change.
    :param cooldown: evaluations after a change during which it cannot change again.
    :param description: free text shown to an LLM.
    """

    name: str
    read: Callable[[], float]
    write: Callable[[float], None]
    low: float
    high: float
    role: KnobRole = "other"
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    values: tuple[float, ...] = ()
    scale: str = "log"
    conservative: str | None = None
    cooldown: int = 1
    description: str = ""

    def get(self) -> float:
        """The value in force, as a float."""
        return float(self.read())

    def set(self, value: float) -> float:
        """Write ``value`` clamped into the bounds; return the value read back."""
        if not math.isfinite(value):
            raise SupervisedManagerError(f"knob {self.name!r}: refusing non-finite value {value}")
        self.write(min(self.high, max(self.low, float(value))))
        return self.get()

    def spec(self, last_changed_at: int | None) -> KnobSpec:
        """The :class:`~rl_manager.schema.KnobSpec` of the current value (clamped into the bounds)."""
        value = min(self.high, max(self.low, self.get()))
        return KnobSpec(
            name=self.name,
            value=value,
            low=self.low,
            high=self.high,
            multipliers=self.multipliers,
            values=self.values,
            scale=self.scale,  # type: ignore[arg-type]
            role=self.role,
            conservative=self.conservative,  # type: ignore[arg-type]
            cooldown=self.cooldown,
            last_changed_at=last_changed_at,
            description=self.description,
        )


def _group_knob(optimizer: th.optim.Optimizer, key: str, name: str, **kwargs: Any) -> TorchKnob:
    if not optimizer.param_groups or key not in optimizer.param_groups[0]:
        raise SupervisedManagerError(f"{type(optimizer).__name__} has no {key!r} in its param_groups")
    # groups may start from different values (e.g. no decay on biases): scale them together
    base = [float(g[key]) for g in optimizer.param_groups]
    ref = base[0]

    def read() -> float:
        return float(optimizer.param_groups[0][key])

    def write(value: float) -> None:
        for g, b in zip(optimizer.param_groups, base, strict=True):
            g[key] = value * (b / ref) if ref > 0 else (value if b == ref else b)

    return TorchKnob(name=name, read=read, write=write, **kwargs)


def lr_knob(optimizer: th.optim.Optimizer, low: float = 1e-5, high: float = 1e-2, **kwargs: Any) -> TorchKnob:
    """The learning rate of every param group (groups keep their ratios to the first one)."""
    kwargs.setdefault("description", "optimiser learning rate")
    return _group_knob(
        optimizer, "lr", "learning_rate", low=low, high=high, role="learning_rate", conservative="down", **kwargs
    )


def weight_decay_knob(
    optimizer: th.optim.Optimizer,
    low: float = 0.0,
    high: float = 1.0,
    values: tuple[float, ...] = WEIGHT_DECAY_VALUES,
    **kwargs: Any,
) -> TorchKnob:
    """The weight decay of the param groups (those that start at 0 follow the first group only if it does)."""
    kwargs.setdefault("description", "optimiser weight decay (decoupled for AdamW)")
    return _group_knob(
        optimizer,
        "weight_decay",
        "weight_decay",
        low=low,
        high=high,
        values=values,
        role="regularization",
        conservative="up",
        scale="linear",
        **kwargs,
    )


def dropout_knob(
    model: nn.Module, low: float = 0.0, high: float = 0.5, values: tuple[float, ...] = DROPOUT_VALUES, **kwargs: Any
) -> TorchKnob:
    """The ``p`` of every :class:`torch.nn.Dropout` module of ``model`` (set together).

    :raises SupervisedManagerError: if the model has no dropout module.
    """
    modules = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not modules:
        raise SupervisedManagerError(f"{type(model).__name__} has no dropout module")

    def read() -> float:
        return float(modules[0].p)

    def write(value: float) -> None:
        for m in modules:
            m.p = value

    kwargs.setdefault("description", f"dropout probability of the model's {len(modules)} dropout modules")
    return TorchKnob(
        name="dropout",
        read=read,
        write=write,
        low=low,
        high=high,
        values=values,
        multipliers=kwargs.pop("multipliers", ()),
        role="regularization",
        conservative="up",
        scale="linear",
        **kwargs,
    )


def attribute_knob(obj: Any, attribute: str, *, name: str | None = None, **kwargs: Any) -> TorchKnob:
    """A float attribute as a knob, e.g. ``nn.CrossEntropyLoss().label_smoothing`` or a loss weight.

    :param obj: the object holding the attribute.
    :param attribute: attribute name.
    :param name: knob name (default: the attribute name).
    :param kwargs: the other :class:`TorchKnob` fields (``low`` and ``high`` are required).
    :raises SupervisedManagerError: if the attribute is missing.
    """
    if not hasattr(obj, attribute):
        raise SupervisedManagerError(f"{type(obj).__name__} has no attribute {attribute!r}")
    return TorchKnob(
        name=name or attribute,
        read=lambda: float(getattr(obj, attribute)),
        write=lambda v: setattr(obj, attribute, v),
        **kwargs,
    )


def default_knobs(optimizer: th.optim.Optimizer, model: nn.Module | None) -> list[TorchKnob]:
    """Learning rate, then dropout (if the model has any), then weight decay (if the optimiser has it).

    Dropout comes before weight decay: the rule manager raises the first regularisation knob of
    the menu, and for a small network trained for a few hundred steps dropout is the stronger one.
    """
    knobs = [lr_knob(optimizer)]
    if model is not None and any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
        knobs.append(dropout_knob(model))
    if optimizer.param_groups and "weight_decay" in optimizer.param_groups[0]:
        knobs.append(weight_decay_knob(optimizer))
    return knobs


# ---------------------------------------------------------------------------------------------- manager
@dataclass
class _Window:
    losses: list[float] = field(default_factory=list)

    def mean(self) -> float | None:
        if not self.losses:
            return None
        return float(sum(self.losses) / len(self.losses))


class TorchManager:
    """Bounded closed-loop control of a plain PyTorch training loop.

    :param optimizer: the optimiser whose ``param_groups`` hold the learning rate and weight decay.
    :param model: the model (dropout knob; saved and restored by rollbacks). Without it, a rollback
        restores the optimiser state only.
    :param manager: a :class:`~rl_manager.managers.Manager` or a registered name (``"rule"``).
    :param run_dir: folder of ``audit.jsonl`` and ``summary.json``.
    :param knobs: the knobs (default: :func:`default_knobs`).
    :param extra_knobs: knobs added to the defaults (label smoothing, loss weights).
    :param async_: decide in the background (default) instead of blocking :meth:`report`.
    :param max_age: async replies collected more than this many boundaries after their request are stale.
    :param fallback: manager used when the primary gives no valid decision (``None``: no-op).
    :param gates: gate configuration.
    :param targets: stop targets; ``success_rate`` applies to the ``accuracy`` passed to
        :meth:`report` (default: no target, so ``stop_training`` is never offered).
    :param total_steps: the step budget (shown to the manager; the plateau rule needs it).
    :param task: task name for the snapshot.
    :param run_id: run identifier (default: a random one).
    :param history_len: evaluations shown in a snapshot.
    """

    def __init__(
        self,
        optimizer: th.optim.Optimizer,
        model: nn.Module | None = None,
        manager: Manager | str = "rule",
        *,
        run_dir: str | os.PathLike = "runs/supervised",
        knobs: Sequence[TorchKnob] | None = None,
        extra_knobs: Sequence[TorchKnob] = (),
        async_: bool = True,
        max_age: int = 2,
        fallback: Manager | str | None = "rule",
        gates: GateConfig | None = None,
        targets: Targets | None = None,
        total_steps: int | None = None,
        task: str = "",
        run_id: str | None = None,
        history_len: int = 10,
    ) -> None:
        self.optimizer = optimizer
        self.model = model
        self.manager = make_manager(manager) if isinstance(manager, str) else manager
        self.fallback = make_manager(fallback) if isinstance(fallback, str) else fallback
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        all_knobs = list(knobs) if knobs is not None else default_knobs(optimizer, model)
        all_knobs += list(extra_knobs)
        names = [k.name for k in all_knobs]
        if len(set(names)) != len(names):
            raise SupervisedManagerError(f"duplicate knob names: {names}")
        self.knobs: dict[str, TorchKnob] = {k.name: k for k in all_knobs}
        self.gates = gates or GateConfig()
        self.targets = targets or Targets(success_rate=None, max_violation_rate=None)
        self.total_steps = total_steps
        self.task = task
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.history_len = history_len
        self.guard = Guard()
        self.state = TelemetryState(score_name=SCORE_NAME)
        self.tracker = InterventionTracker()
        self.audit = AuditLog(self.run_dir, self.run_id)
        self.decider: AsyncDecider | None = AsyncDecider(max_age=max_age) if async_ else None
        self.best_state: dict[str, Any] | None = None
        self.step = 0
        self.stopped = False
        self.closed = False
        self.ledger = DecisionLedger(counts={"abandoned": 0, "revalidation_rejected": 0, "rollbacks": 0})
        #: (step, evaluation index, action, changes) of every applied intervention, for plots
        self.interventions: list[dict[str, Any]] = []
        self._window = _Window()
        self._last_train_loss: float | None = None
        self._metrics, self._training = EvalMetrics(), TrainWindow()
        #: snapshots of submitted async requests by boundary (at most one in flight)
        self._requests: dict[int, TelemetrySnapshot] = {}

    # ------------------------------------------------------------------------------------- reading
    def knob_values(self) -> dict[str, float]:
        """Current value of every knob."""
        return {name: k.get() for name, k in self.knobs.items()}

    @property
    def pending(self) -> bool:
        """Whether an async request is in flight or its reply not yet collected."""
        return self.decider is not None and self.decider.busy

    # ------------------------------------------------------------------------------------- the loop
    def report(
        self,
        step: int,
        train_loss: float | None = None,
        val_loss: float | None = None,
        *,
        accuracy: float | None = None,
    ) -> bool:
        """Report metrics; a report with ``val_loss`` is a decision boundary.

        Training losses reported since the last boundary are averaged into the training window.
        Never blocks on the manager in async mode.

        :param step: the current optimisation step.
        :param train_loss: training loss of this step (or a recent mean).
        :param val_loss: validation loss, if an evaluation has just run.
        :param accuracy: validation accuracy in [0, 1], compared with ``targets.success_rate``.
        :return: ``False`` once the manager has stopped training.
        :raises SupervisedManagerError: after :meth:`close`.
        """
        if self.closed:
            raise SupervisedManagerError("report() after close()")
        self.step = int(step)
        if train_loss is not None:
            value = float(train_loss.item() if isinstance(train_loss, th.Tensor) else train_loss)
            self._window.losses.append(value)
            self._last_train_loss = value
        if val_loss is None or self.stopped:
            return not self.stopped
        self._boundary(float(val_loss.item() if isinstance(val_loss, th.Tensor) else val_loss), accuracy)
        return not self.stopped

    def _boundary(self, val_loss: float, accuracy: float | None) -> None:
        state = self.state
        state.evaluation_index += 1
        train_loss = self._window.mean()
        if train_loss is None:
            train_loss = self._last_train_loss
        self._window = _Window()
        score = -val_loss if math.isfinite(val_loss) else float("nan")
        metrics = EvalMetrics(val_loss=val_loss, success_rate=accuracy)
        training = TrainWindow(train_loss=train_loss)
        self.tracker.measure(state, score)
        state.history.append(
            HistoryRow(
                evaluation_index=state.evaluation_index,
                step=self.step,
                score=score,
                success_rate=accuracy,
                train_loss=train_loss,
                val_loss=val_loss,
            )
        )
        del state.history[:-50]
        self._update_best(score)
        self._metrics, self._training = metrics, training
        if self.decider is None:
            snapshot = self.snapshot()
            outcome = decide(snapshot, self.manager, gates=self.gates, fallback=self.fallback, guard=self.guard)
            self._apply(snapshot, outcome, outcome.decision, outcome.changes)
            return
        result = self.decider.poll(state.evaluation_index)
        if result is not None:
            self._collect(result)
        if not self.stopped and not self.decider.busy:
            request_snapshot = self.snapshot().model_copy(deep=True)  # the worker must not see later edits
            self.decider.submit(
                lambda: decide(request_snapshot, self.manager, gates=self.gates, fallback=self.fallback),
                state.evaluation_index,
            )
            self._requests[state.evaluation_index] = request_snapshot

    def _collect(self, result: AsyncResult) -> None:
        request_snapshot = self._requests.pop(result.submitted_at, None)
        self._requests.clear()
        message = f"requested at evaluation {result.submitted_at}, collected at {result.polled_at} (age {result.age})"
        if result.stale:
            self.counts["stale"] += 1
            outcome: Outcome | None = result.value if isinstance(result.value, Outcome) else None
            self._record_other("stale", request_snapshot, outcome, message + f": older than {result.max_age}")
            return
        if not result.ok or not isinstance(result.value, Outcome):
            self._record_other("note", request_snapshot, None, f"{message}: request failed: {result.error!r}")
            return
        outcome = result.value
        current = self.snapshot()
        review = revalidate(outcome, current, self.gates, self.guard)
        if review.ok and review.decision is not None:
            self._apply(request_snapshot or current, outcome, review.decision, review.changes, message)
        else:
            self.counts["revalidation_rejected"] += 1
            errors = [f"revalidation: {e}" for e in review.errors]
            self._apply(
                request_snapshot or current,
                outcome,
                outcome.decision,
                [],
                message + ": rejected against the current menu",
                skip=True,
                extra_errors=errors,
            )

    def snapshot(self) -> TelemetrySnapshot:
        """The snapshot of the current boundary (knob values as they are now)."""
        state = self.state
        return TelemetrySnapshot(
            run_id=self.run_id,
            task=self.task,
            algo=type(self.optimizer).__name__.lower(),
            kind="supervised",
            score_name=SCORE_NAME,
            position=RunPosition(
                step=self.step,
                total_steps=self.total_steps,
                evaluation_index=max(0, state.evaluation_index),
                last_rollback_at=state.last_rollback_at,
            ),
            knobs=[k.spec(state.knob_last_changed.get(name)) for name, k in self.knobs.items()],
            evaluation=self._metrics,
            training=self._training,
            history=state.history[-self.history_len :],
            best=state.best,
            interventions=state.interventions,
            targets=self.targets,
        )

    # ------------------------------------------------------------------------------------- best / rollback
    def _update_best(self, score: float) -> None:
        best = self.state.best
        if not math.isfinite(score) or (best is not None and score <= best.score):
            return
        self.state.best = BestCheckpoint(
            evaluation_index=self.state.evaluation_index, step=self.step, score=score, knobs=self.knob_values()
        )
        self.best_state = {
            "model": copy.deepcopy(self.model.state_dict()) if self.model is not None else None,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def rollback(self) -> list[ResolvedChange]:
        """Restore the best model and optimiser state and the recipe of that checkpoint.

        :return: the knob changes the restored recipe made.
        :raises SupervisedManagerError: if there is no best checkpoint yet.
        """
        if self.best_state is None or self.state.best is None:
            raise SupervisedManagerError("no best checkpoint in memory")
        before = self.knob_values()
        if self.model is not None and self.best_state["model"] is not None:
            self.model.load_state_dict(copy.deepcopy(self.best_state["model"]))
        self.optimizer.load_state_dict(copy.deepcopy(self.best_state["optimizer"]))
        restored = []
        for name, value in self.state.best.knobs.items():
            if name in self.knobs:
                after = self.knobs[name].set(value)
                if before[name] != after:
                    restored.append(ResolvedChange(knob=name, before=before[name], after=after))
        self.state.last_rollback_at = self.state.evaluation_index
        self.counts["rollbacks"] += 1
        return restored

    def _write(self, changes: list[ResolvedChange]) -> list[ResolvedChange]:
        applied = []
        for c in changes:
            before = self.knobs[c.knob].get()
            after = self.knobs[c.knob].set(c.after)
            applied.append(ResolvedChange(knob=c.knob, before=before, after=after))
            self.state.knob_last_changed[c.knob] = self.state.evaluation_index
        return applied

    # ------------------------------------------------------------------------------------- applying
    def _apply(
        self,
        snapshot: TelemetrySnapshot,
        outcome: Outcome,
        decision: Decision,
        changes: list[ResolvedChange],
        message: str = "",
        *,
        skip: bool = False,
        extra_errors: Sequence[str] = (),
    ) -> None:
        before = self.knob_values()
        applied = False
        done: list[ResolvedChange] = []
        if not skip:
            try:
                if decision.action == "adjust":
                    done = self._write(changes)
                    applied = True
                elif decision.action in ("rollback_to_best", "rollback_and_consolidate"):
                    done = self.rollback()
                    if decision.action == "rollback_and_consolidate":
                        done += self._write(changes)
                    applied = True
                elif decision.action == "stop_training":
                    applied, self.stopped = True, True
            except Exception as exc:  # an actuator failure is logged, never raised into training
                logger.exception("applying %s failed", decision.action)
                message = f"{message}; apply failed: {type(exc).__name__}: {exc}".lstrip("; ")
                applied = False
        if applied and decision.action != "no_action":
            self.tracker.record(self.state, decision.action, done, decision.expected_outcome, self.step)
            self.interventions.append(
                {
                    "step": self.step,
                    "evaluation_index": self.state.evaluation_index,
                    "action": decision.action,
                    "changes": [c.model_dump() for c in done],
                }
            )
            logger.info("step %d: applied %s %s", self.step, decision.action, [c.model_dump() for c in done])
        self.ledger.add(outcome, applied)
        fields = outcome.audit_fields()
        fields.update(decision=decision, validation_errors=[*outcome.validation_errors, *extra_errors])
        self.audit.append(
            kind="decision",
            step=self.step,
            evaluation_index=self.state.evaluation_index,
            snapshot=snapshot,
            applied=applied and decision.action != "no_action",
            changes=done,
            knobs_before=before,
            knobs_after=self.knob_values(),
            message=message,
            **fields,
        )

    def _record_other(
        self, kind: str, snapshot: TelemetrySnapshot | None, outcome: Outcome | None, message: str
    ) -> None:
        knobs = self.knob_values()
        self.audit.append(
            kind=kind,
            step=self.step,
            evaluation_index=max(0, self.state.evaluation_index),
            proposer=outcome.proposer if outcome is not None else self.manager.name,
            snapshot=snapshot,
            menu=outcome.menu if outcome is not None else None,
            attempts=outcome.attempts if outcome is not None else [],
            validation_errors=outcome.validation_errors if outcome is not None else [],
            fallback=outcome.fallback if outcome is not None else None,
            decision=outcome.decision if outcome is not None else None,
            applied=False,
            knobs_before=knobs,
            knobs_after=knobs,
            latency_s=outcome.latency_s if outcome is not None else 0.0,
            message=message,
        )
        logger.info("%s: %s", kind, message)

    # ------------------------------------------------------------------------------------- end
    def close(self) -> dict[str, Any]:
        """End the run: a request still pending is logged as ``abandoned``; write ``summary.json``.

        :return: the summary.
        """
        if self.closed:
            return self.summary()
        self.closed = True
        if self.decider is not None:
            abandoned = self.decider.close()
            if abandoned is not None:
                self.counts["abandoned"] += 1
                snapshot = self._requests.get(abandoned)
                self._record_other("abandoned", snapshot, None, f"request of evaluation {abandoned} still pending")
            self._requests.clear()
        summary = self.summary()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def __enter__(self) -> TorchManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def counts(self) -> dict[str, int]:
        """Decision counters (see :class:`~rl_manager.core.DecisionLedger`)."""
        return self.ledger.counts

    def summary(self) -> dict[str, Any]:
        """Counters, best checkpoint and final knobs."""
        return {
            "run_id": self.run_id,
            "manager": self.manager.name,
            "async": self.decider is not None,
            **self.ledger.summary(),
            "stopped_by_manager": self.stopped,
            "evaluations": self.state.evaluation_index + 1,
            "best": self.state.best.model_dump(mode="json") if self.state.best else None,
            "knobs_final": self.knob_values(),
            "interventions": self.interventions,
        }

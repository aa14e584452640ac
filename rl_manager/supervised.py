"""``TorchManager``: the bounded manager for a plain PyTorch training loop (no SB3).

The loop reports its training loss every step (or now and then) and its validation loss at each
evaluation; every report with a validation loss is a *decision boundary*. The manager's
decisions, once the guard has validated them, are applied to the optimiser's ``param_groups``
(learning rate, weight decay), to the model's :class:`torch.nn.Dropout` modules, and to any other
knob exposed as an attribute or a pair of callables (label smoothing, a loss weight). A rollback
restores deep copies of the best model and optimiser ``state_dict`` together with the recipe of
that checkpoint; ``stop_training`` makes :meth:`TorchManager.report` return ``False``.

Decisions are asynchronous by default: :meth:`TorchManager.report` never waits for the manager.
The decision loop (async protocol, re-validation, stale and abandoned replies, rollback, audit)
is the integration-agnostic :class:`~rl_manager.controller.Controller`, the same as the SB3 side;
this module only holds the PyTorch knobs and checkpoints. It does not import SB3.

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
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch as th
from torch import nn

from rl_manager.controller import Controlled, Controller, Observation
from rl_manager.knobs import FnKnob, Knob, ManagerError
from rl_manager.managers import Manager
from rl_manager.menu import GateConfig
from rl_manager.schema import EvalMetrics, ResolvedChange, Targets, TrainWindow
from rl_manager.state import NEG_VAL_LOSS

#: name of the score of a supervised run: the negated validation loss (higher is better)
SCORE_NAME = NEG_VAL_LOSS
#: dropout values offered by default (multipliers cannot move a dropout of 0)
DROPOUT_VALUES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
#: weight-decay values offered by default (multipliers cannot move a weight decay of 0)
WEIGHT_DECAY_VALUES: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
#: label-smoothing values offered by default (multipliers cannot move a smoothing of 0)
LABEL_SMOOTHING_VALUES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)

#: the old names: PyTorch knobs are :class:`~rl_manager.knobs.FnKnob`, misuse raises :class:`ManagerError`
TorchKnob = FnKnob
SupervisedManagerError = ManagerError


# ---------------------------------------------------------------------------------------------- knobs
def _group_knob(optimizer: th.optim.Optimizer, key: str, name: str, **kwargs: Any) -> Knob:
    if not optimizer.param_groups or key not in optimizer.param_groups[0]:
        raise ManagerError(f"{type(optimizer).__name__} has no {key!r} in its param_groups")
    # groups may start from different values (e.g. no decay on biases): scale them together
    base = [float(g[key]) for g in optimizer.param_groups]
    ref = base[0]

    def read() -> float:
        return float(optimizer.param_groups[0][key])

    def write(value: float) -> None:
        for g, b in zip(optimizer.param_groups, base, strict=True):
            g[key] = value * (b / ref) if ref > 0 else (value if b == ref else b)

    return FnKnob(name, read, write, **kwargs)


def lr_knob(optimizer: th.optim.Optimizer, low: float = 1e-5, high: float = 1e-2, **kwargs: Any) -> Knob:
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
) -> Knob:
    """The weight decay of the param groups (those that start at 0 follow the first group only if it does)."""
    kwargs.setdefault("description", "optimiser weight decay (decoupled for AdamW)")
    fields = dict(values=values, role="regularization", conservative="up", scale="linear")
    return _group_knob(optimizer, "weight_decay", "weight_decay", low=low, high=high, **fields, **kwargs)


def dropout_knob(
    model: nn.Module, low: float = 0.0, high: float = 0.5, values: tuple[float, ...] = DROPOUT_VALUES, **kwargs: Any
) -> Knob:
    """The ``p`` of every :class:`torch.nn.Dropout` module of ``model`` (set together).

    :raises ManagerError: if the model has no dropout module.
    """
    modules = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not modules:
        raise ManagerError(f"{type(model).__name__} has no dropout module")

    def write(value: float) -> None:
        for m in modules:
            m.p = value

    kwargs.setdefault("description", f"dropout probability of the model's {len(modules)} dropout modules")
    kwargs.setdefault("multipliers", ())
    fields = dict(values=values, role="regularization", conservative="up", scale="linear")
    return FnKnob("dropout", lambda: float(modules[0].p), write, low, high, **fields, **kwargs)


def attribute_knob(obj: Any, attribute: str, *, name: str | None = None, **kwargs: Any) -> Knob:
    """A float attribute as a knob, e.g. ``nn.CrossEntropyLoss().label_smoothing`` or a loss weight.

    :param obj: the object holding the attribute.
    :param attribute: attribute name.
    :param name: knob name (default: the attribute name).
    :param kwargs: ``low``, ``high`` (required) and the other :class:`~rl_manager.knobs.Knob` fields.
    :raises ManagerError: if the attribute is missing.
    """
    if not hasattr(obj, attribute):
        raise ManagerError(f"{type(obj).__name__} has no attribute {attribute!r}")
    read, write = (lambda: float(getattr(obj, attribute))), (lambda v: setattr(obj, attribute, v))
    return FnKnob(name or attribute, read, write, **kwargs)


def label_smoothing_knob(
    criterion: nn.Module,
    low: float = 0.0,
    high: float = 0.3,
    values: tuple[float, ...] = LABEL_SMOOTHING_VALUES,
    **kwargs: Any,
) -> Knob:
    """The ``label_smoothing`` of a loss module such as :class:`torch.nn.CrossEntropyLoss`.

    A regularisation knob (conservative direction: up). Measure the validation loss without
    smoothing, or a change of the knob moves the score by itself.

    :raises ManagerError: if the criterion has no ``label_smoothing`` attribute.
    """
    kwargs.setdefault("description", "label smoothing of the training loss (targets mixed with uniform)")
    kwargs.setdefault("multipliers", ())
    fields = dict(values=values, role="regularization", conservative="up", scale="linear")
    return attribute_knob(criterion, "label_smoothing", low=low, high=high, **fields, **kwargs)


def optimizer_restart_knob(optimizer: th.optim.Optimizer) -> Knob:
    """``optimizer_restarts``: how many times the optimiser's state (Adam's moments) was cleared.

    Raising it clears the state once (the next step starts new moments, with the bias correction of a first
    step); lowering it only records the value (cleared moments cannot come back; a rollback restores them).
    :class:`~rl_manager.managers.supervised_rule.SupervisedRuleManager` raises it with its early LR cut.
    """
    count = [0.0]

    def write(value: float) -> None:
        if value > count[0]:
            optimizer.state.clear()
        count[0] = value

    return FnKnob(
        "optimizer_restarts",
        lambda: count[0],
        write,
        low=0.0,
        high=3.0,
        values=(0.0, 1.0, 2.0, 3.0),
        multipliers=(),
        role="other",
        description="times the optimiser state (Adam moments) was cleared; +1 clears it now",
    )


def default_knobs(optimizer: th.optim.Optimizer, model: nn.Module | None) -> list[Knob]:
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
class TorchManager(Controlled):
    """Bounded closed-loop control of a plain PyTorch training loop.

    :param optimizer: the optimiser whose ``param_groups`` hold the learning rate and weight decay.
    :param model: the model (dropout knob; saved and restored by rollbacks). Without it, a rollback
        restores the optimiser state only.
    :param manager: a :class:`~rl_manager.managers.Manager` or a registered name (``"rule"``).
    :param run_dir: folder of ``audit.jsonl``, ``manager_state.json`` and ``summary.json``.
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
    :param end_on_best: at :meth:`close`, restore the best model, optimiser state and knobs.
    :raises ManagerError: for duplicate knob names.
    """

    def __init__(
        self,
        optimizer: th.optim.Optimizer,
        model: nn.Module | None = None,
        manager: Manager | str = "rule",
        *,
        run_dir: str | os.PathLike = "runs/supervised",
        knobs: Sequence[Knob] | None = None,
        extra_knobs: Sequence[Knob] = (),
        async_: bool = True,
        max_age: int = 2,
        fallback: Manager | str | None = "rule",
        gates: GateConfig | None = None,
        targets: Targets | None = None,
        total_steps: int | None = None,
        task: str = "",
        run_id: str | None = None,
        history_len: int = 10,
        end_on_best: bool = False,
    ) -> None:
        self.optimizer, self.model = optimizer, model
        self.total_steps, self.task = total_steps, task
        all_knobs = [*(knobs if knobs is not None else default_knobs(optimizer, model)), *extra_knobs]
        names = [k.name for k in all_knobs]
        if len(set(names)) != len(names):
            raise ManagerError(f"duplicate knob names: {names}")
        self.controller = Controller(
            self,
            manager,
            run_dir=run_dir,
            knobs={k.name: k for k in all_knobs},
            kind="supervised",
            score_name=SCORE_NAME,
            fallback=fallback,
            gates=gates,
            targets=targets or Targets(success_rate=None, max_violation_rate=None),
            async_decisions=async_,
            max_age=max_age,
            run_id=run_id,
            history_len=history_len,
            resume=False,
            end_on_best=end_on_best,
        )
        self.controller.start()
        self.step = 0
        self._losses: list[float] = []
        self._last_train_loss: float | None = None

    def report(
        self,
        step: int,
        train_loss: float | th.Tensor | None = None,
        val_loss: float | th.Tensor | None = None,
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
        :raises ManagerError: after :meth:`close`.
        """
        if self.controller.closed:
            raise ManagerError("report() after close()")
        self.step = int(step)
        if train_loss is not None:
            self._last_train_loss = float(train_loss)
            self._losses.append(self._last_train_loss)
        if val_loss is None or self.stopped:
            return not self.stopped
        mean = sum(self._losses) / len(self._losses) if self._losses else self._last_train_loss
        self._losses = []
        observation = Observation(
            step=self.step,
            evaluation=EvalMetrics(val_loss=float(val_loss), success_rate=accuracy),
            training=TrainWindow(train_loss=mean),
            total_steps=self.total_steps,
            task=self.task,
            algo=type(self.optimizer).__name__.lower(),
        )
        return self.controller.boundary(observation)

    # ------------------------------------------------------------------------------------- adapter
    def checkpoint(self, path: Path | None = None) -> dict[str, Any]:
        """Deep copies of the model and optimiser ``state_dict`` (also ``torch.save``-d to ``path``)."""
        state = {
            "model": copy.deepcopy(self.model.state_dict()) if self.model is not None else None,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }
        if path is not None:
            th.save(state, path)
        return state

    def restore(self, checkpoint: dict[str, Any] | Path) -> None:
        """Load a checkpoint of :meth:`checkpoint` (or its file) into the model and optimiser.

        Weights and the optimiser's state (moments, step counts) come back; the ``param_groups``'
        hyperparameters (learning rate, weight decay, ...) stay as they are, like every other knob: the
        recipe is the controller's to set (a rollback keeps the current recipe unless the decision or
        ``keep_recipe=False`` says otherwise; a probation revert writes the old values back itself).
        ``Optimizer.load_state_dict`` alone would silently bring back the checkpoint's LR and weight decay.
        """
        state = th.load(checkpoint) if isinstance(checkpoint, Path) else copy.deepcopy(checkpoint)
        if self.model is not None and state["model"] is not None:
            self.model.load_state_dict(state["model"])
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, values in zip(self.optimizer.param_groups, hyper, strict=True):
            group.update(values)

    # ------------------------------------------------------------------------------------- views
    def rollback(self) -> list[ResolvedChange]:
        """Restore the best model and optimiser state and the recipe of that checkpoint.

        :raises ManagerError: if there is no best checkpoint yet.
        """
        return self.controller.rollback()

    def close(self) -> dict[str, Any]:
        """End the run: a request still pending is logged as ``abandoned``; write ``summary.json``."""
        summary = self.controller.close()
        (self.controller.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def __enter__(self) -> TorchManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def knobs(self) -> dict[str, Knob]:
        return self.controller.knobs

    @property
    def pending(self) -> bool:
        """Whether an async request is in flight or its reply not yet collected."""
        return self.controller.pending

    @property
    def best_state(self) -> dict[str, Any] | None:
        """The in-memory best checkpoint."""
        return self.controller.best_checkpoint

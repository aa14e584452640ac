"""Knobs: one base class for every integration (SB3 actuators, PyTorch-loop knobs).

A :class:`Knob` reads and writes one value on a *target* (the SB3 algorithm; ``None`` for knobs
that hold their own references, such as :class:`FnKnob`). One rule for bounds and moves:

- a write is clamped into ``[low, high]`` and a non-finite value raises :class:`ManagerError`;
- the :class:`~rl_manager.schema.KnobSpec` shown to a manager holds the value in force: when it
  lies outside the configured bounds (a recipe that starts outside them), the bounds shown are
  widened to hold it, so the menu never offers a move the guard would reject as out of bounds
  for the current value. The next write is clamped into the configured bounds again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import Field

from rl_manager.schema import DEFAULT_MULTIPLIERS, KnobRole, KnobSpec, StrictModel


class ManagerError(RuntimeError):
    """A misuse of an integration: a bad knob or value, a report after close, a rollback without a best."""


class KnobBounds(StrictModel):
    """User overrides of a knob's bounds and moves (from a recipe's ``manager_knobs``)."""

    low: float | None = None
    high: float | None = None
    multipliers: tuple[float, ...] | None = None
    values: tuple[float, ...] | None = None
    cooldown: int | None = Field(default=None, ge=0)
    enabled: bool = True


class Knob:
    """Reads and writes one knob; subclasses implement :meth:`_read` and :meth:`_write`.

    :param low: absolute lower bound.
    :param high: absolute upper bound.
    :param fields: any class attribute below (``name``, ``role``, ``multipliers``, ``cooldown`` ...).
    """

    name: str = ""
    role: KnobRole = "other"
    #: direction of a conservative change (``down``/``up``), used by rollback-and-consolidate
    conservative: str | None = None
    scale: str = "log"
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    values: tuple[float, ...] = ()
    #: evaluations after a change during which the knob cannot change again (every integration)
    cooldown: int = 2
    description: str = ""

    def __init__(self, low: float, high: float, **fields: Any) -> None:
        self.low, self.high = float(low), float(high)
        for key, value in fields.items():
            if not hasattr(type(self), key) or callable(getattr(type(self), key)):
                raise ManagerError(f"{type(self).__name__} has no field {key!r}")
            setattr(self, key, tuple(value) if key in ("multipliers", "values") else value)

    def read(self, target: Any = None) -> float:
        """The value in force (what the next training step uses)."""
        return float(self._read(target))

    def write(self, target: Any, value: float) -> float:
        """Set the knob clamped into the bounds; return the value read back.

        :raises ManagerError: for a non-finite value (nothing is written).
        """
        if not math.isfinite(value):
            raise ManagerError(f"knob {self.name!r}: refusing non-finite value {value}")
        self._write(target, min(self.high, max(self.low, float(value))))
        return self.read(target)

    def get(self) -> float:
        """:meth:`read` for a knob without a target."""
        return self.read(None)

    def set(self, value: float) -> float:
        """:meth:`write` for a knob without a target."""
        return self.write(None, value)

    def _read(self, target: Any) -> float:
        raise NotImplementedError

    def _write(self, target: Any, value: float) -> None:
        raise NotImplementedError

    def configure(self, bounds: KnobBounds) -> None:
        """Apply user overrides of bounds and moves.

        :raises ValueError: for inverted bounds, or a knob left without any move.
        """
        self.low = self.low if bounds.low is None else bounds.low
        self.high = self.high if bounds.high is None else bounds.high
        if self.low > self.high:
            raise ValueError(f"manager_knobs.{self.name}: low {self.low} > high {self.high}")
        if bounds.multipliers is not None:
            self.multipliers = tuple(bounds.multipliers)
        if bounds.values is not None:
            self.values = tuple(bounds.values)
        if bounds.cooldown is not None:
            self.cooldown = bounds.cooldown
        if not self.multipliers and not self.values:
            raise ValueError(f"manager_knobs.{self.name}: needs multipliers or listed values")

    def spec(self, target: Any = None, last_changed_at: int | None = None) -> KnobSpec:
        """The knob's :class:`~rl_manager.schema.KnobSpec` now (bounds widened to hold the value)."""
        value = self.read(target)
        doc_lines = (type(self).__doc__ or "").strip().splitlines()
        return KnobSpec(
            name=self.name,
            value=value,
            low=min(self.low, value),
            high=max(self.high, value),
            multipliers=self.multipliers,
            values=self.values,
            scale=self.scale,  # type: ignore[arg-type]
            role=self.role,
            conservative=self.conservative,  # type: ignore[arg-type]
            cooldown=self.cooldown,
            last_changed_at=last_changed_at,
            description=self.description or (doc_lines[0] if doc_lines else self.name),
        )


class FnKnob(Knob):
    """A knob read and written through two callables (a PyTorch loop, any object).

    :param name: knob name shown to the manager.
    :param read: returns the value in force.
    :param write: sets a value (already clamped into ``[low, high]``).
    :param low: absolute lower bound.
    :param high: absolute upper bound.
    :param fields: the other :class:`Knob` fields.
    """

    def __init__(
        self,
        name: str,
        read: Callable[[], float],
        write: Callable[[float], None],
        low: float,
        high: float,
        **fields: Any,
    ) -> None:
        fields.setdefault("description", name)
        super().__init__(low, high, name=name, **fields)
        self._get, self._set = read, write

    def _read(self, target: Any) -> float:
        return float(self._get())

    def _write(self, target: Any, value: float) -> None:
        self._set(value)

"""KL-adaptive learning rate: a single-axis PPO baseline (the rule used by rl_games and others).

At each decision point, with ``kl`` the mean approximate KL of the last PPO update
(``snapshot.health.approx_kl``) and ``target`` the target KL:

- ``kl < target / 2``: learning rate up by ``factor`` (×1.5);
- ``kl > 2 * target``: learning rate down by ``factor`` (÷1.5);
- otherwise: no change.

It only picks values the menu offers: the option of the ``learning_rate`` knob whose ratio to the
current value is closest in log-space to the wanted factor, among the options in the wanted
direction. When none is offered (bound reached, knob in cooldown) it proposes ``no_action`` and
says why. For the rule to be applied exactly, offer the knob with multipliers ``(1/1.5, 1.5)``
and ``cooldown: 0`` (a recipe's ``manager_knobs``).
"""

from __future__ import annotations

import math

from rl_manager.managers.base import Manager, Proposal, find_knob, log_distance
from rl_manager.schema import (
    ActionSpace,
    Adjust,
    Decision,
    KnobChange,
    NoAction,
    TelemetrySnapshot,
)

#: algorithms (``snapshot.algo``) whose logged ``approx_kl`` this controller understands
PPO_ALGOS = frozenset({"ppo", "recurrentppo", "maskableppo"})


class KLAdaptiveManager(Manager):
    """PPO learning rate ×``factor`` when the last update's KL < target/2, ÷``factor`` when > 2×target.

    :param target_kl: the target approximate KL (thresholds ``target_kl / 2`` and ``2 * target_kl``).
    :param factor: the wanted multiplicative step (> 1).
    :param knob: name of the learning-rate knob to prefer among knobs of role ``learning_rate``.
    :raises ValueError: for a non-positive target or a factor <= 1.
    """

    name = "kl_adaptive"

    def __init__(self, target_kl: float = 0.01, factor: float = 1.5, knob: str = "learning_rate") -> None:
        if not (math.isfinite(target_kl) and target_kl > 0):
            raise ValueError(f"target_kl must be finite and > 0, got {target_kl}")
        if not (math.isfinite(factor) and factor > 1):
            raise ValueError(f"factor must be finite and > 1, got {factor}")
        self.target_kl, self.factor, self.knob = float(target_kl), float(factor), knob

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        return Proposal(reply=self.kl_decision(snapshot, menu))

    def kl_decision(self, snapshot: TelemetrySnapshot, menu: ActionSpace) -> Decision:
        """Apply the KL rule to one snapshot and menu."""
        if snapshot.algo.lower() not in PPO_ALGOS:
            return NoAction(reason=f"kl_adaptive applies to PPO only, not {snapshot.algo or 'an unknown algorithm'!r}")
        kl = snapshot.health.approx_kl
        if kl is None or not math.isfinite(kl):
            return NoAction(reason=f"no finite approx KL of the last update (got {kl})")
        low, high = self.target_kl / 2, 2 * self.target_kl
        if low <= kl <= high:
            return NoAction(reason=f"approx KL {kl:.3g} within [{low:.3g}, {high:.3g}]")
        up = kl < low
        wanted = self.factor if up else 1 / self.factor
        direction = "up" if up else "down"
        name, entry, why = find_knob(snapshot, menu, "learning_rate", self.knob)
        if entry is None:
            return NoAction(reason=f"approx KL {kl:.3g} asks for the learning rate {direction}, but {why}")
        current = entry.current
        moves = [o for o in entry.options if (o.value > current if up else o.value < current)]
        if current <= 0 or not moves:
            bound = f"{'upper' if up else 'lower'} bound {entry.high if up else entry.low:.3g}"
            return NoAction(reason=f"approx KL {kl:.3g} asks for {name} {direction}; none offered ({bound})")
        option = min(moves, key=lambda o: (log_distance(o.value / current, wanted), o.value))
        sign = "<" if up else ">"
        limit = low if up else high
        return Adjust(
            changes=[KnobChange(knob=entry.name, value=option.value)],
            reason=(
                f"approx KL {kl:.3g} {sign} {limit:.3g}: {name} {direction} "
                f"×{option.value / current:.3g} (wanted ×{wanted:.3g})"
            ),
            expected_outcome=f"approx KL moves toward {self.target_kl:.3g}",
        )

"""PID-Lagrangian cost penalty: a single-axis safety baseline (Stooke, Achiam & Abbeel, 2020).

The cost-penalty knob (role ``cost_penalty``, e.g. ``collision_penalty``) plays the Lagrange
multiplier λ of the constraint ``EpCost <= d``. With the error ``e = measured episode cost - d``
(evaluation ``mean_cost`` when the boundary evaluated episodes, else the training window's
``mean_episode_cost``; ``d`` from ``snapshot.targets.cost_limit``, else the constructor's
``cost_limit``), the wanted value is, in the knob's own units::

    λ* = clip(λ + Kp·(e - e₀) + Ki·Σe + Kd·(D - D₀), low, high),   D = max(0, e - e_prev)

where ``λ`` is the knob's current value and the sum and the anchor ``(e₀, D₀)`` run from the knob's
last change (``KnobSpec.last_changed_at``): ``Σe`` adds the errors of the evaluations after that
change, up to and including this one, and ``e₀, D₀`` are the error and cost increase measured at
the change. Without a change in the snapshot's history window the anchor is zero, so the first
move is ``λ + Kp·e + Ki·Σe + Kd·D``. This is the positional PID of Stooke et al. written in
velocity form from the applied value: it equals the positional controller as long as the menu can
express its output, and it needs no memory outside the snapshot, so a resumed run (which builds a
fresh manager) continues the same control law. Clamping into the bounds and re-anchoring at each
applied change act as anti-windup; the integral only spans the snapshot's history window.

The knob then moves to the offered value closest to ``λ*`` in log-space; when that is the current
value (the error has not yet accumulated to a full menu step) it proposes ``no_action``.

Default gains are for episode costs of order 1 (an episode cost counting collision-terminated
episodes, cost limit 0.1) and penalties of order 1-100: an episode cost 0.4 over the limit moves
the penalty by +4 at once (P+I) and by +2 per evaluation while it persists (I).
"""

from __future__ import annotations

import math

from rl_manager.managers.base import Manager, Proposal, find_knob, finite, log_distance
from rl_manager.schema import ActionSpace, Adjust, Decision, KnobChange, NoAction, TelemetrySnapshot


class LagrangianManager(Manager):
    """PID-Lagrangian update of the cost-penalty knob toward the episode-cost limit.

    :param kp: proportional gain (knob units per unit of episode cost).
    :param ki: integral gain (knob units per unit of episode cost and evaluation).
    :param kd: derivative gain, on cost increases only (knob units per unit of episode cost).
    :param cost_limit: the episode-cost limit ``d`` used when the snapshot's targets have none.
    :param knob: name of the knob to prefer among knobs of role ``cost_penalty``.
    :raises ValueError: for a negative or non-finite gain or limit.
    """

    name = "lagrangian"

    def __init__(
        self,
        kp: float = 5.0,
        ki: float = 5.0,
        kd: float = 1.0,
        cost_limit: float = 0.1,
        knob: str = "collision_penalty",
    ) -> None:
        for label, value in (("kp", kp), ("ki", ki), ("kd", kd), ("cost_limit", cost_limit)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be finite and >= 0, got {value}")
        self.kp, self.ki, self.kd, self.cost_limit, self.knob = float(kp), float(ki), float(kd), float(cost_limit), knob

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        return Proposal(reply=self.pid_decision(snapshot, menu))

    @staticmethod
    def measured_cost(snapshot: TelemetrySnapshot) -> float | None:
        """The episode cost of this boundary: evaluation when it ran episodes, else the training window."""
        e = snapshot.evaluation
        if e.n_episodes > 0 and e.mean_cost is not None:
            return e.mean_cost
        return snapshot.training.mean_episode_cost

    def limit(self, snapshot: TelemetrySnapshot) -> float:
        """The episode-cost limit: the snapshot's target, else the constructor's default."""
        limit = snapshot.targets.cost_limit
        return self.cost_limit if limit is None else limit

    def target_value(self, snapshot: TelemetrySnapshot, current: float, last_changed_at: int | None) -> float:
        """The unclipped PID output λ* for a knob at ``current`` last changed at ``last_changed_at``.

        :raises ValueError: if this boundary has no finite episode cost.
        """
        cost = self.measured_cost(snapshot)
        if not finite(cost):
            raise ValueError(f"no finite episode cost at this boundary (got {cost})")
        d = self.limit(snapshot)
        now = snapshot.position.evaluation_index
        # past evaluations with a measured cost, oldest first (the current row, if listed, is excluded)
        past = [(r.evaluation_index, r.mean_cost - d) for r in snapshot.history if r.evaluation_index < now]
        past = [(i, e) for i, e in past if math.isfinite(e)]
        e_now = cost - d
        e_prev = past[-1][1] if past else None
        increase = max(0.0, e_now - e_prev) if e_prev is not None else 0.0
        e0 = d0 = 0.0
        since = past
        anchor = next((k for k, (i, _) in enumerate(past) if i == last_changed_at), None)
        if last_changed_at is not None and anchor is not None:
            e0 = past[anchor][1]
            d0 = max(0.0, e0 - past[anchor - 1][1]) if anchor > 0 else 0.0
            since = past[anchor + 1 :]
        elif last_changed_at is not None and last_changed_at >= now:
            since, e0 = [], e_now  # changed at this very boundary: nothing measured since
        integral = sum(e for _, e in since) + e_now
        return current + self.kp * (e_now - e0) + self.ki * integral + self.kd * (increase - d0)

    def pid_decision(self, snapshot: TelemetrySnapshot, menu: ActionSpace) -> Decision:
        """Apply the PID-Lagrangian update to one snapshot and menu."""
        cost = self.measured_cost(snapshot)
        if not finite(cost):
            return NoAction(reason=f"no finite episode cost measured at this boundary (got {cost})")
        name, entry, why = find_knob(snapshot, menu, "cost_penalty", self.knob)
        if entry is None:
            return NoAction(reason=f"episode cost {cost:.3g}: {why}")
        spec = next((k for k in snapshot.knobs if k.name == name), None)
        last = spec.last_changed_at if spec is not None else None
        wanted = self.target_value(snapshot, entry.current, last)
        clipped = min(entry.high, max(entry.low, wanted))
        candidates = [entry.current, *(o.value for o in entry.options)]
        best = min(candidates, key=lambda v: (log_distance(v, clipped), v))
        d = self.limit(snapshot)
        state = f"episode cost {cost:.3g} vs limit {d:.3g}: {name} {entry.current:.4g} -> λ* {wanted:.4g}"
        if best == entry.current:
            return NoAction(reason=f"{state}; the nearest offered value is the current one")
        return Adjust(
            changes=[KnobChange(knob=entry.name, value=best)],
            reason=f"{state}; nearest offered value {best:.4g}",
            expected_outcome=(
                f"episode cost {'falls' if best > entry.current else 'may rise'} toward the limit {d:.3g}"
            ),
        )

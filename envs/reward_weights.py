"""The reward weights of the reachers as runtime knobs (shared by both reacher envs).

A training manager changes them between steps through :meth:`RewardWeights.set_reward_weights`
(from a VecEnv: ``vec_env.env_method("set_reward_weights", collision_penalty=20.0)``) and reads them
back with :meth:`RewardWeights.reward_weights`; ``rl_manager.actuators`` discovers both methods.
"""

from __future__ import annotations

import math

#: the reward weights, in the order :meth:`RewardWeights.reward_weights` lists them
WEIGHT_NAMES = ("progress_scale", "success_bonus", "collision_penalty")


def check_weight(name: str, value: float) -> float:
    """``value`` as a float, or :class:`ValueError` unless it is finite and >= 0."""
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


class RewardWeights:
    """Mixin for envs whose reward uses the attributes ``progress_scale``, ``success_bonus`` and
    ``collision_penalty``."""

    progress_scale: float
    success_bonus: float
    collision_penalty: float

    def set_reward_weights(
        self,
        progress_scale: float | None = None,
        success_bonus: float | None = None,
        collision_penalty: float | None = None,
    ) -> dict[str, float]:
        """Change reward weights in place (validated, all or nothing); return the weights in force.

        The new weights apply from the next step on (an episode in progress continues with them).

        :param progress_scale: new progress weight, or ``None`` to keep it.
        :param success_bonus: new success bonus, or ``None`` to keep it.
        :param collision_penalty: new collision penalty, or ``None`` to keep it.
        :return: ``{"progress_scale": ..., "success_bonus": ..., "collision_penalty": ...}``.
        """
        updates = {
            "progress_scale": progress_scale,
            "success_bonus": success_bonus,
            "collision_penalty": collision_penalty,
        }
        checked = {k: check_weight(k, v) for k, v in updates.items() if v is not None}
        for key, value in checked.items():
            setattr(self, key, value)
        return self.reward_weights()

    def reward_weights(self) -> dict[str, float]:
        """The reward weights in force."""
        return {name: getattr(self, name) for name in WEIGHT_NAMES}

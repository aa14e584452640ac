"""Actuators: read and write knob values on a live SB3 algorithm.

SB3 silently undoes naive edits (``tests/test_actuators.py`` catches each of them), so each
actuator writes where the algorithm reads the value during ``train()``:

- learning rate: replace ``model.lr_schedule`` (SB3 resets optimiser LRs from it every ``train()``);
- PPO/A2C ``ent_coef``: the float read in ``train()``;
- SAC/TQC fixed entropy coefficient: ``ent_coef_tensor``; ``'auto'``: ``target_entropy``;
- TD3/DDPG (and SAC/TQC given one) ``action_noise`` sigma, inside ``VectorizedActionNoise`` too;
- PPO ``clip_range``: a schedule; PPO/A2C Gaussian ``log_std`` (exposed as ``action_std``);
- env reward weights (``progress_scale``, ``success_bonus``, ``collision_penalty``, ``cost_penalty``)
  where the training env exposes ``set_reward_weights`` / ``reward_weights`` (the reachers, the
  ``rl_manager/SafeFetch*`` envs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.utils import ConstantSchedule, update_learning_rate

from rl_manager.knobs import Knob, KnobBounds, ManagerError
from rl_manager.schema import KnobRole

__all__ = ["DEFAULT_BOUNDS", "Actuator", "Knob", "KnobBounds", "ManagerError", "discover_actuators"]


#: the SB3 knobs are plain :class:`~rl_manager.knobs.Knob` subclasses (the old name is kept)
Actuator = Knob


class LearningRate(Knob):
    """Optimiser learning rate (all algorithms; a constant schedule from now on)."""

    name, role, conservative = "learning_rate", "learning_rate", "down"

    def _read(self, model: BaseAlgorithm) -> float:
        return model.lr_schedule(model._current_progress_remaining)

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.learning_rate = value
        model.lr_schedule = ConstantSchedule(value)
        for name in ("policy.optimizer", "actor.optimizer", "critic.optimizer", "ent_coef_optimizer"):
            obj: Any = model
            for part in name.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, th.optim.Optimizer):
                update_learning_rate(obj, value)


class OnPolicyEntCoef(Knob):
    """Entropy bonus coefficient of the PPO/A2C loss."""

    name, role, conservative, scale = "ent_coef", "exploration", "down", "linear"
    values = (0.0, 1e-4, 1e-3, 1e-2)

    def _read(self, model: BaseAlgorithm) -> float:
        return float(model.ent_coef)

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.ent_coef = value


class FixedEntCoef(Knob):
    """Fixed entropy coefficient of SAC/TQC (``ent_coef_tensor``)."""

    name, role, conservative = "ent_coef", "exploration", "down"

    def _read(self, model: BaseAlgorithm) -> float:
        return float(model.ent_coef_tensor.item())

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        # ``train()`` reads ``ent_coef_tensor``; ``ent_coef`` (read once at setup) is kept in step
        # so that the saved hyperparameters and any telemetry reading it agree.
        model.ent_coef_tensor = th.tensor(value, device=model.device, dtype=model.ent_coef_tensor.dtype)
        model.ent_coef = value


class TargetEntropy(Knob):
    """Target entropy of SAC/TQC automatic entropy tuning (higher: more exploration).

    The default bounds, ``[4 * h, h / 4]`` around SB3's heuristic ``h = -dim(action space)``, depend
    on the action space only, so discovering the knobs again after a change (e.g. on resume) gives
    the same bounds.
    """

    name, role, conservative, scale = "target_entropy", "exploration", "down", "linear"
    multipliers = (0.25, 0.5, 0.75, 1.25, 1.5, 2.0)

    def _read(self, model: BaseAlgorithm) -> float:
        return float(model.target_entropy)

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.target_entropy = float(value)


def _noises(model: BaseAlgorithm) -> list[ActionNoise]:
    noise = model.action_noise
    if noise is None:
        return []
    return list(noise.noises) if isinstance(noise, VectorizedActionNoise) else [noise]


class NoiseSigma(Knob):
    """Standard deviation of the exploration action noise (TD3/DDPG, or SAC/TQC given one)."""

    name, role, conservative = "noise_sigma", "exploration", "down"

    def _read(self, model: BaseAlgorithm) -> float:
        return float(np.mean([np.mean(n._sigma) for n in _noises(model)]))

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        # Scale each noise so that its mean sigma becomes ``value``: per-dimension ratios are kept
        # (``np.full_like`` would also truncate to an integer dtype).
        for n in _noises(model):
            sigma = np.asarray(n._sigma, dtype=np.float64)
            mean = float(np.mean(sigma))
            n._sigma = sigma * (value / mean) if mean > 0 else np.full(sigma.shape, value, dtype=np.float64)


class ActionStd(Knob):
    """Mean standard deviation of a Gaussian PPO/A2C policy (shifts ``log_std``)."""

    name, role, conservative = "action_std", "exploration", "down"

    def _read(self, model: BaseAlgorithm) -> float:
        return float(model.policy.log_std.detach().exp().mean().item())

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        with th.no_grad():
            model.policy.log_std.add_(math.log(value) - math.log(self._read(model)))


class ClipRange(Knob):
    """PPO clip range (a constant schedule from now on)."""

    name, role, conservative, scale = "clip_range", "clip_range", "down", "linear"
    multipliers = ()
    values = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)

    def _read(self, model: BaseAlgorithm) -> float:
        return model.clip_range(model._current_progress_remaining)

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.clip_range = ConstantSchedule(value)


class RewardWeight(Knob):
    """A reward weight of the training env (through ``set_reward_weights``)."""

    scale = "linear"

    def __init__(
        self, name: str, low: float, high: float, role: KnobRole, conservative: str | None, **fields: Any
    ) -> None:
        super().__init__(low, high, **fields)
        self.name, self.role, self.conservative = name, role, conservative

    def _read(self, model: BaseAlgorithm) -> float:
        return float(model.get_env().env_method("reward_weights", indices=0)[0][self.name])

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.get_env().env_method("set_reward_weights", **{self.name: value})


class CriticLearningRate(Knob):
    """Critic learning rate of a :class:`~rl_manager.policies.SplitLRActorCriticPolicy` (its own param group).

    Role ``other``: rules that move "the learning rate" (KL, starved) move the actor's only.
    """

    name, role, conservative = "critic_lr", "other", "down"

    def _read(self, model: BaseAlgorithm) -> float:
        from rl_manager.policies import read_critic_lr

        return read_critic_lr(model)

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        from rl_manager.policies import write_critic_lr

        write_critic_lr(model, value)


#: default bounds (the paper's where it has them)
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "learning_rate": (1e-5, 3e-3),
    "critic_lr": (1e-5, 1e-2),
    "ent_coef": (0.0, 0.1),
    "sac_ent_coef": (1e-4, 1.0),
    "noise_sigma": (0.01, 1.0),
    "action_std": (0.05, 2.0),
    "clip_range": (0.05, 0.4),
    "progress_scale": (0.0, 50.0),
    "success_bonus": (0.0, 50.0),
    "collision_penalty": (0.0, 100.0),
    "cost_penalty": (0.0, 1.0),
}


#: reward weights an env may expose, with their role and conservative direction
_REWARD_WEIGHTS: dict[str, tuple[KnobRole, str | None]] = {
    "collision_penalty": ("cost_penalty", "up"),
    "cost_penalty": ("cost_penalty", "up"),
    "success_bonus": ("loss_weight", None),
    "progress_scale": ("loss_weight", None),
}
#: listed values of a reward weight that starts at 0, where no multiplier can move it (``rl_manager/SafeFetch*``'s
#: penalty per unit of cost, next to a sparse reward of -1 per step short of the goal; 0.75 is the rule's step back
#: from 1.0 when the cost limit has slack: a violation still priced near a reward step, a miss dearer than a touch)
_REWARD_WEIGHT_VALUES: dict[str, tuple[float, ...]] = {"cost_penalty": (0.0, 0.05, 0.1, 0.2, 0.5, 0.75, 1.0)}


def _reward_weight_names(model: BaseAlgorithm) -> list[str]:
    """The known reward weights the training env exposes (none if it has no ``reward_weights``).

    Probes with ``VecEnv.has_attr`` first: calling a missing method through ``env_method`` kills the
    workers of a ``SubprocVecEnv``.
    """
    env = model.get_env()
    if env is None or not (env.has_attr("reward_weights") and env.has_attr("set_reward_weights")):
        return []
    weights = env.env_method("reward_weights", indices=0)[0]
    if not isinstance(weights, dict):
        return []
    return [name for name in _REWARD_WEIGHTS if name in weights]


def discover_actuators(model: BaseAlgorithm, overrides: dict[str, KnobBounds] | None = None) -> dict[str, Actuator]:
    """The knobs this algorithm (and its training env) exposes, with bounds and overrides applied.

    :param model: a constructed SB3 algorithm.
    :param overrides: per-knob bounds/moves, or ``enabled: false`` to hide a knob.
    :raises ValueError: for an override naming a knob the algorithm does not have.
    """
    b = DEFAULT_BOUNDS
    acts: list[Actuator] = [LearningRate(*b["learning_rate"])]
    from rl_manager.policies import has_critic_lr

    if has_critic_lr(model):
        acts.append(CriticLearningRate(*b["critic_lr"]))
    if (
        hasattr(model, "ent_coef")
        and isinstance(getattr(model, "ent_coef", None), float | int)
        and not hasattr(model, "ent_coef_tensor")
    ):
        acts.append(OnPolicyEntCoef(*b["ent_coef"]))
    if getattr(model, "log_ent_coef", None) is not None and getattr(model, "ent_coef_optimizer", None) is not None:
        heuristic = -float(np.prod(model.action_space.shape))
        target = float(model.target_entropy)
        acts.append(TargetEntropy(min(4 * heuristic, target), max(heuristic / 4, target)))
    elif isinstance(getattr(model, "ent_coef_tensor", None), th.Tensor):
        acts.append(FixedEntCoef(*b["sac_ent_coef"]))
    if _noises(model):
        acts.append(NoiseSigma(*b["noise_sigma"]))
    if hasattr(model, "clip_range") and callable(getattr(model, "clip_range", None)):
        acts.append(ClipRange(*b["clip_range"]))
    if isinstance(getattr(getattr(model, "policy", None), "log_std", None), th.nn.Parameter):
        acts.append(ActionStd(*b["action_std"]))
    for weight in _reward_weight_names(model):
        role, conservative = _REWARD_WEIGHTS[weight]
        listed = {"values": _REWARD_WEIGHT_VALUES[weight], "multipliers": ()} if weight in _REWARD_WEIGHT_VALUES else {}
        acts.append(RewardWeight(weight, *b[weight], role=role, conservative=conservative, **listed))
    found = {a.name: a for a in acts}
    for name, o in (overrides or {}).items():
        if name not in found:
            raise ValueError(f"manager_knobs: {model.__class__.__name__} has no knob {name!r}; has {sorted(found)}")
        if o.enabled:
            found[name].configure(o)
        else:
            del found[name]
    return found

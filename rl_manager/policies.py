"""An SB3 actor-critic policy whose critic has its own, absolute learning rate.

SB3's PPO/A2C train actor and critic with one optimiser, and ``_update_learning_rate`` writes the
schedule's value into *every* param group at the start of each ``train()``. The paper's PPO has
separate actor and critic learning rates. :class:`SplitLRActorCriticPolicy` builds its optimiser with
two param groups:

- ``"actor"``: the features extractor(s) shared with or owned by the actor, ``mlp_extractor.policy_net``,
  ``action_net`` and ``log_std``; its learning rate is the algorithm's (schedule, ``learning_rate``
  knob), exactly as in SB3;
- ``"critic"``: ``mlp_extractor.value_net``, ``value_net`` (and ``vf_features_extractor`` when the
  extractor is not shared); its learning rate is ``critic_lr``, stored in the group as ``fixed_lr``
  and re-applied by an optimiser step pre-hook before every step, so SB3's per-``train()`` reset
  never reaches a gradient step. ``fixed_lr`` is part of the optimiser's ``state_dict``: a value set
  with :func:`write_critic_lr` survives ``save``/``load``.

Importing this module registers the alias ``"SplitLRMlpPolicy"`` for PPO and A2C, so a recipe can say
``policy: SplitLRMlpPolicy`` with ``policy_kwargs: {critic_lr: 0.001}``. Example::

    >>> from stable_baselines3 import PPO
    >>> import rl_manager.policies
    >>> model = PPO("SplitLRMlpPolicy", "Pendulum-v1", learning_rate=3e-4, policy_kwargs={"critic_lr": 1e-3})
    >>> read_critic_lr(model)
    0.001
    >>> write_critic_lr(model, 3e-3)
    >>> [g["lr"] for g in model.policy.optimizer.param_groups]
    [0.0003, 0.003]
"""

from __future__ import annotations

import math
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule

#: the name a recipe uses for :class:`SplitLRActorCriticPolicy`
POLICY_ALIAS = "SplitLRMlpPolicy"
ACTOR_GROUP, CRITIC_GROUP = "actor", "critic"
#: param-group key holding a learning rate that the step pre-hook re-applies before every step
FIXED_LR_KEY = "fixed_lr"


def _check_lr(value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"critic_lr must be a finite number > 0, got {value!r}")
    return value


def apply_fixed_lr(optimizer: th.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Optimiser step pre-hook: set ``lr`` of every param group holding ``fixed_lr`` to that value."""
    for group in optimizer.param_groups:
        fixed = group.get(FIXED_LR_KEY)
        if fixed is not None:
            group["lr"] = fixed


class SplitLRActorCriticPolicy(ActorCriticPolicy):
    """:class:`~stable_baselines3.common.policies.ActorCriticPolicy` with a separate critic learning rate.

    Every argument of ``ActorCriticPolicy`` is accepted unchanged (``net_arch``, ``log_std_init``,
    ``optimizer_class``, ...); the optimiser gets two param groups (see the module docstring).

    :param observation_space: observation space.
    :param action_space: action space.
    :param lr_schedule: the algorithm's learning-rate schedule (drives the actor group).
    :param critic_lr: absolute learning rate of the critic group, kept across SB3's LR updates;
        ``None`` lets the critic follow the schedule like the actor (plain SB3 behaviour, two groups).
    :param squash_mean: Gaussian mean ``tanh(action_net(latent))`` instead of linear (the paper's
        actor; Box actions only, without gSDE). Samples are not squashed: the env clips them.
    :param kwargs: passed to ``ActorCriticPolicy``.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        critic_lr: float | None = None,
        squash_mean: bool = False,
        **kwargs: Any,
    ) -> None:
        # read by _build, which ActorCriticPolicy.__init__ calls
        self._initial_critic_lr = None if critic_lr is None else _check_lr(critic_lr)
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)
        if squash_mean and not isinstance(self.action_dist, DiagGaussianDistribution):
            raise ValueError(f"squash_mean needs a diagonal Gaussian policy, got {type(self.action_dist).__name__}")
        self.squash_mean = bool(squash_mean)

    def _critic_modules(self) -> list[th.nn.Module]:
        extractor_value_net = getattr(self.mlp_extractor, "value_net", None)
        if not isinstance(extractor_value_net, th.nn.Module):
            raise TypeError(
                f"{type(self).__name__} needs an mlp_extractor with a value_net module, "
                f"got {type(self.mlp_extractor).__name__}"
            )
        modules = [extractor_value_net, self.value_net]
        if not self.share_features_extractor:
            modules.append(self.vf_features_extractor)
        return modules

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        critic_ids = {id(p) for module in self._critic_modules() for p in module.parameters()}
        params = list(self.parameters())
        critic_group: dict[str, Any] = {"params": [p for p in params if id(p) in critic_ids], "name": CRITIC_GROUP}
        if self._initial_critic_lr is not None:
            critic_group["lr"] = critic_group[FIXED_LR_KEY] = self._initial_critic_lr
        groups = [{"params": [p for p in params if id(p) not in critic_ids], "name": ACTOR_GROUP}, critic_group]
        self.optimizer = self.optimizer_class(groups, lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        self.optimizer.register_step_pre_hook(apply_fixed_lr)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        if not self.squash_mean:
            return super()._get_action_dist_from_latent(latent_pi)
        mean_actions = th.tanh(self.action_net(latent_pi))
        return self.action_dist.proba_distribution(mean_actions, self.log_std)  # type: ignore[call-arg]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(critic_lr=self.critic_lr, squash_mean=self.squash_mean)
        return data

    def param_group(self, name: str) -> dict[str, Any]:
        """The optimiser's param group ``"actor"`` or ``"critic"``."""
        for group in self.optimizer.param_groups:
            if group.get("name") == name:
                return group
        raise KeyError(f"the optimiser has no param group {name!r}")

    @property
    def critic_lr(self) -> float | None:
        """The critic's fixed learning rate in force (``None``: it follows the schedule)."""
        fixed = self.param_group(CRITIC_GROUP).get(FIXED_LR_KEY)
        return None if fixed is None else float(fixed)

    def set_critic_lr(self, value: float) -> None:
        """Fix the critic's learning rate to ``value`` from the next optimiser step on.

        :param value: learning rate (finite, > 0).
        """
        group = self.param_group(CRITIC_GROUP)
        group["lr"] = group[FIXED_LR_KEY] = _check_lr(value)


#: the recipe-level name of the policy
SplitLRMlpPolicy = SplitLRActorCriticPolicy


def _split_policy(model: BaseAlgorithm) -> SplitLRActorCriticPolicy:
    policy = getattr(model, "policy", None)
    if not isinstance(policy, SplitLRActorCriticPolicy):
        raise TypeError(
            f"{type(model).__name__} has no separate critic learning rate: policy is {type(policy).__name__}"
        )
    return policy


def has_critic_lr(model: BaseAlgorithm) -> bool:
    """Whether ``model`` trains with a :class:`SplitLRActorCriticPolicy` (i.e. has a critic-lr knob)."""
    return isinstance(getattr(model, "policy", None), SplitLRActorCriticPolicy)


def read_critic_lr(model: BaseAlgorithm) -> float:
    """The critic learning rate the next gradient step uses.

    :param model: an algorithm with a :class:`SplitLRActorCriticPolicy`.
    :return: the fixed critic LR, or the schedule's current value when the critic follows it.
    :raises TypeError: for any other policy.
    """
    fixed = _split_policy(model).critic_lr
    return float(model.lr_schedule(model._current_progress_remaining)) if fixed is None else fixed


def write_critic_lr(model: BaseAlgorithm, value: float) -> None:
    """Fix the critic learning rate of ``model`` (in force from the next gradient step).

    :param model: an algorithm with a :class:`SplitLRActorCriticPolicy`.
    :param value: learning rate (finite, > 0).
    :raises TypeError: for any other policy; ``ValueError`` for a bad value.
    """
    _split_policy(model).set_critic_lr(value)


def register_policy_aliases() -> None:
    """Make ``"SplitLRMlpPolicy"`` a policy name of PPO and A2C (idempotent)."""
    for algo in (PPO, A2C):
        if algo.policy_aliases.get(POLICY_ALIAS) is not SplitLRActorCriticPolicy:
            algo.policy_aliases = {**algo.policy_aliases, POLICY_ALIAS: SplitLRActorCriticPolicy}


register_policy_aliases()

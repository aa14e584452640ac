"""Entry point of the ``rl_manager/SafeFetch*-v0`` ids: a MuJoCo Fetch env with :class:`FetchSafetyCost`.

The cost wrapper must sit *inside* ``Monitor`` (SB3's ``make_vec_env(wrapper_class=...)`` wraps
outside it), so the registered entry point builds the raw Fetch env and wraps it here; ``gym.make``
then adds ``TimeLimit`` and the usual checkers around it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from rl_manager.envs.safety import (
    DEFAULT_ACCEL_LIMIT,
    DEFAULT_CONTACT_FORCE_LIMIT,
    DEFAULT_DROP_HEIGHT,
    DEFAULT_WORKSPACE_MARGIN,
    FetchSafetyCost,
)

#: Fetch tasks that get a Safe variant, with the Gymnasium-Robotics version they wrap.
SAFE_FETCH_TASKS: dict[str, str] = {
    "FetchReach": "FetchReach-v4",
    "FetchPush": "FetchPush-v4",
    "FetchPickAndPlace": "FetchPickAndPlace-v4",
    "FetchSlide": "FetchSlide-v4",
}


def make_safe_fetch(
    task: str = "FetchPickAndPlace",
    accel_limit: float = DEFAULT_ACCEL_LIMIT,
    contact_force_limit: float = DEFAULT_CONTACT_FORCE_LIMIT,
    workspace_margin: float = DEFAULT_WORKSPACE_MARGIN,
    drop_height: float = DEFAULT_DROP_HEIGHT,
    cost_terms: tuple[str, ...] | list[str] | None = None,
    cost_penalty: float = 0.0,
    **fetch_kwargs: Any,
) -> gym.Env:
    """Build a MuJoCo Fetch env (without ``TimeLimit``) wrapped in :class:`FetchSafetyCost`.

    :param task: one of :data:`SAFE_FETCH_TASKS` (``"FetchPickAndPlace"`` ...).
    :param accel_limit: see :class:`FetchSafetyCost`.
    :param contact_force_limit: see :class:`FetchSafetyCost`.
    :param workspace_margin: see :class:`FetchSafetyCost`.
    :param drop_height: see :class:`FetchSafetyCost`.
    :param cost_terms: see :class:`FetchSafetyCost`.
    :param cost_penalty: see :class:`FetchSafetyCost`.
    :param fetch_kwargs: passed to the Fetch env constructor (``reward_type``, ``render_mode`` ...).
    :return: the wrapped environment.
    """
    if task not in SAFE_FETCH_TASKS:
        raise ValueError(f"unknown Fetch task {task!r}; choose one of {sorted(SAFE_FETCH_TASKS)}")
    spec = gym.spec(SAFE_FETCH_TASKS[task])
    if not isinstance(spec.entry_point, str) and not callable(spec.entry_point):
        raise ValueError(f"{spec.id} has no entry point")
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    env = creator(**{**spec.kwargs, **fetch_kwargs})
    return FetchSafetyCost(
        env,
        accel_limit=accel_limit,
        contact_force_limit=contact_force_limit,
        workspace_margin=workspace_margin,
        drop_height=drop_height,
        cost_terms=cost_terms,
        cost_penalty=cost_penalty,
    )

"""Safety cost for the Gymnasium-Robotics Fetch tasks, computed from MuJoCo state.

The wrapper follows the Safety-Gymnasium convention: every ``step`` adds ``info["cost"]`` (the sum
of the active indicator terms, a float), one ``info["cost_<term>"]`` per term and the running
``info["episode_cost"]``. The observation is untouched. The reward is the Fetch task's, less
``cost_penalty × info["cost"]`` (default penalty 0: the task's reward, as a Python float);
``compute_reward`` subtracts the same penalty from the costs in the infos it is given, so HER relabels
with it, and ``set_reward_weights(cost_penalty=...)`` changes it between steps (a manager's knob).

Cost terms (each is 0.0 or 1.0 per step):

- ``table_contact``: a robot geom touches the table with a normal force above
  ``contact_force_limit`` newtons (0 means any contact).
- ``ee_accel``: the end-effector (``robot0:grip`` site) acceleration, finite-differenced from the
  MuJoCo site velocity over one environment step, exceeds ``accel_limit`` m/s².
- ``object_off_table``: the object left the table top (its centre is outside the table's horizontal
  extent enlarged by ``workspace_margin``, or below the table top by more than ``drop_height``).
  Only present for tasks with an object (Push, PickAndPlace, Slide).
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym
import mujoco
import numpy as np

#: Names of all cost terms the wrapper knows, in the order they are reported.
FETCH_COST_TERMS: tuple[str, ...] = ("table_contact", "ee_accel", "object_off_table")

#: Calibrated defaults (see ``envs/README.md`` and ``experiments/calibrate_costs.py``).
DEFAULT_ACCEL_LIMIT = 40.0
DEFAULT_CONTACT_FORCE_LIMIT = 0.0
DEFAULT_WORKSPACE_MARGIN = 0.02
DEFAULT_DROP_HEIGHT = 0.05


def _check_non_negative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


class FetchSafetyCost(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Add Safety-Gymnasium style costs to a Gymnasium-Robotics Fetch environment.

    Place it directly around the Fetch env (inside ``TimeLimit`` and ``Monitor``); the registered
    ``rl_manager/SafeFetch*-v0`` ids do this for you.

    :param env: a MuJoCo Fetch environment (``FetchReach/Push/PickAndPlace/Slide-v4``).
    :param accel_limit: end-effector acceleration limit in m/s² for the ``ee_accel`` term.
    :param contact_force_limit: normal force (N) a robot–table contact must exceed to count.
    :param workspace_margin: slack (m) around the table top's horizontal extent before the object
        counts as off the table.
    :param drop_height: how far (m) the object's centre may sink below its resting height on the
        table before it counts as dropped off the table.
    :param cost_terms: which terms contribute to ``info["cost"]``; defaults to every term available
        for this task. Terms left out are still reported as ``cost_<term>`` for monitoring.
    :param cost_penalty: reward subtracted per unit of ``info["cost"]`` (0: the task's reward).
    """

    def __init__(
        self,
        env: gym.Env,
        accel_limit: float = DEFAULT_ACCEL_LIMIT,
        contact_force_limit: float = DEFAULT_CONTACT_FORCE_LIMIT,
        workspace_margin: float = DEFAULT_WORKSPACE_MARGIN,
        drop_height: float = DEFAULT_DROP_HEIGHT,
        cost_terms: tuple[str, ...] | list[str] | None = None,
        cost_penalty: float = 0.0,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            accel_limit=accel_limit,
            contact_force_limit=contact_force_limit,
            workspace_margin=workspace_margin,
            drop_height=drop_height,
            cost_terms=cost_terms,
            cost_penalty=cost_penalty,
        )
        gym.Wrapper.__init__(self, env)
        self.accel_limit = _check_non_negative("accel_limit", accel_limit)
        if self.accel_limit == 0.0:
            raise ValueError("accel_limit must be > 0")
        self.contact_force_limit = _check_non_negative("contact_force_limit", contact_force_limit)
        self.workspace_margin = _check_non_negative("workspace_margin", workspace_margin)
        self.drop_height = _check_non_negative("drop_height", drop_height)
        self.cost_penalty = _check_non_negative("cost_penalty", cost_penalty)

        base = env.unwrapped
        model = getattr(base, "model", None)
        data = getattr(base, "data", None)
        if not isinstance(model, mujoco.MjModel) or not isinstance(data, mujoco.MjData):
            raise ValueError(
                "FetchSafetyCost needs a MuJoCo Fetch env exposing env.unwrapped.model/data "
                f"(the -v4 ids), got {type(base).__name__}"
            )
        self._model: mujoco.MjModel = model
        self._data: mujoco.MjData = data
        self._has_object = bool(getattr(base, "has_object", False))

        self._grip_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "robot0:grip")
        table_body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "table0")
        if self._grip_site < 0 or table_body < 0:
            raise ValueError("the wrapped model has no 'robot0:grip' site or 'table0' body: not a Fetch env")
        robot_bodies = [
            b
            for b in range(model.nbody)
            if (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b) or "").startswith("robot0:")
            and not model.body_mocapid[b] >= 0
        ]
        self._robot_geom = np.isin(model.geom_bodyid, robot_bodies)
        self._table_geom = model.geom_bodyid == table_body
        table_geoms = np.flatnonzero(self._table_geom)
        self._table_geom_id = int(table_geoms[0])
        self._object_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "object0") if self._has_object else -1

        available = FETCH_COST_TERMS if self._has_object else ("table_contact", "ee_accel")
        if cost_terms is None:
            self.cost_terms: tuple[str, ...] = available
        else:
            unknown = [t for t in cost_terms if t not in available]
            if unknown:
                raise ValueError(f"unknown or unavailable cost terms {unknown}; this task has {available}")
            if not cost_terms:
                raise ValueError("cost_terms must name at least one term (or be None for all)")
            self.cost_terms = tuple(cost_terms)
        self.reported_terms: tuple[str, ...] = available
        # Step length of one env step (n_substeps * timestep), for the finite difference.
        self._dt = float(getattr(base, "n_substeps", 1) * model.opt.timestep)
        self._prev_vel = np.zeros(3)
        self._object_rest_z = 0.0
        self.episode_cost = 0.0
        self.last_ee_accel = 0.0
        self._force = np.zeros(6)
        self._vel = np.zeros(6)

    # -- MuJoCo measurements -------------------------------------------------------------------
    def ee_velocity(self) -> np.ndarray:
        """Linear velocity of the ``robot0:grip`` site in the world frame (m/s)."""
        site = mujoco.mjtObj.mjOBJ_SITE
        mujoco.mj_objectVelocity(self._model, self._data, site, self._grip_site, self._vel, 0)
        return self._vel[3:].copy()

    def table_contact_force(self) -> float:
        """Largest normal force (N) among current robot–table contacts, ``-1.0`` when none."""
        data = self._data
        largest = -1.0
        for i in range(data.ncon):
            contact = data.contact[i]
            g1, g2 = contact.geom1, contact.geom2
            robot_table = self._robot_geom[g1] and self._table_geom[g2]
            if robot_table or (self._robot_geom[g2] and self._table_geom[g1]):
                mujoco.mj_contactForce(self._model, data, i, self._force)
                largest = max(largest, abs(float(self._force[0])))
        return largest

    def object_off_table(self) -> bool:
        """Whether the object's centre left the table top (see ``workspace_margin``/``drop_height``)."""
        if not self._has_object:
            return False
        pos = self._data.site_xpos[self._object_site]
        centre = self._data.geom_xpos[self._table_geom_id]
        half = self._model.geom_size[self._table_geom_id][:2] + self.workspace_margin
        outside = bool(np.any(np.abs(pos[:2] - centre[:2]) > half))
        dropped = bool(pos[2] < self._object_rest_z - self.drop_height)
        return outside or dropped

    def _costs(self) -> dict[str, float]:
        vel = self.ee_velocity()
        accel = float(np.linalg.norm(vel - self._prev_vel)) / self._dt
        self._prev_vel = vel
        terms = {
            "table_contact": float(self.table_contact_force() > self.contact_force_limit),
            "ee_accel": float(accel > self.accel_limit),
        }
        if self._has_object:
            terms["object_off_table"] = float(self.object_off_table())
        self.last_ee_accel = accel
        return terms

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> Any:
        """The wrapped Fetch env's ``compute_reward`` less ``cost_penalty`` times the cost in ``info``.

        ``info`` is one step's info dict or, as HER passes it for a batch, a sequence of them; a missing
        ``info`` (or an info without ``"cost"``) counts as no cost.
        """
        reward = self.env.unwrapped.compute_reward(achieved_goal, desired_goal, info)
        if self.cost_penalty == 0.0 or info is None:
            return reward
        if isinstance(info, dict):
            return reward - self.cost_penalty * float(info.get("cost", 0.0))
        costs = np.array([float(i.get("cost", 0.0)) if i else 0.0 for i in np.ravel(info)], dtype=np.float32)
        return reward - self.cost_penalty * costs.reshape(np.shape(reward))

    # -- the penalty as a reward weight (``rl_manager.actuators`` discovers these two methods) ------------
    def set_reward_weights(self, cost_penalty: float | None = None) -> dict[str, float]:
        """Set the cost penalty (validated) from the next step on; return the weights in force."""
        if cost_penalty is not None:
            self.cost_penalty = _check_non_negative("cost_penalty", cost_penalty)
        return self.reward_weights()

    def reward_weights(self) -> dict[str, float]:
        """The reward weights in force: ``{"cost_penalty": ...}``."""
        return {"cost_penalty": self.cost_penalty}

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._prev_vel = self.ee_velocity()
        self.last_ee_accel = 0.0
        if self._has_object:
            self._object_rest_z = float(getattr(self.env.unwrapped, "height_offset", 0.0))
        self.episode_cost = 0.0
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        terms = self._costs()
        cost = float(sum(terms[t] for t in self.cost_terms))
        self.episode_cost += cost
        info = dict(info)
        for name, value in terms.items():
            info[f"cost_{name}"] = value
        info["cost"] = cost
        info["episode_cost"] = self.episode_cost
        # Fetch returns a numpy float32 reward; a Python float of the same value keeps SB3's checker happy.
        return obs, float(reward) - self.cost_penalty * cost, terminated, truncated, info

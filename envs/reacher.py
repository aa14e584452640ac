"""Planar two-link reacher with a circular obstacle, in MuJoCo (the paper's task shape).

A two-link arm (links 0.65 and 0.55) moves in the plane under joint-velocity commands. Each episode
randomises the start pose, the target and the obstacle's position and radius; touching the obstacle
ends the episode; reaching the target (radius 0.09) without a collision is a *safe success*.
MuJoCo computes the forward kinematics (``mj_kinematics`` on an MJCF model built in code); the
arm–obstacle clearance is the exact capsule–disc distance in the plane.

Reward per step::

    progress_scale * (d_prev - d) + success_bonus * safe_success - collision_penalty * collision
    - 0.01 * ||a||^2 - 0.05 * clearance_shortfall

with ``clearance_shortfall = max(0, safety_margin - clearance) / safety_margin`` in [0, 1].
The three weights are plain float attributes a training manager may change between episodes or
mid-run; from a VecEnv use ``vec_env.env_method("set_reward_weights", collision_penalty=20.0)``
(``VecEnv.set_attr`` would only set the attribute on the outermost wrapper).
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from rl_manager.envs.reward_weights import RewardWeights, check_weight

LINK_LENGTHS = (0.65, 0.55)
LINK_RADIUS = 0.03
TARGET_RADIUS = 0.09
DIFFICULTIES = ("easy", "medium", "hard")

#: Obstacle radius range and placement per difficulty (see :meth:`PlanarReacherEnv._place_obstacle`).
_OBSTACLE_RADIUS = {"easy": (0.06, 0.10), "medium": (0.10, 0.15), "hard": (0.14, 0.20)}

_XML = """
<mujoco model="rl_manager_planar_reacher">
  <compiler angle="radian"/>
  <option timestep="{dt}"/>
  <worldbody>
    <geom name="ground" type="plane" size="1.5 1.5 0.1" contype="0" conaffinity="0" rgba=".9 .9 .9 1"/>
    <body name="link1" pos="0 0 0.02">
      <joint name="shoulder" type="hinge" axis="0 0 1"/>
      <geom name="link1" type="capsule" fromto="0 0 0 {l1} 0 0" size="{r}" contype="0" conaffinity="0"/>
      <body name="link2" pos="{l1} 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1"/>
        <geom name="link2" type="capsule" fromto="0 0 0 {l2} 0 0" size="{r}" contype="0" conaffinity="0"/>
        <site name="fingertip" pos="{l2} 0 0" size="0.02"/>
      </body>
    </body>
    <body name="obstacle" mocap="true" pos="0.6 0 0.02">
      <geom name="obstacle" type="cylinder" size="0.1 0.02" contype="0" conaffinity="0" rgba=".8 .2 .2 1"/>
    </body>
    <body name="target" mocap="true" pos="0.8 0.4 0.02">
      <site name="target" type="sphere" size="{target}" rgba=".2 .8 .2 .5"/>
    </body>
  </worldbody>
</mujoco>
"""


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point ``p`` to the segment ``ab`` (2-D)."""
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom == 0.0 else min(1.0, max(0.0, float((p - a) @ ab) / denom))
    return float(np.linalg.norm(p - (a + t * ab)))


class PlanarReacherEnv(RewardWeights, gym.Env[np.ndarray, np.ndarray]):
    """Two-link planar reacher with an obstacle; collision terminates, safe success is the goal.

    Observation (16 floats, all within [-2.5, 2.5]): cos/sin of both joint angles, the last joint
    velocities (normalised), fingertip xy, target xy, target minus fingertip, obstacle xy, obstacle
    radius, current clearance (capped at 2).

    :param difficulty: ``"easy"``, ``"medium"``, ``"hard"`` or ``"mixed"`` (one of the three drawn per
        episode); ``reset(options={"difficulty": ...})`` overrides it for one episode.
    :param progress_scale: weight of the per-step decrease in fingertip–target distance.
    :param success_bonus: reward on a safe success.
    :param collision_penalty: penalty on a collision.
    :param safety_margin: clearance (m) below which the shortfall penalty starts.
    :param max_joint_speed: joint speed (rad/s) of a full action.
    :param dt: control period (s).
    :param collision_substeps: clearance checks per step (catches an arm sweeping through a small
        obstacle within one step).
    :param render_mode: ``None`` or ``"rgb_array"`` (a 256x256 top-down sketch drawn with numpy, no
        OpenGL needed).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        difficulty: str = "mixed",
        progress_scale: float = 10.0,
        success_bonus: float = 10.0,
        collision_penalty: float = 10.0,
        safety_margin: float = 0.1,
        max_joint_speed: float = 1.5,
        dt: float = 0.05,
        collision_substeps: int = 2,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if difficulty not in (*DIFFICULTIES, "mixed"):
            raise ValueError(f"difficulty must be one of {(*DIFFICULTIES, 'mixed')}, got {difficulty!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode must be None or one of {modes}, got {render_mode!r}")
        self.difficulty = difficulty
        self.progress_scale = check_weight("progress_scale", progress_scale)
        self.success_bonus = check_weight("success_bonus", success_bonus)
        self.collision_penalty = check_weight("collision_penalty", collision_penalty)
        self.safety_margin = check_weight("safety_margin", safety_margin)
        if self.safety_margin == 0.0:
            raise ValueError("safety_margin must be > 0")
        self.max_joint_speed = check_weight("max_joint_speed", max_joint_speed)
        self.dt = check_weight("dt", dt)
        if self.max_joint_speed == 0.0 or self.dt == 0.0:
            raise ValueError("max_joint_speed and dt must be > 0")
        if int(collision_substeps) != collision_substeps or collision_substeps < 1:
            raise ValueError(f"collision_substeps must be an integer >= 1, got {collision_substeps!r}")
        self.collision_substeps = int(collision_substeps)
        self.render_mode = render_mode

        xml = _XML.format(dt=dt, l1=LINK_LENGTHS[0], l2=LINK_LENGTHS[1], r=LINK_RADIUS, target=TARGET_RADIUS)
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self._elbow_body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "link2")
        self._tip_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "fingertip")
        self._obstacle_geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "obstacle")
        self._obstacle_mocap = self.model.body_mocapid[
            mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "obstacle")
        ]
        self._target_mocap = self.model.body_mocapid[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "target")]

        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-2.5, 2.5, shape=(16,), dtype=np.float32)

        self._episode_difficulty = "medium" if difficulty == "mixed" else difficulty
        self.target = np.zeros(2)
        self.obstacle = np.zeros(2)
        self.obstacle_radius = 0.1
        self._last_qvel = np.zeros(2)
        self._distance = 0.0
        self._clearance = 0.0
        self._min_clearance = 0.0
        self.episode_cost = 0.0
        self._done = True

    # -- geometry ------------------------------------------------------------------------------
    def _forward(self, qpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Set the joint angles, run MuJoCo kinematics; return (elbow xy, fingertip xy)."""
        self.data.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.xpos[self._elbow_body, :2].copy(), self.data.site_xpos[self._tip_site, :2].copy()

    def _clearance_at(self, elbow: np.ndarray, tip: np.ndarray, centre: np.ndarray, radius: float) -> float:
        base = np.zeros(2)
        gap = min(_segment_distance(centre, base, elbow), _segment_distance(centre, elbow, tip))
        return gap - radius - LINK_RADIUS

    def _ik(self, point: np.ndarray) -> list[np.ndarray]:
        """Both analytic inverse-kinematics solutions (elbow up/down) reaching ``point``."""
        l1, l2 = LINK_LENGTHS
        r2 = float(point @ point)
        c2 = (r2 - l1**2 - l2**2) / (2 * l1 * l2)
        if abs(c2) > 1.0:
            return []
        solutions = []
        for sign in (1.0, -1.0):
            q2 = sign * math.acos(c2)
            q1 = math.atan2(point[1], point[0]) - math.atan2(l2 * math.sin(q2), l1 + l2 * math.cos(q2))
            solutions.append(np.array([q1, q2]))
        return solutions

    def _place_obstacle(self, difficulty: str, start_tip: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Draw an obstacle for ``difficulty`` relative to the straight start→target line.

        easy: small, anywhere at least its radius + 0.15 off that line; medium: mid-sized, beside the
        line (gap 0.03–0.15); hard: large, on the line (offset below half its radius).
        """
        rng = self.np_random
        radius = float(rng.uniform(*_OBSTACLE_RADIUS[difficulty]))
        line = self.target - start_tip
        length = float(np.linalg.norm(line))
        direction = line / length
        normal = np.array([-direction[1], direction[0]])
        if difficulty == "easy":
            angle, dist = rng.uniform(-math.pi, math.pi), rng.uniform(0.35, 1.15)
            centre = dist * np.array([math.cos(angle), math.sin(angle)])
            if _segment_distance(centre, start_tip, self.target) < radius + 0.15:
                return None
        else:
            frac = rng.uniform(0.35, 0.65)
            if difficulty == "medium":
                offset = rng.uniform(0.03, 0.15) + radius
            else:
                offset = rng.uniform(0.0, 0.5 * radius)
            centre = start_tip + frac * line + rng.choice([-1.0, 1.0]) * offset * normal
        return centre, radius

    def _sample_episode(self, difficulty: str) -> np.ndarray:
        """Rejection-sample a start pose, target and obstacle; return the start joint angles."""
        rng = self.np_random
        for _ in range(1000):
            angle, reach = rng.uniform(-math.pi, math.pi), rng.uniform(0.35, 1.1)
            self.target = reach * np.array([math.cos(angle), math.sin(angle)])
            qpos = np.array([rng.uniform(-math.pi, math.pi), rng.uniform(-2.6, 2.6)])
            elbow, tip = self._forward(qpos)
            if np.linalg.norm(tip - self.target) < 0.45:
                continue
            placed = self._place_obstacle(difficulty, tip)
            if placed is None:
                continue
            centre, radius = placed
            if np.linalg.norm(centre) < radius + 0.15 or np.linalg.norm(centre) > 1.2:
                continue  # on the shoulder (unavoidable) or out of reach
            if np.linalg.norm(centre - self.target) < radius + TARGET_RADIUS + 0.03:
                continue  # target must be reachable without touching the obstacle
            if self._clearance_at(elbow, tip, centre, radius) < 0.05:
                continue  # start pose must be clear
            goal_poses = [self._forward(q) for q in self._ik(self.target)]
            if not any(self._clearance_at(e, t, centre, radius) > 0.03 for e, t in goal_poses):
                continue  # some arm configuration must reach the target safely
            self.obstacle, self.obstacle_radius = centre, radius
            return qpos
        raise RuntimeError(f"could not sample a valid {difficulty} episode in 1000 tries")

    # -- gymnasium API -------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        q = self.data.qpos
        tip = self.data.site_xpos[self._tip_site, :2]
        return np.array(
            [
                math.cos(q[0]),
                math.sin(q[0]),
                math.cos(q[1]),
                math.sin(q[1]),
                *(self._last_qvel / self.max_joint_speed),
                *tip,
                *self.target,
                *(self.target - tip),
                *self.obstacle,
                self.obstacle_radius,
                min(self._clearance, 2.0),
            ],
            dtype=np.float32,
        )

    def _info(self, collision: bool, success: bool) -> dict[str, Any]:
        return {
            "is_success": float(success),
            "safe_success": float(success and not collision),
            "collision": float(collision),
            "cost": float(collision),
            "cost_collision": float(collision),
            "episode_cost": self.episode_cost,
            "clearance": self._clearance,
            "min_clearance": self._min_clearance,
            "distance": self._distance,
            "difficulty": self._episode_difficulty,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        difficulty = (options or {}).get("difficulty", self.difficulty)
        if difficulty == "mixed":
            difficulty = DIFFICULTIES[int(self.np_random.integers(len(DIFFICULTIES)))]
        if difficulty not in DIFFICULTIES:
            choices = (*DIFFICULTIES, "mixed")
            raise ValueError(f"options['difficulty'] must be one of {choices}, got {difficulty!r}")
        self._episode_difficulty = difficulty
        qpos = self._sample_episode(difficulty)
        elbow, tip = self._forward(qpos)
        self.data.mocap_pos[self._obstacle_mocap, :2] = self.obstacle
        self.model.geom_size[self._obstacle_geom, 0] = self.obstacle_radius
        self.data.mocap_pos[self._target_mocap, :2] = self.target
        self._last_qvel = np.zeros(2)
        self._distance = float(np.linalg.norm(tip - self.target))
        self._clearance = self._clearance_at(elbow, tip, self.obstacle, self.obstacle_radius)
        self._min_clearance = self._clearance
        self.episode_cost = 0.0
        self._done = False
        return self._obs(), self._info(False, False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        qvel = a * self.max_joint_speed
        start = self.data.qpos.copy()
        clearance = math.inf
        for k in range(1, self.collision_substeps + 1):
            elbow, tip = self._forward(start + qvel * self.dt * k / self.collision_substeps)
            clearance = min(clearance, self._clearance_at(elbow, tip, self.obstacle, self.obstacle_radius))
        self.data.qvel[:] = qvel
        self._last_qvel = qvel
        self._clearance = clearance
        self._min_clearance = min(self._min_clearance, clearance)
        distance = float(np.linalg.norm(tip - self.target))
        progress, self._distance = self._distance - distance, distance
        collision = clearance < 0.0
        success = distance < TARGET_RADIUS and not collision
        self.episode_cost += float(collision)
        shortfall = max(0.0, self.safety_margin - clearance) / self.safety_margin
        reward = (
            self.progress_scale * progress
            + self.success_bonus * float(success)
            - self.collision_penalty * float(collision)
            - 0.01 * float(a @ a)
            - 0.05 * min(shortfall, 1.0)
        )
        terminated = bool(collision or success)
        self._done = terminated
        return self._obs(), float(reward), terminated, False, self._info(collision, success)

    def render(self) -> np.ndarray | None:
        """Top-down RGB sketch of arm, target and obstacle (``render_mode="rgb_array"``), else ``None``."""
        if self.render_mode != "rgb_array":
            return None
        size, extent = 256, 1.3
        axis = np.linspace(-extent, extent, size)
        xs, ys = np.meshgrid(axis, axis[::-1])
        points = np.stack([xs, ys], axis=-1)
        frame = np.full((size, size, 3), 235, dtype=np.uint8)
        frame[np.linalg.norm(points - self.target, axis=-1) < TARGET_RADIUS] = (60, 180, 60)
        frame[np.linalg.norm(points - self.obstacle, axis=-1) < self.obstacle_radius] = (200, 50, 50)
        elbow = self.data.xpos[self._elbow_body, :2]
        tip = self.data.site_xpos[self._tip_site, :2]
        for a, b in ((np.zeros(2), elbow), (elbow, tip)):
            ab = b - a
            t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
            near = np.linalg.norm(points - (a + t[..., None] * ab), axis=-1) < LINK_RADIUS
            frame[near] = (40, 70, 160)
        return frame

"""The paper's randomised two-link planar reacher with a circular obstacle (pure numpy/math).

Written from ``shared/PAPER_TASK.md`` (arXiv 2606.29871): a two-link arm (links 0.65 and 0.55, base at
the origin) moves its joints with velocity commands; each episode draws a start pose, a target and a
disc obstacle placed beside the straight start-hand→target path. Touching the obstacle (clearance
≤ 0, links are lines) ends the episode; reaching the target (within 0.09) without touching it is a
*safe success* and ends the episode too. The 120-step cap is the registered ``TimeLimit``.

Reward per step::

    progress_scale * (d_prev - d) + success_bonus * [safe success] - collision_penalty * [colliding]
    - 0.01 * ||a||^2 - 0.05 * max(0, 0.08 - clearance) / 0.08

The three weights are runtime knobs (:meth:`PaperReacherEnv.set_reward_weights`); from a VecEnv use
``vec_env.env_method("set_reward_weights", collision_penalty=20.0)``. Costs follow the
Safety-Gymnasium convention used in this repository: ``info["cost"]`` (1.0 on a colliding step),
``info["cost_collision"]`` and the running ``info["episode_cost"]``.

The kinematics, clearance and reward run on Python floats (no numpy temporaries per step); the only
per-step allocations are the observation array and the ``info`` dict.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rl_manager.envs.reward_weights import RewardWeights, check_weight

LINK_LENGTHS = (0.65, 0.55)
DT = 0.08
SUCCESS_RADIUS = 0.09
#: clearance (m) below which the shortfall term of the reward starts
SAFETY_MARGIN = 0.08
#: scene draws before falling back to :data:`FALLBACK_SCENE`
MAX_SCENE_TRIES = 2000
#: target draws (within one scene draw) before falling back to :data:`FALLBACK_TARGET`
MAX_TARGET_TRIES = 200
FALLBACK_TARGET = (0.55, 0.55)
#: (q1, q2, target x, target y, obstacle x, obstacle y, obstacle radius)
FALLBACK_SCENE = (0.2, 0.2, 0.55, 0.55, 0.55, 0.25, 0.07)
DIFFICULTIES = ("train", "easy", "medium", "hard")

#: per difficulty: components (label, probability, direct-path clearance range, obstacle radius range)
SCENE_MIX: dict[str, tuple[tuple[str, float, tuple[float, float], tuple[float, float]], ...]] = {
    "easy": (("easy", 1.0, (0.12, 0.28), (0.04, 0.07)),),
    "medium": (("medium", 1.0, (0.02, 0.13), (0.06, 0.10)),),
    "hard": (("hard", 1.0, (-0.03, 0.06), (0.075, 0.12)),),
    "train": (
        ("hard", 0.45, (-0.025, 0.06), (0.075, 0.115)),
        ("medium", 0.35, (0.04, 0.14), (0.06, 0.10)),
        ("easy", 0.20, (0.14, 0.28), (0.045, 0.075)),
    ),
}

_TWO_PI = 2.0 * math.pi
_OBS_LOW = np.array([-1, -1, -1, -1, -1.2, -1.2, -1.2, -1.2, 0, -1.3, -1.3, -2.6, -2.6, -0.5], dtype=np.float32)
_OBS_HIGH = np.array([1, 1, 1, 1, 1.2, 1.2, 1.2, 1.2, 0.5, 1.3, 1.3, 2.6, 2.6, 2.6], dtype=np.float32)


def wrap_angle(q: float) -> float:
    """Wrap an angle to ``[-pi, pi)``.

    >>> wrap_angle(math.pi) == -math.pi
    True
    """
    w = (q + math.pi) % _TWO_PI - math.pi
    return w - _TWO_PI if w >= math.pi else w


def forward_kinematics(q1: float, q2: float) -> tuple[float, float, float, float]:
    """Elbow and hand positions ``(ex, ey, hx, hy)`` of the arm at joint angles ``(q1, q2)``.

    >>> [round(v, 6) for v in forward_kinematics(0.0, 0.0)]
    [0.65, 0.0, 1.2, 0.0]
    """
    l1, l2 = LINK_LENGTHS
    ex, ey = l1 * math.cos(q1), l1 * math.sin(q1)
    a = q1 + q2
    return ex, ey, ex + l2 * math.cos(a), ey + l2 * math.sin(a)


def segment_distance(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    """Distance from the point ``p`` to the segment ``ab`` (a degenerate segment is a point)."""
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0.0 else ((px - ax) * dx + (py - ay) * dy) / length2
    t = 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)
    return math.hypot(ax + t * dx - px, ay + t * dy - py)


def arm_clearance(q1: float, q2: float, ox: float, oy: float, radius: float) -> float:
    """Clearance of the arm from the disc obstacle: min distance from its centre to both links − radius."""
    ex, ey, hx, hy = forward_kinematics(q1, q2)
    return min(segment_distance(ox, oy, 0.0, 0.0, ex, ey), segment_distance(ox, oy, ex, ey, hx, hy)) - radius


class PaperReacherEnv(RewardWeights, gym.Env[np.ndarray, np.ndarray]):
    """The paper's two-link planar reacher with a disc obstacle; safe success is the goal.

    Observation (14 float32): ``sin q1, cos q1, sin q2, cos q2, target x, target y, obstacle x,
    obstacle y, obstacle radius, hand x, hand y, target x − hand x, target y − hand y, clearance``.
    Action (2): joint velocities, clipped to [-1, 1]; ``q ← wrap(q + a·dt)`` with ``dt = 0.08``.

    Scenes are drawn from ``self.np_random`` only, so ``reset(seed=s)`` gives the same scene for the
    same ``s`` (paired evaluations rely on this). Example::

        >>> env = PaperReacherEnv(difficulty="hard")
        >>> obs, info = env.reset(seed=3)
        >>> obs.shape, info["difficulty"], info["obstacle_clearance"] > 0.08
        ((14,), 'hard', True)
        >>> obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        >>> info["cost"], info["is_success"]
        (0.0, 0.0)
        >>> env.set_reward_weights(collision_penalty=25.0)["collision_penalty"]
        25.0

    :param difficulty: ``"train"`` (the paper's training mix: hard-like 0.45, medium-like 0.35,
        easy-like 0.20), ``"easy"``, ``"medium"`` or ``"hard"``; ``reset(options={"difficulty": ...})``
        overrides it for one episode.
    :param collision_penalty: penalty on a colliding step.
    :param success_bonus: reward on a safe success.
    :param progress_scale: weight of the per-step decrease in hand–target distance.
    :param render_mode: ``None`` or ``"rgb_array"`` (a 256x256 top-down sketch drawn with numpy).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(
        self,
        difficulty: str = "train",
        collision_penalty: float = 5.0,
        success_bonus: float = 5.0,
        progress_scale: float = 3.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode must be None or one of {modes}, got {render_mode!r}")
        self.render_mode = render_mode
        self.difficulty = difficulty
        self.collision_penalty = check_weight("collision_penalty", collision_penalty)
        self.success_bonus = check_weight("success_bonus", success_bonus)
        self.progress_scale = check_weight("progress_scale", progress_scale)

        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(_OBS_LOW, _OBS_HIGH, dtype=np.float32)

        q1, q2, tx, ty, ox, oy, r = FALLBACK_SCENE
        self.q1, self.q2 = q1, q2
        self.target_x, self.target_y = tx, ty
        self.obstacle_x, self.obstacle_y, self.obstacle_radius = ox, oy, r
        #: the scene kind of the episode: "easy", "medium" or "hard" (the train mix's component)
        self.episode_difficulty = "hard" if difficulty == "train" else difficulty
        #: whether the last reset gave up after :data:`MAX_SCENE_TRIES` and used the fixed scene
        self.used_fallback = False
        self._hand = (0.0, 0.0)
        self._distance = 0.0
        self._clearance = 0.0
        self.episode_cost = 0.0
        self._done = True

    # -- scene ---------------------------------------------------------------------------------
    def set_scene(
        self, q1: float, q2: float, target: tuple[float, float], obstacle: tuple[float, float], radius: float
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on a given scene (tests, demonstrations); return ``(obs, info)`` like ``reset``.

        :param q1: shoulder angle (wrapped to [-pi, pi)).
        :param q2: elbow angle (wrapped to [-pi, pi)).
        :param target: target position.
        :param obstacle: obstacle centre.
        :param radius: obstacle radius (>= 0).
        """
        if not radius >= 0.0:
            raise ValueError(f"radius must be >= 0, got {radius!r}")
        self.q1, self.q2 = wrap_angle(float(q1)), wrap_angle(float(q2))
        self.target_x, self.target_y = float(target[0]), float(target[1])
        self.obstacle_x, self.obstacle_y = float(obstacle[0]), float(obstacle[1])
        self.obstacle_radius = float(radius)
        return self._start()

    def _sample_scene(self, difficulty: str) -> None:
        """Rejection-sample start pose, target and obstacle (the paper's procedure) into the env state."""
        rng = self.np_random
        uniform = rng.random
        mix = SCENE_MIX[difficulty]
        l1, l2 = LINK_LENGTHS
        for _ in range(MAX_SCENE_TRIES):
            # 1. scene kind: direct-path clearance range and obstacle radius range
            kind, _, (c_lo, c_hi), (r_lo, r_hi) = mix[0]
            if len(mix) > 1:
                u, acc = uniform(), 0.0
                for component in mix:
                    acc += component[1]
                    kind, _, (c_lo, c_hi), (r_lo, r_hi) = component
                    if u < acc:
                        break
            # 2. start angles
            q1 = -0.9 + 1.8 * uniform()
            q2 = -1.1 + 2.2 * uniform()
            ex, ey = l1 * math.cos(q1), l1 * math.sin(q1)
            hx, hy = ex + l2 * math.cos(q1 + q2), ey + l2 * math.sin(q1 + q2)
            # 3. target in the upper half plane
            tx, ty = FALLBACK_TARGET
            for _ in range(MAX_TARGET_TRIES):
                reach = 0.40 + 0.55 * uniform()
                angle = 0.25 + 2.40 * uniform()
                x, y = reach * math.cos(angle), reach * math.sin(angle)
                if y > 0.05:
                    tx, ty = x, y
                    break
            # 4. start-hand to target distance
            lx, ly = tx - hx, ty - hy
            length = math.hypot(lx, ly)
            if not 0.25 <= length <= 0.95:
                continue
            # 5. obstacle beside the direct path
            radius = r_lo + (r_hi - r_lo) * uniform()
            gap = c_lo + (c_hi - c_lo) * uniform()
            offset = max(0.015, radius + gap)
            side = 1.0 if uniform() < 0.5 else -1.0
            frac = 0.35 + 0.35 * uniform()
            nx, ny = -ly / length, lx / length
            ox = hx + frac * lx + side * offset * nx
            oy = hy + frac * ly + side * offset * ny
            if oy < -0.10 or math.hypot(ox, oy) > 1.15:
                continue
            # 6. clear start pose, target reachable away from the obstacle
            start_clearance = (
                min(segment_distance(ox, oy, 0.0, 0.0, ex, ey), segment_distance(ox, oy, ex, ey, hx, hy)) - radius
            )
            if start_clearance > SAFETY_MARGIN and math.hypot(tx - ox, ty - oy) - radius > SUCCESS_RADIUS + 0.08:
                self.q1, self.q2 = q1, q2
                self.target_x, self.target_y = tx, ty
                self.obstacle_x, self.obstacle_y, self.obstacle_radius = ox, oy, radius
                self.episode_difficulty, self.used_fallback = kind, False
                return
        q1, q2, tx, ty, ox, oy, radius = FALLBACK_SCENE
        self.q1, self.q2 = q1, q2
        self.target_x, self.target_y = tx, ty
        self.obstacle_x, self.obstacle_y, self.obstacle_radius = ox, oy, radius
        self.used_fallback = True

    # -- gymnasium API -------------------------------------------------------------------------
    def _measure(self) -> None:
        """Recompute hand position, distance to the target and clearance from the joint angles."""
        l1, l2 = LINK_LENGTHS
        q1 = self.q1
        ex, ey = l1 * math.cos(q1), l1 * math.sin(q1)
        a = q1 + self.q2
        hx, hy = ex + l2 * math.cos(a), ey + l2 * math.sin(a)
        ox, oy = self.obstacle_x, self.obstacle_y
        d1 = segment_distance(ox, oy, 0.0, 0.0, ex, ey)
        d2 = segment_distance(ox, oy, ex, ey, hx, hy)
        self._hand = (hx, hy)
        self._distance = math.hypot(self.target_x - hx, self.target_y - hy)
        self._clearance = (d1 if d1 < d2 else d2) - self.obstacle_radius

    def _obs(self) -> np.ndarray:
        q1, q2 = self.q1, self.q2
        hx, hy = self._hand
        tx, ty = self.target_x, self.target_y
        return np.array(
            [
                math.sin(q1),
                math.cos(q1),
                math.sin(q2),
                math.cos(q2),
                tx,
                ty,
                self.obstacle_x,
                self.obstacle_y,
                self.obstacle_radius,
                hx,
                hy,
                tx - hx,
                ty - hy,
                self._clearance,
            ],
            dtype=np.float32,
        )

    def _start(self) -> tuple[np.ndarray, dict[str, Any]]:
        self._measure()
        self.episode_cost = 0.0
        self._done = False
        colliding = self._clearance <= 0.0
        reached = self._distance <= SUCCESS_RADIUS
        info = self._info(colliding, reached, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return self._obs(), info

    def _info(
        self,
        colliding: bool,
        reached: bool,
        action_norm: float,
        progress: float,
        success: float,
        collision: float,
        action: float,
        clearance: float,
        cost: float,
    ) -> dict[str, Any]:
        safe = float(reached and not colliding)
        return {
            "distance_to_goal": self._distance,
            "obstacle_clearance": self._clearance,
            "is_colliding": float(colliding),
            "safe_success": safe,
            "is_success": safe,
            "raw_reach": float(reached),
            "unsafe_reach": float(reached and colliding),
            "action_norm": action_norm,
            "reward_progress": progress,
            "reward_success": success,
            "reward_collision": collision,
            "reward_action": action,
            "reward_clearance": clearance,
            "cost": cost,
            "cost_collision": cost,
            "episode_cost": self.episode_cost,
            "difficulty": self.episode_difficulty,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        difficulty = self.difficulty if options is None else options.get("difficulty", self.difficulty)
        if difficulty not in SCENE_MIX:
            raise ValueError(f"options['difficulty'] must be one of {DIFFICULTIES}, got {difficulty!r}")
        self._sample_scene(difficulty)
        return self._start()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        a1, a2 = action[0], action[1]
        a1 = -1.0 if a1 < -1.0 else (1.0 if a1 > 1.0 else float(a1))
        a2 = -1.0 if a2 < -1.0 else (1.0 if a2 > 1.0 else float(a2))
        self.q1 = wrap_angle(self.q1 + a1 * DT)
        self.q2 = wrap_angle(self.q2 + a2 * DT)
        previous = self._distance
        self._measure()
        clearance = self._clearance
        colliding = clearance <= 0.0
        reached = self._distance <= SUCCESS_RADIUS
        safe = reached and not colliding
        norm2 = a1 * a1 + a2 * a2
        r_progress = self.progress_scale * (previous - self._distance)
        r_success = self.success_bonus if safe else 0.0
        r_collision = -self.collision_penalty if colliding else 0.0
        r_action = 0.0 - 0.01 * norm2  # 0.0 - x: +0.0 rather than -0.0 for x == 0
        r_clearance = 0.0 - 0.05 * max(0.0, SAFETY_MARGIN - clearance) / SAFETY_MARGIN
        reward = r_progress + r_success + r_collision + r_action + r_clearance
        cost = 1.0 if colliding else 0.0
        self.episode_cost += cost
        terminated = safe or colliding
        self._done = terminated
        info = self._info(
            colliding, reached, math.sqrt(norm2), r_progress, r_success, r_collision, r_action, r_clearance, cost
        )
        return self._obs(), reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        """Top-down RGB sketch (``render_mode="rgb_array"``): target disc, obstacle, both links; else ``None``."""
        if self.render_mode != "rgb_array":
            return None
        size, extent = 256, 1.3
        axis = np.linspace(-extent, extent, size)
        xs, ys = np.meshgrid(axis, axis[::-1])
        frame = np.full((size, size, 3), 240, dtype=np.uint8)
        frame[np.hypot(xs - self.target_x, ys - self.target_y) <= SUCCESS_RADIUS] = (70, 180, 70)
        frame[np.hypot(xs - self.obstacle_x, ys - self.obstacle_y) <= self.obstacle_radius] = (200, 50, 50)
        ex, ey, hx, hy = forward_kinematics(self.q1, self.q2)
        for ax, ay, bx, by in ((0.0, 0.0, ex, ey), (ex, ey, hx, hy)):
            dx, dy = bx - ax, by - ay
            t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
            frame[np.hypot(ax + t * dx - xs, ay + t * dy - ys) <= 0.012] = (40, 70, 160)
        return frame

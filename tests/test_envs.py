"""Tests for ``rl_manager.envs``: registration, name resolution, Fetch safety costs, planar reacher."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.envs
from rl_manager.envs import register_all, registered_ids, resolve_env_id
from rl_manager.envs.reacher import PlanarReacherEnv
from rl_manager.envs.safety import FetchSafetyCost

SAFE_FETCH_IDS = [i for i in registered_ids() if "SafeFetch" in i]
REACHER_IDS = [i for i in registered_ids() if "PlanarReacher" in i]


def _cost_wrapper(env: gym.Env) -> FetchSafetyCost:
    current = env
    while not isinstance(current, FetchSafetyCost):
        current = current.env  # type: ignore[attr-defined]
    return current


# -- registration and checkers -----------------------------------------------------------------
def test_registered_ids_exist_and_register_is_idempotent() -> None:
    assert len(registered_ids()) == 12
    register_all()
    register_all()
    for env_id in registered_ids():
        assert env_id in gym.registry
        assert env_id.startswith("rl_manager/")


@pytest.mark.parametrize("env_id", registered_ids())
def test_env_checkers(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check_env(gym.make(env_id), skip_render_check=True)
        env = gym.make(env_id)
        # SB3's checker calls env.compute_reward directly, which gymnasium>=1.0 wrappers
        # (TimeLimit, OrderEnforcing) no longer forward: check the cost wrapper itself for Fetch.
        sb3_check_env(_cost_wrapper(env) if "SafeFetch" in env_id else env, warn=False)


@pytest.mark.parametrize("env_id", registered_ids())
def test_determinism_under_seed(env_id: str) -> None:
    rollouts = []
    for _ in range(2):
        env = gym.make(env_id)
        env.action_space.seed(3)
        obs, _ = env.reset(seed=7)
        trace = [obs]
        for _ in range(15):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            trace.append((obs, reward, info["cost"], info["episode_cost"]))
            if terminated or truncated:
                obs, _ = env.reset()
                trace.append(obs)
        rollouts.append(trace)
    flat = [np.concatenate([np.ravel(np.asarray(x, dtype=float)) for x in _leaves(t)]) for t in rollouts]
    np.testing.assert_array_equal(flat[0], flat[1])


def _leaves(item: object) -> list[object]:
    if isinstance(item, dict):
        return [v for k in sorted(item) for v in _leaves(item[k])]
    if isinstance(item, (list, tuple)):
        return [v for x in item for v in _leaves(x)]
    return [item]


@pytest.mark.parametrize("task", ["FetchReach", "FetchPush", "FetchPickAndPlace", "FetchSlide"])
def test_fetch_v4_resets(task: str) -> None:
    """Guards the mujoco pin: Fetch resets assert in set_joint_qpos on newer mujoco releases."""
    env = gym.make(f"{task}-v4")
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        assert np.all(np.isfinite(obs["observation"]))
        env.step(env.action_space.sample())
    env.close()


# -- name resolution ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "safe", "expected"),
    [
        ("FetchPickAndPlace", False, "FetchPickAndPlace-v4"),
        ("FetchReach", False, "FetchReach-v4"),
        ("FetchPickAndPlace", True, "rl_manager/SafeFetchPickAndPlace-v0"),
        ("FetchPush", True, "rl_manager/SafeFetchPush-v0"),
        ("SafeFetchPush", False, "rl_manager/SafeFetchPush-v0"),
        ("rl_manager/SafeFetchReach", False, "rl_manager/SafeFetchReach-v0"),
        ("PlanarReacher", False, "rl_manager/PlanarReacher-v0"),
        ("PlanarReacherHard", False, "rl_manager/PlanarReacherHard-v0"),
        ("FetchPickAndPlace-v1", False, "FetchPickAndPlace-v1"),
        ("rl_manager/PlanarReacher-v0", True, "rl_manager/PlanarReacher-v0"),
        ("CartPole", False, "CartPole-v1"),
    ],
)
def test_resolve_env_id(name: str, safe: bool, expected: str) -> None:
    assert resolve_env_id(name, safe=safe) == expected


def test_resolve_env_id_did_you_mean() -> None:
    with pytest.raises(ValueError, match=r"(?i)did you mean.*FetchPickAndPlace"):
        resolve_env_id("FetchPickAndPlce")
    with pytest.raises(ValueError, match=r"(?i)did you mean.*PlanarReacher"):
        resolve_env_id("PlanarReacher-v9")
    with pytest.raises(ValueError, match="no Safe variant"):
        resolve_env_id("CartPole", safe=True)
    with pytest.raises(ValueError):
        resolve_env_id("")


# -- Fetch safety costs ------------------------------------------------------------------------
def _make_pick(**kwargs: object) -> tuple[gym.Env, FetchSafetyCost]:
    env = gym.make("rl_manager/SafeFetchPickAndPlace-v0", **kwargs)
    env.reset(seed=0)
    return env, _cost_wrapper(env)


def test_fetch_idle_has_no_cost_and_reward_is_untouched() -> None:
    env, _ = _make_pick()
    for _ in range(10):
        obs, reward, _, _, info = env.step(np.zeros(4, dtype=np.float32))
        assert info["cost"] == 0.0
        assert {"cost_table_contact", "cost_ee_accel", "cost_object_off_table"} <= set(info)
        expected = env.unwrapped.compute_reward(obs["achieved_goal"], obs["desired_goal"], info)
        assert reward == pytest.approx(float(expected))
    assert info["episode_cost"] == 0.0


def test_fetch_table_contact_fires() -> None:
    env, _ = _make_pick()
    infos = [env.step(np.array([0.0, 0.0, -1.0, 0.0], dtype=np.float32))[-1] for _ in range(12)]
    assert any(i["cost_table_contact"] == 1.0 for i in infos)
    assert infos[-1]["episode_cost"] == pytest.approx(sum(i["cost"] for i in infos))


def test_fetch_ee_accel_fires() -> None:
    env, wrapper = _make_pick()
    # full-speed diagonal reversals every two steps peak near 48 m/s² (single-axis ones near 40)
    actions = [np.array([(-1.0) ** (k // 2)] * 2 + [0.0, 0.0], dtype=np.float32) for k in range(8)]
    infos = [env.step(a)[-1] for a in actions]
    assert any(i["cost_ee_accel"] == 1.0 for i in infos)
    assert wrapper.last_ee_accel > 0.0


@pytest.mark.parametrize("offset", [np.array([0.6, 0.0, 0.0]), np.array([0.0, 0.0, -0.3])])
def test_fetch_object_off_table_fires(offset: np.ndarray) -> None:
    env, _ = _make_pick()
    base = env.unwrapped
    joint = mujoco.mj_name2id(base.model, mujoco.mjtObj.mjOBJ_JOINT, "object0:joint")
    adr = base.model.jnt_qposadr[joint]
    base.data.qpos[adr : adr + 3] += offset
    mujoco.mj_forward(base.model, base.data)
    _, _, _, _, info = env.step(np.zeros(4, dtype=np.float32))
    assert info["cost_object_off_table"] == 1.0
    assert info["cost"] >= 1.0


def test_fetch_cost_terms_selection_and_validation() -> None:
    env, _ = _make_pick(cost_terms=["ee_accel"])
    infos = [env.step(np.array([0.0, 0.0, -1.0, 0.0], dtype=np.float32))[-1] for _ in range(12)]
    assert any(i["cost_table_contact"] == 1.0 for i in infos)  # still reported ...
    assert all(i["cost"] == i["cost_ee_accel"] for i in infos)  # ... but not counted
    reach = gym.make("FetchReach-v4")
    with pytest.raises(ValueError):
        FetchSafetyCost(reach, accel_limit=-1.0)
    with pytest.raises(ValueError):
        FetchSafetyCost(reach, accel_limit=float("nan"))
    with pytest.raises(ValueError, match="object_off_table"):
        FetchSafetyCost(reach, cost_terms=["object_off_table"])
    with pytest.raises(ValueError):
        FetchSafetyCost(gym.make("CartPole-v1"))
    assert "object_off_table" not in FetchSafetyCost(reach).reported_terms


def test_fetch_cost_penalty_is_in_the_reward_and_in_compute_reward() -> None:
    """The penalty lowers each step's reward by ``cost_penalty × cost``; ``compute_reward`` gives the same reward
    from the step's info, one at a time or as HER's batch of infos, and none without a cost in the info."""
    env, wrapper = _make_pick(cost_penalty=0.5)
    assert wrapper.reward_weights() == {"cost_penalty": 0.5}
    steps = [env.step(np.array([0.0, 0.0, -1.0, 0.0], dtype=np.float32)) for _ in range(12)]
    infos = [info for *_, info in steps]
    assert any(i["cost"] > 0 for i in infos)
    achieved = np.stack([obs["achieved_goal"] for obs, *_ in steps])
    desired = np.stack([obs["desired_goal"] for obs, *_ in steps])
    base = env.unwrapped.compute_reward(achieved, desired, None)
    expected = base - 0.5 * np.array([i["cost"] for i in infos])
    np.testing.assert_allclose([reward for _, reward, *_ in steps], expected)
    np.testing.assert_allclose(wrapper.compute_reward(achieved, desired, np.array(infos)), expected, rtol=1e-6)
    hit = next(k for k, i in enumerate(infos) if i["cost"] > 0)
    assert wrapper.compute_reward(achieved[hit], desired[hit], infos[hit]) == pytest.approx(expected[hit])
    np.testing.assert_array_equal(wrapper.compute_reward(achieved, desired, [{}] * len(infos)), base)
    np.testing.assert_array_equal(wrapper.compute_reward(achieved, desired, None), base)
    # a knob: validated, in force from the next step
    assert wrapper.set_reward_weights(cost_penalty=0.0) == {"cost_penalty": 0.0}
    np.testing.assert_array_equal(wrapper.compute_reward(achieved, desired, np.array(infos)), base)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError):
            wrapper.set_reward_weights(cost_penalty=bad)
    assert wrapper.cost_penalty == 0.0


def test_fetch_cost_wrapper_sits_inside_monitor() -> None:
    vec = make_vec_env("rl_manager/SafeFetchReach-v0", n_envs=1, seed=0)
    vec.reset()
    _, _, _, infos = vec.step(np.zeros((1, 4), dtype=np.float32))
    assert "cost" in infos[0] and "episode_cost" in infos[0]
    # HER relabels through compute_reward, reachable through the wrapper stack
    assert vec.env_method("compute_reward", np.zeros(3), np.zeros(3), {})[0] == 0.0


# -- planar reacher ----------------------------------------------------------------------------
def _reacher(**kwargs: object) -> PlanarReacherEnv:
    env = PlanarReacherEnv(**kwargs)
    env.reset(seed=1)
    return env


def _place_obstacle(env: PlanarReacherEnv, centre: np.ndarray, radius: float) -> None:
    env.obstacle, env.obstacle_radius = np.asarray(centre, dtype=float), radius


def test_reacher_scripted_collision_costs_and_terminates() -> None:
    env = _reacher(difficulty="easy", collision_penalty=7.0)
    q1 = env.data.qpos[0]
    # a small obstacle just ahead of link 1, counter-clockwise; rotating the shoulder hits it
    _place_obstacle(env, 0.4 * np.array([math.cos(q1 + 0.3), math.sin(q1 + 0.3)]), 0.05)
    env.target = np.array([-5.0, -5.0])  # unreachable: no success on the way
    for _ in range(20):
        _, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
        if terminated:
            break
    assert terminated and not truncated
    assert info["collision"] == 1.0 and info["cost"] == 1.0 and info["episode_cost"] == 1.0
    assert info["safe_success"] == 0.0 and info["min_clearance"] < 0.0
    assert reward < -7.0 + 1.0
    with pytest.raises(RuntimeError):
        env.step(np.zeros(2, dtype=np.float32))


def test_reacher_safe_success() -> None:
    env = _reacher(difficulty="easy", success_bonus=3.0)
    env.target = env.data.site_xpos[env._tip_site, :2].copy()
    env._distance = 0.0
    _, reward, terminated, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated
    assert info["is_success"] == 1.0 and info["safe_success"] == 1.0 and info["cost"] == 0.0
    assert reward == pytest.approx(3.0, abs=0.06)  # bonus minus at most the shortfall term


def test_reacher_reward_weights_are_runtime_knobs() -> None:
    rewards = []
    for penalty in (1.0, 21.0):
        env = _reacher(difficulty="easy")
        q1 = env.data.qpos[0]
        _place_obstacle(env, 0.4 * np.array([math.cos(q1 + 0.3), math.sin(q1 + 0.3)]), 0.05)
        env.target = np.array([-5.0, -5.0])
        env.set_reward_weights(collision_penalty=penalty)
        terminated = False
        while not terminated:
            _, reward, terminated, _, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
        rewards.append(reward)
    assert rewards[0] - rewards[1] == pytest.approx(20.0)
    env = _reacher()
    env.unwrapped.collision_penalty = 2.5
    assert env.reward_weights()["collision_penalty"] == 2.5
    with pytest.raises(ValueError):
        env.set_reward_weights(success_bonus=-1.0)
    # through a VecEnv (Monitor outside): env_method reaches the env itself
    vec = make_vec_env("rl_manager/PlanarReacher-v0", n_envs=2, seed=0)
    vec.env_method("set_reward_weights", progress_scale=4.0)
    assert vec.get_attr("progress_scale") == [4.0, 4.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"difficulty": "impossible"},
        {"progress_scale": -1.0},
        {"collision_penalty": math.inf},
        {"safety_margin": 0.0},
        {"collision_substeps": 0},
        {"render_mode": "human"},
    ],
)
def test_reacher_validates_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PlanarReacherEnv(**kwargs)


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_reacher_episodes_start_safe_and_respect_difficulty(difficulty: str) -> None:
    env = PlanarReacherEnv(difficulty=difficulty)
    low, high = {"easy": (0.06, 0.10), "medium": (0.10, 0.15), "hard": (0.14, 0.20)}[difficulty]
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        assert obs in env.observation_space
        assert info["clearance"] >= 0.05 and info["difficulty"] == difficulty
        assert low <= env.obstacle_radius <= high
        assert info["distance"] >= 0.45
    _, info = env.reset(seed=0, options={"difficulty": "hard"})
    assert info["difficulty"] == "hard"


def test_reacher_time_limit() -> None:
    env = gym.make("rl_manager/PlanarReacherEasy-v0")
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        steps += 1
        done = terminated or truncated
    assert truncated and steps == 120


def test_reacher_renders_rgb_array() -> None:
    env = PlanarReacherEnv(render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame is not None and frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) >= 4


def test_package_namespace() -> None:
    assert rl_manager.envs.__name__ == "rl_manager.envs"

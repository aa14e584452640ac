"""The paper's reacher (``rl_manager/PaperReacher-v0``), its recipes and the split-LR policy."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.envs  # noqa: F401  (registers the ids)
from rl_manager.envs import registered_ids, resolve_env_id
from rl_manager.envs.paper_reacher import (
    FALLBACK_SCENE,
    SAFETY_MARGIN,
    SUCCESS_RADIUS,
    PaperReacherEnv,
    arm_clearance,
    forward_kinematics,
    wrap_angle,
)
from rl_manager.policies import SplitLRActorCriticPolicy, has_critic_lr, read_critic_lr, write_critic_lr

PAPER_IDS = [i for i in registered_ids() if "PaperReacher" in i]
REWARD_TERMS = ("reward_progress", "reward_success", "reward_collision", "reward_action", "reward_clearance")
PPO_YML = Path(__file__).resolve().parents[1] / "experiments" / "hyperparams" / "ppo.yml"


def _env(**kwargs: object) -> PaperReacherEnv:
    env = PaperReacherEnv(**kwargs)
    env.reset(seed=0)
    return env


# -- registration and checkers -----------------------------------------------------------------
def test_ids_registered_and_short_names_resolve() -> None:
    assert PAPER_IDS == [
        "rl_manager/PaperReacher-v0",
        "rl_manager/PaperReacherEasy-v0",
        "rl_manager/PaperReacherMedium-v0",
        "rl_manager/PaperReacherHard-v0",
    ]
    assert resolve_env_id("PaperReacher") == "rl_manager/PaperReacher-v0"
    assert resolve_env_id("PaperReacherHard") == "rl_manager/PaperReacherHard-v0"
    for env_id, difficulty in zip(PAPER_IDS, ("train", "easy", "medium", "hard"), strict=True):
        spec = gym.spec(env_id)
        assert spec.max_episode_steps == 120 and spec.kwargs["difficulty"] == difficulty


@pytest.mark.parametrize("env_id", PAPER_IDS)
def test_env_checkers(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check_env(gym.make(env_id).unwrapped, skip_render_check=True)
        sb3_check_env(gym.make(env_id), warn=False)


def test_time_limit_is_the_only_cap() -> None:
    env = gym.make("rl_manager/PaperReacherEasy-v0")
    env.reset(seed=0)
    env.unwrapped.set_scene(0.0, 0.0, (-0.6, 0.3), (0.0, 1.1), 0.04)  # standing still: never done
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        steps += 1
    assert truncated and not terminated and steps == 120


# -- kinematics, clearance, collision ----------------------------------------------------------
def test_forward_kinematics_known_angles() -> None:
    np.testing.assert_allclose(forward_kinematics(0.0, 0.0), (0.65, 0.0, 1.2, 0.0), atol=1e-12)
    np.testing.assert_allclose(forward_kinematics(math.pi / 2, 0.0), (0.0, 0.65, 0.0, 1.2), atol=1e-12)
    np.testing.assert_allclose(forward_kinematics(0.0, math.pi / 2), (0.65, 0.0, 0.65, 0.55), atol=1e-12)
    np.testing.assert_allclose(forward_kinematics(math.pi / 2, -math.pi / 2), (0.0, 0.65, 0.55, 0.65), atol=1e-12)
    obs, _ = PaperReacherEnv().set_scene(0.0, math.pi / 2, (0.3, 0.4), (-0.5, 0.5), 0.05)
    np.testing.assert_allclose(obs[:4], [0.0, 1.0, 1.0, 0.0], atol=1e-7)  # sin q1, cos q1, sin q2, cos q2
    np.testing.assert_allclose(obs[4:13], [0.3, 0.4, -0.5, 0.5, 0.05, 0.65, 0.55, -0.35, -0.15], atol=1e-6)


def test_step_integrates_and_wraps_angles() -> None:
    env = PaperReacherEnv()
    env.set_scene(3.1, -3.1, (-0.6, 0.3), (0.0, 1.1), 0.04)
    env.step(np.array([1.0, -1.0], dtype=np.float32))
    assert env.q1 == pytest.approx(3.1 + 0.08 - 2 * math.pi)
    assert env.q2 == pytest.approx(-3.1 - 0.08 + 2 * math.pi)
    env.step(np.array([5.0, -0.5], dtype=np.float32))  # clipped to 1
    assert env.q1 == pytest.approx(3.1 + 0.16 - 2 * math.pi)
    assert env.q2 == pytest.approx(-3.1 - 0.12 + 2 * math.pi)
    assert wrap_angle(math.pi) == -math.pi and wrap_angle(-math.pi) == -math.pi
    below = math.nextafter(-math.pi, -4.0)  # (below + pi) % 2pi rounds to 2pi: the guard keeps it < pi
    for q in (below, -1e-20, 7.0, -7.0, 1e6):
        assert -math.pi <= wrap_angle(q) < math.pi
        assert math.isclose(math.sin(wrap_angle(q)), math.sin(q), abs_tol=1e-9)


def test_clearance_and_collision_on_constructed_scene() -> None:
    # arm straight along +x: base (0,0) -> elbow (0.65,0) -> hand (1.2,0)
    assert arm_clearance(0.0, 0.0, 0.3, 0.2, 0.05) == pytest.approx(0.15)  # above link 1
    assert arm_clearance(0.0, 0.0, 0.9, -0.3, 0.1) == pytest.approx(0.2)  # below link 2
    assert arm_clearance(0.0, 0.0, 1.5, 0.4, 0.1) == pytest.approx(0.4)  # beyond the hand
    assert arm_clearance(0.0, 0.0, -0.3, 0.4, 0.1) == pytest.approx(0.4)  # behind the base
    assert arm_clearance(0.0, 0.0, 0.9, 0.05, 0.05) == pytest.approx(0.0)  # touching: a collision
    env = PaperReacherEnv(collision_penalty=7.0)
    obs, info = env.set_scene(0.0, 0.0, (0.3, 0.8), (0.9, 0.05), 0.05)
    assert info["obstacle_clearance"] == pytest.approx(0.0) and info["is_colliding"] == 1.0
    assert obs[13] == pytest.approx(0.0, abs=1e-7)
    # rotate the shoulder counter-clockwise into an obstacle just above link 1
    env.set_scene(0.0, 0.0, (-0.6, 0.3), (0.4, 0.12), 0.05)
    assert env._clearance == pytest.approx(0.07)
    _, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert info["obstacle_clearance"] == pytest.approx(0.4 * math.sin(0.08) * -1 + 0.12 * math.cos(0.08) - 0.05)
    assert not terminated
    for _ in range(5):
        _, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
        if terminated:
            break
    assert terminated and not truncated
    assert info["is_colliding"] == 1.0 and info["cost"] == 1.0 and info["cost_collision"] == 1.0
    assert info["episode_cost"] == 1.0 and info["safe_success"] == 0.0 and info["is_success"] == 0.0
    assert info["reward_collision"] == -7.0 and reward < -7.0
    with pytest.raises(RuntimeError):
        env.step(np.zeros(2, dtype=np.float32))


def test_safe_success_raw_and_unsafe_reach() -> None:
    env = PaperReacherEnv(success_bonus=3.0)
    # hand at (1.2, 0); target 0.05 away; obstacle far
    env.set_scene(0.0, 0.0, (1.15, 0.0), (-0.5, 0.6), 0.05)
    _, reward, terminated, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated and info["safe_success"] == 1.0 and info["is_success"] == 1.0
    assert info["raw_reach"] == 1.0 and info["unsafe_reach"] == 0.0 and info["cost"] == 0.0
    assert reward == pytest.approx(3.0) and info["distance_to_goal"] == pytest.approx(0.05)
    # the same reach while touching the obstacle with link 2: unsafe, terminates as a collision
    env.set_scene(0.0, 0.0, (1.15, 0.0), (0.9, 0.04), 0.05)
    _, reward, terminated, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated and info["raw_reach"] == 1.0 and info["unsafe_reach"] == 1.0
    assert info["safe_success"] == 0.0 and info["is_colliding"] == 1.0 and info["reward_success"] == 0.0
    # just outside the success radius: not a reach
    env.set_scene(0.0, 0.0, (1.2 - SUCCESS_RADIUS - 1e-6, 0.0), (-0.5, 0.6), 0.05)
    _, _, terminated, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert not terminated and info["raw_reach"] == 0.0


# -- reward ------------------------------------------------------------------------------------
def test_reward_terms_sum_to_reward_and_follow_the_formula() -> None:
    env = PaperReacherEnv(difficulty="hard", collision_penalty=4.0, success_bonus=6.0, progress_scale=2.0)
    rng = np.random.default_rng(1)
    seen_shortfall = seen_end = False
    for episode in range(30):
        _, info = env.reset(seed=episode)
        distance = info["distance_to_goal"]
        for _ in range(120):
            action = rng.uniform(-1.3, 1.3, size=2).astype(np.float32)
            _, reward, terminated, _, info = env.step(action)
            a = np.clip(action.astype(float), -1.0, 1.0)
            assert reward == pytest.approx(sum(info[k] for k in REWARD_TERMS), abs=1e-12)
            assert info["reward_progress"] == pytest.approx(2.0 * (distance - info["distance_to_goal"]))
            assert info["reward_action"] == pytest.approx(-0.01 * float(a @ a))
            assert info["action_norm"] == pytest.approx(float(np.linalg.norm(a)))
            shortfall = max(0.0, SAFETY_MARGIN - info["obstacle_clearance"]) / SAFETY_MARGIN
            assert info["reward_clearance"] == pytest.approx(-0.05 * shortfall)
            assert info["reward_collision"] == -4.0 * info["is_colliding"]
            assert info["reward_success"] == 6.0 * info["safe_success"]
            seen_shortfall |= shortfall > 0.0
            distance = info["distance_to_goal"]
            if terminated:
                seen_end = True
                break
    assert seen_shortfall and seen_end


def test_reward_weights_are_knobs() -> None:
    env = PaperReacherEnv()
    assert env.reward_weights() == {"progress_scale": 3.0, "success_bonus": 5.0, "collision_penalty": 5.0}
    rewards = []
    for penalty in (1.0, 21.0):
        assert env.set_reward_weights(collision_penalty=penalty)["collision_penalty"] == penalty
        env.set_scene(0.0, 0.0, (-0.6, 0.3), (0.9, 0.04), 0.05)
        _, reward, terminated, _, _ = env.step(np.zeros(2, dtype=np.float32))
        assert terminated
        rewards.append(reward)
    assert rewards[0] - rewards[1] == pytest.approx(20.0)
    env.set_reward_weights(progress_scale=10.0, success_bonus=0.5)
    assert env.reward_weights() == {"progress_scale": 10.0, "success_bonus": 0.5, "collision_penalty": 21.0}
    with pytest.raises(ValueError):
        env.set_reward_weights(success_bonus=-1.0, progress_scale=1.0)
    assert env.progress_scale == 10.0  # all or nothing
    for bad in ({"difficulty": "mixed"}, {"collision_penalty": math.nan}, {"progress_scale": -1.0}):
        with pytest.raises(ValueError):
            PaperReacherEnv(**bad)  # type: ignore[arg-type]
    # through a VecEnv (Monitor and TimeLimit outside), as the RewardWeight actuator does
    vec = make_vec_env("rl_manager/PaperReacher-v0", n_envs=2, seed=0)
    assert vec.has_attr("reward_weights") and vec.has_attr("set_reward_weights")
    vec.env_method("set_reward_weights", collision_penalty=25.0)
    assert vec.env_method("reward_weights", indices=0)[0]["collision_penalty"] == 25.0
    assert vec.get_attr("collision_penalty") == [25.0, 25.0]
    vec.close()


# -- scene sampling ----------------------------------------------------------------------------
@pytest.mark.parametrize("difficulty", ["train", "easy", "medium", "hard"])
def test_scene_sampling_constraints(difficulty: str) -> None:
    env = PaperReacherEnv(difficulty=difficulty)
    radius_range = {
        "train": (0.045, 0.115),
        "easy": (0.04, 0.07),
        "medium": (0.06, 0.10),
        "hard": (0.075, 0.12),
    }[difficulty]
    kinds = set()
    for seed in range(200):
        obs, info = env.reset(seed=seed)
        assert not env.used_fallback
        assert obs in env.observation_space
        tx, ty, ox, oy, r = env.target_x, env.target_y, env.obstacle_x, env.obstacle_y, env.obstacle_radius
        hx, hy = forward_kinematics(env.q1, env.q2)[2:]
        assert info["obstacle_clearance"] > 0.08 and obs[13] > 0.08
        assert math.hypot(tx - ox, ty - oy) - r > SUCCESS_RADIUS + 0.08
        assert 0.25 <= math.hypot(tx - hx, ty - hy) <= 0.95
        assert ty > 0.05 and 0.40 <= math.hypot(tx, ty) <= 0.95
        assert oy >= -0.10 and math.hypot(ox, oy) <= 1.15
        assert radius_range[0] <= r <= radius_range[1]
        assert -0.9 <= env.q1 <= 0.9 and -1.1 <= env.q2 <= 1.1
        # direct-path clearance: the obstacle sits max(0.015, r + c) off the start-hand -> target line
        lx, ly = tx - hx, ty - hy
        offset = abs(lx * (oy - hy) - ly * (ox - hx)) / math.hypot(lx, ly)
        assert offset >= 0.015 - 1e-9
        assert info["episode_cost"] == 0.0 and info["difficulty"] in ("easy", "medium", "hard")
        kinds.add(info["difficulty"])
    assert kinds == ({"easy", "medium", "hard"} if difficulty == "train" else {difficulty})


def test_train_mix_proportions() -> None:
    env = PaperReacherEnv()
    counts = {"easy": 0, "medium": 0, "hard": 0}
    for seed in range(400):
        counts[env.reset(seed=seed)[1]["difficulty"]] += 1
    # drawn 0.45/0.35/0.20 per attempt (the paper's order: the draw is step 1 of every attempt), but
    # hard-like attempts are rejected more often: accepted shares are 0.37/0.38/0.25 (20,000 resets)
    assert 0.25 < counts["hard"] / 400 < 0.45 and 0.30 < counts["medium"] / 400 < 0.50
    assert 0.18 < counts["easy"] / 400 < 0.35


def test_same_seed_same_scene_and_difficulty_override() -> None:
    a, b = PaperReacherEnv(), PaperReacherEnv()
    for seed in (0, 1, 12345):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        np.testing.assert_array_equal(obs_a, obs_b)
        assert info_a == info_b
    obs_c, _ = a.reset(seed=12346)
    assert not np.array_equal(obs_a, obs_c)
    _, info = a.reset(seed=3, options={"difficulty": "easy"})
    assert info["difficulty"] == "easy" and a.difficulty == "train"
    with pytest.raises(ValueError):
        a.reset(seed=3, options={"difficulty": "impossible"})


def test_fixed_fallback_scene(monkeypatch: pytest.MonkeyPatch) -> None:
    import rl_manager.envs.paper_reacher as module

    monkeypatch.setattr(module, "MAX_SCENE_TRIES", 0)
    env = PaperReacherEnv(difficulty="hard")
    obs, info = env.reset(seed=0)
    assert env.used_fallback
    q1, q2, tx, ty, ox, oy, r = FALLBACK_SCENE
    assert (env.q1, env.q2, env.target_x, env.target_y) == (0.2, 0.2, 0.55, 0.55)
    assert (env.obstacle_x, env.obstacle_y, env.obstacle_radius) == (0.55, 0.25, 0.07)
    np.testing.assert_allclose(obs[4:9], [tx, ty, ox, oy, r], atol=1e-7)
    np.testing.assert_allclose(obs[:4], [math.sin(q1), math.cos(q1), math.sin(q2), math.cos(q2)], atol=1e-7)
    assert info["obstacle_clearance"] == pytest.approx(arm_clearance(q1, q2, ox, oy, r))


# -- recipes and the split-LR policy -----------------------------------------------------------
def test_recipes_translate_the_paper_table() -> None:
    recipes = yaml.safe_load(PPO_YML.read_text())["PaperReacher"]
    expected = {  # actor lr, critic lr, ent, clip, epochs, target kl, (collision, success, progress)
        "tuned": (3e-4, 1e-3, 0.01, 0.2, 6, 0.03, (5.0, 5.0, 3.0)),
        "conservative": (3e-5, 1e-3, 0.001, 0.1, 3, 0.01, (25.0, 2.5, 1.5)),
        "reckless": (3e-3, 3e-3, 0.08, 0.3, 8, 0.10, (1.0, 10.0, 5.0)),
    }
    assert set(recipes) == set(expected)
    for name, (lr, critic_lr, ent, clip, epochs, kl, weights) in expected.items():
        r = recipes[name]
        assert (r["learning_rate"], r["policy_kwargs"]["critic_lr"], r["ent_coef"]) == (lr, critic_lr, ent)
        assert (r["clip_range"], r["n_epochs"], r["target_kl"]) == (clip, epochs, kl)
        assert r["policy"] == "SplitLRMlpPolicy" and r["policy_kwargs"]["log_std_init"] == -0.7
        assert (r["n_envs"], r["n_steps"], r["batch_size"], r["n_timesteps"]) == (16, 128, 256, 1_024_000)
        assert (r["gamma"], r["gae_lambda"], r["vf_coef"], r["max_grad_norm"]) == (0.99, 0.95, 0.5, 0.5)
        kw = r["env_kwargs"]
        assert (kw["collision_penalty"], kw["success_bonus"], kw["progress_scale"]) == weights
        PaperReacherEnv(**kw)


def _tiny_ppo(**policy_kwargs: object) -> PPO:
    env = make_vec_env("rl_manager/PaperReacher-v0", n_envs=4, seed=0)
    return PPO(
        "SplitLRMlpPolicy",
        env,
        n_steps=64,
        batch_size=128,
        n_epochs=2,
        learning_rate=3e-4,
        policy_kwargs={"net_arch": [16, 16], "log_std_init": -0.7, **policy_kwargs},
        seed=0,
        device="cpu",
    )


def test_split_lr_policy_groups_and_knob(tmp_path: Path) -> None:
    model = _tiny_ppo(critic_lr=1e-3)
    policy = model.policy
    assert isinstance(policy, SplitLRActorCriticPolicy) and has_critic_lr(model)
    actor, critic = (policy.param_group(n)["params"] for n in ("actor", "critic"))
    ids = lambda *modules: {id(p) for m in modules for p in m.parameters()}  # noqa: E731
    assert {id(p) for p in critic} == ids(policy.mlp_extractor.value_net, policy.value_net)
    assert {id(p) for p in actor} == ids(policy.mlp_extractor.policy_net, policy.action_net) | {id(policy.log_std)}
    assert len(actor) + len(critic) == len(list(policy.parameters()))
    model.learn(256)
    assert policy.param_group("actor")["lr"] == pytest.approx(model.lr_schedule(model._current_progress_remaining))
    assert policy.param_group("critic")["lr"] == 1e-3 and read_critic_lr(model) == 1e-3
    write_critic_lr(model, 2e-4)
    model.learn(256, reset_num_timesteps=False)
    assert [g["lr"] for g in policy.optimizer.param_groups] == [pytest.approx(3e-4), 2e-4]
    assert read_critic_lr(model) == 2e-4
    with pytest.raises(ValueError):
        write_critic_lr(model, 0.0)
    # the written value survives save/load (it lives in the optimiser's state_dict)
    model.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip", device="cpu")
    assert read_critic_lr(loaded) == 2e-4 and loaded.policy.optimizer.param_groups[0]["lr"] == 3e-4


def test_split_lr_policy_extractor_placement_and_default() -> None:
    shared = _tiny_ppo(critic_lr=1e-3, share_features_extractor=True).policy
    assert not list(shared.features_extractor.parameters())  # Flatten: nothing to place
    separate = _tiny_ppo(critic_lr=1e-3, share_features_extractor=False).policy
    critic_ids = {id(p) for p in separate.param_group("critic")["params"]}
    assert all(id(p) in critic_ids for p in separate.value_net.parameters())
    follows = _tiny_ppo()  # critic_lr None: both groups follow the schedule
    assert follows.policy.critic_lr is None and read_critic_lr(follows) == pytest.approx(3e-4)
    plain = PPO("MlpPolicy", follows.get_env(), n_steps=64)
    assert not has_critic_lr(plain)
    with pytest.raises(TypeError):
        read_critic_lr(plain)


def test_ppo_smoke_run_with_split_lr_policy() -> None:
    env = make_vec_env("rl_manager/PaperReacher-v0", n_envs=16, seed=0)
    model = PPO(
        "SplitLRMlpPolicy",
        env,
        n_steps=128,
        batch_size=256,
        n_epochs=6,
        learning_rate=3e-4,
        ent_coef=0.01,
        target_kl=0.03,
        policy_kwargs={"net_arch": [64, 64], "log_std_init": -0.7, "critic_lr": 1e-3},
        seed=0,
        device="cpu",
    )
    model.learn(2048)
    assert model.num_timesteps == 2048
    assert [g["lr"] for g in model.policy.optimizer.param_groups] == [pytest.approx(3e-4), 1e-3]
    assert np.isfinite(model.logger.name_to_value.get("train/value_loss", 0.0))
    env.close()


def test_renders_rgb_array() -> None:
    env = PaperReacherEnv(render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame is not None and frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    assert PaperReacherEnv().render() is None
    with pytest.raises(ValueError):
        PaperReacherEnv(render_mode="human")


def test_split_lr_policy_squash_mean() -> None:
    import torch as th

    model = _tiny_ppo(critic_lr=1e-3, squash_mean=True)
    policy = model.policy
    with th.no_grad():
        policy.action_net.weight.mul_(1e3)  # a linear mean far outside [-1, 1]
        obs = th.as_tensor(np.stack([model.get_env().observation_space.sample() for _ in range(8)]))
        mean = policy.get_distribution(obs).distribution.mean
    assert float(mean.abs().max()) <= 1.0 and policy._get_constructor_parameters()["squash_mean"] is True
    assert not _tiny_ppo().policy.squash_mean

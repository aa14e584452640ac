"""``LocalComputeReward``: HER's relabelling answered in the learner's process, equal to the workers'."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import SubprocVecEnv

import rl_manager.envs  # noqa: F401  (registers the env ids)
from rl_manager.train import make_train_env
from rl_manager.vec_env import LocalComputeReward

ENV_ID = "rl_manager/SafeFetchReach-v0"


@pytest.fixture(scope="module")
def envs():
    recipe = {"n_envs": 2, "vec_env": "subproc"}
    env = make_train_env(ENV_ID, recipe, seed=0)
    yield env
    env.close()


def test_subproc_goal_envs_get_the_local_reward(envs):
    assert isinstance(envs, LocalComputeReward) and isinstance(envs.venv, SubprocVecEnv)
    # a plain (non goal-conditioned) env keeps its VecEnv
    plain = make_train_env("Pendulum-v1", {"n_envs": 2, "vec_env": "subproc"}, seed=0)
    assert not isinstance(plain, LocalComputeReward)
    plain.close()


def test_local_reward_equals_the_workers(envs):
    rng = np.random.default_rng(0)
    achieved, desired = rng.uniform(0, 0.2, (256, 3)), rng.uniform(0, 0.2, (256, 3))
    infos = np.array([{"cost": 1.0}] * 256)
    local = envs.env_method("compute_reward", achieved, desired, infos, indices=[0])
    remote = envs.venv.env_method("compute_reward", achieved, desired, infos, indices=[0])
    assert len(local) == 1 and 0 < (local[0] == 0).sum() < 256  # the env's 0.05 threshold, both ways
    np.testing.assert_array_equal(local[0], remote[0])


def test_setters_reach_the_local_copy(envs):
    envs.set_attr("distance_threshold", 0.5)
    assert envs.local.get_wrapper_attr("distance_threshold") == 0.5
    assert envs.venv.get_attr("distance_threshold") == [0.5, 0.5]
    reward = envs.env_method("compute_reward", np.zeros((1, 3)), np.full((1, 3), 0.1), None, indices=0)
    assert reward[0][0] == 0.0  # 0.17 away: a success only under the new threshold
    assert isinstance(envs.local, gym.Env)

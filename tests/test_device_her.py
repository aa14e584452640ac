"""``DeviceHerReplayBuffer``: SB3's HER sampling, on the device, checked transition by transition on FetchReach."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import gymnasium_robotics
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from stable_baselines3.her import HerReplayBuffer

import rl_manager.envs  # noqa: F401  (registers rl_manager/SafeFetch*)
from rl_manager.device_her import DeviceHerReplayBuffer

gym.register_envs(gymnasium_robotics)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA"))]
N_ENVS = 2


class DoubledReward(gym.Wrapper):
    """A goal env whose ``compute_reward`` is not the distance rule its attributes describe."""

    def compute_reward(self, achieved, desired, info):
        return 2.0 * self.env.unwrapped.compute_reward(achieved, desired, info)


def fill(buffers: list[HerReplayBuffer], env, steps: int, seed: int = 0) -> None:
    """Random-action transitions, added to every buffer as SB3's off-policy loop does."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    for _ in range(steps):
        action = rng.uniform(-1, 1, (N_ENVS, 4)).astype(np.float32)
        new_obs, reward, done, infos = env.step(action)
        next_obs = copy.deepcopy(new_obs)
        for i in np.flatnonzero(done):
            for key in next_obs:
                next_obs[key][i] = infos[i]["terminal_observation"][key]
        for buffer in buffers:
            buffer.add(obs, next_obs, action, reward, done, infos)
        obs = new_obs


def make(env, cls=DeviceHerReplayBuffer, size: int = 2000, device: str = "cpu", **kwargs) -> HerReplayBuffer:
    return cls(size, env.observation_space, env.action_space, env, device=device, n_envs=N_ENVS, **kwargs)


@pytest.fixture
def env():
    venv = make_vec_env("FetchReach-v4", n_envs=N_ENVS, seed=0)
    yield venv
    venv.close()


def locate(buffer: HerReplayBuffer, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, env) of each sampled transition, found by its action (random floats: unique)."""
    stored = buffer.actions.reshape(-1, buffer.actions.shape[-1])
    where = {a.tobytes(): i for i, a in enumerate(stored)}
    flat = np.array([where[a.tobytes()] for a in actions])
    return flat // buffer.n_envs, flat % buffer.n_envs


def episode_rows(buffer: HerReplayBuffer, row: int, env_idx: int) -> np.ndarray:
    start, length = buffer.ep_start[row, env_idx], buffer.ep_length[row, env_idx]
    return np.arange(start, start + length) % buffer.buffer_size


@pytest.mark.parametrize("device", DEVICES)
def test_samples_are_stored_transitions_relabelled_as_sb3_does(env, device):
    buffer = make(env, device=device)
    fill([buffer], env, 130)  # two ended episodes per env, one in progress
    batch = buffer.sample(512)
    assert batch.actions.device.type == device and buffer._reward_fn is not None  # relabelled on the device
    b = {k: v.cpu().numpy() for k, v in batch.observations.items()}
    nb = {k: v.cpu().numpy() for k, v in batch.next_observations.items()}
    rows, envs = locate(buffer, batch.actions.cpu().numpy())
    assert (buffer.ep_length[rows, envs] > 0).all()  # never a transition of an episode still running
    for key in ("observation", "achieved_goal"):
        np.testing.assert_array_equal(b[key], buffer.observations[key][rows, envs])
        np.testing.assert_array_equal(nb[key], buffer.next_observations[key][rows, envs])
    np.testing.assert_array_equal(b["desired_goal"], nb["desired_goal"])
    dones = batch.dones.cpu().numpy()[:, 0]
    np.testing.assert_array_equal(dones, buffer.dones[rows, envs] * (1 - buffer.timeouts[rows, envs]))
    rewards = batch.rewards.cpu().numpy()[:, 0]

    n_real = 512 - int(buffer.her_ratio * 512)
    real = slice(0, n_real)
    np.testing.assert_array_equal(b["desired_goal"][real], buffer.observations["desired_goal"][rows[real], envs[real]])
    np.testing.assert_array_equal(rewards[real], buffer.rewards[rows[real], envs[real]])
    virtual = slice(n_real, 512)
    offsets = future_offsets(buffer, rows[virtual], envs[virtual], b["desired_goal"][virtual])
    assert 0 in offsets and offsets.max() > 10  # the current step included, and far ones drawn
    expected = env.env_method("compute_reward", nb["achieved_goal"], b["desired_goal"], None, indices=[0])[0]
    np.testing.assert_array_equal(rewards[n_real:], expected[n_real:])
    assert (rewards[n_real:] == 0).any() and (rewards[n_real:] == -1).any()


def future_offsets(buffer: HerReplayBuffer, rows, envs, goals) -> np.ndarray:
    """Steps from each transition to the one whose achieved goal became its desired goal (same episode)."""
    offsets = []
    for row, env_idx, goal in zip(rows, envs, goals, strict=True):
        episode = episode_rows(buffer, row, env_idx)
        later = episode[np.flatnonzero(episode == row)[0] :]
        match = np.flatnonzero((buffer.next_observations["achieved_goal"][later, env_idx] == goal).all(axis=1))
        assert match.size, "a relabelled goal that is not a later achieved goal of its episode"
        offsets.append(match[0])
    return np.array(offsets)


def test_sampling_distribution_matches_sb3(env):
    th.manual_seed(0)
    np.random.seed(0)
    device, host = make(env), make(env, cls=HerReplayBuffer)
    fill([device, host], env, 75)  # one ended episode per env (100 valid transitions), one running
    n_virtual = int(device.her_ratio * 4096)
    virtual = slice(4096 - n_virtual, 4096)  # both put the relabelled part last
    counts, offsets = [], []
    for buffer in (device, host):
        batches = [buffer.sample(4096) for _ in range(25)]
        rows, envs = locate(buffer, np.concatenate([s.actions.numpy() for s in batches]))
        counts.append(np.bincount(rows * N_ENVS + envs, minlength=buffer.buffer_size * N_ENVS) / len(rows))
        rows, envs = locate(buffer, batches[0].actions.numpy()[virtual])
        goals = batches[0].observations["desired_goal"].numpy()[virtual]
        offsets.append(future_offsets(buffer, rows[:1000], envs[:1000], goals[:1000]))
    assert counts[0].sum() == pytest.approx(1) and np.count_nonzero(counts[0]) == 100
    assert 0.5 * np.abs(counts[0] - counts[1]).sum() < 0.03  # total variation over (row, env): both uniform
    assert abs(offsets[0].mean() - offsets[1].mean()) < 1.5  # relabelling reaches as far ahead in both
    assert abs(np.mean(offsets[0] == 0) - np.mean(offsets[1] == 0)) < 0.03


@pytest.mark.parametrize("device", DEVICES)
def test_a_vecnormalize_env_is_applied_on_the_device_as_sb3_applies_it(env, device):
    """The same draws as without the normaliser (no fall-back to SB3's host sampling), then observations and
    rewards standardised and clipped as ``VecNormalize.normalize_obs`` and ``normalize_reward`` do."""
    norm = VecNormalize(env, norm_obs=True, norm_reward=True, clip_obs=2.0, clip_reward=3.0)
    rng = np.random.default_rng(0)
    for rms in norm.obs_rms.values():
        rms.mean = rng.normal(size=rms.mean.shape)
        rms.var = rng.uniform(0.01, 1.0, size=rms.var.shape)
    norm.ret_rms.var = np.array(0.04)
    buffer = make(env, device=device)
    fill([buffer], env, 130)
    buffer.sample(8)  # builds the mirror and its generator
    state = buffer._generator.get_state()
    raw = buffer.sample(512)
    buffer._generator.set_state(state)
    batch = buffer.sample(512, env=norm)
    assert batch.actions.device.type == device
    th.testing.assert_close(batch.actions, raw.actions, rtol=0, atol=0)  # the same transitions and goals
    for got, before in ((batch.observations, raw.observations), (batch.next_observations, raw.next_observations)):
        expected = norm.normalize_obs({k: v.cpu().numpy() for k, v in before.items()})
        for key, value in expected.items():
            np.testing.assert_allclose(got[key].cpu().numpy(), value, rtol=1e-5, atol=1e-5, err_msg=key)
            assert got[key].dtype == th.float32
    assert (batch.observations["observation"].abs() == 2.0).any()  # some clipped
    rewards = batch.rewards.cpu().numpy()
    np.testing.assert_allclose(rewards, norm.normalize_reward(raw.rewards.cpu().numpy()), rtol=1e-6)
    assert (rewards == -3.0).any() and (rewards == 0).any()  # -1 / 0.2 clipped at -3; a reached goal stays 0


@pytest.mark.parametrize("device", DEVICES)
def test_incremental_mirror_equals_a_fresh_one_after_the_buffer_wraps(env, device):
    buffer = make(env, size=150, device=device)  # 75 rows per env: episodes of 50 are overwritten mid-way
    fill([buffer], env, 60, seed=1)
    buffer.sample(64)  # builds the mirror
    fill([buffer], env, 170, seed=2)
    batch = buffer.sample(256)
    rows, envs = locate(buffer, batch.actions.cpu().numpy())
    assert (buffer.ep_length[rows, envs] > 0).all()
    fresh = copy.deepcopy(buffer)  # a copy leaves the mirror (and the env) out, like pickling
    fresh.set_env(env)
    fresh.sample(8)
    for key, value in buffer._mirror.items():
        th.testing.assert_close(value, fresh._mirror[key], rtol=0, atol=0, msg=key)


def test_pickled_buffer_leaves_the_mirror_out_and_rebuilds_it(env):
    buffer = make(env)
    fill([buffer], env, 60)
    buffer.sample(16)
    clone = pickle.loads(pickle.dumps(buffer))
    assert clone._mirror is None and clone.env is None
    clone.set_env(env)
    batch = clone.sample(32)
    rows, envs = locate(clone, batch.actions.numpy())
    assert (clone.ep_length[rows, envs] > 0).all()


def test_a_reward_that_is_not_the_distance_rule_is_relabelled_by_the_env(env):
    venv = make_vec_env("FetchReach-v4", n_envs=N_ENVS, seed=0, wrapper_class=DoubledReward)
    buffer = make(venv)
    fill([buffer], venv, 60)
    batch = buffer.sample(256)
    assert buffer._reward_fn is None  # the check on stored goals refused the device formula
    n_real = 256 - int(buffer.her_ratio * 256)
    rewards = batch.rewards.numpy()[n_real:, 0]
    assert set(np.unique(rewards)) <= {0.0, -2.0} and (rewards == -2.0).any()
    venv.close()


@pytest.mark.parametrize("device", DEVICES)
def test_relabelled_rewards_carry_the_cost_penalty_of_their_transition(device):
    """With ``rl_manager/SafeFetchReach``'s cost penalty, a relabelled reward is the env's ``compute_reward`` with the
    transition's own info (what SB3's buffer gives with ``copy_info_dict``), and a new penalty reaches the next
    batch after an episode ends."""
    venv = make_vec_env("rl_manager/SafeFetchReach-v0", n_envs=N_ENVS, seed=0, env_kwargs={"cost_penalty": 0.5})
    buffer, reference = make(venv, device=device), make(venv, cls=HerReplayBuffer, copy_info_dict=True)
    fill([buffer, reference], venv, 60)
    buffer.sample(16)  # the mirror exists: later rows reach it through add (pinned slots on CUDA)
    fill([buffer, reference], venv, 50, seed=1)  # new actions: a transition is found by its action
    assert (buffer.costs > 0).any()
    batch = buffer.sample(512)
    assert buffer._reward_fn is not None and buffer._penalty == 0.5  # relabelled on the device
    rows, envs = locate(buffer, batch.actions.cpu().numpy())
    n_real = 512 - int(buffer.her_ratio * 512)
    achieved = batch.next_observations["achieved_goal"].cpu().numpy()
    goals = batch.observations["desired_goal"].cpu().numpy()
    infos = reference.infos[rows, envs]
    np.testing.assert_array_equal(buffer.costs[rows, envs], [i["cost"] for i in infos])
    expected = venv.env_method("compute_reward", achieved, goals, infos, indices=[0])[0]
    rewards = batch.rewards.cpu().numpy()[:, 0]
    np.testing.assert_allclose(rewards[n_real:], expected[n_real:], rtol=1e-6)
    np.testing.assert_array_equal(rewards[:n_real], buffer.rewards[rows[:n_real], envs[:n_real]])  # stored, as SB3
    assert (buffer.costs[rows[n_real:], envs[n_real:]] > 0).any()  # the penalty was there to see

    venv.env_method("set_reward_weights", cost_penalty=0.0)
    fill([buffer], venv, 50, seed=2)  # an episode ends: the penalty is read again
    batch = buffer.sample(256)
    assert set(np.unique(batch.rewards.cpu().numpy()[256 - int(buffer.her_ratio * 256) :])) <= {0.0, -1.0}
    assert pickle.loads(pickle.dumps(buffer)).costs.tolist() == buffer.costs.tolist()
    venv.close()


def test_a_changed_threshold_reaches_the_relabelling(env):
    buffer = make(env)
    fill([buffer], env, 60)
    buffer.sample(16)
    for e in env.envs:
        e.unwrapped.distance_threshold = 10.0  # every goal reached
    fill([buffer], env, 50)  # an episode ends: the reward is checked again
    batch = buffer.sample(256)
    n_real = 256 - int(buffer.her_ratio * 256)
    assert (batch.rewards.numpy()[n_real:] == 0).all()


def test_sampling_before_an_episode_ends_is_a_clear_error(env):
    buffer = make(env)
    fill([buffer], env, 10)
    with pytest.raises(RuntimeError, match="end of the first episode"):
        buffer.sample(8)


def test_draws_come_from_the_buffers_own_stream_seeded_by_numpy(env):
    buffer = make(env)
    fill([buffer], env, 60)
    state = th.random.get_rng_state()
    np.random.seed(3)
    first = buffer.sample(64).actions.numpy()  # builds the mirror: its generator seeded from numpy's
    assert th.equal(th.random.get_rng_state(), state)  # the policy's torch stream is left as it was
    buffer._reset_mirror()
    np.random.seed(3)
    np.testing.assert_array_equal(buffer.sample(64).actions.numpy(), first)
    assert not np.array_equal(buffer.sample(64).actions.numpy(), first)


class SB3Draws(DeviceHerReplayBuffer):
    """The device buffer fed numpy's draws in SB3's order: what is left to compare is gathering and relabelling."""

    def _build_mirror(self):
        state = np.random.get_state()
        super()._build_mirror()
        np.random.set_state(state)  # the draw that seeded the buffer's own generator: not one SB3 makes

    def _draw_transitions(self, batch_size):
        is_valid = self.ep_length > 0
        rows, envs = np.unravel_index(np.random.choice(np.flatnonzero(is_valid), size=batch_size), is_valid.shape)
        n_virtual = int(self.her_ratio * batch_size)  # SB3 draws the relabelled part first, returns it last
        order = np.r_[n_virtual:batch_size, 0:n_virtual]
        return th.as_tensor(rows[order]), th.as_tensor(envs[order])

    def _draw_goal_steps(self, current, length):
        return th.as_tensor(np.random.randint(current.numpy(), length.numpy()))


def test_with_sb3s_draws_sac_trains_bitwise_like_sb3s_buffer():
    from stable_baselines3 import SAC

    weights = []
    for cls in (HerReplayBuffer, SB3Draws):
        venv = make_vec_env("FetchReach-v4", n_envs=N_ENVS, seed=0)
        model = SAC(
            "MultiInputPolicy",
            venv,
            learning_starts=150,
            batch_size=64,
            replay_buffer_class=cls,
            policy_kwargs={"net_arch": [16]},
            buffer_size=2000,
            seed=0,
            device="cpu",
        )
        model.learn(400)
        weights.append(th.nn.utils.parameters_to_vector(model.policy.parameters()).detach())
        venv.close()
    assert th.equal(weights[0], weights[1])

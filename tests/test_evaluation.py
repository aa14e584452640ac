"""Paired, batched evaluation: pairing, RNG isolation, Wilson intervals, per-cell aggregation."""

import math
import random

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.envs  # noqa: F401
from rl_manager.evaluation import CellSpec, EpisodeResults, PairedEvaluator, wilson_interval
from rl_manager.schema import EvalMetrics

ENV = "rl_manager/PaperReacher-v0"


class SeedEnv(gym.Env):
    """An episode is a function of its reset seed: length ``1 + seed % 4``, success on even seeds,
    a cost of 1 on the last step of seeds divisible by 3, reward 1 per step (NaN if asked)."""

    observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def __init__(self, keys=("is_success", "cost"), nan_reward=False):
        self.keys, self.nan_reward = keys, nan_reward
        self.seed_, self.t = 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_, self.t = seed, 0
        return np.array([seed % 1000, 0.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= 1 + self.seed_ % 4
        info = {}
        if "cost" in self.keys:
            info["cost"] = float(done and self.seed_ % 3 == 0)
        if "episode_cost" in self.keys:
            info["episode_cost"] = float(done and self.seed_ % 3 == 0)
        if "is_success" in self.keys and done:
            info["is_success"] = float(self.seed_ % 2 == 0)
        reward = math.nan if self.nan_reward else 1.0
        return np.array([self.seed_ % 1000, self.t], dtype=np.float32), reward, done, False, info


class Recorder:
    """A model stand-in: zero actions, records every batch it is asked about."""

    def __init__(self, action_dim=1):
        self.batches, self.action_dim = [], action_dim

    def predict(self, obs, deterministic=True):
        self.batches.append(np.array(obs))
        return np.zeros((len(obs), self.action_dim), dtype=np.float32), None


def expected(seeds):
    lengths = [1 + s % 4 for s in seeds]
    success = [s % 2 == 0 for s in seeds]
    cost = [float(s % 3 == 0) for s in seeds]
    return lengths, success, cost


def tiny_ppo(seed=0):
    env = make_vec_env(ENV, n_envs=1, seed=seed)
    return PPO("MlpPolicy", env, n_steps=32, batch_size=32, policy_kwargs={"net_arch": [8]}, seed=seed, device="cpu")


# ------------------------------------------------------------------------------------ Wilson
@pytest.mark.parametrize(
    "k,n,low,high",
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (80, 100, 0.7111, 0.8666)],
)
def test_wilson_interval_known_values(k, n, low, high):
    ci = wilson_interval(k, n)
    assert ci.low == pytest.approx(low, abs=1e-4) and ci.high == pytest.approx(high, abs=1e-4)


def test_wilson_interval_edge_cases():
    assert (wilson_interval(0, 0).low, wilson_interval(0, 0).high) == (0.0, 1.0)
    for k, n in ((-1, 5), (6, 5), (0, -1)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, z=0.0)


# ------------------------------------------------------------------------------------ aggregation
def test_per_episode_reading_and_per_cell_aggregation():
    ev = PairedEvaluator([("a", SeedEnv, 7), ("b", SeedEnv, 5)], base_seed=100, seed_stride=1000)
    assert ev.seeds(0) == list(range(100, 107)) and ev.seeds(1) == list(range(1100, 1105))
    m = ev.evaluate(Recorder())
    assert m.paired and m.n_episodes == 12 and [c.name for c in m.cells] == ["a", "b"]
    all_l, all_s, all_c = [], [], []
    for cell, seeds in zip(m.cells, (ev.seeds(0), ev.seeds(1)), strict=True):
        lengths, success, cost = expected(seeds)
        all_l += lengths
        all_s += success
        all_c += cost
        assert cell.n_episodes == len(seeds)
        assert cell.mean_return == pytest.approx(np.mean(lengths))  # reward 1 per step
        assert cell.success_rate == pytest.approx(np.mean(success))
        assert cell.mean_cost == pytest.approx(np.mean(cost))
        assert cell.violation_rate == pytest.approx(np.mean([c > 0 for c in cost]))
        safe = [s and c == 0 for s, c in zip(success, cost, strict=True)]
        assert cell.safe_success_rate == pytest.approx(np.mean(safe))
    assert m.mean_ep_length == pytest.approx(np.mean(all_l))
    assert m.success_rate == pytest.approx(np.mean(all_s))
    assert m.violation_rate == pytest.approx(np.mean([c > 0 for c in all_c]))
    k = sum(all_s)
    assert m.success_ci == wilson_interval(k, 12)
    assert m.stochastic is None
    assert [len(r.returns) for r in ev.last_results] == [7, 5] and ev.last_results[1].lengths == expected(ev.seeds(1))[
        0
    ]


def test_episode_cost_fallback_and_missing_keys():
    ev = PairedEvaluator([("a", lambda: SeedEnv(keys=("episode_cost",)), 6)], base_seed=0)
    m = ev.evaluate(Recorder())
    assert m.mean_cost == pytest.approx(np.mean(expected(range(6))[2]))
    assert m.success_rate is None and m.safe_success_rate is None and m.success_ci is None
    assert m.violation_ci is not None
    m = PairedEvaluator([("a", lambda: SeedEnv(keys=()), 3)], base_seed=0).evaluate(Recorder())
    assert (m.mean_cost, m.violation_rate, m.success_rate) == (None, None, None) and m.n_episodes == 3


def test_env_safe_success_flag_wins():
    class Flagged(SeedEnv):
        def step(self, action):
            obs, r, term, trunc, info = super().step(action)
            if term:
                info["safe_success"] = 1.0  # the env's own verdict, whatever success and cost say
            return obs, r, term, trunc, info

    m = PairedEvaluator([("a", Flagged, 6)], base_seed=0).evaluate(Recorder())
    assert m.safe_success_rate == 1.0


def test_nan_and_empty_handling():
    m = PairedEvaluator([("a", lambda: SeedEnv(nan_reward=True), 4)], base_seed=0).evaluate(Recorder())
    assert math.isnan(m.mean_return) and m.success_rate is not None
    assert EvalMetrics.model_validate_json(m.model_dump_json()).n_episodes == 4  # NaN survives JSON
    empty = EpisodeResults()
    cell = empty.cell("none")
    assert cell.n_episodes == 0 and cell.mean_return is None and cell.success_rate is None
    metrics = empty.metrics()
    assert metrics.n_episodes == 0 and metrics.success_ci is None and metrics.std_return is None
    assert EpisodeResults(costs=[math.nan]).violations == [True]  # a non-finite cost counts as a violation
    with pytest.raises(ValueError):
        PairedEvaluator([], base_seed=0)
    with pytest.raises(ValueError):
        PairedEvaluator([("a", SeedEnv, 0)], base_seed=0)
    with pytest.raises(ValueError):
        PairedEvaluator([("a", SeedEnv, 2), ("a", SeedEnv, 2)], base_seed=0)


def test_one_predict_call_per_step_over_the_running_episodes():
    model = Recorder()
    ev = PairedEvaluator([("a", SeedEnv, 4), ("b", SeedEnv, 4)], base_seed=0, seed_stride=10)
    ev.evaluate(model)
    # seeds 0..3 and 10..13: lengths 1,2,3,4 twice -> batches of 8, 6, 4, 2 episodes
    assert [len(b) for b in model.batches] == [8, 6, 4, 2]
    assert sorted(model.batches[0][:, 0].tolist()) == [0, 1, 2, 3, 10, 11, 12, 13]


def test_for_difficulties_builds_one_cell_per_id():
    ids = {d: f"rl_manager/PaperReacher{d.capitalize()}-v0" for d in ("easy", "medium", "hard")}
    ev = PairedEvaluator.for_difficulties(ids, n_per_cell=3, base_seed=5, stochastic=True)
    assert [c.name for c in ev.cells] == ["easy", "medium", "hard"] and ev.n_episodes == 9
    assert len({s for k in range(3) for s in ev.seeds(k)}) == 9
    assert isinstance(ev.cells[0], CellSpec) and ev.cells[2].env == ids["hard"]


# ------------------------------------------------------------------------------------ real policy
def test_pairing_same_model_same_results_and_same_scenes():
    model = tiny_ppo()
    ev = PairedEvaluator.for_difficulties(
        {"easy": "rl_manager/PaperReacherEasy-v0", "hard": "rl_manager/PaperReacherHard-v0"},
        n_per_cell=6,
        base_seed=1_000_000,
        stochastic=True,
    )
    first, second = ev.evaluate(model), ev.evaluate(model)
    assert first == second
    assert first.stochastic is not None and first.stochastic.name == "stochastic"
    assert first.stochastic.n_episodes == 12 and len(first.cells) == 2
    # a fresh evaluator on the same seeds reproduces the figures (nothing cached between calls)
    again = PairedEvaluator.for_difficulties(
        {"easy": "rl_manager/PaperReacherEasy-v0", "hard": "rl_manager/PaperReacherHard-v0"},
        n_per_cell=6,
        base_seed=1_000_000,
        stochastic=True,
    ).evaluate(model)
    assert again == first
    # another model sees the very same scenes: identical first observations
    recorder = Recorder(action_dim=2)
    ev.play(recorder)
    other = Recorder(action_dim=2)
    ev.play(other)
    np.testing.assert_array_equal(recorder.batches[0], other.batches[0])


def test_evaluation_leaves_the_training_rng_and_mode_alone():
    model = tiny_ppo()
    model.policy.set_training_mode(True)
    ev = PairedEvaluator([("all", ENV, 5)], base_seed=7, stochastic=True)
    th_state, np_state, py_state = th.get_rng_state(), np.random.get_state(), random.getstate()
    ev.evaluate(model)
    assert th.equal(th_state, th.get_rng_state())
    assert all(np.array_equal(a, b) for a, b in zip(np_state, np.random.get_state(), strict=True))
    assert py_state == random.getstate()
    assert model.policy.training
    # the stochastic pass is seeded: the same figures whatever the global RNG says
    th.manual_seed(123)
    a = ev.evaluate(model).stochastic
    th.manual_seed(456)
    assert ev.evaluate(model).stochastic == a


class _Policy:
    """A fixed action or a seeded random one, with ``predict`` as SB3's evaluation calls it."""

    def __init__(self, space, random_actions):
        self.space, self.rng = space, np.random.default_rng(0) if random_actions else None

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        n = len(obs["desired_goal"])
        if self.rng is None:
            return np.zeros((n, *self.space.shape), dtype=np.float32), None
        return self.rng.uniform(-1, 1, (n, *self.space.shape)).astype(np.float32), None


def test_sb3_evaluation_keeps_each_episodes_scene_whatever_the_policy():
    """The held-out scenes (a goal env's start: where the object lies, where it must go) depend on the seed
    alone, so two arms' final models are compared episode by episode; two envs in one vec env each keep theirs."""
    from rl_manager.telemetry import evaluate

    results = []
    for random_actions in (False, True):
        env = make_vec_env("rl_manager/SafeFetchPickAndPlace-v0", n_envs=2, seed=7)
        results.append(evaluate(_Policy(env.action_space, random_actions), env, 4))
        env.close()
    still, moving = results
    assert still.goals == moving.goals and len(still.goals) == 4
    desired, achieved = np.array(still.goals).transpose(1, 0, 2)
    assert len({tuple(g) for g in desired}) == 4 and not np.allclose(desired, achieved)  # a new scene per episode
    assert still.costs != moving.costs  # the policies differ, and so does what they do in the scenes
    assert still.episodes()["goal"] == still.goals and len(moving.episodes()["cost"]) == 4
    # each episode's cost split into the wrapper's terms, which add up to it
    terms, names = moving.episodes(), ("cost_table_contact", "cost_ee_accel", "cost_object_off_table")
    assert {k for k in terms if k.startswith("cost_")} == set(names)
    total = np.sum([terms[name] for name in names], axis=0)
    assert np.allclose(total, terms["cost"]) and total.sum() > 0
    plain = make_vec_env(ENV, n_envs=1, seed=7)
    assert "goal" not in evaluate(PPO("MlpPolicy", plain, seed=0), plain, 2).episodes()
    plain.close()


def test_sb3_evaluation_records_the_scenes_in_the_envs_units_under_a_normaliser():
    """A normalised arm plays the same scenes as a plain one and its episodes say so (not normalised goals)."""
    from stable_baselines3.common.vec_env import VecNormalize

    from rl_manager.telemetry import evaluate

    results = []
    for normalize in (False, True):
        env = make_vec_env("rl_manager/SafeFetchPickAndPlace-v0", n_envs=2, seed=7)
        if normalize:
            env = VecNormalize(env, training=False, norm_reward=False)
            for rms in env.obs_rms.values():
                rms.mean, rms.var = rms.mean + 1.0, rms.var * 0.25
        results.append(evaluate(_Policy(env.action_space, False), env, 4))
        env.close()
    np.testing.assert_allclose(np.array(results[1].goals), np.array(results[0].goals), atol=1e-3)

"""Tests of :mod:`rl_manager.actuators`: every knob is read back *after the next* ``train()``.

SB3 silently undoes naive edits (it resets optimiser learning rates from ``lr_schedule`` on every
``train()``, reads a fixed SAC/TQC entropy coefficient from ``ent_coef_tensor``, wraps action noise
in ``VectorizedActionNoise`` ...), so each test writes a value through the actuator, runs
``model.learn(small, reset_num_timesteps=False)`` so that ``train()`` runs, and checks the value
``train()`` actually used: optimiser ``param_groups``, the values SB3 logs from inside ``train()``,
the noise objects that ``collect_rollouts`` calls, the reward weights inside the training envs.
``test_lying_actuator_is_caught`` and ``test_naive_actuator_is_caught`` run the same checks against
an actuator that changes nothing and against naive ones (e.g. editing only ``param_groups``) and
expect them to fail, so a check that cannot tell a working actuator from a naive one fails the suite.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib import TQC
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3, HerReplayBuffer
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import (
    ActionNoise,
    NormalActionNoise,
    OrnsteinUhlenbeckActionNoise,
    VectorizedActionNoise,
)
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import SubprocVecEnv

import rl_manager.envs  # noqa: F401  (registers the rl_manager/ ids)
from rl_manager.actuators import DEFAULT_BOUNDS, Actuator, KnobBounds, ManagerError, discover_actuators
from rl_manager.schema import KnobSpec

REACHER = "rl_manager/PlanarReacher-v0"
FETCH_REACH = "rl_manager/SafeFetchReach-v0"
REWARD_WEIGHTS = frozenset({"collision_penalty", "success_bonus", "progress_scale"})
ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "sac": SAC, "tqc": TQC, "td3": TD3, "ddpg": DDPG}


def initial_lr(progress_remaining: float) -> float:
    """The initial learning-rate schedule: decays, so an edit SB3 undoes shows up as a different value."""
    return 5e-4 + 5e-4 * progress_remaining


def initial_clip_range(progress_remaining: float) -> float:
    """The initial PPO clip-range schedule (in [0.2, 0.3])."""
    return 0.2 + 0.1 * progress_remaining


# -- test harness ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """Tiny nets run ~8x faster on one thread than on two contended ones (2-core CI)."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


class RecordingLogger(Logger):
    """An SB3 logger with no output that keeps every recorded value (``history[key]``)."""

    def __init__(self) -> None:
        super().__init__(folder=None, output_formats=[])
        self.history: dict[str, list[Any]] = defaultdict(list)

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        self.history[key].append(value)
        super().record(key, value, exclude)


def optimizers(model: BaseAlgorithm) -> list[th.optim.Optimizer]:
    """Every optimiser reachable from the model, its policy or the policy's sub-modules.

    Found by scanning attributes (not by the actuator's own list), so an optimiser the actuator
    forgets is still checked.
    """
    found: dict[int, th.optim.Optimizer] = {}
    for obj in (model, model.policy, *model.policy.modules()):
        for value in vars(obj).values():
            if isinstance(value, th.optim.Optimizer):
                found[id(value)] = value
    return list(found.values())


@dataclass
class TrainCall:
    """What one ``train()`` call saw: knob readings before it, optimiser LRs after it."""

    knobs: dict[str, float]
    lrs: list[float]


@dataclass
class Harness:
    """A tiny model with a recording logger and a spy on ``train()``."""

    model: BaseAlgorithm
    logger: RecordingLogger
    calls: list[TrainCall] = field(default_factory=list)
    probes: dict[str, Actuator] = field(default_factory=dict)

    def spy(self, actuators: dict[str, Actuator]) -> None:
        """Record every knob's reading at the start of each ``train()``."""
        self.probes = dict(actuators)
        original = type(self.model).train

        def train(*args: Any, **kwargs: Any) -> None:
            knobs = {name: a.read(self.model) for name, a in self.probes.items()}
            original(self.model, *args, **kwargs)
            lrs = [g["lr"] for opt in optimizers(self.model) for g in opt.param_groups]
            self.calls.append(TrainCall(knobs=knobs, lrs=lrs))

        self.model.train = train  # type: ignore[method-assign]

    def learn(self, steps: int | None = None) -> list[TrainCall]:
        """Continue training for ``steps`` (default: one rollout / a few updates); return the new calls."""
        before = len(self.calls)
        self.model.learn(steps or self.default_steps, reset_num_timesteps=False)
        new = self.calls[before:]
        if self.probes and not new:
            pytest.fail("train() did not run")  # not an AssertionError: the naive-actuator tests expect those
        return new

    @property
    def default_steps(self) -> int:
        model = self.model
        if isinstance(model, OnPolicyAlgorithm):
            return model.n_steps * model.n_envs
        return 8 * model.n_envs


def make_noise(kind: str, dim: int, sigma: float | np.ndarray = 0.1) -> ActionNoise:
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (dim,)).copy()
    if kind == "normal":
        return NormalActionNoise(mean=np.zeros(dim), sigma=sig)
    if kind == "ou":
        return OrnsteinUhlenbeckActionNoise(mean=np.zeros(dim), sigma=sig)
    raise ValueError(f"unknown noise kind {kind!r}")


def make_harness(
    algo: str,
    env_id: str = REACHER,
    n_envs: int = 1,
    noise: str | None = None,
    sigma: float | np.ndarray = 0.1,
    her: bool = False,
    vec_env_cls: type | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Harness:
    """A tiny model of ``algo`` on ``env_id`` (nets [16, 16], small batches, CPU).

    :param noise: ``"normal"`` or ``"ou"`` to give an off-policy model action noise.
    :param her: use ``HerReplayBuffer`` and ``MultiInputPolicy`` (goal-conditioned envs).
    """
    env = make_vec_env(env_id, n_envs=n_envs, seed=0, vec_env_cls=vec_env_cls, vec_env_kwargs=vec_env_kwargs)
    cls = ALGOS[algo]
    params: dict[str, Any] = dict(learning_rate=initial_lr, policy_kwargs=dict(net_arch=[16, 16]), seed=0, device="cpu")
    if algo == "ppo":
        params.update(n_steps=16, batch_size=16 * n_envs, n_epochs=1, clip_range=initial_clip_range)
    elif algo == "a2c":
        params.update(n_steps=8)
    else:
        params.update(buffer_size=2_000, batch_size=16, learning_starts=0, train_freq=1, gradient_steps=1)
        if noise is not None:
            params["action_noise"] = make_noise(noise, env.action_space.shape[0], sigma)
        if her:
            # HER samples whole episodes: start learning after two 50-step Fetch episodes.
            params.update(replay_buffer_class=HerReplayBuffer, learning_starts=100 * n_envs)
    params.update(kwargs)
    policy = "MultiInputPolicy" if isinstance(env.observation_space, gym.spaces.Dict) else "MlpPolicy"
    model = cls(policy, env, **params)
    logger = RecordingLogger()
    model.set_logger(logger)
    return Harness(model=model, logger=logger)


@dataclass(frozen=True)
class Case:
    """A model configuration and the knobs it must expose."""

    algo: str
    expected: frozenset[str]
    env_id: str = REACHER
    n_envs: int = 1
    noise: str | None = None
    her: bool = False
    kwargs: tuple[tuple[str, Any], ...] = ()

    def harness(self, **extra: Any) -> Harness:
        return make_harness(
            self.algo,
            env_id=self.env_id,
            n_envs=self.n_envs,
            noise=self.noise,
            her=self.her,
            **{**dict(self.kwargs), **extra},
        )

    def warmed_up(self) -> tuple[Harness, dict[str, Actuator]]:
        """A harness that has trained once already (so a write lands mid-run), its actuators spied on."""
        h = self.harness()
        h.learn(h.default_steps + (100 * self.n_envs if self.her else 0))
        acts = discover_actuators(h.model)
        h.spy(acts)
        return h, acts


def _knobs(*names: str, reward: bool = True) -> frozenset[str]:
    return frozenset(names) | (REWARD_WEIGHTS if reward else frozenset())


CASES: dict[str, Case] = {
    "ppo": Case("ppo", _knobs("learning_rate", "ent_coef", "clip_range", "action_std"), n_envs=2),
    "a2c": Case("a2c", _knobs("learning_rate", "ent_coef", "action_std"), n_envs=2),
    "sac-auto": Case("sac", _knobs("learning_rate", "target_entropy")),
    "sac-fixed": Case("sac", _knobs("learning_rate", "ent_coef"), kwargs=(("ent_coef", 0.1),)),
    "sac-noise": Case("sac", _knobs("learning_rate", "target_entropy", "noise_sigma"), n_envs=2, noise="normal"),
    "tqc-auto": Case("tqc", _knobs("learning_rate", "target_entropy")),
    "tqc-fixed": Case("tqc", _knobs("learning_rate", "ent_coef"), kwargs=(("ent_coef", 0.1),)),
    "td3": Case("td3", _knobs("learning_rate", "noise_sigma"), n_envs=2, noise="normal"),
    "ddpg": Case("ddpg", _knobs("learning_rate", "noise_sigma"), noise="ou"),
    "tqc-her": Case(
        "tqc",
        _knobs("learning_rate", "target_entropy", "noise_sigma", "cost_penalty", reward=False),
        FETCH_REACH,
        noise="normal",
        her=True,
    ),
    "sac-her-fixed": Case(
        "sac",
        _knobs("learning_rate", "ent_coef", "cost_penalty", reward=False),
        FETCH_REACH,
        her=True,
        kwargs=(("ent_coef", 0.1),),
    ),
    "td3-no-noise": Case("td3", _knobs("learning_rate")),
    "ppo-pendulum": Case(
        "ppo", _knobs("learning_rate", "ent_coef", "clip_range", "action_std", reward=False), "Pendulum-v1"
    ),
    "ppo-discrete": Case("ppo", _knobs("learning_rate", "ent_coef", "clip_range", reward=False), "CartPole-v1"),
}

#: cases whose every knob gets the write-then-train check (the others only test discovery)
TRAIN_CASES = [c for c in CASES if c not in ("td3-no-noise", "ppo-pendulum", "ppo-discrete")]
#: (case, knob) pairs: every knob of every trained case
CASE_KNOBS = [pytest.param(c, k, id=f"{c}-{k}") for c in TRAIN_CASES for k in sorted(CASES[c].expected)]


def target_value(name: str, act: Actuator, model: BaseAlgorithm) -> float:
    """An in-bounds value far from the knob's current one."""
    current = act.read(model)
    if name == "learning_rate":
        value = 2.5e-4
    elif name == "ent_coef":
        value = 0.05 if isinstance(model, OnPolicyAlgorithm) else 0.02
    elif name == "target_entropy":
        value = current / 2
    else:
        value = {
            "clip_range": 0.12,
            "action_std": 0.3,
            "noise_sigma": 0.4,
            "collision_penalty": 25.0,
            "cost_penalty": 0.2,
            "success_bonus": 3.0,
            "progress_scale": 4.0,
        }[name]
    if not act.low <= value <= act.high or math.isclose(value, current, rel_tol=0.05):
        pytest.fail(f"bad test value {value} for {name} (current {current}, [{act.low}, {act.high}])")
    return value


# -- per-knob checks of the effective value after train() (raise AssertionError) -------------------


def check_learning_rate(h: Harness, act: Actuator, value: float, calls: list[TrainCall]) -> None:
    for call in calls:
        assert call.lrs and call.lrs == pytest.approx([value] * len(call.lrs)), "optimiser LR after train()"
    assert h.logger.history["train/learning_rate"][-1] == pytest.approx(value), "logged train/learning_rate"
    assert h.model.lr_schedule(h.model._current_progress_remaining) == pytest.approx(value)
    assert act.read(h.model) == pytest.approx(value)


def check_ent_coef(h: Harness, act: Actuator, value: float, calls: list[TrainCall]) -> None:
    model = h.model
    if isinstance(model, OnPolicyAlgorithm):
        assert all(c.knobs["ent_coef"] == pytest.approx(value) for c in calls), "ent_coef read by train()"
        if isinstance(model, PPO):
            # one epoch of one minibatch: the logged loss is exactly the sum of its logged terms
            log = h.logger.history
            terms = log["train/policy_gradient_loss"][-1], log["train/entropy_loss"][-1], log["train/value_loss"][-1]

            def total(coef: float) -> float:
                return terms[0] + coef * terms[1] + model.vf_coef * terms[2]

            assert log["train/loss"][-1] == pytest.approx(total(value), rel=1e-4, abs=1e-5), "ent_coef in PPO loss"
        assert model.ent_coef == pytest.approx(value)
    else:
        logged = h.logger.history["train/ent_coef"][-len(calls) :]
        assert logged == pytest.approx([value] * len(calls), rel=1e-6), "logged train/ent_coef (SAC/TQC)"
        assert model.ent_coef_tensor.item() == pytest.approx(value, rel=1e-6)


def check_target_entropy(h: Harness, act: Actuator, value: float, calls: list[TrainCall]) -> None:
    assert all(c.knobs["target_entropy"] == pytest.approx(value) for c in calls), "target_entropy read by train()"
    assert float(h.model.target_entropy) == pytest.approx(value)
    assert isinstance(h.model.target_entropy, float)


def check_clip_range(h: Harness, act: Actuator, value: float, calls: list[TrainCall]) -> None:
    assert h.logger.history["train/clip_range"][-len(calls) :] == pytest.approx([value] * len(calls))
    for progress in (1.0, 0.5, h.model._current_progress_remaining, 0.0):
        assert h.model.clip_range(progress) == pytest.approx(value), f"clip_range({progress})"


def check_action_std(h: Harness, act: Actuator, value: float, calls: list[TrainCall]) -> None:
    model = h.model
    log_std = model.policy.log_std
    in_optimizer = any(p is log_std for opt in optimizers(model) for g in opt.param_groups for p in g["params"])
    assert in_optimizer, "log_std is no longer the parameter the optimiser trains"
    # the first train() after the write starts from the written std; training then moves it a little
    assert calls[0].knobs["action_std"] == pytest.approx(value, rel=1e-5)
    assert h.logger.history["train/std"][-1] == pytest.approx(value, rel=0.1), "logged train/std"
    obs = th.as_tensor(model.env.observation_space.sample()[None], dtype=th.float32)
    with th.no_grad():
        std = model.policy.get_distribution(obs).distribution.stddev.mean().item()
    assert std == pytest.approx(value, rel=0.1), "std of the policy's action distribution"


def check_noise_sigma(h: Harness, act: Actuator, value: float, calls: list[TrainCall]) -> None:
    noise = h.model.action_noise
    if h.model.n_envs > 1:
        assert isinstance(noise, VectorizedActionNoise)
    inner = noise.noises if isinstance(noise, VectorizedActionNoise) else [noise]
    assert len(inner) == h.model.n_envs
    for n in inner:
        assert np.mean(n._sigma) == pytest.approx(value), "sigma of the noise collect_rollouts calls"
    if all(isinstance(n, NormalActionNoise) for n in inner):
        samples = np.stack([noise() for _ in range(3000)])
        assert samples.std() == pytest.approx(value, rel=0.1), "spread of sampled noise"


def check_reward_weight(name: str) -> Callable[[Harness, Actuator, float, list[TrainCall]], None]:
    def check(h: Harness, act: Actuator, value: float, calls: list[TrainCall]) -> None:
        weights = h.model.get_env().env_method("reward_weights")
        assert len(weights) == h.model.n_envs
        assert [w[name] for w in weights] == pytest.approx([value] * h.model.n_envs), "weights inside the envs"
        assert all(c.knobs[name] == pytest.approx(value) for c in calls)

    return check


CHECKS: dict[str, Callable[[Harness, Actuator, float, list[TrainCall]], None]] = {
    "learning_rate": check_learning_rate,
    "ent_coef": check_ent_coef,
    "target_entropy": check_target_entropy,
    "clip_range": check_clip_range,
    "action_std": check_action_std,
    "noise_sigma": check_noise_sigma,
    **{name: check_reward_weight(name) for name in (*REWARD_WEIGHTS, "cost_penalty")},
}


def write_train_check(case: str, knob: str, actuator: Actuator | None = None) -> None:
    """Warm up, write ``knob`` (through ``actuator`` if given), train again, run the knob's check."""
    h, acts = CASES[case].warmed_up()
    act = actuator or acts[knob]
    value = target_value(knob, acts[knob], h.model)
    written = act.write(h.model, value)
    assert written == pytest.approx(value, rel=1e-6)
    calls = h.learn()
    CHECKS[knob](h, act, value, calls)
    # still in force after a second learn() call
    calls = h.learn()
    if knob != "action_std":
        CHECKS[knob](h, act, value, calls)


# -- tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_discovered_knobs(case: str) -> None:
    h = CASES[case].harness()
    assert set(discover_actuators(h.model)) == CASES[case].expected


@pytest.mark.parametrize(("case", "knob"), CASE_KNOBS)
def test_write_survives_train(case: str, knob: str) -> None:
    write_train_check(case, knob)


class LyingActuator(Actuator):
    """Reports the value it was given and changes nothing: every check must catch it."""

    def __init__(self, name: str) -> None:
        super().__init__(-1e9, 1e9)
        self.name = name
        self.value = math.nan

    def _read(self, model: BaseAlgorithm) -> float:
        return self.value

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        self.value = value


@pytest.mark.parametrize(("case", "knob"), CASE_KNOBS)
def test_lying_actuator_is_caught(case: str, knob: str) -> None:
    """Each knob's check looks at what ``train()`` used, not at what the actuator reports."""
    with pytest.raises(AssertionError):
        write_train_check(case, knob, LyingActuator(knob))


class NaiveLearningRate(Actuator):
    """Edits the optimisers' param_groups only (SB3 resets them from ``lr_schedule``)."""

    name = "learning_rate"

    def _read(self, model: BaseAlgorithm) -> float:
        return optimizers(model)[0].param_groups[0]["lr"]

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        for opt in optimizers(model):
            update_learning_rate(opt, value)


class NaiveSacEntCoef(Actuator):
    """Sets ``model.ent_coef`` (SAC/TQC read it once, at setup)."""

    name = "ent_coef"

    def _read(self, model: BaseAlgorithm) -> float:
        return float(model.ent_coef)

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.ent_coef = value


class NaiveNoiseSigma(Actuator):
    """Sets ``_sigma`` on ``model.action_noise`` itself (a ``VectorizedActionNoise`` ignores it)."""

    name = "noise_sigma"

    def _read(self, model: BaseAlgorithm) -> float:
        return float(np.mean(model.action_noise._sigma))

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.action_noise._sigma = np.full(model.action_space.shape, value)


class NaiveActionStd(Actuator):
    """Replaces ``policy.log_std`` with a new parameter (the optimiser keeps training the old one)."""

    name = "action_std"

    def _read(self, model: BaseAlgorithm) -> float:
        return float(model.policy.log_std.detach().exp().mean())

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.policy.log_std = th.nn.Parameter(th.full_like(model.policy.log_std, math.log(value)))


class NaiveCollisionPenalty(Actuator):
    """``VecEnv.set_attr`` (sets the attribute on the outermost wrapper, not on the env)."""

    name = "collision_penalty"

    def _read(self, model: BaseAlgorithm) -> float:
        return float(model.get_env().get_attr("collision_penalty")[0])

    def _write(self, model: BaseAlgorithm, value: float) -> None:
        model.get_env().set_attr("collision_penalty", value)


@pytest.mark.parametrize(
    ("case", "knob", "naive"),
    [
        ("ppo", "learning_rate", NaiveLearningRate),
        ("sac-auto", "learning_rate", NaiveLearningRate),
        ("td3", "learning_rate", NaiveLearningRate),
        ("sac-fixed", "ent_coef", NaiveSacEntCoef),
        ("tqc-fixed", "ent_coef", NaiveSacEntCoef),
        ("td3", "noise_sigma", NaiveNoiseSigma),
        ("ppo", "action_std", NaiveActionStd),
        ("ppo", "collision_penalty", NaiveCollisionPenalty),
    ],
)
def test_naive_actuator_is_caught(case: str, knob: str, naive: type[Actuator]) -> None:
    """The checks above fail for actuators that SB3 (or the wrappers) silently undo."""
    with pytest.raises(AssertionError):
        write_train_check(case, knob, naive(0.0, 1e9))


@pytest.mark.parametrize("algo", ["sac", "tqc"])
@pytest.mark.parametrize("target", [20.0, -20.0])
def test_target_entropy_steers_ent_coef(algo: str, target: float) -> None:
    """'auto' SAC/TQC moves its entropy coefficient toward the target the actuator wrote.

    ``ent_coef_loss = -log_ent_coef * (log_prob + target_entropy)``: a target far above any
    log-prob makes the coefficient grow at every update, one far below makes it shrink (the default
    target, -2 here, would make it shrink too, so ``+20`` shows the written value is the one used).
    """
    h = make_harness(algo)
    h.learn(4)
    act = discover_actuators(h.model, {"target_entropy": KnobBounds(low=-20.0, high=20.0)})["target_entropy"]
    act.write(h.model, target)
    h.learn(16)
    steps = np.diff(h.logger.history["train/ent_coef"][-16:])
    assert np.all(np.sign(steps) == np.sign(target)), steps


def test_reward_weights_change_training_rewards() -> None:
    """The rewards PPO trains on come from the weights written (not only the weights' read-back)."""
    h = make_harness("ppo", n_envs=2)
    acts = discover_actuators(h.model)
    h.learn(64)
    assert h.model.rollout_buffer.rewards.max() > 0.0  # progress is rewarded at the default weights
    for name in REWARD_WEIGHTS:
        acts[name].write(h.model, 0.0)
    h.learn()
    # with every weight at 0 only the action and clearance penalties remain
    assert h.model.rollout_buffer.rewards.max() <= 0.0


def test_noise_written_before_first_learn_reaches_vectorized_copies() -> None:
    """SB3 wraps the noise in ``VectorizedActionNoise`` (deep copies) at the first ``learn()``."""
    h = make_harness("td3", n_envs=2, noise="normal", sigma=np.array([0.1, 0.2]))
    act = discover_actuators(h.model)["noise_sigma"]
    assert not isinstance(h.model.action_noise, VectorizedActionNoise)
    assert act.read(h.model) == pytest.approx(0.15)
    assert act.write(h.model, 0.3) == pytest.approx(0.3)
    h.learn(8)
    noise = h.model.action_noise
    assert isinstance(noise, VectorizedActionNoise)
    for n in noise.noises:
        # per-dimension ratios are kept: mean 0.3 with the 1:2 ratio
        np.testing.assert_allclose(n._sigma, [0.2, 0.4])
    assert act.read(h.model) == pytest.approx(0.3)


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_writes_are_clamped(case: str) -> None:
    h = CASES[case].harness()
    for name, act in discover_actuators(h.model).items():
        assert act.write(h.model, act.high + 1e6) == pytest.approx(act.high, rel=1e-6), name
        assert act.write(h.model, act.low - 1e6) == pytest.approx(act.low, rel=1e-6, abs=1e-12), name
        assert act.read(h.model) == pytest.approx(act.low, rel=1e-6, abs=1e-12), name


@pytest.mark.parametrize("case", TRAIN_CASES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_write_raises(case: str, bad: float) -> None:
    h = CASES[case].harness()
    for name, act in discover_actuators(h.model).items():
        before = act.read(h.model)
        with pytest.raises(ManagerError, match="non-finite"):
            act.write(h.model, bad)
        assert act.read(h.model) == pytest.approx(before), f"{name} changed by a refused write"


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_spec_is_valid(case: str) -> None:
    h = CASES[case].harness()
    for name, act in discover_actuators(h.model).items():
        spec = act.spec(h.model, last_changed_at=3)
        assert isinstance(spec, KnobSpec)
        assert spec.name == name
        assert spec.value == pytest.approx(act.read(h.model))
        assert spec.low <= spec.value <= spec.high
        assert (spec.low, spec.high) == (act.low, act.high)  # the value is inside the defaults
        assert spec.multipliers or spec.values
        assert spec.last_changed_at == 3
        assert spec.description
        assert KnobSpec.model_validate(spec.model_dump()) == spec


def test_default_bounds() -> None:
    acts = discover_actuators(CASES["ppo"].harness().model)
    for name in ("learning_rate", "ent_coef", "clip_range", "action_std", *REWARD_WEIGHTS):
        assert (acts[name].low, acts[name].high) == DEFAULT_BOUNDS[name]
    ent_coef = discover_actuators(CASES["sac-fixed"].harness().model)["ent_coef"]
    assert (ent_coef.low, ent_coef.high) == DEFAULT_BOUNDS["sac_ent_coef"]


def test_target_entropy_bounds_do_not_drift() -> None:
    """Bounds come from the action space, not the current target (stable when discovered again)."""
    h = CASES["sac-auto"].harness()
    act = discover_actuators(h.model)["target_entropy"]
    assert (act.low, act.high) == (-8.0, -0.5)  # 2-D actions: SB3's heuristic is -2
    act.write(h.model, -0.6)
    again = discover_actuators(h.model)["target_entropy"]
    assert (again.low, again.high) == (act.low, act.high)


def test_override_bounds_clamp_writes() -> None:
    h = CASES["ppo"].harness()
    acts = discover_actuators(h.model, {"learning_rate": KnobBounds(low=1e-4, high=4e-4)})
    act = acts["learning_rate"]
    assert act.write(h.model, 1.0) == pytest.approx(4e-4)
    assert act.write(h.model, 0.0) == pytest.approx(1e-4)
    h.spy(acts)
    calls = h.learn()
    check_learning_rate(h, act, 1e-4, calls)


def test_override_moves_and_cooldown() -> None:
    h = CASES["ppo"].harness()
    overrides = {
        "clip_range": KnobBounds(values=(0.1, 0.2)),
        "learning_rate": KnobBounds(multipliers=(0.5, 2.0), cooldown=5),
    }
    acts = discover_actuators(h.model, overrides)
    clip, lr = acts["clip_range"].spec(h.model), acts["learning_rate"].spec(h.model)
    assert clip.values == (0.1, 0.2)
    assert lr.multipliers == (0.5, 2.0) and lr.cooldown == 5


def test_override_disables_knob() -> None:
    h = CASES["ppo"].harness()
    acts = discover_actuators(h.model, {"ent_coef": KnobBounds(enabled=False)})
    assert set(acts) == CASES["ppo"].expected - {"ent_coef"}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"noise_sigma": KnobBounds(low=0.1)}, "no knob 'noise_sigma'"),  # PPO has no action noise
        ({"learning_rat": KnobBounds(enabled=False)}, "no knob 'learning_rat'"),  # a typo is not ignored
        ({"learning_rate": KnobBounds(low=0.5)}, "low 0.5 > high"),  # against the default high
        ({"ent_coef": KnobBounds(low=0.2, high=0.1)}, "low 0.2 > high 0.1"),
        ({"action_std": KnobBounds(multipliers=(), values=())}, "needs multipliers or listed values"),
    ],
)
def test_bad_overrides_raise(overrides: dict[str, KnobBounds], match: str) -> None:
    h = CASES["ppo"].harness()
    with pytest.raises(ValueError, match=match):
        discover_actuators(h.model, overrides)


def test_knob_bounds_schema() -> None:
    with pytest.raises(ValueError):
        KnobBounds(low=0.1, hgh=0.2)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        KnobBounds(cooldown=-1)


def test_spec_widens_bounds_to_hold_value() -> None:
    h = CASES["ppo"].harness()
    act = discover_actuators(h.model, {"learning_rate": KnobBounds(low=1e-2, high=2e-2)})["learning_rate"]
    spec = act.spec(h.model)
    assert spec.value == pytest.approx(1e-3)  # initial_lr(1.0)
    assert spec.low == pytest.approx(1e-3) and spec.high == pytest.approx(2e-2)


@pytest.mark.parametrize("case", ["ppo", "sac-fixed", "sac-noise", "ddpg"])
def test_model_knobs_survive_save_and_load(case: str, tmp_path: Path) -> None:
    """A resumed run keeps the written knobs (``learning_rate`` is rebuilt from ``model.learning_rate``)."""
    c = CASES[case]
    h = c.harness()
    h.learn()
    acts = {k: a for k, a in discover_actuators(h.model).items() if k not in REWARD_WEIGHTS}
    written = {name: act.write(h.model, target_value(name, act, h.model)) for name, act in acts.items()}
    h.model.save(tmp_path / "model.zip")
    env = make_vec_env(c.env_id, n_envs=c.n_envs, seed=1)
    loaded = ALGOS[c.algo].load(tmp_path / "model.zip", env=env, device="cpu")
    loaded_acts = discover_actuators(loaded)
    assert {k: (a.low, a.high) for k, a in loaded_acts.items() if k in acts} == {
        k: (a.low, a.high) for k, a in acts.items()
    }
    for name, value in written.items():
        assert loaded_acts[name].read(loaded) == pytest.approx(value, rel=1e-6), name
    logger = RecordingLogger()
    loaded.set_logger(logger)
    loaded.learn(16, reset_num_timesteps=False)
    assert logger.history["train/learning_rate"][-1] == pytest.approx(written["learning_rate"])
    assert all(g["lr"] == pytest.approx(written["learning_rate"]) for o in optimizers(loaded) for g in o.param_groups)


def test_subproc_vec_env() -> None:
    """Probing for reward weights must not kill ``SubprocVecEnv`` workers; writes reach every worker."""
    # "fork" starts workers in milliseconds (forkserver re-imports torch in each: seconds on 2 cores)
    subproc = dict(vec_env_cls=SubprocVecEnv, vec_env_kwargs=dict(start_method="fork"))
    h = make_harness("ppo", env_id="Pendulum-v1", n_envs=2, **subproc)
    try:
        assert not REWARD_WEIGHTS & set(discover_actuators(h.model))
        h.learn(32)  # the workers are still alive
    finally:
        h.model.get_env().close()
    # "module:id" makes gym.make import the registrations (needed with spawn/forkserver workers)
    h = make_harness("ppo", env_id=f"rl_manager.envs:{REACHER}", n_envs=2, **subproc)
    try:
        acts = discover_actuators(h.model)
        h.spy(acts)
        assert acts["collision_penalty"].write(h.model, 30.0) == 30.0
        calls = h.learn()
        check_reward_weight("collision_penalty")(h, acts["collision_penalty"], 30.0, calls)
    finally:
        h.model.get_env().close()

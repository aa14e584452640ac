"""ManagerCallback in real SB3 runs on the planar reacher (tiny nets, tiny budgets)."""

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import rl_manager.envs  # noqa: F401
from rl_manager.audit import read_audit
from rl_manager.callback import NORMALIZER_KEY, ManagerCallback, normalizer_path
from rl_manager.managers.base import Manager, Proposal
from rl_manager.menu import GateConfig
from rl_manager.schema import Targets
from rl_manager.telemetry import evaluate

ENV = "rl_manager/PlanarReacher-v0"


def envs(seed=0):
    train = make_vec_env(ENV, n_envs=2, seed=seed, monitor_kwargs={"info_keywords": ("is_success", "episode_cost")})
    return train, make_vec_env(ENV, n_envs=1, seed=seed + 100)


def ppo(env):
    return PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, policy_kwargs={"net_arch": [16]}, seed=0)


class Prefer(Manager):
    """Proposes ``action`` whenever the menu offers it, else no_action."""

    name = "prefer"

    def __init__(self, action):
        self.action = action

    def _propose(self, snapshot, menu, feedback):
        return Proposal(reply={"action": self.action if self.action in menu.actions else "no_action"})


def test_standalone_decisions_are_audited_and_logged(tmp_path):
    env, eval_env = envs()
    model = ppo(env)
    cb = ManagerCallback("rule", run_dir=tmp_path, eval_env=eval_env, eval_freq=64, n_eval_episodes=2)
    model.learn(640, callback=cb)
    records = read_audit(tmp_path)
    assert len(records) == cb.counts["decisions"] == 5
    assert [r.seq for r in records] == list(range(5))
    first = records[0]
    assert first.snapshot.evaluation.n_episodes == 2
    assert first.snapshot.evaluation.violation_rate is not None  # cost measured from info["cost"]
    assert first.snapshot.training.n_episodes >= 0
    assert {k.name for k in first.snapshot.knobs} >= {"learning_rate", "ent_coef", "clip_range", "collision_penalty"}
    assert (tmp_path / "best_model.zip").exists() and (tmp_path / "manager_state.json").exists()


def test_as_eval_callback_child(tmp_path):
    env, eval_env = envs()
    model = ppo(env)
    child = ManagerCallback("rule", run_dir=tmp_path)
    model.learn(512, callback=EvalCallback(eval_env, eval_freq=64, n_eval_episodes=2, callback_after_eval=child))
    records = read_audit(tmp_path)
    assert len(records) == 4
    assert records[0].snapshot.evaluation.n_episodes == 2
    assert records[0].snapshot.evaluation.mean_cost is None  # EvalCallback does not collect costs: absent, not 0


@pytest.mark.parametrize("confirm_episodes", [0, 4])
def test_stop_ends_training(tmp_path, confirm_episodes):
    env, eval_env = envs()
    model = ppo(env)
    cb = ManagerCallback(
        Prefer("stop_training"),
        run_dir=tmp_path,
        eval_env=eval_env,
        eval_freq=64,
        n_eval_episodes=1,
        gates=GateConfig(stop_patience=2),
        targets=Targets(success_rate=0.0, max_violation_rate=1.0),
        confirm_episodes=confirm_episodes,
    )
    model.learn(5000, callback=cb)
    assert cb.stopped
    assert model.num_timesteps == 2 * 128  # stopped at the second boundary
    last = read_audit(tmp_path)[-1]
    assert last.decision.action == "stop_training" and last.applied
    if confirm_episodes:
        assert last.message.startswith("stop confirmed: 4 fresh episodes meet the targets (success ")
    else:
        assert last.message == ""
    # one episode per boundary, then the confirmation's fresh ones
    assert len(eval_env.envs[0].get_episode_rewards()) == 2 + confirm_episodes


def test_rollback_restores_best_weights_and_knobs(tmp_path):
    env, eval_env = envs()
    model = ppo(env)
    cb = ManagerCallback("none", run_dir=tmp_path, eval_env=eval_env, eval_freq=64, n_eval_episodes=1)
    model.learn(256, callback=cb)
    best = {k: v.clone() for k, v in cb.controller.best_checkpoint["policy"].items()}
    best_lr = cb.state.best.knobs["learning_rate"]
    cb.actuators["learning_rate"].write(model, 2e-3)
    with th.no_grad():
        for p in model.policy.parameters():
            p.add_(1.0)
    changes = cb.controller.rollback(keep_recipe=False)
    for k, v in model.policy.state_dict().items():
        assert th.equal(v, best[k]), k
    assert cb.actuators["learning_rate"].read(model) == pytest.approx(best_lr)
    assert any(c.knob == "learning_rate" for c in changes)
    # optimiser state restored too: its step counters match the best checkpoint's
    opt_best = cb.controller.best_checkpoint["policy.optimizer"]["state"]
    opt_now = model.policy.optimizer.state_dict()["state"]
    assert all(th.equal(opt_now[i]["exp_avg"], opt_best[i]["exp_avg"]) for i in opt_best)


@pytest.mark.parametrize("wrapped", [False, True])
def test_normalised_training_env_is_evaluated_with_its_statistics(tmp_path, wrapped):
    """A policy trained on ``VecNormalize`` observations is evaluated on them, with the training statistics of the
    moment (as ``EvalCallback`` syncs them): a plain eval env is wrapped, a user's ``VecNormalize`` one is synced."""
    train, eval_env = envs()
    train = VecNormalize(train, norm_reward=False)
    if wrapped:
        eval_env = VecNormalize(eval_env)  # training=True, as a user may leave it
    model = ppo(train)
    cb = ManagerCallback("none", run_dir=tmp_path, eval_env=eval_env, eval_freq=10**6)
    model.learn(256, callback=cb)  # no evaluation yet: the eval env's scenes start from its seed below
    played = cb._play(2)
    assert isinstance(cb.eval_env, VecNormalize) and not cb.eval_env.training
    np.testing.assert_array_equal(cb.eval_env.obs_rms.mean, train.obs_rms.mean)
    reference = VecNormalize(make_vec_env(ENV, n_envs=1, seed=100), training=False, norm_reward=False)
    reference.obs_rms = copy.deepcopy(train.obs_rms)
    assert played.returns == evaluate(model, reference, 2).returns


def test_rollback_restores_the_observation_statistics(tmp_path):
    train, eval_env = envs()
    train = VecNormalize(train, norm_reward=False)
    model = ppo(train)
    cb = ManagerCallback("none", run_dir=tmp_path, eval_env=eval_env, eval_freq=64, n_eval_episodes=1)
    model.learn(256, callback=cb)
    best_mean = cb.controller.best_checkpoint[NORMALIZER_KEY][0].mean.copy()
    assert normalizer_path(tmp_path / "best_model.zip").is_file()
    train.obs_rms.mean += 1.0
    cb.controller.rollback(keep_recipe=False)
    np.testing.assert_array_equal(train.obs_rms.mean, best_mean)
    train.obs_rms.mean += 1.0
    cb.restore(tmp_path / "best_model.zip")  # the saved best: its statistics from beside it
    np.testing.assert_array_equal(train.obs_rms.mean, best_mean)


def test_rollback_decision_applied_in_a_run(tmp_path):
    env, eval_env = envs()
    model = ppo(env)
    cb = ManagerCallback(
        Prefer("rollback_to_best"),
        run_dir=tmp_path,
        eval_env=eval_env,
        eval_freq=64,
        n_eval_episodes=1,
        gates=GateConfig(rollback_margin=0.0, rollback_patience=1, rollback_cooldown=2),
    )
    model.learn(640, callback=cb)
    rollbacks = [r for r in read_audit(tmp_path) if r.decision.action == "rollback_to_best"]
    assert rollbacks and all(r.applied for r in rollbacks)
    gaps = np.diff([r.evaluation_index for r in rollbacks])
    assert (gaps >= 2).all()  # the cooldown held


def test_missing_info_keys_degrade_gracefully(tmp_path):
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    eval_env = make_vec_env("Pendulum-v1", n_envs=1, seed=1)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0)
    cb = ManagerCallback("rule", run_dir=tmp_path, eval_env=eval_env, eval_freq=200, n_eval_episodes=1)
    model.learn(400, callback=cb)
    snap = read_audit(tmp_path)[0].snapshot
    assert snap.evaluation.success_rate is None and snap.evaluation.mean_cost is None
    assert snap.score_name == "mean_return"


class Slow(Manager):
    """Sleeps, then proposes the first offered learning-rate decrease."""

    name = "slow"

    def __init__(self, seconds):
        self.seconds = seconds

    def _propose(self, snapshot, menu, feedback):
        import time

        time.sleep(self.seconds)
        knob = menu.knob("learning_rate")
        down = [o.value for o in knob.options if o.value < knob.current] if knob else []
        if "adjust" in menu.actions and down:
            return Proposal(reply={"action": "adjust", "changes": [{"knob": "learning_rate", "value": down[-1]}]})
        return Proposal(reply={"action": "no_action"})


def test_async_decisions_do_not_block_and_apply_later(tmp_path):
    import time

    env, eval_env = envs()
    model = ppo(env)
    cb = ManagerCallback(
        Slow(0.3),
        run_dir=tmp_path,
        eval_env=eval_env,
        eval_freq=64,
        n_eval_episodes=1,
        async_decisions=True,
        max_age=50,
    )
    start = time.perf_counter()
    model.learn(1280, callback=cb)
    records = read_audit(tmp_path)
    decisions = [r for r in records if r.kind == "decision"]
    assert decisions, "no async reply was applied"
    first = decisions[0]
    assert first.applied and "requested at evaluation 0" in first.message
    assert first.evaluation_index >= 1  # applied at a later boundary than it was asked at
    assert first.changes[0].after < first.changes[0].before
    # 10 boundaries x 0.3 s of manager time would be >= 3 s if training waited on every reply
    assert cb.counts["decisions"] < 10
    assert [r.seq for r in records] == list(range(len(records)))
    assert time.perf_counter() - start < 60
    # the pending request holds its own copy of the telemetry, not the live intervention records
    requested = cb.controller._requested
    assert cb.state.interventions and requested.interventions
    assert all(a is not b for a, b in zip(requested.interventions, cb.state.interventions, strict=False))


class WaitForReply(BaseCallback):
    """Waits, after every step, until the pending async reply has arrived: no timing in the test."""

    def __init__(self, managed: ManagerCallback) -> None:
        super().__init__()
        self.managed = managed

    def _on_step(self) -> bool:
        decider = self.managed.controller.decider
        assert decider is not None
        decider.wait(10)
        return True


def test_async_stale_and_abandoned_are_logged(tmp_path):
    env, eval_env = envs()
    model = ppo(env)
    cb = ManagerCallback(
        Slow(0.0), run_dir=tmp_path, eval_env=eval_env, eval_freq=64, n_eval_episodes=1, async_decisions=True, max_age=0
    )
    model.learn(1280, callback=CallbackList([cb, WaitForReply(cb)]))
    records = read_audit(tmp_path)
    kinds = [r.kind for r in records]
    # with max_age 0 every reply is collected too late: 10 boundaries, 9 stale replies, the last abandoned
    assert kinds == ["stale"] * 9 + ["abandoned"]
    assert cb.counts["stale"] == 9 and cb.counts["abandoned"] == 1 and cb.counts["decisions"] == 0
    stale = records[0]
    assert stale.attempts and stale.attempts[0].raw_reply and stale.requested_at == 0  # the discarded reply is kept
    assert records[-1].requested_at == 9 and "arrived after the end" in records[-1].message
    assert cb.controller.decider.closed


def test_checkpoint_boundary_uses_training_window(tmp_path):
    env, _ = envs()
    model = ppo(env)
    cb = ManagerCallback("rule", run_dir=tmp_path, eval_freq=128, n_eval_episodes=1)  # no eval_env
    model.learn(1024, callback=cb)
    records = read_audit(tmp_path)
    assert len(records) == 4
    snap = records[-1].snapshot
    assert snap.evaluation.n_episodes == 0 and snap.training.n_episodes > 0
    assert snap.score_name.startswith("train_")


def test_no_decisions_before_off_policy_learning_starts(tmp_path):
    from stable_baselines3 import SAC

    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = SAC("MlpPolicy", env, learning_starts=300, batch_size=32, policy_kwargs={"net_arch": [8]}, seed=0)
    cb = ManagerCallback(
        "rule", run_dir=tmp_path, eval_env=make_vec_env("Pendulum-v1"), eval_freq=100, n_eval_episodes=1
    )
    model.learn(400, callback=cb)
    proposers = [r.proposer for r in read_audit(tmp_path)]
    assert proposers == ["controller", "controller", "controller", "rule"]


def test_plain_gymnasium_eval_env_without_success_or_cost_keys(tmp_path):
    """The README's plug-in with a non-vectorised eval env (A2C on Pendulum): wrapped as EvalCallback does."""
    import gymnasium as gym
    from stable_baselines3 import A2C

    model = A2C("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), policy_kwargs={"net_arch": [8]}, seed=0)
    cb = ManagerCallback("rule", eval_env=gym.make("Pendulum-v1"), eval_freq=50, n_eval_episodes=1, run_dir=tmp_path)
    model.learn(200, callback=cb)
    records = read_audit(tmp_path)
    assert len(records) == 2 and cb.state.score_name == "mean_return"
    evaluation = records[-1].snapshot.evaluation
    assert evaluation.n_episodes == 1 and evaluation.mean_return is not None and np.isfinite(evaluation.mean_return)
    assert evaluation.success_rate is None and evaluation.mean_cost is None  # absent keys: absent metrics

"""Single-axis baseline managers: kl_adaptive, lagrangian, keep_best (constructed telemetry + short real runs)."""

import math

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.envs  # noqa: F401
from rl_manager.audit import read_audit
from rl_manager.callback import ManagerCallback
from rl_manager.core import decide
from rl_manager.managers import MANAGERS, KeepBestManager, KLAdaptiveManager, LagrangianManager, make_manager
from rl_manager.menu import GateConfig, build_action_space
from rl_manager.schema import (
    AlgoHealth,
    EvalMetrics,
    HistoryRow,
    KnobSpec,
    RunPosition,
    Targets,
    TrainWindow,
)
from tests.conftest import make_snapshot
from tests.test_menu import regressed

ENV = "rl_manager/PaperReacher-v0"


def guarded(snapshot, manager):
    """Decide through the real guard; the proposal must be accepted as is."""
    out = decide(snapshot, manager, fallback=None, max_reasks=0)
    assert out.fallback is None and out.validation_errors == [], out.validation_errors
    assert out.proposer == manager.name
    return out


def test_registered_by_name():
    for name, cls in (
        ("kl_adaptive", KLAdaptiveManager),
        ("lagrangian", LagrangianManager),
        ("keep_best", KeepBestManager),
    ):
        assert MANAGERS[name] is cls and make_manager(name).name == name


# ------------------------------------------------------------------------------------ kl_adaptive
def ppo_snapshot(kl, **overrides):
    return make_snapshot(algo="ppo", health=AlgoHealth(approx_kl=kl), **overrides)


def test_kl_small_raises_lr_by_the_offered_factor_closest_to_1_5():
    out = guarded(ppo_snapshot(0.001), KLAdaptiveManager())
    assert out.decision.action == "adjust"
    assert [(c.knob, c.before, c.after) for c in out.changes] == [("learning_rate", 1e-3, 1.5e-3)]


def test_kl_large_lowers_lr_by_the_offered_factor_closest_to_1_over_1_5():
    out = guarded(ppo_snapshot(0.05), KLAdaptiveManager())
    # default multipliers: 0.75 is the closest to 1/1.5 in log-space (0.5 is farther)
    assert [(c.knob, c.after) for c in out.changes] == [("learning_rate", 7.5e-4)]


def test_kl_exact_factor_when_the_menu_offers_it():
    lr = KnobSpec(
        name="learning_rate", value=1e-3, low=1e-5, high=3e-3, role="learning_rate", multipliers=(1 / 1.5, 1.5)
    )
    out = guarded(ppo_snapshot(0.05, knobs=[lr]), KLAdaptiveManager())
    assert out.changes[0].after == pytest.approx(1e-3 / 1.5, rel=1e-5)
    out = guarded(ppo_snapshot(0.001, knobs=[lr]), KLAdaptiveManager(target_kl=0.01))
    assert out.changes[0].after == pytest.approx(1.5e-3)


@pytest.mark.parametrize("kl", [0.005, 0.01, 0.02])
def test_kl_in_band_is_a_no_op(kl):
    out = guarded(ppo_snapshot(kl), KLAdaptiveManager())
    assert out.decision.action == "no_action" and "within" in out.decision.reason


def test_kl_target_sets_the_thresholds():
    assert guarded(ppo_snapshot(0.03), KLAdaptiveManager(target_kl=0.02)).decision.action == "no_action"
    assert guarded(ppo_snapshot(0.03), KLAdaptiveManager(target_kl=0.01)).decision.action == "adjust"
    with pytest.raises(ValueError):
        KLAdaptiveManager(target_kl=0.0)
    with pytest.raises(ValueError):
        KLAdaptiveManager(factor=1.0)


@pytest.mark.parametrize(
    "snapshot,why",
    [
        (make_snapshot(algo="sac", health=AlgoHealth(approx_kl=0.001)), "PPO only"),
        (ppo_snapshot(None), "no finite approx KL"),
        (ppo_snapshot(math.nan), "no finite approx KL"),
        (
            ppo_snapshot(
                0.001,
                knobs=[KnobSpec(name="learning_rate", value=3e-3, low=1e-5, high=3e-3, role="learning_rate")],
            ),
            "none offered",
        ),
        (
            ppo_snapshot(
                0.001,
                knobs=[
                    KnobSpec(
                        name="learning_rate",
                        value=1e-3,
                        low=1e-5,
                        high=3e-3,
                        role="learning_rate",
                        cooldown=2,
                        last_changed_at=4,
                    )
                ],
            ),
            "cooldown",
        ),
        (
            ppo_snapshot(0.001, knobs=[KnobSpec(name="ent_coef", value=0.01, low=0, high=0.1, role="exploration")]),
            "no learning_rate knob",
        ),
    ],
    ids=["not-ppo", "no-kl", "nan-kl", "at-bound", "cooldown", "no-knob"],
)
def test_kl_no_op_cases_say_why(snapshot, why):
    out = guarded(snapshot, KLAdaptiveManager())
    assert out.decision.action == "no_action" and why in out.decision.reason


def test_kl_prefers_the_knob_named_learning_rate():
    knobs = [
        KnobSpec(name="critic_lr", value=1e-3, low=1e-5, high=3e-3, role="learning_rate"),
        KnobSpec(name="learning_rate", value=1e-4, low=1e-5, high=3e-3, role="learning_rate"),
    ]
    out = guarded(ppo_snapshot(0.001, knobs=knobs), KLAdaptiveManager())
    assert [c.knob for c in out.changes] == ["learning_rate"]


# ------------------------------------------------------------------------------------ lagrangian
def safety_snapshot(
    costs, *, value=5.0, high=100.0, last_changed_at=None, cooldown=1, cost_limit=0.1, eval_n=100, train_cost=None
):
    """History rows with the given measured episode costs; the last one is this boundary."""
    rows = [HistoryRow(evaluation_index=i, step=1000 * i, score=0.5, mean_cost=c) for i, c in enumerate(costs)]
    penalty = KnobSpec(
        name="collision_penalty",
        value=value,
        low=0.0,
        high=high,
        role="cost_penalty",
        conservative="up",
        scale="linear",
        cooldown=cooldown,
        last_changed_at=last_changed_at,
    )
    lr = KnobSpec(name="learning_rate", value=3e-4, low=1e-5, high=3e-3, role="learning_rate")
    return make_snapshot(
        algo="ppo",
        position=RunPosition(step=1000 * len(costs), total_steps=100_000, evaluation_index=len(costs) - 1),
        knobs=[lr, penalty],
        history=rows,
        best=None,
        evaluation=EvalMetrics(n_episodes=eval_n, mean_cost=costs[-1] if eval_n else None),
        training=TrainWindow(mean_episode_cost=train_cost),
        targets=Targets(cost_limit=cost_limit),
    )


def test_lagrangian_raises_the_penalty_over_the_limit():
    snap = safety_snapshot([0.1] * 5 + [0.5])
    m = LagrangianManager()
    # e = 0.4 now, 0 before: 5 + Kp*0.4 + Ki*0.4 + Kd*0.4 = 9.4 -> nearest offered value 10 (x2)
    assert m.target_value(snap, 5.0, None) == pytest.approx(9.4)
    out = guarded(snap, m)
    assert [(c.knob, c.before, c.after) for c in out.changes] == [("collision_penalty", 5.0, 10.0)]


def test_lagrangian_lowers_the_penalty_under_the_limit():
    snap = safety_snapshot([0.0] * 6)
    # e = -0.1 on 6 evaluations: 5 - 0.5 - 3.0 = 1.5 -> 1.25 (x0.25) is the nearest in log-space
    assert LagrangianManager().target_value(snap, 5.0, None) == pytest.approx(1.5)
    out = guarded(snap, LagrangianManager())
    assert out.changes[0].after == 1.25


def test_lagrangian_at_the_limit_is_a_no_op():
    out = guarded(safety_snapshot([0.1] * 6), LagrangianManager())
    assert out.decision.action == "no_action" and "nearest offered value is the current" in out.decision.reason


def test_lagrangian_integral_accumulates_until_a_menu_step_is_reached():
    m = LagrangianManager(kp=0.0, ki=1.0, kd=0.0)
    assert guarded(safety_snapshot([0.15]), m).decision.action == "no_action"  # 5.05: stays at 5
    out = guarded(safety_snapshot([0.15] * 6), m)  # 5.3: 5.5 is nearer than 5
    assert out.changes[0].after == 5.5


def test_lagrangian_re_anchors_at_the_last_change():
    costs = [0.5, 0.5, 0.5, 0.1, 0.1, 0.1]
    m = LagrangianManager()
    # changed at evaluation 2 (to 10): since then e = 0, the P term gives back the 0.4 it had used
    assert m.target_value(safety_snapshot(costs, value=10.0), 10.0, 2) == pytest.approx(8.0)
    out = guarded(safety_snapshot(costs, value=10.0, last_changed_at=2), m)
    assert out.changes[0].after == 7.5
    # without a change in the window the whole window's error is integrated
    assert m.target_value(safety_snapshot(costs, value=10.0), 10.0, None) == pytest.approx(16.0)


def test_lagrangian_uses_training_cost_without_evaluation_episodes():
    snap = safety_snapshot([0.1] * 5 + [0.5], eval_n=0, train_cost=0.5)
    assert guarded(snap, LagrangianManager()).changes[0].after == 10.0


def test_lagrangian_cost_limit_from_targets_else_the_default():
    snap = safety_snapshot([0.5] * 3, cost_limit=None)
    assert guarded(snap, LagrangianManager(cost_limit=0.5)).decision.action == "no_action"
    assert guarded(snap, LagrangianManager()).decision.action == "adjust"  # default limit 0.1
    assert guarded(safety_snapshot([0.5] * 3, cost_limit=0.5), LagrangianManager()).decision.action == "no_action"


@pytest.mark.parametrize(
    "snapshot,why",
    [
        (safety_snapshot([0.1, 0.5], eval_n=0, train_cost=None), "no finite episode cost"),
        (safety_snapshot([0.5, 0.9], last_changed_at=1, cooldown=2), "cooldown"),
        (safety_snapshot([0.5, 0.9], value=100.0), "nearest offered value is the current"),
        (make_snapshot(evaluation=EvalMetrics(n_episodes=10, mean_cost=3.0)), "no cost_penalty knob"),
    ],
    ids=["no-cost", "cooldown", "at-upper-bound", "no-knob"],
)
def test_lagrangian_no_op_cases_say_why(snapshot, why):
    out = guarded(snapshot, LagrangianManager())
    assert out.decision.action == "no_action" and why in out.decision.reason


def test_lagrangian_keeps_no_hidden_state():
    m = LagrangianManager()
    snap = safety_snapshot([0.1] * 5 + [0.5])
    menu = build_action_space(snap)
    first = m.pid_decision(snap, menu)
    for _ in range(3):
        m.pid_decision(safety_snapshot([0.9] * 4), build_action_space(safety_snapshot([0.9] * 4)))
    assert m.pid_decision(snap, menu) == first == LagrangianManager().pid_decision(snap, menu)
    with pytest.raises(ValueError):
        LagrangianManager(ki=-1.0)


# ------------------------------------------------------------------------------------ keep_best
def test_keep_best_rolls_back_when_the_gate_is_open():
    out = guarded(regressed(2), KeepBestManager())
    assert out.decision.action == "rollback_to_best" and out.changes == []


def test_keep_best_waits_otherwise_and_never_adjusts():
    for snap in (regressed(1), make_snapshot(), ppo_snapshot(0.5)):
        out = guarded(snap, KeepBestManager())
        assert out.decision.action == "no_action" and "no rollback" in out.decision.reason
    assert KeepBestManager.end_on_best is True and make_manager("keep_best").end_on_best


# ------------------------------------------------------------------------------------ real runs
def small_run(tmp_path, manager, learning_rate=3e-4, **callback_kwargs):
    env = make_vec_env(ENV, n_envs=2, seed=0, monitor_kwargs={"info_keywords": ("is_success", "episode_cost")})
    eval_env = make_vec_env(ENV, n_envs=1, seed=100)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=64,
        batch_size=64,
        n_epochs=2,
        learning_rate=learning_rate,
        policy_kwargs={"net_arch": [16]},
        seed=0,
        device="cpu",
    )
    cb = ManagerCallback(
        manager, run_dir=tmp_path, eval_env=eval_env, eval_freq=64, n_eval_episodes=2, fallback=None, **callback_kwargs
    )
    model.learn(64 * 2 * 7, callback=cb)  # 896 steps, 7 boundaries
    records = [r for r in read_audit(tmp_path) if r.kind == "decision"]
    assert len(records) == 7
    for r in records:
        assert r.proposer == manager.name and r.fallback is None and r.validation_errors == []
    return model, records


def test_real_run_kl_adaptive_raises_a_tiny_lr(tmp_path):
    model, records = small_run(tmp_path, KLAdaptiveManager(), learning_rate=1e-6)
    raised = [r for r in records if r.applied and r.decision.action == "adjust"]
    assert len(raised) >= 2  # the LR knob has a cooldown of 2 evaluations
    for r in raised:
        assert r.snapshot.health.approx_kl < 0.005
        assert r.knobs_after["learning_rate"] > r.knobs_before["learning_rate"]
    lr = records[-1].knobs_after["learning_rate"]
    assert lr > 1e-6
    assert model.lr_schedule(1.0) == pytest.approx(lr)
    assert all(g["lr"] == pytest.approx(lr) for g in model.policy.optimizer.param_groups)


def test_real_run_lagrangian_moves_the_collision_penalty(tmp_path):
    # a generous cost limit (5 per episode; a collision ends an episode at cost 1) drives λ down
    model, records = small_run(tmp_path, LagrangianManager(), targets=Targets(cost_limit=5.0))
    moved = [r for r in records if r.applied and r.decision.action == "adjust"]
    assert moved and all(c.knob == "collision_penalty" and c.after < c.before for r in moved for c in r.changes)
    penalty = model.get_env().env_method("reward_weights", indices=0)[0]["collision_penalty"]
    assert penalty == records[-1].knobs_after["collision_penalty"] < records[0].knobs_before["collision_penalty"]


def test_real_run_keep_best_rolls_back(tmp_path):
    gates = GateConfig(rollback_margin=0.0, rollback_patience=1, rollback_cooldown=0)
    _, records = small_run(tmp_path, KeepBestManager(), gates=gates)
    actions = {r.decision.action for r in records}
    assert actions <= {"no_action", "rollback_to_best"} and "rollback_to_best" in actions
    assert all(r.applied for r in records if r.decision.action == "rollback_to_best")

import pytest

from rl_manager.menu import GateConfig, build_action_space, knob_options
from rl_manager.schema import BestCheckpoint, HistoryRow, KnobSpec, RunPosition
from tests.conftest import make_snapshot


def values(spec):
    return [o.value for o in knob_options(spec)]


def test_default_multipliers_inside_bounds():
    spec = KnobSpec(name="lr", value=1e-3, low=1e-5, high=1e-2)
    assert values(spec) == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 9e-4, 1.1e-3, 1.25e-3, 1.5e-3, 2e-3, 3e-3, 5e-3])


def test_clamped_multipliers_shown_once_and_noops_hidden():
    # at 2e-3 with high 3e-3: x1.5, x2, x3, x5 all clamp to 3e-3 -> one option; x1 never shown
    spec = KnobSpec(name="lr", value=2e-3, low=1e-5, high=3e-3)
    opts = knob_options(spec)
    vals = [o.value for o in opts]
    assert vals.count(3e-3) == 1
    assert 2e-3 not in vals
    assert [o.multiplier for o in opts if o.value == 3e-3] == [1.5]  # the gentlest multiplier


def test_knob_at_bound_offers_no_move_past_it():
    spec = KnobSpec(name="lr", value=1e-5, low=1e-5, high=3e-3)
    assert all(v > 1e-5 for v in values(spec))
    pinned = KnobSpec(name="c", value=0.2, low=0.2, high=0.2, values=(0.2,))
    assert values(pinned) == []


def test_listed_values_outside_bounds_dropped():
    spec = KnobSpec(name="clip", value=0.2, low=0.1, high=0.3, multipliers=(), values=(0.05, 0.1, 0.2, 0.3, 0.4))
    assert values(spec) == [0.1, 0.3]


def test_zero_valued_knob_moves_only_through_listed_values():
    spec = KnobSpec(name="ent", value=0.0, low=0.0, high=0.1, scale="linear", values=(0.0, 0.001, 0.01))
    assert values(spec) == [0.001, 0.01]


def test_knob_in_cooldown_is_hidden():
    snap = make_snapshot()
    snap.knobs[0].last_changed_at = 5
    snap.knobs[0].cooldown = 2
    menu = build_action_space(snap)
    assert menu.knob("learning_rate") is None
    assert "knob:learning_rate" in menu.closed


def regressed(evals_below: int, margin_below: float = 0.2):
    history = [HistoryRow(evaluation_index=i, step=i, score=0.6) for i in range(4)]
    for j in range(evals_below):
        history.append(HistoryRow(evaluation_index=4 + j, step=4 + j, score=0.6 - margin_below))
    return make_snapshot(
        position=RunPosition(step=10, total_steps=100, evaluation_index=history[-1].evaluation_index),
        history=history,
        best=BestCheckpoint(evaluation_index=3, step=3, score=0.6, knobs={"learning_rate": 1e-3, "ent_coef": 0.05}),
    )


def test_rollback_gated_until_two_evaluations_below_best():
    assert "rollback_to_best" not in build_action_space(regressed(1)).actions
    assert "rollback_to_best" not in build_action_space(regressed(2, margin_below=0.05)).actions
    menu = build_action_space(regressed(2))
    assert "rollback_to_best" in menu.actions and "rollback_and_consolidate" in menu.actions
    # consolidation moves are conservative: learning rate and ent_coef only down from the best
    for k in menu.knobs:
        assert k.conservative_options and all(o.value < k.best_value for o in k.conservative_options)


def test_rollback_cooldown():
    snap = regressed(2)
    snap.position.last_rollback_at = snap.position.evaluation_index - 1
    assert "rollback_to_best" not in build_action_space(snap, GateConfig(rollback_cooldown=3)).actions
    assert "rollback_to_best" in build_action_space(snap, GateConfig(rollback_cooldown=1)).actions


def test_stop_gate_needs_two_evaluations_meeting_target():
    def snap(successes, violation=0.0):
        rows = [
            HistoryRow(evaluation_index=i, step=i, score=s, safe_success_rate=s, violation_rate=violation)
            for i, s in enumerate(successes)
        ]
        return make_snapshot(position=RunPosition(step=9, evaluation_index=len(rows) - 1), history=rows, best=None)

    assert "stop_training" not in build_action_space(snap([0.5, 0.9])).actions
    assert "stop_training" in build_action_space(snap([0.9, 0.95])).actions
    assert "stop_training" not in build_action_space(snap([0.9, 0.95], violation=0.3)).actions
    assert "stop_training" not in build_action_space(snap([0.9, 0.95]), GateConfig(allow_stop=False)).actions


def test_stop_gate_needs_every_evaluation_cell_to_meet_the_target():
    from rl_manager.schema import EvalCell

    rows = [HistoryRow(evaluation_index=i, step=i, score=s, safe_success_rate=s) for i, s in enumerate([0.9, 0.92])]
    snap = make_snapshot(position=RunPosition(step=9, evaluation_index=1), history=rows, best=None)
    snap.evaluation.cells = [
        EvalCell(name="easy", n_episodes=50, safe_success_rate=1.0, violation_rate=0.0),
        EvalCell(name="hard", n_episodes=50, safe_success_rate=0.76, violation_rate=0.1),
    ]
    menu = build_action_space(snap)
    assert "stop_training" not in menu.actions and "hard" in menu.closed["stop_training"]
    snap.evaluation.cells[1].safe_success_rate = 0.86
    assert "stop_training" in build_action_space(snap).actions


def test_a_run_over_its_cost_limit_is_not_done():
    """The stop gate reads the episode-cost constraint too: SafeFetchReach's reckless runs stopped at the
    success target with an evaluation cost 2-3x the limit (safe_fetch_reach_v6)."""
    from rl_manager.menu import meets_targets
    from rl_manager.schema import HistoryRow, Targets

    snap = make_snapshot(targets=Targets(success_rate=0.85, max_violation_rate=0.15, cost_limit=2.5))
    row = HistoryRow(evaluation_index=0, step=0, score=0.9, success_rate=0.9, violation_rate=0.05, mean_cost=4.7)
    assert not meets_targets(row, snap)
    row.mean_cost = 2.35
    assert meets_targets(row, snap)
    snap.targets.cost_limit = None  # no constraint: the cost is not a target
    row.mean_cost = 40.0
    assert meets_targets(row, snap)


def test_the_boundary_that_ends_the_budget_offers_only_a_rollback():
    """No step trains after the last decision: a knob move there would be recorded as applied and change nothing
    (seed 267's price at 400k, Push seed 274's at 500k), a stop would stop nothing; a rollback sets the final model."""
    snap = regressed(2)
    snap.position.total_steps = snap.position.step + 1
    assert {"adjust", "rollback_and_consolidate", "rollback_to_best"} <= set(build_action_space(snap).actions)
    snap.position.total_steps = snap.position.step
    menu = build_action_space(snap)
    assert menu.actions == ["no_action", "rollback_to_best"] and menu.knobs == []
    assert all("budget is spent" in menu.closed[a] for a in ("adjust", "rollback_and_consolidate", "stop_training"))
    # the rule answers within it
    from rl_manager.managers import RuleManager

    assert RuleManager().propose(snap, menu).reply.action in ("no_action", "rollback_to_best")

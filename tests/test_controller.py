"""The controller's protocol, once, against a fake adapter: sync, async, stale, abandoned,
re-validation, a failed request, rollback, stop, resume and persistence. No timing: gated
managers and ``AsyncDecider.wait`` make every async case deterministic."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import rl_manager.controller as controller_module
from rl_manager.audit import read_audit
from rl_manager.controller import STATE_FILENAME, Controller
from rl_manager.knobs import ManagerError
from rl_manager.managers import Manager
from rl_manager.managers.base import Proposal
from rl_manager.menu import GateConfig
from rl_manager.schema import ActionSpace, EvalMetrics, Targets, TelemetrySnapshot
from tests.fakes import FakeAdapter, Scripted, adjust, make_controller, observation


def test_sync_adjust_is_applied_and_audited(tmp_path: Path) -> None:
    ctl, adapter = make_controller(tmp_path, Scripted([adjust(learning_rate=5e-4)]))
    assert ctl.boundary(observation(1000, 0.2, cost=3.0))
    assert adapter.values["learning_rate"] == pytest.approx(5e-4)
    (rec,) = read_audit(tmp_path)
    assert rec.applied and rec.requested_at is None and rec.changes[0].before == pytest.approx(1e-3)
    assert ctl.state.interventions[0].cost_before == 3.0
    ctl.boundary(observation(2000, 0.3, cost=1.0))
    assert ctl.state.interventions[0].costs_after == [1.0]
    assert ctl.counts["applied"] == 1 and ctl.counts["decisions"] == 2


def test_the_last_boundary_of_the_budget_moves_no_knob(tmp_path: Path) -> None:
    """At the step that ends the budget no step trains under a new value: the menu offers no knob, so a manager's
    adjust there is refused by the guard and audited, and the knob keeps its value (seed 267's price at 400k)."""
    manager = Scripted([adjust(learning_rate=5e-4), adjust(learning_rate=2.5e-4)])
    ctl, adapter = make_controller(tmp_path, manager)
    ctl.boundary(observation(50_000, 0.2))
    assert adapter.values["learning_rate"] == pytest.approx(5e-4)
    ctl.boundary(observation(100_000, 0.3))  # total_steps: 100,000
    assert adapter.values["learning_rate"] == pytest.approx(5e-4)
    last = read_audit(tmp_path)[-1]
    assert last.decision.action == "no_action" and not last.applied
    assert last.menu.actions == ["no_action"] and "budget is spent" in last.menu.closed["adjust"]
    assert last.validation_errors


def test_history_is_untrimmed_and_saved(tmp_path: Path) -> None:
    ctl, _ = make_controller(tmp_path, history_len=10)
    for i in range(60):
        ctl.boundary(observation(1000 * (i + 1), i / 100))
    assert len(ctl.state.history) == 60 and len(ctl.snapshot().history) == 10
    saved = json.loads((tmp_path / STATE_FILENAME).read_text())
    assert len(saved["telemetry"]["history"]) == 60
    assert not (tmp_path / (STATE_FILENAME + ".tmp")).exists()


def test_best_checkpoint_and_rollback(tmp_path: Path) -> None:
    ctl, adapter = make_controller(tmp_path, best_file="best.json")
    adapter.weights["w"] = 1.0
    ctl.boundary(observation(1000, 0.5))  # best
    adapter.weights["w"], adapter.values["learning_rate"] = 2.0, 5e-3
    ctl.boundary(observation(2000, 0.1))
    assert ctl.rollback() == []  # the paper's rollback: weights back, the current recipe kept
    assert adapter.weights == {"w": 1.0} and adapter.values["learning_rate"] == pytest.approx(5e-3)
    adapter.weights["w"] = 2.0
    changes = ctl.rollback(keep_recipe=False)
    assert adapter.weights == {"w": 1.0} and adapter.values["learning_rate"] == pytest.approx(1e-3)
    assert [(c.knob, c.before, c.after) for c in changes] == [("learning_rate", 5e-3, 1e-3)]
    assert ctl.counts["rollbacks"] == 2 and ctl.state.last_rollback_at == 1
    assert adapter.saved == [tmp_path / "best.json"]


def test_rollback_without_best_raises(tmp_path: Path) -> None:
    ctl, _ = make_controller(tmp_path)
    with pytest.raises(ManagerError):
        ctl.rollback()
    with pytest.raises(ManagerError):
        Controller(FakeAdapter(), "none", run_dir=tmp_path).boundary(observation(1, 0.0))  # not started


def test_stop_ends_and_end_on_best(tmp_path: Path) -> None:
    gates = GateConfig(stop_patience=2)
    ctl, adapter = make_controller(
        tmp_path,
        Scripted([{"action": "stop_training"}] * 3),
        gates=gates,
        targets=Targets(success_rate=0.5, max_violation_rate=None),
        end_on_best=True,
    )
    adapter.weights["w"] = 1.0
    results = [ctl.boundary(observation(1000 * i, s)) for i, s in enumerate([0.9, 0.8], start=1)]
    assert results == [True, False] and ctl.stopped
    adapter.weights["w"] = 5.0
    summary = ctl.close()
    assert adapter.weights == {"w": 1.0}  # ended on the best checkpoint
    assert summary["stopped_by_manager"] and read_audit(tmp_path)[-1].kind == "note"


class StopWhenOffered(Manager):
    """Stops whenever the menu offers it."""

    name = "stop-when-offered"

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        return Proposal(reply={"action": "stop_training" if "stop_training" in menu.actions else "no_action"})


def test_a_stop_whose_fresh_episodes_miss_the_targets_is_refused(tmp_path: Path) -> None:
    ctl, adapter = make_controller(
        tmp_path,
        StopWhenOffered(),
        gates=GateConfig(stop_patience=2),
        targets=Targets(success_rate=0.8, max_violation_rate=None, cost_limit=2.5),
    )
    confirmations = [
        EvalMetrics(n_episodes=100, success_rate=0.78, mean_cost=1.0),  # success a draw below the target
        EvalMetrics(n_episodes=100, success_rate=0.95, mean_cost=3.6),  # cost over the limit
        EvalMetrics(n_episodes=100, success_rate=0.95, mean_cost=1.0),
    ]
    adapter.confirm_stop = lambda: confirmations.pop(0)  # type: ignore[attr-defined]
    assert ctl.boundary(observation(1000, 0.9, cost=1.0))  # one evaluation: the gate is shut
    assert ctl.boundary(observation(2000, 0.95, cost=1.0))  # the gate opens; the fresh episodes miss it
    assert ctl.boundary(observation(3000, 1.0, cost=1.0)) and not ctl.stopped
    refused = [r for r in read_audit(tmp_path) if r.decision is not None and r.decision.action == "stop_training"]
    assert [r.applied for r in refused] == [False, False]
    assert "100 fresh episodes" in refused[0].message and "success 0.78" in refused[0].message
    assert "episode cost 3.6" in refused[1].message
    assert not ctl.boundary(observation(4000, 1.0, cost=1.0)) and ctl.stopped  # confirmed
    assert read_audit(tmp_path)[-1].message.startswith("stop confirmed: 100 fresh episodes")
    assert not confirmations and ctl.summary()["interventions"][-1]["action"] == "stop_training"


def test_async_reply_applied_at_next_boundary(tmp_path: Path) -> None:
    gate = threading.Event()
    ctl, adapter = make_controller(tmp_path, Scripted([adjust(learning_rate=5e-4)], gate=gate), async_decisions=True)
    ctl.boundary(observation(1000, 0.2))
    assert ctl.pending and adapter.values["learning_rate"] == 1e-3  # never waits for the manager
    gate.set()
    assert ctl.decider is not None and ctl.decider.wait(10)
    ctl.boundary(observation(2000, 0.2))
    assert adapter.values["learning_rate"] == pytest.approx(5e-4)
    rec = read_audit(tmp_path)[0]
    assert rec.applied and rec.requested_at == 0 and rec.evaluation_index == 1
    assert rec.snapshot.position.evaluation_index == 0  # audited with the snapshot it was asked on


def test_async_interim_decides_only_where_no_reply_is_applied(tmp_path: Path) -> None:
    gate = threading.Event()
    interim = Scripted([adjust(learning_rate=2e-3)])
    interim.name = "interim"
    slow = Scripted([adjust(learning_rate=1e-3)], gate=gate)
    ctl, adapter = make_controller(tmp_path, slow, async_decisions=True, interim=interim)
    ctl.boundary(observation(1000, 0.2))
    assert ctl.pending and adapter.values["learning_rate"] == pytest.approx(2e-3)  # the interim acted, no wait
    ctl.boundary(observation(2000, 0.2))  # still in flight: the interim again (no_action now)
    gate.set()
    assert ctl.decider is not None and ctl.decider.wait(10)
    ctl.boundary(observation(3000, 0.2))  # the reply is collected: the interim is not asked
    assert interim.calls == 2
    records = read_audit(tmp_path)
    assert [(r.proposer, r.requested_at) for r in records] == [("interim", None), ("interim", None), ("scripted", 0)]
    assert records[1].message == "interim (interim): no scripted reply to apply"
    assert ctl.summary()["interim"] == "interim"


def test_async_stale_and_abandoned(tmp_path: Path) -> None:
    ctl, _ = make_controller(tmp_path, Scripted(), async_decisions=True, max_age=0)
    for i in range(3):
        ctl.boundary(observation(1000 * (i + 1), 0.2))
        assert ctl.decider is not None and ctl.decider.wait(10)
    ctl.close()
    records = read_audit(tmp_path)
    assert [r.kind for r in records] == ["stale", "stale", "abandoned"]
    assert [r.requested_at for r in records] == [0, 1, 2]
    assert records[0].attempts and records[0].proposer == "scripted"
    assert ctl.counts["stale"] == 2 and ctl.counts["abandoned"] == 1 and ctl.counts["decisions"] == 0


def test_async_pending_request_abandoned(tmp_path: Path) -> None:
    gate = threading.Event()
    ctl, _ = make_controller(tmp_path, Scripted(gate=gate), async_decisions=True)
    ctl.boundary(observation(1000, 0.2))
    ctl.close()
    gate.set()
    (rec,) = read_audit(tmp_path)
    assert rec.kind == "abandoned" and "pending after the end" in rec.message and rec.snapshot is not None


def test_async_reply_rejected_on_revalidation(tmp_path: Path) -> None:
    gate = threading.Event()
    ctl, adapter = make_controller(tmp_path, Scripted([adjust(learning_rate=5e-4)], gate=gate), async_decisions=True)
    ctl.boundary(observation(1000, 0.2))
    adapter.values["learning_rate"] = 5e-4  # the recipe moved on while the request was pending
    gate.set()
    assert ctl.decider is not None and ctl.decider.wait(10)
    ctl.boundary(observation(2000, 0.2))
    rec = read_audit(tmp_path)[0]
    assert not rec.applied and rec.decision.action == "no_action" and rec.fallback == "no_action"
    assert rec.attempts[-1].proposer == "guard" and rec.attempts[-1].errors
    assert ctl.counts["revalidation_rejected"] == 1


def test_async_failed_request_is_a_noop_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("endpoint down")

    monkeypatch.setattr(controller_module, "decide", boom)
    ctl, _ = make_controller(tmp_path, Scripted(), async_decisions=True)
    ctl.boundary(observation(1000, 0.2))
    assert ctl.decider is not None and ctl.decider.wait(10)
    ctl.boundary(observation(2000, 0.2))
    rec = read_audit(tmp_path)[0]
    assert rec.kind == "decision" and rec.decision.action == "no_action" and not rec.applied
    assert "endpoint down" in rec.attempts[0].errors[0]


def test_resume_continues_state_audit_and_best(tmp_path: Path) -> None:
    ctl, adapter = make_controller(tmp_path, Scripted([adjust(learning_rate=5e-4)]), best_file="best.json")
    ctl.probation = None  # (probation would revert the change after this drop: tested on its own)
    adapter.weights["w"] = 1.0
    ctl.boundary(observation(1000, 0.5))
    ctl.boundary(observation(2000, 0.1))
    ctl.close()
    fresh = FakeAdapter()  # a new process: knob values are re-applied from the saved state
    again = Controller(fresh, "none", run_dir=tmp_path, knobs=fresh.knobs(), fallback=None, best_file="best.json")
    again.start()
    assert again.run_id == ctl.run_id and again.state.evaluation_index == 1
    assert fresh.values["learning_rate"] == pytest.approx(5e-4)
    again.boundary(observation(3000, 0.2))
    assert [r.seq for r in read_audit(tmp_path)] == [0, 1, 2]
    fresh.weights["w"] = 9.0
    again.rollback()
    assert fresh.weights == {"w": 1.0}  # the best checkpoint came back from its file


def test_hold_is_audited_without_asking(tmp_path: Path) -> None:
    manager = Scripted()
    ctl, _ = make_controller(tmp_path, manager)
    obs = observation(100, 0.0)
    obs.hold = "warming up"
    ctl.boundary(obs)
    assert manager.calls == 0 and read_audit(tmp_path)[0].proposer == "controller"


def test_probation_reverts_a_harmful_change_and_marks_it_worse(tmp_path: Path) -> None:
    ctl, adapter = make_controller(tmp_path, Scripted([adjust(learning_rate=5e-3)]))
    adapter.weights["w"] = 1.0
    ctl.boundary(observation(1000, 0.8, n=200))  # the change is applied here, from w=1
    assert adapter.values["learning_rate"] == pytest.approx(5e-3) and ctl.probation.active is not None
    adapter.weights["w"] = 2.0  # training went on under the new recipe ...
    ctl.boundary(observation(2000, 0.3, n=200))  # ... and the paired score collapsed
    assert adapter.weights == {"w": 1.0} and adapter.values["learning_rate"] == pytest.approx(1e-3)
    assert ctl.state.interventions[0].verdict == "worse" and ctl.counts["reverts"] == 1
    assert ctl.counts["reverted_steps"] == 1000
    note = [r for r in read_audit(tmp_path) if r.kind == "note"][-1]
    assert "reverted learning_rate" in note.message and note.knobs_after["learning_rate"] == pytest.approx(1e-3)


def test_probation_keeps_a_change_within_the_noise(tmp_path: Path) -> None:
    ctl, adapter = make_controller(tmp_path, Scripted([adjust(learning_rate=5e-3)]))
    for i, score in enumerate([0.8, 0.78, 0.8, 0.79]):
        ctl.boundary(observation(1000 * (i + 1), score, n=200))
    assert adapter.values["learning_rate"] == pytest.approx(5e-3) and ctl.probation.active is None
    assert ctl.counts.get("reverts", 0) == 0


def test_probation_can_be_switched_off(tmp_path: Path) -> None:
    ctl, adapter = make_controller(tmp_path, Scripted([adjust(learning_rate=5e-3)]))
    ctl.probation = None
    ctl.boundary(observation(1000, 0.8, n=200))
    ctl.boundary(observation(2000, 0.1, n=200))
    assert adapter.values["learning_rate"] == pytest.approx(5e-3)


def test_the_best_checkpoint_records_the_tasks_success(tmp_path):
    """The best checkpoint by safe success keeps that evaluation's task success: the rule reads it to keep a
    rollback from unlearning the task (a policy that does not move yet is safe, and fails)."""
    from rl_manager.controller import Observation
    from rl_manager.schema import EvalMetrics
    from tests.fakes import make_controller

    ctl, _ = make_controller(tmp_path)
    for i, (success, safe) in enumerate([(0.12, 0.12), (0.5, 0.0), (0.9, 0.3)]):
        evaluation = EvalMetrics(n_episodes=50, success_rate=success, safe_success_rate=safe, mean_cost=5.0 * i)
        ctl.boundary(Observation(step=1000 * (i + 1), evaluation=evaluation, total_steps=10_000))
        if i == 1:
            assert (ctl.state.best.step, ctl.state.best.success_rate) == (1000, 0.12)
    ctl.close()
    assert ctl.state.score_name == "safe_success_rate"
    assert (ctl.state.best.score, ctl.state.best.success_rate) == (0.3, 0.9)
    assert ctl.snapshot().best.success_rate == 0.9


def test_on_first_move_runs_once_just_before_the_first_change(tmp_path: Path) -> None:
    """The fork point of a fixed arm: called with the step before the first applied change, with the state on disk
    still the fixed run's (knobs before the move, no intervention); never on a no-op, never twice."""
    seen: list[tuple[int, dict]] = []
    hook = lambda step: seen.append((step, json.loads((tmp_path / STATE_FILENAME).read_text())))  # noqa: E731
    ctl, adapter = make_controller(tmp_path, Scripted([{"action": "no_action"}, adjust(learning_rate=5e-4)]))
    ctl.on_first_move = lambda step: (ctl.save_state(), hook(step))
    ctl.boundary(observation(1000, 0.1))
    assert seen == []
    ctl.boundary(observation(2000, 0.2))
    ((step, state),) = seen
    assert step == 2000 and state["knobs"]["learning_rate"] == pytest.approx(1e-3) and state["interventions"] == []
    assert len(state["telemetry"]["history"]) == 2  # this boundary's evaluation is in the fixed run's past
    assert adapter.values["learning_rate"] == pytest.approx(5e-4)  # then the move is applied
    ctl.boundary(observation(3000, 0.3))
    assert len(seen) == 1 and ctl.on_first_move is None


def test_a_failing_on_first_move_is_noted_and_the_move_still_applied(tmp_path: Path) -> None:
    ctl, adapter = make_controller(tmp_path, Scripted([adjust(learning_rate=5e-4)]))
    ctl.on_first_move = lambda step: 1 / 0
    assert ctl.boundary(observation(1000, 0.1))
    assert adapter.values["learning_rate"] == pytest.approx(5e-4)
    note, decision = read_audit(tmp_path)
    assert "on_first_move failed: ZeroDivisionError" in note.message and decision.applied

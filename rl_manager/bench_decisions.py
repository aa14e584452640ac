"""Score a manager on labelled snapshots: accuracy, invalid rate and latency.

``python -m rl_manager.bench_decisions --manager rule [--suite FILE]``

``--manager llm`` asks the endpoint of ``RL_MANAGER_BASE_URL``; with ``--llm-gguf MODEL`` (a GGUF
path, or a model name of ``rl-manager llm list``) it starts a local ``llama-server`` for the run
instead. ``--out FILE`` writes every decision and the summary as JSON.

A suite is a YAML file::

    templates:            # named base snapshots (TelemetrySnapshot fields)
      sac_reach: {...}
    scenarios:
      - name: entropy_collapse
        category: exploration_collapse
        template: sac_reach
        patch: {...}        # deep-merged into the template (lists replace lists)
        expect:             # the decision is correct if it matches ANY entry
          - action: adjust
            knobs: {ent_coef: up}      # knob name -> up/down; every listed knob must move so
            roles: {exploration: up}   # role -> up/down; some knob of that role must move so

A scenario passes when the guarded decision matches an expectation: same action and, for
``adjust``/``rollback_and_consolidate``, every listed knob/role moved in the listed direction
(other knobs may move too). *Invalid* counts proposals the guard rejected (before any fallback).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from importlib import resources
from typing import Any, Literal

from pydantic import Field, ValidationError

from rl_manager.core import Outcome, decide
from rl_manager.io import InputError, load_data, validation_summary
from rl_manager.managers import MANAGERS, make_manager
from rl_manager.menu import GateConfig
from rl_manager.schema import ActionName, StrictModel, TelemetrySnapshot

Direction = Literal["up", "down"]


class Expectation(StrictModel):
    """One acceptable decision."""

    action: ActionName
    knobs: dict[str, Direction] = Field(default_factory=dict)
    roles: dict[str, Direction] = Field(default_factory=dict)


class Scenario(StrictModel):
    """A labelled snapshot."""

    name: str
    category: str = ""
    description: str = ""
    template: str | None = None
    patch: dict[str, Any] = Field(default_factory=dict)
    expect: list[Expectation] = Field(min_length=1)


class Suite(StrictModel):
    """A decision benchmark suite."""

    templates: dict[str, dict[str, Any]] = Field(default_factory=dict)
    scenarios: list[Scenario] = Field(min_length=1)
    gates: GateConfig = Field(default_factory=GateConfig)


def deep_merge(base: dict, patch: dict) -> dict:
    """Merge ``patch`` into a copy of ``base``: dicts merge recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scenario_snapshot(suite: Suite, scenario: Scenario) -> TelemetrySnapshot:
    """Build the snapshot of a scenario.

    :raises InputError: for an unknown template or an invalid snapshot.
    """
    if scenario.template is not None and scenario.template not in suite.templates:
        raise InputError(f"scenario {scenario.name!r}: unknown template {scenario.template!r}")
    base = suite.templates.get(scenario.template, {}) if scenario.template else {}
    data = deep_merge(base, scenario.patch)
    try:
        return TelemetrySnapshot.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"scenario {scenario.name!r}: invalid snapshot:\n{validation_summary(exc)}") from exc


def _direction(before: float, after: float) -> str:
    return "up" if after > before else "down"


def matches(outcome: Outcome, snapshot: TelemetrySnapshot, expect: Expectation) -> bool:
    """Whether a guarded decision satisfies one expectation."""
    if outcome.decision.action != expect.action:
        return False
    moved = {c.knob: _direction(c.before, c.after) for c in outcome.changes}
    roles = {k.name: k.role for k in snapshot.knobs}
    for knob, direction in expect.knobs.items():
        if moved.get(knob) != direction:
            return False
    for role, direction in expect.roles.items():
        if not any(roles.get(k) == role and d == direction for k, d in moved.items()):
            return False
    return True


def load_suite(path: str | None) -> Suite:
    """Load a suite file, or the shipped visible suite when ``path`` is ``None``."""
    if path is None:
        data = load_data(resources.files("rl_manager") / "suites" / "visible.yaml")
        source = "visible suite"
    else:
        data = load_data(path)
        source = path
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{source}: invalid suite:\n{validation_summary(exc)}") from exc


def run_suite(suite: Suite, manager_name: str, manager: Any = None, on_result: Any = None) -> list[dict[str, Any]]:
    """Run every scenario; one result dict per scenario.

    :param manager: a manager instance to use instead of ``make_manager(manager_name)``.
    :param on_result: called with each result as soon as it is known (progress output).
    """
    manager = manager if manager is not None else make_manager(manager_name)
    results = []
    for scenario in suite.scenarios:
        snapshot = scenario_snapshot(suite, scenario)
        start = time.perf_counter()
        outcome = decide(snapshot, manager, gates=suite.gates, fallback=None)
        wall = time.perf_counter() - start
        first = outcome.attempts[0] if outcome.attempts else None
        result = {
            "name": scenario.name,
            "category": scenario.category,
            "action": outcome.decision.action,
            "changes": {c.knob: _direction(c.before, c.after) for c in outcome.changes},
            "correct": any(matches(outcome, snapshot, e) for e in scenario.expect),
            "invalid": bool(first is None or first.errors),
            # no valid proposal even after the re-ask: the decision is the no-op of decide()
            "invalid_after_reask": outcome.fallback is not None,
            "attempts": len(outcome.attempts),
            # wall time of the whole decision: every attempt, re-ask and timeout included
            "latency_s": wall,
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "reason": getattr(outcome.decision, "reason", ""),
            "errors": [e for a in outcome.attempts for e in a.errors],
        }
        if first is not None and manager_name == "llm":
            result["first_reply"] = first.raw_reply
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100])."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, invalid rates before/after the re-ask and latency percentiles (seconds)."""
    n = len(results)
    latencies = [r["latency_s"] for r in results]
    return {
        "scenarios": n,
        "accuracy": sum(r["correct"] for r in results) / n,
        "invalid_rate": sum(r["invalid"] for r in results) / n,
        "invalid_after_reask": sum(r.get("invalid_after_reask", False) for r in results) / n,
        "latency_mean_s": statistics.fmean(latencies),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_max_s": max(latencies),
        "prompt_tokens_mean": _mean([r.get("prompt_tokens") for r in results]),
        "completion_tokens_mean": _mean([r.get("completion_tokens") for r in results]),
    }


def _mean(values: list[Any]) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.fmean(xs) if xs else None


@contextlib.contextmanager
def local_llm(gguf: str, threads: int, ctx_size: int = 4096, log_path: str | None = None):
    """Start ``llama-server`` on ``gguf`` (path or model name) and point ``RL_MANAGER_*`` at it."""
    from rl_manager.llm_server import LlamaServer
    from rl_manager.models import resolve_gguf

    path = resolve_gguf(gguf)
    with LlamaServer(path, threads=threads, ctx_size=ctx_size, log_path=log_path) as server:
        old = {k: os.environ.get(k) for k in ("RL_MANAGER_BASE_URL", "RL_MANAGER_MODEL")}
        os.environ["RL_MANAGER_BASE_URL"], os.environ["RL_MANAGER_MODEL"] = server.base_url, server.model
        try:
            yield server
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print per-scenario rows and the summary."""
    parser = argparse.ArgumentParser(prog="python -m rl_manager.bench_decisions", description=__doc__.splitlines()[0])
    parser.add_argument("--manager", default="rule", choices=sorted(MANAGERS))
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped visible suite)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print the summary only")
    parser.add_argument(
        "--llm-gguf",
        default=None,
        metavar="MODEL",
        help="llm: start a local llama-server on this GGUF path or pulled model name (rl-manager llm list)",
    )
    parser.add_argument("--threads", type=int, default=2, help="llama-server threads (with --llm-gguf)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these scenarios")
    parser.add_argument("--out", default=None, help="write the results and summary to this JSON file")
    parser.add_argument("--label", default="", help="free-text label stored in --out")
    args = parser.parse_args(argv)
    try:
        suite = load_suite(args.suite)
        if args.only:
            unknown = set(args.only) - {s.name for s in suite.scenarios}
            if unknown:
                raise InputError(f"unknown scenarios: {sorted(unknown)}")
            suite = suite.model_copy(update={"scenarios": [s for s in suite.scenarios if s.name in args.only]})
        if args.llm_gguf and args.manager != "llm":
            raise InputError("--llm-gguf needs --manager llm")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(s.name) for s in suite.scenarios)

    def show(r: dict[str, Any]) -> None:
        if not args.quiet:
            mark = "ok  " if r["correct"] else "MISS"
            changes = ", ".join(f"{k} {d}" for k, d in r["changes"].items())
            bad = " (invalid first reply)" if r["invalid"] else ""
            print(f"{mark} {r['name']:<{width}}  {r['action']:<24} {changes}{bad}  {r['latency_s']:.1f}s", flush=True)

    started = time.time()
    with contextlib.ExitStack() as stack:
        if args.llm_gguf:
            from rl_manager.llm_server import LlamaServerError
            from rl_manager.models import ModelError

            try:
                server = stack.enter_context(local_llm(args.llm_gguf, args.threads))
            except (LlamaServerError, ModelError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"llama-server: {server.base_url} ({server.gguf_path.name}, {args.threads} threads)", flush=True)
        manager = make_manager(args.manager)
        try:
            results = run_suite(suite, args.manager, manager=manager, on_result=show)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    summary = summarize(results)
    print(
        f"manager={args.manager} scenarios={summary['scenarios']} accuracy={summary['accuracy']:.3f} "
        f"invalid_rate={summary['invalid_rate']:.3f} invalid_after_reask={summary['invalid_after_reask']:.3f} "
        f"latency_s mean={summary['latency_mean_s']:.3f} p50={summary['latency_p50_s']:.3f} "
        f"p95={summary['latency_p95_s']:.3f}"
    )
    if args.out:
        settings = getattr(manager, "settings", None)
        record = {
            "label": args.label,
            "manager": args.manager,
            "suite": args.suite or "visible",
            "llm_gguf": args.llm_gguf,
            "threads": args.threads if args.llm_gguf else None,
            "settings": settings.model_dump(mode="json", exclude={"api_key"}) if settings is not None else None,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_s": round(time.time() - started, 1),
            "command": " ".join(
                ["python -m rl_manager.bench_decisions", *(argv if argv is not None else sys.argv[1:])]
            ),
            "summary": summary,
            "results": results,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

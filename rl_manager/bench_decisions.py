"""Score a manager on labelled snapshots: accuracy, invalid rate and latency.

``python -m rl_manager.bench_decisions --manager rule [--suite FILE]``

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
import copy
import statistics
import sys
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


def run_suite(suite: Suite, manager_name: str) -> list[dict[str, Any]]:
    """Run every scenario; one result dict per scenario."""
    manager = make_manager(manager_name)
    results = []
    for scenario in suite.scenarios:
        snapshot = scenario_snapshot(suite, scenario)
        outcome = decide(snapshot, manager, gates=suite.gates, fallback=None)
        first = outcome.attempts[0] if outcome.attempts else None
        results.append(
            {
                "name": scenario.name,
                "category": scenario.category,
                "action": outcome.decision.action,
                "changes": {c.knob: _direction(c.before, c.after) for c in outcome.changes},
                "correct": any(matches(outcome, snapshot, e) for e in scenario.expect),
                "invalid": bool(first is None or first.errors),
                "latency_s": outcome.latency_s,
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print per-scenario rows and the summary."""
    parser = argparse.ArgumentParser(prog="python -m rl_manager.bench_decisions", description=__doc__.splitlines()[0])
    parser.add_argument("--manager", default="rule", choices=sorted(MANAGERS))
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped visible suite)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    try:
        suite = load_suite(args.suite)
        results = run_suite(suite, args.manager)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        width = max(len(r["name"]) for r in results)
        for r in results:
            mark = "ok  " if r["correct"] else "MISS"
            changes = ", ".join(f"{k} {d}" for k, d in r["changes"].items())
            print(f"{mark} {r['name']:<{width}}  {r['action']:<24} {changes}")
    n = len(results)
    latencies = [r["latency_s"] * 1000 for r in results]
    accuracy = sum(r["correct"] for r in results) / n
    invalid = sum(r["invalid"] for r in results) / n
    p95 = sorted(latencies)[max(0, round(0.95 * n) - 1)]
    print(
        f"manager={args.manager} scenarios={n} accuracy={accuracy:.3f} invalid_rate={invalid:.3f} "
        f"latency_ms mean={statistics.fmean(latencies):.3f} p95={p95:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

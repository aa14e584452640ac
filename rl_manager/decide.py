"""``python -m rl_manager.decide --snapshot FILE [--manager rule]``: print one guarded decision.

The snapshot file is a :class:`~rl_manager.schema.TelemetrySnapshot` in JSON or YAML. The output is
JSON: the decision, the knob changes it makes, the resulting recipe, the proposer, any fallback and
the guard's validation errors. Invalid input exits with status 2 and a message naming the problem.
"""

from __future__ import annotations

import argparse
import json
import sys

from rl_manager.core import decide
from rl_manager.io import InputError, load_model
from rl_manager.managers import MANAGERS, make_manager
from rl_manager.menu import GateConfig
from rl_manager.schema import DecisionAdapter, TelemetrySnapshot


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m rl_manager.decide", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", required=True, help="TelemetrySnapshot file (JSON or YAML)")
    parser.add_argument("--manager", default="rule", choices=sorted(MANAGERS), help="manager (default: rule)")
    parser.add_argument("--gates", default=None, help="GateConfig file (JSON or YAML); defaults like the paper")
    parser.add_argument("--show-menu", action="store_true", help="include the menu in the output")
    args = parser.parse_args(argv)
    try:
        snapshot = load_model(args.snapshot, TelemetrySnapshot)
        gates = load_model(args.gates, GateConfig) if args.gates else GateConfig()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fallback = make_manager("rule") if args.manager == "llm" else None  # an LLM failure falls back to rules
    outcome = decide(snapshot, make_manager(args.manager), gates=gates, fallback=fallback)
    out = {
        "decision": DecisionAdapter.dump_python(outcome.decision, mode="json"),
        "changes": [c.model_dump(mode="json") for c in outcome.changes],
        "knobs_before": snapshot.knob_values(),
        "knobs_after": outcome.knobs_after(snapshot),
        "proposer": outcome.proposer,
        "fallback": outcome.fallback,
        "validation_errors": outcome.validation_errors,
        "latency_s": round(outcome.latency_s, 6),
    }
    if args.show_menu:
        out["menu"] = outcome.menu.model_dump(mode="json")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

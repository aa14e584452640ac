"""What a run's last evaluations read against its held-out episodes, for runs the manager stopped and runs that ran
their budget.

A stop gate that fires on the first evaluations under a target picks low draws of a noisy estimate: the
held-out figures of stopped runs regress further from their last evaluations than those of runs left to their
budget. Reads ``RESULTS/runs/ARM/sSEED/{summary.json,audit.jsonl.gz}`` of the given grids.

    python experiments/stop_selection.py experiments/results/safe_fetch_reach_v1[456]*
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np


def last_evaluations(run: Path, n: int) -> list[dict]:
    """The evaluation metrics of the run's last ``n`` decision boundaries."""
    with gzip.open(run / "audit.jsonl.gz", "rt") as f:
        evaluations = [r["snapshot"]["evaluation"] for r in map(json.loads, f) if r.get("snapshot")]
    return evaluations[-n:]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--last", type=int, default=2, help="evaluations the stop gate reads (its patience)")
    args = p.parse_args(argv)
    groups: dict[bool, list[tuple[str, float, float, float, float]]] = {True: [], False: []}
    for results in args.results:
        for summary in sorted(results.glob("runs/*/*/summary.json")):
            run, s = summary.parent, json.loads(summary.read_text())
            ev = last_evaluations(run, args.last)
            held = s["heldout"]["deterministic/all"]
            row = (
                f"{results.name}/{run.parent.name}/{run.name}",
                float(np.mean([e["success_rate"] for e in ev])),
                float(np.mean([e["mean_cost"] for e in ev])),
                held["success_rate"],
                held["mean_cost"],
            )
            groups[bool(s["manager"]["stopped_by_manager"])].append(row)
    for stopped, rows in groups.items():
        if not rows:
            continue
        print(f"== {'stopped by the manager' if stopped else 'ran to budget'}: {len(rows)} runs")
        print(f"{'run':<62} {'eval success':>12} {'eval cost':>9} {'held success':>12} {'held cost':>9}")
        for name, *values in rows:
            print(f"{name:<62} {values[0]:>12.3f} {values[1]:>9.2f} {values[2]:>12.2f} {values[3]:>9.2f}")
        mean = np.mean([r[1:] for r in rows], axis=0)
        print(f"{'mean':<62} {mean[0]:>12.3f} {mean[1]:>9.2f} {mean[2]:>12.2f} {mean[3]:>9.2f}")


if __name__ == "__main__":
    main()

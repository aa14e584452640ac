"""Item 2's target, seed by seed: a managed arm's held-out episode cost against fixed, at success not lower.

For every seed run in both arms of one or more grid folders (``RESULTS/runs/{arm}/s{seed}/summary.json``), prints
the held-out success, episode cost and safe success of each arm, then over all seeds: the means, the cost ratio
managed / fixed (the ratio of the means) with a 95 % paired bootstrap interval over seeds, and the seeds where the
managed run's success is lower.

    python experiments/cost_cut.py experiments/results/safe_fetch_reach_v17_confirm \\
        experiments/results/safe_fetch_reach_v17b_confirm --managed reckless-rule --fixed reckless-fixed
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def heldout(run: Path, cell: str) -> tuple[float, float, float]:
    """Held-out success, episode cost and safe success of one run."""
    h = json.loads((run / "summary.json").read_text())["heldout"][cell]
    return h["success_rate"], h["mean_cost"], h["safe_success_rate"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--managed", default="reckless-rule")
    p.add_argument("--fixed", default="reckless-fixed")
    p.add_argument("--cell", default="deterministic/all")
    p.add_argument("--resamples", type=int, default=2000)
    args = p.parse_args(argv)
    rows = []
    for results in args.results:
        for run in sorted((results / "runs" / args.managed).glob("s*")):
            other = results / "runs" / args.fixed / run.name
            if (run / "summary.json").exists() and (other / "summary.json").exists():
                rows.append((results.name, run.name, heldout(other, args.cell), heldout(run, args.cell)))
    if not rows:
        raise SystemExit("no seed run in both arms")
    print(f"{'grid':34s} {'seed':5s} {'fixed success/cost/safe':>24s} {'managed success/cost/safe':>26s}")
    for grid, seed, f, m in rows:
        print(f"{grid:34s} {seed:5s} {f[0]:8.2f} {f[1]:6.2f} {f[2]:6.2f}   {m[0]:8.2f} {m[1]:6.2f} {m[2]:6.3f}")
    fixed = np.array([f for *_, f, _ in rows])
    managed = np.array([m for *_, m in rows])
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(rows), size=(args.resamples, len(rows)))
    ratios = managed[picks, 1].mean(axis=1) / fixed[picks, 1].mean(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    ratio = managed[:, 1].mean() / fixed[:, 1].mean()
    lower = [seed for (_, seed, f, m) in rows if m[0] < f[0]]
    print(
        f"means over {len(rows)} seeds: fixed {fixed.mean(axis=0).round(3).tolist()}, managed "
        f"{managed.mean(axis=0).round(3).tolist()} (success, cost, safe success)"
    )
    print(
        f"cost ratio managed / fixed {ratio:.2f} [{low:.2f}, {high:.2f}], i.e. {ratio - 1:+.0%} "
        f"[{low - 1:+.0%}, {high - 1:+.0%}]; success lower on {len(lower)} of {len(rows)}: {', '.join(lower) or '-'}"
    )


if __name__ == "__main__":
    main()

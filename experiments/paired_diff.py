"""Paired differences between a grid's arms, seed by seed, on the held-out score.

For each start (recipe) the managed arm ``{start}-{arm}`` is compared with every ``{start}-{other}``:
the mean difference over seeds with its 95% bootstrap CI (``rl_manager.compare._ci``) and how many seeds
are at least as high. Arms are the run folders ``RESULTS/runs/{start}-{arm}/s{seed}/summary.json``.

    python experiments/paired_diff.py experiments/results/paper_reacher_v13 --arm rule \\
        --others fixed kladaptive lagrangian keepbest
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rl_manager.compare import _ci


def heldout_score(run: Path, cell: str, metric: str | None = None) -> float:
    """``metric`` of one run's held-out ``cell`` (default: the safe success rate, else the success rate)."""
    h = json.loads((run / "summary.json").read_text())["heldout"][cell]
    if metric is not None:
        return h[metric]
    return h["safe_success_rate"] if h.get("safe_success_rate") is not None else h["success_rate"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="grid folders (several: their seeds pooled)")
    p.add_argument("--arm", default="rule")
    p.add_argument("--others", nargs="+", default=["fixed", "kladaptive"])
    p.add_argument("--starts", nargs="+", default=["tuned", "conservative", "reckless"])
    p.add_argument("--cell", default="deterministic/all")
    p.add_argument("--metric", default=None, help="a held-out key (success_rate, mean_cost, ...); default the score")
    args = p.parse_args(argv)
    for start in args.starts:
        for other in args.others:
            pairs = [  # (mine, theirs) run folders of one seed
                (d, runs / f"{start}-{other}" / d.name)
                for runs in (r / "runs" for r in args.results)
                for d in sorted((runs / f"{start}-{args.arm}").glob("s*"))
                if d.is_dir() and (runs / f"{start}-{other}" / d.name / "summary.json").exists()
            ]
            if not pairs:
                continue
            diff = np.array(
                [heldout_score(a, args.cell, args.metric) - heldout_score(b, args.cell, args.metric) for a, b in pairs]
            )
            point, low, high = _ci(diff, np.mean)
            print(
                f"{start:13s} {args.arm} - {other:11s} {point:+.3f} [{low:+.3f}, {high:+.3f}]  "
                f"{int((diff >= 0).sum())} of {len(diff)} >=, {int((diff < 0).sum())} lower, "
                f"{int((diff > 0).sum())} higher  ({', '.join(a.name for a, _ in pairs)})"
            )


if __name__ == "__main__":
    main()

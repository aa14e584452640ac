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


def heldout_score(run: Path, cell: str) -> float:
    """The safe success rate (else the success rate) of one run's held-out ``cell``."""
    h = json.loads((run / "summary.json").read_text())["heldout"][cell]
    return h["safe_success_rate"] if h.get("safe_success_rate") is not None else h["success_rate"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--arm", default="rule")
    p.add_argument("--others", nargs="+", default=["fixed", "kladaptive"])
    p.add_argument("--starts", nargs="+", default=["tuned", "conservative", "reckless"])
    p.add_argument("--cell", default="deterministic/all")
    args = p.parse_args(argv)
    runs = args.results / "runs"
    for start in args.starts:
        mine = runs / f"{start}-{args.arm}"
        for other in args.others:
            theirs = runs / f"{start}-{other}"
            paired = [d for d in mine.glob("s*") if d.is_dir() and (theirs / d.name / "summary.json").exists()]
            seeds = sorted(d.name for d in paired)
            if not seeds:
                continue
            diff = np.array([heldout_score(mine / s, args.cell) - heldout_score(theirs / s, args.cell) for s in seeds])
            point, low, high = _ci(diff, np.mean)
            print(
                f"{start:13s} {args.arm} - {other:11s} {point:+.3f} [{low:+.3f}, {high:+.3f}]  "
                f"{int((diff >= 0).sum())} of {len(diff)} >=  ({', '.join(seeds)})"
            )


if __name__ == "__main__":
    main()

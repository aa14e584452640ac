"""The arms of a branched Fetch cost-knob grid side by side, from their stored logs (no held-out needed).

Each arm folder holds ``audit.jsonl.gz`` (every evaluation boundary: its snapshot, decision and knobs) and
``monitor.csv.gz`` (every training episode, its env index in column ``env``, each env's rows in order). Prints the
evaluation curve of each arm, its training episodes in windows of env steps, and the decisions that moved a knob.
A Fetch episode is 50 steps long, so an env's ``i``-th episode ends at env step ``(i + 1) * 50 * n_envs``.

    python experiments/fetch_costknob_report.py experiments/results/fetch_pick_costknob --arms fixed rule pen1 \\
        --seed 240 --from-step 200000
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pandas as pd

EPISODE_STEPS = 50


def evaluations(arm: Path) -> pd.DataFrame:
    """One row per evaluation boundary: success, safe success, episode cost, and the knobs after the decision."""
    rows = []
    with gzip.open(arm / "audit.jsonl.gz", "rt") as f:
        for record in map(json.loads, f):
            if record.get("snapshot"):
                e = record["snapshot"]["evaluation"]
                rows.append(
                    dict(
                        step=record["step"],
                        success=e["success_rate"],
                        safe=e["safe_success_rate"],
                        cost=e["mean_cost"],
                        applied=record["applied"],
                        reason=(record["decision"] or {}).get("reason", ""),
                        **record["knobs_after"],
                    )
                )
    return pd.DataFrame(rows)


def training_windows(arm: Path, n_envs: int, window: int, from_step: int) -> pd.DataFrame:
    """Training-episode success, episode cost and safe success (success at zero cost) per window of env steps."""
    m = pd.read_csv(arm / "monitor.csv.gz")
    m["step"] = (m.groupby("env").cumcount() + 1) * EPISODE_STEPS * n_envs
    m = m[m.step > from_step].copy()
    m["window"] = from_step + ((m.step - from_step - 1) // window + 1) * window
    m["safe"] = (m.is_success > 0) & (m.episode_cost == 0)
    return m.groupby("window").agg(
        n=("step", "size"), success=("is_success", "mean"), cost=("episode_cost", "mean"), safe=("safe", "mean")
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--arms", nargs="+", required=True)
    p.add_argument("--seed", required=True, help="the folders' suffix after _s: a seed, or e.g. 240_480")
    p.add_argument("--from-step", type=int, default=0, help="the branch point: earlier steps are the shared trunk")
    p.add_argument("--window", type=int, default=20000)
    p.add_argument("--n-envs", type=int, default=16)
    args = p.parse_args(argv)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 120)
    for name in args.arms:
        arm = args.results / f"{name}_s{args.seed}"
        ev = evaluations(arm)
        print(f"== {name}: evaluations (deterministic; the same scenes in every arm at a boundary)")
        print(
            ev[ev.step >= args.from_step]
            .drop(columns=["reason", "applied"])
            .to_string(index=False, float_format="%.3g")
        )
        print(f"-- {name}: training episodes per {args.window} env steps")
        print(training_windows(arm, args.n_envs, args.window, args.from_step).to_string(float_format="%.3f"))
        moves = ev[ev.applied]
        if len(moves):
            print(f"-- {name}: decisions applied")
            print(moves[["step", "reason"]].to_string(index=False))


if __name__ == "__main__":
    main()

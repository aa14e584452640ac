"""The arms of a branched Fetch cost-knob grid side by side, from their stored logs (no held-out needed).

Each arm folder holds ``audit.jsonl.gz`` (every evaluation boundary: its snapshot, decision and knobs) and
``monitor.csv.gz`` (every training episode; see :func:`read_monitor`). Prints the evaluation curve of each arm, its
training episodes in windows of env steps, the decisions that moved a knob, and each arm's tail (its last ``--last``
evaluations and training windows, a reading that one final checkpoint's draw does not decide); ``--plot PNG`` draws
the evaluation success and cost of the arms, each applied move marked.

    python experiments/fetch_costknob_report.py experiments/results/fetch_pick_costknob --arms fixed rule pen1 \\
        --seed 240 --from-step 200000
    python experiments/fetch_costknob_report.py experiments/results/fetch_pick_costknob/forked_s259 \\
        --arms fixed rule --from-step 340000 --plot experiments/results/fetch_pick_costknob/forked_s259.png
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from pathlib import Path

import pandas as pd

from rl_manager.demo import interventions

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


def read_monitor(path: Path) -> pd.DataFrame:
    """Training episodes from any of the three recorded monitor layouts, each with the env step it ended at.

    An ``env`` column (each env's rows in order), no ``env`` column (rows in time order), or the workers' own files
    concatenated, each after its ``# N.monitor.csv`` line. A Fetch episode is 50 steps long, so an env's ``i``-th
    episode ends at env step ``(i + 1) * 50 * n_envs``.
    """
    with gzip.open(path, "rt") as f:
        text = f.read()
    if text.startswith("# "):
        frames = [
            pd.read_csv(io.StringIO(block.split("\n", 2)[2])).assign(env=i)
            for i, block in enumerate(text.split("\n# "))
        ]
        m = pd.concat(frames, ignore_index=True)
    else:
        m = pd.read_csv(io.StringIO(text))
    if "env" in m:
        m["step"] = (m.groupby("env").cumcount() + 1) * EPISODE_STEPS * m.env.nunique()
    else:
        m = m.sort_values("t")
        m["step"] = m.l.cumsum()
    return m


def training_windows(arm: Path, window: int, from_step: int) -> pd.DataFrame:
    """Training-episode success, episode cost and safe success (success at zero cost) per window of env steps."""
    m = read_monitor(arm / "monitor.csv.gz")
    m = m[m.step > from_step].copy()
    m["window"] = from_step + ((m.step - from_step - 1) // window + 1) * window
    m["safe"] = (m.is_success > 0) & (m.episode_cost == 0)
    return m.groupby("window").agg(
        n=("step", "size"), success=("is_success", "mean"), cost=("episode_cost", "mean"), safe=("safe", "mean")
    )


def tail(ev: pd.DataFrame, windows: pd.DataFrame, last: int) -> dict[str, float]:
    """An arm's last ``last`` evaluations (mean success and cost, the cost's range, the final cost) and training
    windows (mean success and cost)."""
    e, w = ev.tail(last), windows.tail(last)
    return dict(
        eval_success=e.success.mean(),
        eval_cost=e.cost.mean(),
        eval_cost_min=e.cost.min(),
        eval_cost_max=e.cost.max(),
        final_eval_cost=e.cost.iloc[-1],
        train_success=w.success.mean(),
        train_cost=w.cost.mean(),
    )


def plot(arms: dict[str, Path], curves: dict[str, pd.DataFrame], path: Path) -> None:
    """Evaluation success and episode cost of every arm (``curves``: its :func:`evaluations`) over env steps, each
    arm's applied decisions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, ev in curves.items():
        line = top.plot(ev.step, ev.success, marker=".", label=name)[0]
        bottom.plot(ev.step, ev.cost, marker=".", color=line.get_color())
        for step, label in interventions(arms[name]):
            for ax in (top, bottom):
                ax.axvline(step, color=line.get_color(), ls=":", lw=1)
            top.annotate(label, (step, 0.02), rotation=90, fontsize=7, va="bottom", ha="right")
    top.set_ylabel("evaluation success")
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="center left", fontsize=8)
    bottom.set_ylabel("evaluation episode cost")
    bottom.set_xlabel("env steps (dotted: an applied move)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--arms", nargs="+", required=True)
    p.add_argument("--seed", help="the folders' suffix after _s: a seed, or e.g. 240_480 (none: the arms' own names)")
    p.add_argument("--from-step", type=int, default=0, help="the branch point: earlier steps are the shared trunk")
    p.add_argument("--window", type=int, default=20000)
    p.add_argument("--last", type=int, default=5, help="evaluations and training windows in each arm's tail")
    p.add_argument("--plot", type=Path, help="write the arms' evaluation curves to this PNG")
    args = p.parse_args(argv)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 120)
    arms = {name: args.results / (f"{name}_s{args.seed}" if args.seed else name) for name in args.arms}
    curves = {name: evaluations(arm) for name, arm in arms.items()}
    tails: dict[str, dict[str, float]] = {}
    for name, arm in arms.items():
        ev = curves[name]
        print(f"== {name}: evaluations (deterministic; the same scenes in every arm at a boundary)")
        print(
            ev[ev.step >= args.from_step]
            .drop(columns=["reason", "applied"])
            .to_string(index=False, float_format="%.3g")
        )
        windows = training_windows(arm, args.window, args.from_step)
        print(f"-- {name}: training episodes per {args.window} env steps")
        print(windows.to_string(float_format="%.3f"))
        applied = ev[ev.applied]
        if len(applied):
            print(f"-- {name}: decisions applied")
            print(applied[["step", "reason"]].to_string(index=False))
        tails[name] = tail(ev, windows, args.last)
    print(f"== the tail: each arm's last {args.last} evaluations and training windows of {args.window} env steps")
    print(pd.DataFrame(tails).T.to_string(float_format="%.3f"))
    if args.plot:
        plot(arms, curves, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()

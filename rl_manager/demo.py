"""``python -m rl_manager.demo``: what the manager does, in a few minutes on a 2-core laptop.

Trains the paper's *conservative* PPO recipe (an actor learning rate 10× below the tuned one, a tight
clip, a collision penalty 10× the success bonus) on ``rl_manager/PaperReacher-v0`` twice, side by side,
on the same seed and the same evaluation scenes: once left alone (``--manager none``) and once
supervised by the rule manager. Each run is an ordinary ``python -m rl_manager.train`` process with its
own run folder (audit log included). At the end it prints held-out safe success, collisions and
interventions of both, and saves a plot of the evaluation score with the manager's interventions marked.

::

    python -m rl_manager.demo                    # ~2-4 minutes on 2 CPU cores
    python -m rl_manager.audit show runs/demo/managed   # every decision, with its reasons
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rl_manager.audit import read_audit

#: the two arms: name -> manager
ARMS = {"fixed": "none", "managed": "rule"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl_manager.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder of the two runs and the plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "-n", "--n-timesteps", type=int, default=409_600, help="env steps per run (the paper's budget is 1,024,000)"
    )
    p.add_argument("--eval-freq", type=int, default=20_480, help="env steps between decisions (the paper's interval)")
    p.add_argument("--heldout-episodes", type=int, default=100, help="held-out episodes per difficulty")
    return p.parse_args(argv)


def train_command(manager: str, run_dir: Path, args: argparse.Namespace) -> list[str]:
    """The ``rl_manager.train`` command line of one arm."""
    return [
        sys.executable,
        "-m",
        "rl_manager.train",
        "--env",
        "PaperReacher",
        "--algo",
        "ppo",
        "--recipe",
        "conservative",
        "--manager",
        manager,
        "--seed",
        str(args.seed),
        "-n",
        str(args.n_timesteps),
        "--eval-freq",
        str(args.eval_freq),
        "--heldout-episodes",
        str(args.heldout_episodes),
        "--run-dir",
        str(run_dir),
        "-v",
        "0",
    ]


def last_step(run_dir: Path) -> int:
    """Env steps of the latest decision written to the run's audit log (0 before the first)."""
    path = run_dir / "audit.jsonl"
    if not path.exists():
        return 0
    for line in reversed(path.read_bytes().splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):  # a line being written
            continue
    return 0


def run_arms(args: argparse.Namespace) -> dict[str, Path]:
    """Run both arms in parallel (one thread each) with a progress bar; raise if one fails."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dirs = {arm: args.out / arm for arm in ARMS}
    procs: dict[str, subprocess.Popen] = {}
    with Progress(
        TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        tasks = {arm: progress.add_task(arm, total=args.n_timesteps) for arm in ARMS}
        for arm, manager in ARMS.items():
            if (dirs[arm] / "config.yml").exists():  # this demo's own earlier run: start afresh
                shutil.rmtree(dirs[arm])
            dirs[arm].mkdir(parents=True, exist_ok=True)
            log = (args.out / f"{arm}.log").open("w")
            procs[arm] = subprocess.Popen(
                train_command(manager, dirs[arm], args), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            while any(p.poll() is None for p in procs.values()):
                for arm in ARMS:
                    progress.update(tasks[arm], completed=last_step(dirs[arm]))
                time.sleep(1.0)
        except KeyboardInterrupt:
            for p in procs.values():
                p.terminate()
            raise
        for arm in ARMS:
            progress.update(tasks[arm], completed=args.n_timesteps if procs[arm].returncode == 0 else None)
    failed = [arm for arm, p in procs.items() if p.returncode != 0]
    if failed:
        raise RuntimeError(f"the {', '.join(failed)} run failed: see {args.out}/{failed[0]}.log")
    return dirs


def summarize(run_dir: Path) -> dict[str, Any]:
    """Held-out deterministic safe success and collision rate, applied interventions, wall time."""
    summary = json.loads((run_dir / "summary.json").read_text())
    heldout = summary["heldout"]["deterministic/all"]
    return {
        "safe_success": heldout["safe_success_rate"],
        "collisions": heldout["violation_rate"],
        "episodes": heldout["n_episodes"],
        "interventions": summary["manager"]["applied"],
        "wall_time_s": summary["wall_time_s"],
    }


def interventions(run_dir: Path) -> list[tuple[int, str]]:
    """(step, label) of every applied decision of a run."""
    out = []
    for record in read_audit(run_dir):
        if record.kind != "decision" or not record.applied or record.decision is None:
            continue
        label = ", ".join(f"{c.knob} {c.before:.3g}→{c.after:.3g}" for c in record.changes)
        out.append((record.step, label or record.decision.action))
    return out


def plot(dirs: dict[str, Path], path: Path) -> Path | None:
    """Evaluation score of both arms over env steps, the managed run's interventions as markers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: install the 'plots' extra for matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for (arm, run_dir), color in zip(dirs.items(), ("tab:gray", "tab:blue"), strict=True):
        ev = np.load(run_dir / "evaluations.npz")
        ax.plot(ev["timesteps"], ev["scores"], color=color, marker=".", label=f"{arm} ({ARMS[arm]})")
    for i, (step, label) in enumerate(interventions(dirs["managed"])):
        ax.axvline(step, color="tab:orange", alpha=0.4, lw=1)
        ax.annotate(
            label, (step, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6, va="top", ha="right"
        )
        if i == 0:
            ax.plot([], [], color="tab:orange", label="intervention")
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation safe success (paired scenes)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("PaperReacher, the paper's conservative PPO recipe: fixed vs managed")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"Training the paper's conservative PPO recipe on PaperReacher twice ({args.n_timesteps:,} steps, "
        f"seed {args.seed}): left alone, and supervised by the rule manager."
    )
    dirs = run_arms(args)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out, deterministic policy ({args.heldout_episodes} episodes per difficulty)")
    for column in ("run", "safe success", "collisions", "interventions", "wall time"):
        table.add_column(column, justify="right")
    for arm, run_dir in dirs.items():
        s = summarize(run_dir)
        table.add_row(
            f"{arm} ({ARMS[arm]})",
            f"{s['safe_success']:.3f}",
            f"{s['collisions']:.3f}",
            str(s["interventions"]),
            f"{s['wall_time_s']:.0f} s",
        )
    Console().print(table)
    png = plot(dirs, args.out / "demo.png")
    if png is not None:
        print(f"plot: {png}")
    print(f"every decision, with its reasons: python -m rl_manager.audit show {dirs['managed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

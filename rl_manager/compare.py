"""``python -m rl_manager.compare``: managed runs against baselines, over seeds, with rliable statistics.

A grid is a YAML file (or flags)::

    name: reacher_paper
    seeds: [0, 1, 2, 3, 4]          # the same seeds for every arm
    n_timesteps: 200000
    eval_freq: 10000
    eval_episodes: 20
    heldout_episodes: 50
    params: ["n_envs:16"]           # -params given to every arm
    arms:
      - {name: conservative-fixed, env: PlanarReacher, algo: ppo, recipe: conservative, manager: none}
      - {name: conservative-rule,  env: PlanarReacher, algo: ppo, recipe: conservative, manager: rule}

Each (arm, seed) runs ``python -m rl_manager.train`` in its own process (``--workers``, default one
per core, one torch thread each) into ``<out>/runs/<arm>/s<seed>``; ``--backend ray`` makes each run a
Ray task instead (:mod:`rl_manager.ray_backend`: a local instance, or a cluster with ``--address``).
Finished runs (with a ``summary.json``) are skipped; interrupted ones are resumed. The aggregation
uses rliable (extra ``plots``): IQM of the held-out score with 95% stratified-bootstrap CIs,
probability of improvement of each managed arm over the fixed arm of the same recipe, IQM
sample-efficiency curves, and mean episode cost / violation rate with bootstrap CIs. It writes
``REPORT.md`` and PNG plots (learning curves with intervention markers, cost curves, knob
trajectories). ``--plot-only`` rebuilds them from the run folders.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError

from rl_manager.audit import read_audit
from rl_manager.io import InputError, die_with_parent, load_data, validation_summary
from rl_manager.schema import StrictModel
from rl_manager.train import software_versions


class Arm(StrictModel):
    """One arm: env + algo + recipe + manager (+ extra ``-params`` and ``train`` flags)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    env: str
    algo: str | None = None
    recipe: str = "tuned"
    manager: str = "rule"
    params: list[str] = Field(default_factory=list)
    #: further ``rl_manager.train`` flags, e.g. ``[--decisions, async, --interim, rule]``
    args: list[str] = Field(default_factory=list)


class Grid(StrictModel):
    """Arms × seeds and the shared budget."""

    name: str = "comparison"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    n_timesteps: int = Field(ge=1)
    eval_freq: int | None = None
    eval_episodes: int = 10
    heldout_episodes: int = 30
    params: list[str] = Field(default_factory=list)
    arms: list[Arm] = Field(min_length=1)


def _train_args(grid: Grid, arm: Arm, seed: int, run_dir: Path) -> list[str]:
    if (run_dir / "config.yml").exists():
        return ["--resume", str(run_dir), "-v", "0"]
    args = ["--env", arm.env, "--recipe", arm.recipe, "--manager", arm.manager, "--seed", str(seed)]
    args += ["-n", str(grid.n_timesteps), "--eval-episodes", str(grid.eval_episodes)]
    args += ["--heldout-episodes", str(grid.heldout_episodes), "--run-dir", str(run_dir), "-v", "0"]
    if arm.algo:
        args += ["--algo", arm.algo]
    if grid.eval_freq:
        args += ["--eval-freq", str(grid.eval_freq)]
    args += arm.args
    params = grid.params + arm.params
    if params:
        args += ["-params", *params]
    return args


def run_one(grid: Grid, arm: Arm, seed: int, out: Path, kill_with_parent: bool = False) -> tuple[str, int, str]:
    """Run (or resume, or skip) one (arm, seed); returns (run id, exit status, status word).

    :param kill_with_parent: kill the training process when the calling process dies (Linux).
    """
    run_dir = out / "runs" / arm.name / f"s{seed}"
    rid = f"{arm.name}/s{seed}"
    if (run_dir / "summary.json").exists():
        return rid, 0, "skipped (done)"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = _train_args(grid, arm, seed, run_dir)
    log = run_dir.parent / f"s{seed}.log"
    with open(log, "a") as f:
        f.write(f"$ python -m rl_manager.train {shlex.join(args)}\n")
        f.flush()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import torch; torch.set_num_threads(1); from rl_manager.train import main; "
                "import sys; sys.exit(main(sys.argv[1:]))",
                *args,
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
            # a killed Ray worker leaves no orphan run writing into the folder the retried task resumes
            preexec_fn=die_with_parent(signal.SIGKILL) if kill_with_parent else None,
        )
    return rid, proc.returncode, "ok" if proc.returncode == 0 else f"failed (see {log})"


def run_grid(grid: Grid, out: Path, workers: int) -> list[tuple[str, int, str]]:
    """Run every (arm, seed) with ``workers`` processes; same seeds for every arm."""
    jobs = [(arm, seed) for seed in grid.seeds for arm in grid.arms]
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_one, grid, arm, seed, out) for arm, seed in jobs]
        for fut in concurrent.futures.as_completed(futures):
            rid, code, status = fut.result()
            print(f"{rid}: {status}", flush=True)
            results.append((rid, code, status))
    return results


# -------------------------------------------------------------------------------------- aggregation
def _score(metrics: dict[str, Any]) -> float:
    for key in ("safe_success_rate", "success_rate", "mean_return"):
        if metrics.get(key) is not None:
            return float(metrics[key])
    return float("nan")


def load_runs(grid: Grid, out: Path) -> dict[str, list[dict[str, Any]]]:
    """Finished runs per arm: held-out metrics, evaluation curves, interventions, knobs."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for arm in grid.arms:
        runs[arm.name] = []
        for seed in grid.seeds:
            run_dir = out / "runs" / arm.name / f"s{seed}"
            if not (run_dir / "summary.json").exists():
                continue
            summary = json.loads((run_dir / "summary.json").read_text())
            counts = summary.get("manager") or {}
            ev = np.load(run_dir / "evaluations.npz")
            records = [r for r in read_audit(run_dir) if r.kind == "decision"]
            runs[arm.name].append(
                {
                    "seed": seed,
                    "summary": summary,
                    "heldout": summary["heldout"],
                    "score": _score(summary["heldout"]["deterministic/all"]),
                    "cost": summary["heldout"]["deterministic/all"].get("mean_cost"),
                    "violation": summary["heldout"]["deterministic/all"].get("violation_rate"),
                    "timesteps": ev["timesteps"],
                    "scores": ev["scores"],
                    "costs": ev["costs"],
                    "interventions": [(r.step, r.decision.action if r.decision else "") for r in records if r.applied],
                    # changes the controller's probation undid, and the env steps trained under them (spent
                    # within the budget: a revert restores the weights, not the step count)
                    "reverts": int(counts.get("reverts", 0)),
                    "reverted_steps": int(counts.get("reverted_steps", 0)),
                    "knobs": [(r.step, r.knobs_after) for r in records],
                }
            )
    return runs


def bootstrap(score_dict: dict[str, Any], func, reps: int = 2000) -> tuple[dict, dict]:
    """rliable's stratified-bootstrap interval estimates, reproducible: bootstrap seed 0.

    rliable draws its resampling indices from NumPy's *global* generator (``StratifiedBootstrap`` ignores
    ``random_state`` there), so the same runs gave different CIs at every rebuild of a report. The global
    state is seeded for the call and restored after it.
    """
    from rliable import library as rly

    state = np.random.get_state()
    np.random.seed(0)
    try:
        return rly.get_interval_estimates(score_dict, func, reps=reps, random_state=np.random.RandomState(0))
    finally:
        np.random.set_state(state)


def _ci(values: np.ndarray, func, reps: int = 2000) -> tuple[float, float, float]:
    """Point estimate and 95% stratified-bootstrap CI of ``func`` over runs (rliable)."""
    values = np.asarray(values, dtype=float).reshape(-1, 1)
    values = values[np.isfinite(values[:, 0])]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    point, interval = bootstrap({"x": values}, lambda x: np.array([func(x)]), reps=reps)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def _fmt_ci(t: tuple[float, float, float]) -> str:
    if not np.isfinite(t[0]):
        return "n/a"
    return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"


def _curves(runs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Runs' curves truncated to a common length: (timesteps, values[runs, points])."""
    if not runs:
        return None
    n = min(len(r[key]) for r in runs)
    if n == 0:
        return None
    return runs[0]["timesteps"][:n], np.stack([np.asarray(r[key][:n], dtype=float) for r in runs])


def make_plots(grid: Grid, runs: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    """Learning curves (IQM + CI, intervention markers), cost curves and knob trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import metrics

    files = []
    # one distinct colour an arm: the default cycle (tab10) repeats after 10 arms
    cmap = plt.get_cmap("tab10" if len(grid.arms) <= 10 else "tab20")
    colors = [cmap(i % cmap.N) for i in range(len(grid.arms))]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, arm in enumerate(grid.arms):
        curves = _curves(runs[arm.name], "scores")
        if curves is None:
            continue
        steps, values = curves
        data = {arm.name: np.nan_to_num(values)[:, None, :]}
        point, interval = bootstrap(
            data, lambda x: np.array([metrics.aggregate_iqm(x[..., f]) for f in range(x.shape[-1])]), reps=500
        )
        color = colors[i]
        ax.plot(steps, point[arm.name], label=arm.name, color=color)
        ax.fill_between(steps, interval[arm.name][0], interval[arm.name][1], alpha=0.2, color=color)
        marks = [s for r in runs[arm.name] for s, _ in r["interventions"]]
        if marks:
            ax.plot(marks, np.full(len(marks), -0.03 - 0.02 * i), "|", color=color, markersize=8)
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation score (IQM, 95% CI); ticks: applied interventions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)
    files.append("learning_curves.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    for i, arm in enumerate(grid.arms):
        curves = _curves(runs[arm.name], "costs")
        if curves is None or not np.isfinite(curves[1]).any():
            continue
        steps, values = curves
        ax.plot(steps, np.nanmean(values, axis=0), label=arm.name, color=colors[i])
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean evaluation episode cost")
    if ax.lines:
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "cost_curves.png", dpi=110)
        files.append("cost_curves.png")
    plt.close(fig)

    managed = [a for a in grid.arms if a.manager != "none" and runs[a.name]]
    if managed:
        values: dict[str, set[float]] = {}
        for a in managed:
            for r in runs[a.name]:
                for _, knobs in r["knobs"]:
                    for k, v in knobs.items():
                        values.setdefault(k, set()).add(round(v, 12))
        names = sorted(k for k, vs in values.items() if len(vs) > 1)  # knobs the manager moved
    if managed and names:
        fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.0 * len(names)), sharex=True, squeeze=False)
        for ax, knob in zip(axes[:, 0], names, strict=True):
            for i, arm in enumerate(grid.arms):
                if arm not in managed:
                    continue
                for j, r in enumerate(runs[arm.name]):
                    pts = [(s, k[knob]) for s, k in r["knobs"] if knob in k]
                    if pts:
                        xs, ys = zip(*pts, strict=True)
                        label = arm.name if j == 0 else None
                        ax.step(xs, ys, where="post", color=colors[i], alpha=0.5, label=label)
            ax.set_ylabel(knob, fontsize=8)
            scale, kwargs = _knob_scale(values[knob])
            ax.set_yscale(scale, **kwargs)
        axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the data
        axes[-1, 0].set_xlabel("env steps")
        fig.tight_layout()
        fig.savefig(out / "knob_trajectories.png", dpi=110)
        plt.close(fig)
        files.append("knob_trajectories.png")
    return files


def _knob_scale(values: set[float]) -> tuple[str, dict[str, float]]:
    """The y scale of a knob's trajectories: log where its positive values span a decade or more
    (symlog, linear below the smallest positive value, when it also takes the value 0), else linear."""
    positive = [v for v in values if v > 0]
    if len(positive) < 2 or max(positive) < 10 * min(positive) or any(v < 0 for v in values):
        return "linear", {}
    if len(positive) < len(values):
        return "symlog", {"linthresh": min(positive)}
    return "log", {}


def _versions() -> str:
    versions = software_versions()
    python = versions.pop("python")
    return f"Python {python}; " + ", ".join(f"{name} {version}" for name, version in versions.items())


def write_report(grid: Grid, out: Path, command: str, keep_provenance: bool = False) -> Path:
    """Aggregate the finished runs into ``REPORT.md`` with plots.

    :param keep_provenance: keep the "Generated by" block of an existing report (``--plot-only``: the
        runs were made by the command written there, perhaps on another machine).
    """
    from rliable import metrics

    runs = load_runs(grid, out)
    iqm = metrics.aggregate_iqm
    lines = [f"# {grid.name}", "", "Generated by:", "", "```bash", command, "```", ""]
    kept = False
    old_report = out / "REPORT.md"
    if keep_provenance and old_report.exists():
        old = old_report.read_text()
        if "Generated by" in old and "\n## Held-out results" in old:
            block = old[old.index("Generated by") : old.index("\n## Held-out results")].rstrip("\n")
            if command not in block:
                block += f"\n\nReport rebuilt with:\n\n```bash\n{command}\n```"
            lines, kept = [f"# {grid.name}", "", block, ""], True
    lines += (
        []
        if kept
        else [
            f"Seeds: {grid.seeds} (the same for every arm). Budget: {grid.n_timesteps} env steps per run; "
            f"evaluation every {grid.eval_freq or 'budget/20'} steps on {grid.eval_episodes} episodes; "
            f"held-out evaluation on {grid.heldout_episodes} episodes with seeds the manager never saw.",
            "",
        ]
    )
    recorded = sorted({json.dumps(r["summary"].get("software"), sort_keys=True) for rs in runs.values() for r in rs})
    software = "; ".join(recorded) if recorded and recorded != ["null"] else _versions() + " (this machine)"
    lines += [] if kept else [f"Software (recorded by the runs): {software}", ""]
    lines += ["## Held-out results (deterministic policy)", ""]
    lines += [
        "Score = safe success rate where cost is measured, else success rate, else mean return. "
        "IQM and mean with 95% stratified-bootstrap CIs (rliable, 2000 resamples, fixed bootstrap seed 0).",
        "",
    ]
    lines += [
        "| arm | env | algo | recipe | manager | runs | score IQM [95% CI] | score mean | episode cost mean [CI] "
        "| violation rate mean | interventions / run | reverts / run (env steps undone) |",
        "|---" * 12 + "|",
    ]
    for arm in grid.arms:
        rs = runs[arm.name]
        scores = np.array([r["score"] for r in rs])
        costs = np.array([np.nan if r["cost"] is None else r["cost"] for r in rs])
        viol = [r["violation"] for r in rs if r["violation"] is not None]
        n_int = np.mean([len(r["interventions"]) for r in rs]) if rs else float("nan")
        reverts = np.mean([r["reverts"] for r in rs]) if rs else float("nan")
        undone = np.mean([r["reverted_steps"] for r in rs]) if rs else float("nan")
        lines.append(
            f"| {arm.name} | {arm.env} | {arm.algo or 'default'} | {arm.recipe} | {arm.manager} | {len(rs)} | "
            f"{_fmt_ci(_ci(scores, iqm)) if rs else 'n/a'} | {np.nanmean(scores) if rs else float('nan'):.3f} | "
            f"{_fmt_ci(_ci(costs, np.mean)) if rs else 'n/a'} | "
            f"{(np.mean(viol) if viol else float('nan')):.3f} | {n_int:.1f} | {reverts:.1f} ({undone:,.0f}) |"
        )
    lines.append("")
    pairs = []
    for arm in grid.arms:
        if arm.manager == "none":
            continue
        for base in grid.arms:
            if (
                base.manager == "none"
                and base.env == arm.env
                and base.algo == arm.algo
                and base.recipe == arm.recipe
                and runs[arm.name]
                and runs[base.name]
            ):
                pairs.append((arm, base))
    if pairs:
        lines += ["## Probability of improvement (managed over fixed, same recipe)", ""]
        lines += ["| managed | fixed | P(managed > fixed) [95% CI] |", "|---|---|---|"]
        for arm, base in pairs:
            x = np.array([r["score"] for r in runs[arm.name]]).reshape(-1, 1)
            y = np.array([r["score"] for r in runs[base.name]]).reshape(-1, 1)
            point, interval = bootstrap(
                {"p": (x, y)}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)])
            )
            low, high = interval["p"][0, 0], interval["p"][1, 0]
            lines.append(f"| {arm.name} | {base.name} | {point['p'][0]:.3f} [{low:.3f}, {high:.3f}] |")
        lines.append("")
    cells = sorted({k for rs in runs.values() for r in rs for k in r["heldout"]})
    if len(cells) > 2:
        lines += ["## Held-out matrix (mean over runs: safe success / success / violation rate)", ""]
        lines += ["| arm | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
        for arm in grid.arms:
            row = []
            for c in cells:
                ms = [r["heldout"][c] for r in runs[arm.name] if c in r["heldout"]]

                def avg(key: str, ms: list = ms) -> str:
                    vals = [m[key] for m in ms if m.get(key) is not None]
                    return f"{np.mean(vals):.2f}" if vals else "-"

                row.append(f"{avg('safe_success_rate')} / {avg('success_rate')} / {avg('violation_rate')}")
            lines.append(f"| {arm.name} | " + " | ".join(row) + " |")
        lines.append("")
    files = make_plots(grid, runs, out)
    lines += ["## Plots", ""] + [f"![{f}]({f})" for f in files] + [""]
    report = out / "REPORT.md"
    discussion = ""
    if report.exists():
        old = report.read_text()
        if "## Discussion" in old:
            discussion = old[old.index("## Discussion") :]
    report.write_text("\n".join(lines) + "\n" + (discussion or "## Discussion\n\n(to be written)\n"))
    (out / "grid.json").write_text(grid.model_dump_json(indent=2))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl_manager.compare", description=__doc__.splitlines()[0])
    p.add_argument("grid", nargs="?", help="grid YAML (or give --env/--recipes/--managers)")
    p.add_argument("-o", "--out", required=True, help="output folder (runs/, REPORT.md, plots)")
    p.add_argument("--env", default=None)
    p.add_argument("--algo", default=None)
    p.add_argument("--recipes", nargs="+", default=["tuned"])
    p.add_argument("--managers", nargs="+", default=["none", "rule"])
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("-n", "--n-timesteps", type=int, default=None)
    p.add_argument("--eval-freq", type=int, default=None)
    p.add_argument("--eval-episodes", type=int, default=None)
    p.add_argument("--heldout-episodes", type=int, default=None)
    p.add_argument("-params", "--hyperparams", nargs="+", default=None, metavar="KEY:VALUE")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel runs (default: one per core)")
    p.add_argument("--plot-only", action="store_true", help="rebuild REPORT.md and plots from the run folders")
    p.add_argument(
        "--backend", choices=("process", "ray"), default="process", help="local worker processes, or Ray tasks"
    )
    p.add_argument("--address", default=None, help="(ray) address of an existing cluster (default: start one here)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="(ray) GPUs reserved per run")
    return p.parse_args(argv)


def build_grid(args: argparse.Namespace) -> Grid:
    """The grid from the YAML file, with flags overriding its fields."""
    data: dict[str, Any] = dict(load_data(args.grid) or {}) if args.grid else {}
    if args.env:
        data["arms"] = [
            {"name": f"{r}-{m}", "env": args.env, "algo": args.algo, "recipe": r, "manager": m}
            for r in args.recipes
            for m in args.managers
        ]
        data.setdefault("name", f"{args.env} {' '.join(args.recipes)}")
    for key, value in (
        ("seeds", args.seeds),
        ("n_timesteps", args.n_timesteps),
        ("eval_freq", args.eval_freq),
        ("eval_episodes", args.eval_episodes),
        ("heldout_episodes", args.heldout_episodes),
        ("params", args.hyperparams),
    ):
        if value is not None:
            data[key] = value
    try:
        return Grid.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"invalid grid:\n{validation_summary(exc)}") from exc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        grid = build_grid(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m rl_manager.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    failed = 0
    if not args.plot_only:
        start = time.time()
        if args.backend == "ray":
            from rl_manager.ray_backend import run_grid_ray

            results = run_grid_ray(grid, out, address=args.address, num_gpus=args.gpus_per_run)
        else:
            results = run_grid(grid, out, args.workers)
        failed = sum(1 for _, code, _ in results if code != 0)
        print(f"{len(results)} runs, {failed} failed, {time.time() - start:.0f}s")
    try:
        report = write_report(grid, out, command, keep_provenance=args.plot_only)
    except ImportError as exc:
        print(f"error: the report needs the 'plots' extra (pip install -e '.[plots]'): {exc}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tables, targets and plot of the issue-15 grid (``grid.py``): per arm over the final seeds, the final and
best validation loss with IQM and 95% stratified-bootstrap CIs (rliable, 2000 resamples, bootstrap
seed 0), the sweep, the managed arms' interventions and the plot of validation loss per arm.

    python experiments/tinystories/summarize.py --grid experiments/results/tinystories_v2 \\
        --md experiments/results/tinystories_v2/summary.md --plot experiments/tinystories/val_loss.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

MARKERS = {"adjust": "o", "rollback_to_best": "v", "rollback_and_consolidate": "v", "revert": "x"}


def _ci(values: list[float]) -> tuple[float, float, float]:
    from rliable import metrics

    from rl_manager.compare import _ci as ci

    return ci(np.asarray(values, dtype=float), metrics.aggregate_iqm)


def _mean_ci(values: list[float]) -> tuple[float, float, float]:
    from rl_manager.compare import _ci as ci

    return ci(np.asarray(values, dtype=float), np.mean)


def fmt(t: tuple[float, float, float]) -> str:
    return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"


def load(grid: Path, arm: str, seeds: list[int]) -> list[dict[str, Any]]:
    runs = []
    for s in seeds:
        path = grid / f"{arm}_s{s}" / "result.json"
        if path.exists():
            runs.append(json.loads(path.read_text()))
    return runs


def describe(iv: dict[str, Any]) -> str:
    changes = ", ".join(f"{c['knob']} {c['before']:.3g}→{c['after']:.3g}" for c in iv["changes"])
    action = iv["action"].replace("rollback_and_consolidate", "rollback+").replace("rollback_to_best", "rollback")
    return f"{iv['step']}: {action}" + (f" ({changes})" if changes else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="final seeds to report (default: the grid's final seeds)"
    )
    p.add_argument("--dev-seeds", type=int, nargs="*", default=None, help="dev seeds to list (default: the grid's)")
    args = p.parse_args(argv)
    grid = Path(args.grid)
    meta = json.loads((grid / "grid.json").read_text())
    final, dev = meta["args"]["final_seeds"], meta["args"]["dev_seeds"]
    if args.seeds is not None:
        final = args.seeds
    if args.dev_seeds is not None:
        dev = args.dev_seeds
    managed, proposed = meta.get("managed"), meta.get("proposed")
    variants = meta["args"]["variants"]
    lines: list[str] = []
    out = lines.append

    # ------------------------------------------------------------------ arms over the final seeds
    arms: dict[str, dict[str, list[float]]] = {}
    runs_of: dict[str, list[dict[str, Any]]] = {}
    overfit = load(grid, "overfit", final)
    runs_of["overfit"] = overfit
    arms["overfit (fixed recipe)"] = {
        "final": [r["final_val_loss"] for r in overfit],
        "best": [r["best_val_loss"] for r in overfit],
        "seeds": [r["seed"] for r in overfit],
    }
    arms["early stopping (keep-best of overfit)"] = {
        "final": [r["best_val_loss"] for r in overfit],
        "best": [r["best_val_loss"] for r in overfit],
        "seeds": [r["seed"] for r in overfit],
    }
    tuned = load(grid, "tuned", final)
    runs_of["tuned"] = tuned
    if tuned:
        arms["tuned fixed recipe"] = {
            "final": [r["final_val_loss"] for r in tuned],
            "best": [r["best_val_loss"] for r in tuned],
            "seeds": [r["seed"] for r in tuned],
        }
    label_of = {}
    for v in variants:
        runs = load(grid, v, final)
        runs_of[v] = runs
        declared = meta["args"].get("report_proposed") == v
        how = "declared beforehand" if declared else "dev-selected"
        tag = " (reported managed arm)" if v == managed else (f" (proposed rule, {how})" if v == proposed else "")
        label_of[v] = f"{v}{tag}"
        arms[label_of[v]] = {
            "final": [r["final_val_loss"] for r in runs],
            "best": [r["best_val_loss"] for r in runs],
            "seeds": [r["seed"] for r in runs],
        }
    sweep_seeds = meta["args"].get("sweep_seeds", dev)
    chosen_how = (
        f"chosen on the dev seeds {dev}" if dev else "declared before the run (no dev seeds for the managed variants)"
    )
    if meta.get("tuned", {}).get("given"):
        tuned_args = " ".join(meta["tuned"]["args"])
        out(f"Final seeds {final}; tuned recipe given beforehand ({tuned_args}), no sweep in this grid.\n")
    else:
        out(f"Final seeds {final}; sweep seed(s) {sweep_seeds}; reported managed arm {chosen_how}.\n")
    skipped = []
    for j in meta["jobs"]:
        if j and "skipped" in j:
            a = j["skipped"]
            skipped.append(f"{a[a.index('--name') + 1]} seed {a[a.index('--seed') + 1]}")
    if skipped:
        out(f"Not run (the grid's time budget ran out before they started): {', '.join(skipped)}.\n")
    out(
        "| arm | final val loss, IQM [95% CI] | best val loss, IQM [95% CI] | final, mean | best, mean "
        "| per seed final / best |"
    )
    out("|---|---|---|---|---|---|")
    stats: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, a in arms.items():
        if not a["final"]:
            continue
        stats[name] = {"final": _ci(a["final"]), "best": _ci(a["best"])}
        per = "; ".join(f"{s}: {f:.3f} / {b:.3f}" for s, f, b in zip(a["seeds"], a["final"], a["best"], strict=True))
        out(
            f"| {name} | {fmt(stats[name]['final'])} | {fmt(stats[name]['best'])} | {np.mean(a['final']):.3f} | "
            f"{np.mean(a['best']):.3f} | {per} |"
        )

    # ------------------------------------------------------------------ targets
    def targets(v: str) -> None:
        name = label_of[v]
        if name not in stats or "tuned fixed recipe" not in stats:
            return
        m, o = arms[name], arms["overfit (fixed recipe)"]
        es, tu = arms["early stopping (keep-best of overfit)"], arms["tuned fixed recipe"]
        red_final = 1 - stats[name]["final"][0] / stats["overfit (fixed recipe)"]["final"][0]
        red_best = 1 - stats[name]["best"][0] / stats["early stopping (keep-best of overfit)"]["best"][0]
        gap_tuned = stats[name]["best"][0] / stats["tuned fixed recipe"]["best"][0] - 1
        pair = dict(zip(o["seeds"], o["final"], strict=True))
        pair_es = dict(zip(es["seeds"], es["best"], strict=True))
        pair_tu = dict(zip(tu["seeds"], tu["best"], strict=True))
        seeds = m["seeds"]
        per_final = [1 - f / pair[s] for s, f in zip(seeds, m["final"], strict=True) if s in pair]
        per_best = [1 - b / pair_es[s] for s, b in zip(seeds, m["best"], strict=True) if s in pair_es]
        per_tuned = [b / pair_tu[s] - 1 for s, b in zip(seeds, m["best"], strict=True) if s in pair_tu]
        out(f"\n**Targets, {name}** (IQM ratios; per seed in brackets):\n")
        out("| target | measured | met |")
        out("|---|---|---|")
        out(
            f"| final val loss ≥ 60% below the overfitting recipe's final | {100 * red_final:.1f}% "
            f"[{', '.join(f'{100 * x:.1f}' for x in per_final)}] | {'yes' if red_final >= 0.60 else 'no'} |"
        )
        out(
            f"| best val loss ≥ 3% below early stopping's best | {100 * red_best:.2f}% "
            f"[{', '.join(f'{100 * x:.2f}' for x in per_best)}] | {'yes' if red_best >= 0.03 else 'no'} |"
        )
        out(
            f"| best val loss within 5% of the tuned recipe's best | {100 * gap_tuned:+.2f}% "
            f"[{', '.join(f'{100 * x:+.2f}' for x in per_tuned)}] | {'yes' if gap_tuned <= 0.05 else 'no'} |"
        )

    for v in [managed, proposed, *(v for v in variants if v not in (managed, proposed))]:
        if v and runs_of.get(v):
            targets(v)

    # ------------------------------------------------------------------ sweep and dev selection
    if meta.get("sweep"):
        out(
            f"\n**Sweep of the tuned fixed recipe** (dev seeds {sweep_seeds}, same step budget; "
            "best val loss, lowest first):\n"
        )
        out("| config | best val loss per sweep seed (step) | mean best | final val loss per sweep seed |")
        out("|---|---|---|---|")
        for row in meta["sweep"]:
            runs = load(grid, row["name"], sweep_seeds)
            vals = ", ".join(f"{r['best_val_loss']:.3f} ({r['best_step']})" for r in runs)
            finals = ", ".join(f"{r['final_val_loss']:.3f}" for r in runs)
            out(f"| {row['name']} | {vals} | {row['mean']:.3f} | {finals} |")
        if meta.get("tuned"):
            out(f"\nChosen: `{meta['tuned']['name']}` ({' '.join(meta['tuned']['args'])}).")
    if meta.get("dev_managed_mean_best"):
        out(f"\n**Managed variants on the dev seeds {dev}** (mean best val loss; selection of the reported arm):\n")
        out("| variant | mean best val loss (dev) |")
        out("|---|---|")
        for v, x in sorted(meta["dev_managed_mean_best"].items(), key=lambda t: t[1]):
            out(f"| {v} | {x:.4f} |")
    if managed:
        out(f"\nReported managed arm (library rule manager): `{managed}`; proposed rule: `{proposed}`.")
    else:
        out(f"\nNo library-rule arm in this grid; proposed rule (declared beforehand): `{proposed}`.")

    # ------------------------------------------------------------------ dev runs (rule design, not the result)
    dev_rows = [r for arm in ["overfit", *variants] for r in load(grid, arm, dev)]
    if dev_rows:
        out(f"\n**Dev-seed runs {dev}** (used to write and check the rule; not part of the result):\n")
        out("| arm | seed | steps run | best (step) | last val loss | interventions (step: action) |")
        out("|---|---|---|---|---|---|")
        for r in dev_rows:
            ivs = "; ".join(describe(i) for i in r["interventions"]) or "-"
            out(
                f"| {r['arm']} | {r['seed']} | {r['steps']} | {r['best_val_loss']:.3f} ({r['best_step']}) | "
                f"{r['final_val_loss']:.3f} | {ivs} |"
            )

    # ------------------------------------------------------------------ interventions
    for v in variants:
        runs = runs_of.get(v) or []
        if not runs:
            continue
        out(f"\n**Interventions, {v}** (final seeds):\n")
        out("| seed | decisions | applied | rollbacks | reverts | best (step) | final | interventions (step: action) |")
        out("|---|---|---|---|---|---|---|---|")
        for r in runs:
            counts = r.get("manager_summary", {})
            reverts = sum(1 for i in r["interventions"] if i["action"] == "revert")
            ivs = "; ".join(describe(i) for i in r["interventions"]) or "-"
            out(
                f"| {r['seed']} | {counts.get('decisions', '?')} | {counts.get('applied', '?')} | "
                f"{counts.get('rollbacks', 0)} | {reverts} | {r['best_val_loss']:.3f} ({r['best_step']}) | "
                f"{r['final_val_loss']:.3f} | {ivs} |"
            )
    Path(args.md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(args.plot, runs_of, managed, proposed, arms)


def plot(path: str, runs_of: dict[str, list[dict[str, Any]]], managed: str | None, proposed: str | None, arms) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import metrics

    panels = [v for v in (managed, proposed) if v and runs_of.get(v)]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(6 * (1 + len(panels)), 4.6), sharey=True)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    colors = {"overfit": "tab:red", "tuned": "tab:green"}
    if managed:
        colors[managed] = "tab:blue"
    if proposed:
        colors[proposed] = "tab:purple"
    for arm, color in colors.items():
        runs = runs_of.get(arm) or []
        if not runs:
            continue
        n = min(len(r["curve"]) for r in runs)
        steps = [c["step"] for c in runs[0]["curve"][:n]]
        values = np.array([[c["val_loss"] for c in r["curve"][:n]] for r in runs])
        iqm = [metrics.aggregate_iqm(values[:, i]) for i in range(n)]
        ax.plot(steps, iqm, color=color, label=f"{arm} (IQM of {len(runs)} seeds)")
        ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.12)
        for r in runs:
            for iv in r["interventions"]:
                y = next((c["val_loss"] for c in r["curve"] if c["step"] >= iv["step"]), r["curve"][-1]["val_loss"])
                ax.plot([iv["step"]], [y], MARKERS.get(iv["action"], "s"), color=color, ms=4, alpha=0.6)
    es = arms.get("early stopping (keep-best of overfit)")
    if es and es["best"]:
        ax.axhline(
            metrics.aggregate_iqm(np.array(es["best"])),
            color="tab:red",
            ls="--",
            lw=1,
            label="early stopping (IQM best)",
        )
    ax.set_title("validation loss per arm (band: min-max over seeds)")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("validation cross-entropy (nats/token)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for ax, v in zip(axes[1:], panels, strict=True):
        for i, r in enumerate(runs_of[v]):
            c = f"C{i}"
            steps = [x["step"] for x in r["curve"]]
            ax.plot(steps, [x["val_loss"] for x in r["curve"]], color=c, label=f"seed {r['seed']}")
            ax.plot(steps, [x["train_loss"] for x in r["curve"]], color=c, ls=":", alpha=0.5)
            for iv in r["interventions"]:
                y = next((x["val_loss"] for x in r["curve"] if x["step"] >= iv["step"]), r["curve"][-1]["val_loss"])
                ax.plot([iv["step"]], [y], MARKERS.get(iv["action"], "s"), color=c, ms=6, mec="k")
        ax.set_title(f"{v}: val (solid), train (dotted); o adjust, v rollback, x revert", fontsize=8)
        ax.set_xlabel("optimisation step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(top=min(8.0, axes[0].get_ylim()[1]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()

"""Issue 17 item 3: one managed run vs PBT(4) and PB2(4) populations on PaperReacher (tables and plots).

    python experiments/population_report.py collect --pop-runs /tmp/pop_runs --single-runs /tmp/managed_runs \
        --commits KEY=SHA ...                  # copy the small result files into experiments/results/...
    python experiments/population_report.py report   # tables (markdown, printed and written) and plots
    python experiments/population_report.py --results experiments/results/population_paper_reacher_v2 report

``collect`` keeps, per population: ``summary.json`` (compact; checkpoint paths cut to their folder name),
``timeline.json`` (per member and Tune iteration: wall-clock timestamp, score, env steps; read from the
Ray trial folders) and ``time.txt`` (``/usr/bin/time -v`` of the whole command); per single run:
``summary.json``, ``evaluations.npz``, ``config.yml``, ``command.txt``, ``manager_state.json``,
``audit.jsonl.gz`` and ``time.txt``. Statistics: IQM / mean over seeds with 95% stratified-bootstrap CIs
(rliable, 2000 resamples, bootstrap seed 0) through :mod:`rl_manager.compare`'s helper.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "population_paper_reacher"
RECIPES = ("conservative", "reckless")
ARMS = ("fixed", "rule", "pbt4", "pb24")  # single runs, then populations
LABEL = {
    "fixed": "fixed recipe (1 run)",
    "rule": "rule manager (1 run)",
    "pbt4": "PBT(4), best member",
    "pb24": "PB2(4), best member",
}
EVAL_FREQ = 20_480


# ------------------------------------------------------------------------------------------- collect
def _time_file(path: Path) -> dict:
    """Elapsed wall and CPU seconds of a ``/usr/bin/time -v`` report."""
    text = path.read_text() if path.exists() else ""
    out = {}
    m = re.search(r"User time \(seconds\): ([\d.]+)", text)
    s = re.search(r"System time \(seconds\): ([\d.]+)", text)
    e = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m and s:
        out["cpu_s"] = round(float(m.group(1)) + float(s.group(1)), 1)
    if e:
        parts = [float(p) for p in e.group(1).split(":")]
        out["elapsed_s"] = round(sum(p * 60**i for i, p in enumerate(reversed(parts))), 1)
    return out


def collect(pop_runs: Path, single_runs: Path, commits: dict[str, str]) -> None:
    runs = RESULTS / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for src in sorted(pop_runs.glob("*_s*")):
        if not (src / "summary.json").exists():
            continue
        dst = runs / src.name
        dst.mkdir(exist_ok=True)
        summary = json.loads((src / "summary.json").read_text())
        for m in summary["members"]:
            m["checkpoint"] = (
                Path(m["checkpoint"]).parent.name + "/" + Path(m["checkpoint"]).name if m["checkpoint"] else None
            )
        summary["commit"] = commits.get("population")
        t = _time_file(src / "time.txt")
        # /usr/bin/time counts the driver only: Ray's workers are not its reaped children (see cpu.tsv.gz)
        summary["time"] = {"elapsed_s": t.get("elapsed_s"), "driver_cpu_s": t.get("cpu_s")}
        (dst / "summary.json").write_text(json.dumps(summary, separators=(",", ":")))
        timeline = {}
        for trial in sorted((src / summary["scheduler"]).glob("SB3Member_*")):
            rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
            timeline[trial.name] = [
                [
                    r["training_iteration"],
                    r["timestamp"],
                    round(r["time_this_iter_s"], 3),
                    r["score"],
                    r["env_steps"],
                    r["steps_trained"],
                ]
                for r in rows
            ]
        (dst / "timeline.json").write_text(
            json.dumps(
                {
                    "columns": [
                        "training_iteration",
                        "timestamp",
                        "time_this_iter_s",
                        "score",
                        "env_steps",
                        "steps_trained",
                    ],
                    "trials": timeline,
                },
                separators=(",", ":"),
            )
        )
        shutil.copy(src / "time.txt", dst / "time.txt")
    for src in sorted(single_runs.glob("*_s*")):
        if not src.is_dir() or not (src / "summary.json").exists():
            continue
        dst = runs / src.name
        dst.mkdir(exist_ok=True)
        summary = json.loads((src / "summary.json").read_text())
        summary["commit"] = commits.get(src.name.split("_")[0])
        summary["time"] = _time_file(single_runs / f"{src.name}.time.txt")
        (dst / "summary.json").write_text(json.dumps(summary, indent=1))
        for f in ("evaluations.npz", "config.yml", "command.txt", "manager_state.json"):
            if (src / f).exists():
                shutil.copy(src / f, dst / f)
        if (src / "audit.jsonl").exists():
            (dst / "audit.jsonl.gz").write_bytes(gzip.compress((src / "audit.jsonl").read_bytes(), mtime=0))
        shutil.copy(single_runs / f"{src.name}.time.txt", dst / "time.txt")


# -------------------------------------------------------------------------------------------- report
def load() -> dict[tuple[str, str], dict[int, dict]]:
    data: dict[tuple[str, str], dict[int, dict]] = {}
    for d in sorted((RESULTS / "runs").glob("*_s*")):
        arm, recipe, seed = re.fullmatch(r"(\w+?)_(\w+)_s(\d+)", d.name).groups()
        run = {"dir": d, "summary": json.loads((d / "summary.json").read_text())}
        if (d / "timeline.json").exists():
            run["timeline"] = json.loads((d / "timeline.json").read_text())["trials"]
        if (d / "evaluations.npz").exists():
            ev = np.load(d / "evaluations.npz")
            run["eval"] = {k: ev[k] for k in ev.files}
        data.setdefault((arm, recipe), {})[int(seed)] = run
    return data


def heldout(run: dict) -> dict:
    return run["summary"]["heldout"]["deterministic/all"]


def pop_curve(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per Tune iteration: population env steps so far, best member score, wall seconds since start."""
    # a resumed member repeats the iterations after its last checkpoint: keep the last row of each iteration
    trials = [sorted({row[0]: row for row in t}.values()) for t in run["timeline"].values()]
    n = min(len(t) for t in trials)
    scores = np.array([[t[i][3] for i in range(n)] for t in trials])
    stamps = np.array([[t[i][1] for i in range(n)] for t in trials])
    start = run["start"]
    steps = (np.arange(n) + 1) * EVAL_FREQ * len(trials)
    return steps, scores.max(axis=0), stamps.max(axis=0) - start


def lane_times() -> dict[str, dict[str, float]]:
    """Command start and end times of the populations (lane logs copied as ``lanes.log``)."""
    import datetime as dt

    times: dict[str, dict[str, float]] = {}
    log = RESULTS / "lanes.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        m = re.match(r"(\S+) (start|end) (\w+):(\w+):(\d+)(?: sid (\d+))?", line)
        if m and m.group(3) in ("pbt", "pb2"):
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
            entry = times.setdefault(f"{m.group(3)}4_{m.group(4)}_s{m.group(5)}", {})
            entry[m.group(2)] = t
            if m.group(6) and m.group(2) == "start":
                entry["sid"] = m.group(6)
    return times


def pop_cpu(name: str, start: float, end: float, sid: str | None = None) -> float:
    """CPU seconds of a population: the growth of its lane's process-session CPU (``cpu.tsv.gz``, written by
    ``population_cpu.py``) between the population's start and end; nan where the monitor was not running."""
    path = RESULTS / "cpu.tsv.gz"
    sids = json.loads((RESULTS / "cpu_sids.json").read_text()) if (RESULTS / "cpu_sids.json").exists() else {}
    if not path.exists():
        return float("nan")
    rows = np.array(
        [[float(x) for x in line.split()] for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    )
    if sid is not None:
        sids = {sid: [name]}
    for sid, names in sids.items():
        if name in names:
            r = rows[rows[:, 1] == float(sid)]
            if len(r) == 0 or r[0, 0] > start + 60:
                return float("nan")  # the monitor started well after this population
            # a monitor started within a minute of the population read the cumulative CPU of its processes
            before = np.interp(start, r[:, 0], r[:, 2]) if r[0, 0] < start else 0.0
            after = np.interp(end, r[:, 0], r[:, 2])
            return round(float(after - before), 1)
    return float("nan")


def report() -> str:
    from rliable import metrics

    from rl_manager.compare import _ci, _fmt_ci, bootstrap

    data = load()
    times = lane_times()
    for (arm, recipe), runs in data.items():
        for seed, run in runs.items():
            if "timeline" in run:
                name = f"{arm}_{recipe}_s{seed}"
                first = min(t[0][1] - t[0][2] for t in run["timeline"].values())
                run["start"] = times.get(name, {}).get("start", first)
                run["summary"]["time"]["cpu_s"] = float("nan")
                if "resumed" in run["summary"]:  # stalled ~35 min on a dead worker: no usable wall or CPU time
                    run["summary"]["time"]["elapsed_s"] = float("nan")
                elif "end" in times.get(name, {}):
                    run["summary"]["time"]["cpu_s"] = pop_cpu(
                        name, run["start"], times[name]["end"], times[name].get("sid")
                    )
    iqm = metrics.aggregate_iqm
    out = []
    for recipe in RECIPES:
        out += [f"### {recipe} start", ""]
        out += [
            "| arm | seeds | env steps / run | held-out safe success IQM [95% CI] | mean | collision rate IQM "
            "[95% CI] | mean | wall time / run, s (mean) | CPU time / run, s (mean) |",
            "|---" * 9 + "|",
        ]
        for arm in ARMS:
            runs = data.get((arm, recipe), {})
            if not runs:
                out.append(f"| {LABEL[arm]} | 0 | | not run | | | | | |")
                continue
            ss = np.array([heldout(r)["safe_success_rate"] for r in runs.values()])
            vr = np.array([heldout(r)["violation_rate"] for r in runs.values()])
            steps = [r["summary"].get("env_steps_total", r["summary"].get("timesteps")) for r in runs.values()]
            steps_txt = (
                f"{int(np.mean(steps)):,}"
                if min(steps) == max(steps)
                else (
                    f"{int(np.mean(steps)):,} (mean; {min(steps):,}–{max(steps):,}: the manager stopped at the target)"
                )
            )
            cpu = np.array([r["summary"]["time"].get("cpu_s", np.nan) for r in runs.values()], dtype=float)
            n_cpu = int(np.isfinite(cpu).sum())
            wall = [r["summary"]["time"].get("elapsed_s", np.nan) for r in runs.values()]
            cpu = [r["summary"]["time"].get("cpu_s", np.nan) for r in runs.values()]
            out.append(
                f"| {LABEL[arm]} | {len(runs)} ({','.join(map(str, sorted(runs)))}) | {steps_txt} | "
                f"{_fmt_ci(_ci(ss, iqm))} | {ss.mean():.3f} | {_fmt_ci(_ci(vr, iqm))} | {vr.mean():.3f} | "
                f"{np.nanmean(wall):.0f} | {np.nanmean(cpu):.0f}"
                + (f" ({n_cpu} of {len(runs)} measured)" if n_cpu < len(runs) else "")
                + " |"
            )
        out.append("")
        # per seed
        out += ["Per seed, held-out safe success / collision rate:", ""]
        seeds = sorted({s for arm in ARMS for s in data.get((arm, recipe), {})})
        out += ["| arm | " + " | ".join(f"s{s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
        for arm in ARMS:
            runs = data.get((arm, recipe), {})
            cells = [
                f"{heldout(runs[s])['safe_success_rate']:.3f} / {heldout(runs[s])['violation_rate']:.3f}"
                if s in runs
                else "-"
                for s in seeds
            ]
            out.append(f"| {LABEL[arm]} | " + " | ".join(cells) + " |")
        out.append("")
        # target and probability of improvement
        rule = data.get(("rule", recipe), {})
        for pop in ("pbt4", "pb24"):
            pruns = data.get((pop, recipe), {})
            common = sorted(set(rule) & set(pruns))
            if not common:
                continue
            x = np.array([heldout(rule[s])["safe_success_rate"] for s in common])
            y = np.array([heldout(pruns[s])["safe_success_rate"] for s in common])
            wins = int((x >= y).sum())
            point, interval = bootstrap(
                {"p": (x.reshape(-1, 1), y.reshape(-1, 1))},
                lambda a, b: np.array([metrics.probability_of_improvement(a, b)]),
            )
            d = x - y
            dci = _ci(d, np.mean)
            out.append(
                f"- rule vs {LABEL[pop]} on seeds {common}: IQM {iqm(x):.3f} vs {iqm(y):.3f}; rule ≥ population on "
                f"{wins}/{len(common)} seeds; mean paired difference {_fmt_ci(dci)}; P(rule > population) "
                f"{point['p'][0]:.3f} [{interval['p'][0, 0]:.3f}, {interval['p'][1, 0]:.3f}]; "
                "target (rule IQM ≥ population IQM at ¼ of the env steps): "
                f"**{'met' if iqm(x) >= iqm(y) else 'not met'}**"
            )
        out.append("")
        # equal env steps / equal wall time on the paired evaluation scenes
        out += [
            "Equal env steps and equal wall time (deterministic score on the 150 paired evaluation scenes, "
            "the scenes PBT selects on; mean over seeds; a population's score is its best member's):",
            "",
        ]
        out += [
            "| arm | at 1,024,000 env steps in total | at 4,096,000 | at the rule run's wall time | "
            "at the population's wall time |",
            "|---|---|---|---|---|",
        ]
        rule_wall = {s: r["summary"]["time"].get("elapsed_s") for s, r in rule.items()}
        for arm in ARMS:
            runs = data.get((arm, recipe), {})
            if not runs:
                continue
            if arm in ("fixed", "rule"):
                final = [float(r["eval"]["scores"][-1]) for r in runs.values()]
                used = [int(r["eval"]["timesteps"][-1]) for r in runs.values()]
                out.append(
                    f"| {LABEL[arm]} | {np.mean(final):.3f} (last evaluation; at {int(np.mean(used)):,} steps "
                    f"on average) | (budget 1,024,000) | "
                    f"{np.mean(final) if arm == 'rule' else float('nan'):.3f} | {np.mean(final):.3f} (finished) |"
                )
                continue
            at1, at4, atw = [], [], []
            for s, r in runs.items():
                steps, best, secs = pop_curve(r)
                k = np.searchsorted(steps, 1_024_000, side="right") - 1
                at1.append(best[k])
                at4.append(best[-1])
                if rule_wall.get(s) and "resumed" not in r["summary"]:
                    mask = secs <= rule_wall[s]
                    atw.append(best[mask].max() if mask.any() else 0.0)
            out.append(
                f"| {LABEL[arm]} | {np.mean(at1):.3f} (members at {int(steps[k] / 4):,} each) | "
                f"{np.mean(at4):.3f} | {np.mean(atw) if atw else float('nan'):.3f} | {np.mean(at4):.3f} |"
            )
        out.append("")
    text = "\n".join(out)
    (RESULTS / "tables.md").write_text(text + "\n")
    plots(data)
    return text


def _knob_rows(run: dict, arm: str) -> list[tuple[int, dict]]:
    if arm in ("pbt4", "pb24"):
        best = run["summary"]["members"][run["summary"]["best_member"]]
        return [(i * EVAL_FREQ, k) for i, (_, _, k) in enumerate(best["trajectory"], start=1)]
    from rl_manager.audit import read_audit

    return [(r.step, r.knobs_after) for r in read_audit(run["dir"]) if r.kind == "decision" and r.knobs_after]


def plots(data) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"fixed": "C7", "rule": "C0", "pbt4": "C3", "pb24": "C2"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), squeeze=False)
    for row, recipe in enumerate(RECIPES):
        for arm in ARMS:
            for j, (_, r) in enumerate(sorted(data.get((arm, recipe), {}).items())):
                lab = LABEL[arm] if j == 0 else None
                if "eval" in r:
                    t = r["eval"]["timesteps"]
                    axes[row, 0].plot(t, r["eval"]["scores"], color=colors[arm], alpha=0.6, lw=1, label=lab)
                    w = r["summary"]["time"].get("elapsed_s")
                    if w:
                        axes[row, 1].plot(
                            np.linspace(0, w, len(t) + 1)[1:],
                            r["eval"]["scores"],
                            color=colors[arm],
                            alpha=0.6,
                            lw=1,
                            label=lab,
                        )
                else:
                    steps, best, secs = pop_curve(r)
                    axes[row, 0].plot(steps, best, color=colors[arm], alpha=0.6, lw=1, label=lab)
                    if "resumed" not in r["summary"]:
                        axes[row, 1].plot(secs, best, color=colors[arm], alpha=0.6, lw=1, label=lab)
        axes[row, 0].set_xscale("log")
        axes[row, 1].set_xscale("log")
        axes[row, 0].set_title(f"{recipe}: score vs env steps used in total", fontsize=9)
        axes[row, 1].set_title(f"{recipe}: score vs wall time (this machine; single runs: linear in time)", fontsize=9)
        axes[row, 0].set_ylabel("paired-scene safe success (pop.: best member)", fontsize=8)
        axes[row, 0].set_xlabel("env steps (population: 4 members)")
        axes[row, 1].set_xlabel("seconds since start")
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "curves.png", dpi=100)
    plt.close(fig)

    knobs = [
        "learning_rate",
        "success_bonus",
        "collision_penalty",
        "action_std",
        "ent_coef",
        "clip_range",
        "critic_lr",
        "progress_scale",
    ]
    for recipe in RECIPES:
        fig, axes = plt.subplots(len(knobs), 1, figsize=(8, 1.6 * len(knobs)), sharex=True)
        for ax, knob in zip(axes, knobs, strict=True):
            for arm in ("rule", "pbt4", "pb24"):
                for j, (_, r) in enumerate(sorted(data.get((arm, recipe), {}).items())):
                    pts = [(s, k[knob]) for s, k in _knob_rows(r, arm) if knob in k]
                    if pts:
                        xs, ys = zip(*pts, strict=True)
                        ax.step(
                            xs,
                            ys,
                            where="post",
                            color=colors[arm],
                            alpha=0.5,
                            lw=1,
                            label=LABEL[arm] if j == 0 else None,
                        )
            ax.set_ylabel(knob, fontsize=7)
            if knob == "ent_coef":
                ax.set_yscale("symlog", linthresh=1e-4)
            elif knob != "clip_range":
                ax.set_yscale("log")
        axes[0].legend(fontsize=6)
        axes[0].set_title(f"{recipe}: knobs of the rule-managed run and of the populations' best members", fontsize=9)
        axes[-1].set_xlabel("env steps of the run / member")
        fig.tight_layout()
        fig.savefig(RESULTS / f"knobs_{recipe}.png", dpi=90)
        plt.close(fig)


def main() -> None:
    global RESULTS
    p = argparse.ArgumentParser()
    p.add_argument("--results", type=Path, default=RESULTS, help="the comparison's folder (default: %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--pop-runs", type=Path, required=True)
    c.add_argument("--single-runs", type=Path, required=True)
    c.add_argument("--commits", nargs="*", default=[], metavar="KEY=SHA", help="population=, rule=, fixed=")
    sub.add_parser("report")
    sub.add_parser("knobs")
    args = p.parse_args()
    RESULTS = args.results.resolve()
    if args.cmd == "collect":
        collect(args.pop_runs, args.single_runs, dict(kv.split("=", 1) for kv in args.commits))
    elif args.cmd == "knobs":
        print(knob_summary())
    else:
        print(report())


#: the knobs of the final-knob table, in column order
KNOB_NAMES = (
    "learning_rate",
    "critic_lr",
    "ent_coef",
    "clip_range",
    "action_std",
    "collision_penalty",
    "success_bonus",
    "progress_scale",
)


def knob_summary() -> str:
    """Final knobs (median over seeds) of the rule-managed runs and of the populations' best members, and
    two checks on the populations: configs outside the knob bounds, action std reset at restores."""
    data = load()
    bounds = {"action_std": 2.0, "collision_penalty": 100.0, "success_bonus": 50.0, "progress_scale": 50.0}
    out = [
        "| start | arm | " + " | ".join(KNOB_NAMES) + " |",
        "|---" * 10 + "|",
    ]
    checks = []
    for recipe in RECIPES:
        for arm in ("rule", "pbt4", "pb24"):
            finals = []
            for _, r in sorted(data.get((arm, recipe), {}).items()):
                rows = _knob_rows(r, arm)
                if rows:
                    finals.append(rows[-1][1])
            if not finals:
                continue
            out.append(
                f"| {recipe} | {LABEL[arm]} | "
                + " | ".join(f"{np.median([f[n] for f in finals if n in f]):.3g}" for n in KNOB_NAMES)
                + " |"
            )
        for arm in ("pbt4", "pb24"):
            over = total = resets = windows = 0
            for _, r in sorted(data.get((arm, recipe), {}).items()):
                for m in r["summary"]["members"]:
                    total += 1
                    over += any(m["config"].get(k, 0) > b * 1.0001 for k, b in bounds.items())
                    stds = [row[2]["action_std"] for row in m["trajectory"]]
                    per = r["summary"]["perturb_every"]
                    for i in range(per, len(stds), per):  # first evaluation after a restore
                        windows += 1
                        resets += abs(stds[i] - stds[i - per]) < 1e-3 and abs(stds[i - 1] - stds[i - per]) > 3e-3
            if total:
                checks.append(
                    f"{recipe} {dict(pbt4='PBT(4)', pb24='PB2(4)')[arm]}, all members: {over}/{total} members "
                    "end with a config value beyond a "
                    f"knob bound (written clamped); at {resets}/{windows} perturbation boundaries the action std, "
                    f"having drifted > 0.003 in training, is back within 0.001 of the previous window's start"
                )
    return "\n".join(out) + "\n\n" + "\n".join(f"- {c}" for c in checks)


if __name__ == "__main__":
    main()

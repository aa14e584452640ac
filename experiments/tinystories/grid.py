"""The 5-seed TinyStories grid of issue 15 in one command: many small runs in parallel on one device.

Arms (every run is ``train_lm.py train`` with the recipe's data split, model and step budget; a seed
fixes the initialisation and the batch order, the same in every arm):

- ``overfit``: the overfitting recipe (lr 3e-3, no weight decay, no dropout, no label smoothing).
- ``early_stop``: not a separate run: the ``overfit`` run's best evaluation (keep-best), computed by
  ``summarize.py``.
- ``tuned``: a fixed recipe chosen by a sweep over LR × dropout × weight decay on the sweep seed(s)
  (default 100, never a final seed; lowest mean best validation loss), then run on the final seeds.
- managed arms: ``TorchManager`` with the library rule manager under a few adapter settings (rollback
  margin, listed knob values), and the proposed rules of :mod:`rl_manager.managers.supervised_rule`; all on dev
  and final seeds. Which library-rule setting is the reported ``managed`` arm is decided on the dev seeds
  (lowest mean best validation loss), never on the final seeds.

Usage::

    python experiments/tinystories/grid.py --out runs/ts_grid --device cuda --workers 14 \\
        --data .tsdata/tinystories_2mib.txt

writes ``OUT/<arm>_s<seed>/result.json`` (and the managed runs' audit logs) and ``OUT/grid.json``
(the jobs, the sweep table, the selections and the time taken).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: the sweep of the tuned fixed recipe (dev seeds only)
SWEEP_LR = (5e-4, 1e-3, 3e-3)
SWEEP_DROPOUT = (0.0, 0.1, 0.3, 0.5)
SWEEP_WD = (0.0, 0.1, 1.0)

COARSE = ["--dropout-values", "0,0.1,0.2,0.3,0.5", "--wd-values", "0,0.1,0.3,1", "--ls-values", "0,0.1,0.2"]
#: the menu and gates of the v3/v4 candidates (and of ``llm_arm.py``): restart knob, rollback margin 0.02, coarse values
CANDIDATE_MENU = ["--restart-knob", "--rollback-margin", "0.02", *COARSE]
#: managed variants: name -> extra arguments of ``train_lm.py train --arm managed --sync``
MANAGED: dict[str, list[str]] = {
    "managed_default": [],  # library defaults: rollback margin 0.10, the library's listed values
    "managed_m02": ["--rollback-margin", "0.02"],
    "managed_m02_coarse": ["--rollback-margin", "0.02", *COARSE],
    "proposed_m02": ["--manager", "proposed", "--rollback-margin", "0.02"],
    "proposed_m02_coarse": ["--manager", "proposed", "--rollback-margin", "0.02", *COARSE],
    # tinystories_v3: early LR-too-high cut + bold regularisation at the overfitting onset (supervised_rule.py)
    "proposed_v3": ["--manager", "proposed_v3", *CANDIDATE_MENU],
    # tinystories_v4: v3 plus an LR annealing step at the onset and/or dropout with the plateau cut
    **{
        v: ["--manager", v, *CANDIDATE_MENU]
        for v in ("proposed_v4_anneal", "proposed_v4_plateaureg", "proposed_v4_both")
    },
}
#: the library-rule variants the reported ``managed`` arm is chosen from (on the dev seeds)
LIBRARY_VARIANTS = ("managed_default", "managed_m02", "managed_m02_coarse")
PROPOSED_VARIANTS = (
    "proposed_m02",
    "proposed_m02_coarse",
    "proposed_v3",
    "proposed_v4_anneal",
    "proposed_v4_plateaureg",
    "proposed_v4_both",
)


def sweep_name(lr: float, dropout: float, wd: float) -> str:
    return f"sweep_lr{lr:g}_do{dropout:g}_wd{wd:g}"


_DEADLINE = 0.0


def _init(deadline: float, threads: int) -> None:
    global _DEADLINE
    _DEADLINE = deadline
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parents[1]))
    import torch as th

    th.set_num_threads(threads)


def _run(argv: list[str]) -> dict[str, Any] | None:
    """One ``train_lm.py`` run in a worker process (skipped past the deadline)."""
    if time.time() > _DEADLINE:
        return {"skipped": argv}
    import train_lm

    t0 = time.time()
    try:
        train_lm.main(argv)
    except Exception as exc:  # one failed run must not end the grid
        return {"failed": argv, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": argv, "seconds": time.time() - t0}


def seed_major_jobs(args: argparse.Namespace, job) -> list[list[str]]:
    """``--seed-major``: the dev runs (``--dev-arms``), then every ``--final-arms`` arm of each final seed in turn."""

    def arm_job(arm: str, seed: int, *extra: str) -> list[str]:
        if arm == "overfit":
            return job("overfit", seed, *extra)
        if arm == "tuned":
            return job("tuned", seed, *args.tuned_args.split(), *extra)
        return job(arm, seed, *MANAGED[arm], *extra, kind="managed")

    halt = ["--halt-at", str(args.dev_halt_at)] if args.dev_halt_at else []
    dev_arms = args.dev_arms if args.dev_arms is not None else ["overfit", *args.variants]
    final_arms = args.final_arms
    if final_arms is None:
        final_arms = ["overfit", *(["tuned"] if args.tuned_args else []), *args.variants]
    jobs = [arm_job(a, s, *halt) for s in args.dev_seeds for a in dev_arms]
    return jobs + [arm_job(a, s) for s in args.final_seeds for a in final_arms]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dev-seeds", type=int, nargs="*", default=[100, 101], help="managed-variant selection seeds")
    p.add_argument("--sweep-seeds", type=int, nargs="+", default=[100], help="seeds of the tuned recipe's sweep")
    p.add_argument("--final-seeds", type=int, nargs="+", default=[10, 11, 12, 13, 14])
    p.add_argument("--budget-s", type=float, default=420, help="jobs not started by then are skipped")
    p.add_argument("--no-sweep", action="store_true", help="skip the sweep (and the tuned arm)")
    p.add_argument(
        "--report-managed", default=None, help="the reported managed arm, declared beforehand (no dev seeds)"
    )
    p.add_argument("--report-proposed", default=None, help="the reported proposed-rule arm, declared beforehand")
    p.add_argument("--sweep-lr", type=float, nargs="+", default=list(SWEEP_LR))
    p.add_argument("--sweep-dropout", type=float, nargs="+", default=list(SWEEP_DROPOUT))
    p.add_argument("--sweep-wd", type=float, nargs="+", default=list(SWEEP_WD))
    p.add_argument("--variants", nargs="*", default=list(MANAGED), help="managed variants to run")
    p.add_argument(
        "--tuned-args",
        default=None,
        help='the tuned arm\'s recipe given beforehand, e.g. "--lr 1e-3 --dropout 0.3 --weight-decay 0.1" (no sweep)',
    )
    p.add_argument(
        "--final-arms", nargs="*", default=None, help="arms run on the final seeds (default: overfit, tuned, variants)"
    )
    p.add_argument("--dev-arms", nargs="*", default=None, help="arms run on the dev seeds (default: overfit, variants)")
    p.add_argument("--dev-halt-at", type=int, default=None, help="dev runs end after this step (train_lm --halt-at)")
    p.add_argument(
        "--seed-major",
        action="store_true",
        help="queue the dev runs, then the final seeds one by one (every arm of a seed before the next seed), so "
        "that a time budget leaves whole seeds; needs --tuned-args or --no-sweep",
    )
    p.add_argument("extra", nargs="*", help="extra train_lm.py arguments for every run (after --)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    base = ["train", "--data", args.data, "--device", args.device, "--out", str(out), *args.extra]

    def job(arm: str, seed: int, *extra: str, kind: str = "fixed") -> list[str]:
        sync = ["--sync"] if kind == "managed" else []
        return [*base, "--arm", kind, "--name", arm, "--seed", str(seed), *sync, *extra]

    sweep = {}
    if args.seed_major and not (args.tuned_args or args.no_sweep):
        p.error("--seed-major needs --tuned-args or --no-sweep")
    if not args.no_sweep and not args.tuned_args:
        for lr, do, wd in itertools.product(args.sweep_lr, args.sweep_dropout, args.sweep_wd):
            sweep[sweep_name(lr, do, wd)] = ["--lr", f"{lr:g}", "--dropout", f"{do:g}", "--weight-decay", f"{wd:g}"]
    if args.seed_major:  # (no sweep: checked above) every job in one queue, seed by seed
        first, rest, last = seed_major_jobs(args, job), [], []
    else:
        first = [job(name, s, *a) for name, a in sweep.items() for s in args.sweep_seeds]
        # queued after the sweep: overfit and the managed variants on the dev seeds; the tuned arm is queued
        # once the sweep is done, before the managed variants on the final seeds (library variants first)
        rest = [job("overfit", s) for s in [*args.final_seeds, *args.dev_seeds]]
        rest += [job(v, s, *MANAGED[v], kind="managed") for s in args.dev_seeds for v in args.variants]
        last = [job(v, s, *MANAGED[v], kind="managed") for v in args.variants for s in args.final_seeds]
        if args.tuned_args:
            rest += [job("tuned", s, *args.tuned_args.split()) for s in args.final_seeds]
    ctx = get_context("spawn")
    log: dict[str, Any] = {"jobs": [], "started": start}
    if args.tuned_args:
        log["tuned"] = {"name": "tuned", "args": args.tuned_args.split(), "given": True}
    with ProcessPoolExecutor(
        args.workers, mp_context=ctx, initializer=_init, initargs=(start + args.budget_s, 1)
    ) as pool:
        futures: list[Future] = [pool.submit(_run, a) for a in first]
        sweep_futures = list(futures)
        futures += [pool.submit(_run, a) for a in rest]
        for f in sweep_futures:
            log["jobs"].append(f.result())
        if sweep:
            table = []
            for name in sweep:
                bests = []
                for s in args.sweep_seeds:
                    path = out / f"{name}_s{s}" / "result.json"
                    if path.exists():
                        bests.append(json.loads(path.read_text())["best_val_loss"])
                if len(bests) == len(args.sweep_seeds):
                    table.append(
                        {"name": name, "args": sweep[name], "dev_best_val": bests, "mean": statistics.fmean(bests)}
                    )
            table.sort(key=lambda r: r["mean"])
            log["sweep"] = table
            if table:
                chosen = table[0]
                log["tuned"] = chosen
                futures += [pool.submit(_run, job("tuned", s, *chosen["args"])) for s in args.final_seeds]
        futures += [pool.submit(_run, a) for a in last]
        for f in futures[len(sweep_futures) :]:
            log["jobs"].append(f.result())
    # the reported managed arm: the library-rule variant with the lowest mean best val on the dev seeds
    dev = {}
    for v in args.variants:
        vals = []
        for s in args.dev_seeds:
            path = out / f"{v}_s{s}" / "result.json"
            if path.exists():
                vals.append(json.loads(path.read_text())["best_val_loss"])
        if vals and len(vals) == len(args.dev_seeds):
            dev[v] = statistics.fmean(vals)
    log["dev_managed_mean_best"] = dev
    library = {v: x for v, x in dev.items() if v in LIBRARY_VARIANTS}
    proposed = {v: x for v, x in dev.items() if v in PROPOSED_VARIANTS}
    log["managed"] = args.report_managed or (min(library, key=library.get) if library else None)
    log["proposed"] = args.report_proposed or (min(proposed, key=proposed.get) if proposed else None)
    log["seconds"] = time.time() - start
    log["args"] = vars(args)
    log["device"] = args.device
    log["cpu_count"] = os.cpu_count()
    previous = out / "grid.json"
    if previous.exists():  # a later invocation on the same folder: keep the earlier ones' jobs and settings
        old = json.loads(previous.read_text())
        log["previous_invocations"] = [*old.pop("previous_invocations", []), old]
        log["jobs"] = [j for inv in log["previous_invocations"] for j in inv.get("jobs", [])] + log["jobs"]
        for key in ("tuned", "sweep"):
            if key not in log and key in old:
                log[key] = old[key]
    previous.write_text(json.dumps(log, indent=1))
    n_ok = sum(1 for j in log["jobs"] if j and "ok" in j)
    print(json.dumps({k: log[k] for k in ("managed", "proposed", "dev_managed_mean_best", "seconds")}))
    print(f"{n_ok}/{len(log['jobs'])} runs ok; tuned: {log.get('tuned', {}).get('name')}")


if __name__ == "__main__":
    main()

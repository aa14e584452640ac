"""Kill soak: ``SIGKILL`` real training runs at random moments, ``--resume`` each, check every invariant.

Runs of ``python -m rl_manager.train`` (PPO and SAC on ``rl_manager/PaperReacher-v0``, rule manager,
small networks) are killed ``--kills-per-run`` times each, at a delay drawn uniformly from
``[0.5, --max-delay]`` seconds after each launch (start-up, training, evaluation, checkpoint writes
and the final held-out evaluation are all hit), and resumed with ``--resume`` after each kill; the
last launch runs to the end. A kill before ``config.yml`` exists leaves nothing to resume: the
original command is run again (counted as ``before_config``). Then, for every run:

- it completed: exit 0, ``summary.json`` at the full budget;
- ``python -m rl_manager.audit verify`` reports 0 mismatches; ``seq`` is 0..n-1 with one run id;
- one ``resume`` record per resume, each naming the step it resumed from and the lost segment;
- the final knobs (``summary.json``) equal the audit's last ``knobs_after``, and every record starts
  from the knobs the one before it left (PPO's ``action_std`` is trained between boundaries: it is
  compared at the resume records only);
- no partial (temporary) file is left in the run folder.

Prints one JSON object (the figures in FAULTS.md) and writes it to ``--out``; exit 1 if any check fails::

    nice -n 10 python experiments/kill_soak.py --runs 2 --kills-per-run 6 --out /tmp/kill_soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: recipes of the soak (tiny networks; SAC has no packaged PaperReacher recipe)
RECIPES = {
    "ppo": {
        "policy": "MlpPolicy",
        "n_envs": 4,
        "n_steps": 128,
        "batch_size": 128,
        "n_epochs": 2,
        "learning_rate": 3.0e-4,
        "ent_coef": 0.01,
        "policy_kwargs": {"net_arch": [32, 32]},
        "targets": {"success_rate": 0.85, "max_violation_rate": 0.15},
    },
    "sac": {
        "policy": "MlpPolicy",
        "learning_starts": 200,
        "batch_size": 64,
        "buffer_size": 20000,
        "learning_rate": 1.0e-3,
        "policy_kwargs": {"net_arch": [32, 32]},
        "targets": {"success_rate": 0.85, "max_violation_rate": 0.15},
    },
}
BUDGET = {"ppo": 491_520, "sac": 60_000}
#: knobs the optimiser trains between boundaries: equal to the audit only where the audit reads them
TRAINED = ("action_std",)


def untrained(knobs: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in knobs.items() if k not in TRAINED}


def launch(args: list[str], log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RL_MANAGER_BASE_URL", None)
    cmd = [sys.executable, "-m", "rl_manager.train", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def soak_run(
    algo: str, run: Path, recipes: Path, seed: int, kills: int, max_delay: float, rng: random.Random, scale: float
):
    """Kill one run ``kills`` times, resuming it after each; return its record of events."""
    budget = int(BUDGET[algo] * scale) // 512 * 512
    start = ["--env", "PaperReacher", "--algo", algo, "--hyperparams-file", str(recipes), "--recipe", f"soak_{algo}"]
    start += ["-n", str(budget), "--eval-freq", str(budget // 12), "--eval-episodes", "3", "--heldout-episodes", "3"]
    start += ["--manager", "rule", "--seed", str(seed), "--run-dir", str(run), "-v", "0"]
    start += ["--save-freq", str(budget // 4), "--save-interval", "4"]
    events: list[dict[str, Any]] = []
    log = open(run.with_suffix(".log"), "ab")
    launches, wall = 0, time.monotonic()
    while True:
        args = ["--resume", str(run)] if (run / "config.yml").exists() else start
        proc = launch(args, log)
        launches += 1
        if len(events) >= kills:
            rc = proc.wait()
            break
        delay = rng.uniform(0.5, max_delay)
        try:
            rc = proc.wait(delay)
            break  # the run ended before its kill (fewer kills than asked: reported)
        except subprocess.TimeoutExpired:
            pass
        checkpoint, state = (run / "last_model.zip").exists(), (run / "manager_state.json").exists()
        records = (run / "audit.jsonl").read_bytes().count(b"\n") if (run / "audit.jsonl").exists() else 0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        events.append(
            {
                "launch": launches,
                "delay_s": round(delay, 2),
                "before_config": not (run / "config.yml").exists(),
                "had_checkpoint": checkpoint,
                "had_state": state,
                "audit_records": records,
                "partial_files": sorted(p.name for p in run.glob(".*partial*")) if run.exists() else [],
            }
        )
    log.close()
    return {"algo": algo, "run": str(run), "budget": budget, "rc": rc, "launches": launches, "kills": events,
            "wall_s": round(time.monotonic() - wall, 1)}  # fmt: skip


def check(result: dict[str, Any]) -> list[str]:
    """Every invariant of a finished, killed-and-resumed run; the problems found."""
    sys.path.insert(0, str(ROOT))
    from rl_manager.audit import read_audit

    run, problems = Path(result["run"]), []
    if result["rc"] != 0:
        return [f"exit code {result['rc']}"]
    summary = json.loads((run / "summary.json").read_text())
    if summary["timesteps"] != result["budget"]:
        problems.append(f"timesteps {summary['timesteps']} != budget {result['budget']}")
    verify = subprocess.run(
        [sys.executable, "-m", "rl_manager.audit", "verify", str(run)], capture_output=True, text=True, cwd=ROOT
    )
    result["verify"] = verify.stdout.strip().splitlines()[-1]
    if verify.returncode != 0:
        problems.append(f"audit verify: {verify.stdout.strip()}")
    records = read_audit(run)
    if [r.seq for r in records] != list(range(len(records))) or len({r.run_id for r in records}) != 1:
        problems.append("audit seq not contiguous or several run ids")
    resumes = [r for r in records if r.kind == "resume"]
    # a resume with a checkpoint or a manager state to continue from writes one record (none if it
    # was itself killed before the controller started; nothing to record without either)
    eligible = [k["had_checkpoint"] or k["had_state"] for k in result["kills"]]
    if len(resumes) > sum(eligible) or (eligible and eligible[-1] and not resumes):
        problems.append(f"{len(resumes)} resume records for {sum(eligible)} resumes with something to resume")
    final, audited = summary["manager"]["knobs_final"], records[-1].knobs_after
    if untrained(final) != untrained(audited):
        problems.append(f"final knobs {final} != last knobs_after {audited}")
    chain = [r for r in records if r.knobs_after]
    for prev, nxt in zip(chain[:-1], chain[1:], strict=True):
        if untrained(nxt.knobs_before) != untrained(prev.knobs_after):
            problems.append(f"knobs changed between records {prev.seq} and {nxt.seq} without a record")
    for r in resumes:
        if r.knobs_after != r.knobs_before and untrained(r.knobs_after) != untrained(r.knobs_before):
            problems.append(f"resume record {r.seq} did not restore the knobs")
    if list(run.glob(".*partial*")):
        problems.append(f"partial files left: {[p.name for p in run.glob('.*partial*')]}")
    result.update(
        records=len(records),
        decisions=sum(r.kind == "decision" for r in records),
        notes=sum(r.kind == "note" for r in records),
        abandoned=sum(r.kind == "abandoned" for r in records),
        resumed_from=[r.step for r in resumes],
        lost_steps=summary["manager"].get("lost_steps", 0),
        knobs_final=final,
    )
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["ppo", "sac"], choices=sorted(RECIPES))
    p.add_argument("--runs", type=int, default=2, help="runs per algorithm")
    p.add_argument("--kills-per-run", type=int, default=6)
    p.add_argument("--max-delay", type=float, default=15.0, help="latest kill, in seconds after a launch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the budgets (PPO 491,520, SAC 60,000 steps)")
    p.add_argument("--folder", default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("--out", default=None, help="write the figures (JSON) here")
    args = p.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="kill_soak_"))
    folder.mkdir(parents=True, exist_ok=True)
    import yaml

    recipes = folder / "recipes.yml"
    recipes.write_text(yaml.safe_dump({"PaperReacher": {f"soak_{a}": r for a, r in RECIPES.items()}}))
    rng, t0, results = random.Random(args.seed), time.monotonic(), []
    for algo in args.algos:
        for i in range(args.runs):
            run = folder / f"{algo}_{i}"
            result = soak_run(algo, run, recipes, args.seed + i, args.kills_per_run, args.max_delay, rng, args.scale)
            result["problems"] = check(result)
            results.append(result)
            status = "ok" if not result["problems"] else "; ".join(result["problems"])
            print(f"{run.name}: {len(result['kills'])} kills, {result['launches']} launches, {status}", flush=True)
    kills = [k for r in results for k in r["kills"]]
    figures = {
        "command": " ".join(["python", "experiments/kill_soak.py", *(argv if argv is not None else sys.argv[1:])]),
        "runs": len(results),
        "runs_completed": sum(r["rc"] == 0 for r in results),
        "kills": len(kills),
        "kills_before_config": sum(k["before_config"] for k in kills),
        "kills_before_first_checkpoint": sum(not k["had_checkpoint"] and not k["before_config"] for k in kills),
        "kills_with_partial_files": sum(bool(k["partial_files"]) for k in kills),
        "resumes": sum(len(r.get("resumed_from", [])) for r in results),
        "audit_verify_mismatches": sum("0 mismatches" not in r.get("verify", "") for r in results),
        "runs_with_problems": sum(bool(r["problems"]) for r in results),
        "lost_steps_total": sum(r.get("lost_steps", 0) for r in results),
        "wall_s": round(time.monotonic() - t0, 1),
        "results": results,
    }
    text = json.dumps(figures, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({k: v for k, v in figures.items() if k != "results"}, indent=2))
    return 1 if figures["runs_with_problems"] or figures["runs_completed"] < figures["runs"] else 0


if __name__ == "__main__":
    sys.exit(main())

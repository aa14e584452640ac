"""Where a rule change bites: every recorded decision snapshot, decided by the rule of a base revision and by the
rule of this checkout; prints the decisions that differ and how many there are.

Each audit log under ``experiments/results`` holds the snapshot and menu of every boundary of its run. The rule
manager is a function of the snapshot and menu, so asking both versions on each of them lists exactly the recorded
boundaries at which the change would have decided otherwise (what would have followed is not known). Written for
the floor of the rollback rule (``experiments/results/fetch_push_costknob``):

    python experiments/rule_diff.py 3143e79
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def signatures(results: Path) -> None:
    """Print one JSON line per RL decision snapshot under ``results``: run, step, the rule's action and changes."""
    # (only what the base revision has too: this runs on its package)
    from rl_manager.audit import _redecidable, _signature, read_audit, redecide
    from rl_manager.managers import make_manager

    for run in sorted({p.parent for p in results.rglob("audit.jsonl*")}):
        records = [r for r in _redecidable(read_audit(run)) if r.snapshot.kind == "rl"]
        again = {r.seq: mine for r, mine in redecide(records, make_manager("rule"))}  # where it differs from the log
        for r in records:
            line = dict(run=str(run.relative_to(results)), seq=r.seq, step=r.step)
            print(json.dumps({**line, "rule": repr(_signature(again[r.seq] if r.seq in again else r.decision))}))


def _run(tree: Path, results: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--signatures", str(results)]
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="?", help="the git revision whose rule is compared with this checkout's")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the audit logs are")
    parser.add_argument("--signatures", type=Path, help=argparse.SUPPRESS)  # worker mode: one tree's decisions
    args = parser.parse_args()
    if args.signatures:
        return signatures(args.signatures)
    if not args.base:
        parser.error("a base revision is required")
    archive = subprocess.run(["git", "archive", args.base, "rl_manager"], cwd=ROOT, check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        before, now = _run(Path(tmp), args.results), _run(ROOT, args.results)
    assert [(b["run"], b["seq"]) for b in before] == [(n["run"], n["seq"]) for n in now]
    differ = [(b, n) for b, n in zip(before, now, strict=True) if b["rule"] != n["rule"]]
    for b, n in differ:
        print(f"{b['run']} step {b['step']}: {b['rule']} -> {n['rule']}")
    runs, changed = len({b["run"] for b in before}), len({b["run"] for b, _ in differ})
    print(f"{len(before)} decision snapshots in {runs} runs; {len(differ)} differ, in {changed}")


if __name__ == "__main__":
    main()

"""Hostile replies at scale: thousands of generated LLM replies through the whole decision path.

A :class:`~experiments.fault_server.FaultServer` answers every request of an
:class:`~rl_manager.managers.llm.LLMManager` (the real ``openai`` client over HTTP) with a reply from
:func:`~experiments.fault_server.hostile_reply`, drawn for the menu of the moment (malformed,
nested and huge JSON, wrong types, NaN/inf/1e308, unknown and duplicate keys, injection text,
values just outside the menu, unicode tricks, and valid replies as a control). A
:class:`~rl_manager.controller.Controller` (sync, no fallback, no probation: every knob change can
only come from a reply) runs boundaries on four knobs with random scores, so that the menus, the
rollback gates and the best checkpoint move; runs are cut into segments of ``--per-run``
boundaries (each its own run folder). Checked, for every audit record:

- **out-of-menu changes**: a knob whose value changed at a decision must hold exactly a value the
  recorded menu offered (or, after a rollback, the best checkpoint's), finite, within its bounds;
- **crashes**: an exception out of :meth:`Controller.boundary`;
- ``audit verify`` mismatches, and the API key in any file of the run folders.

Prints one JSON object (the figures in FAULTS.md); exit 1 on any failure::

    python experiments/fault_fuzz.py --replies 10000 --out /tmp/fault_fuzz.json
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.fault_server import FaultServer, hostile_reply  # noqa: E402
from rl_manager.audit import read_audit, verify  # noqa: E402
from rl_manager.controller import Controller, Observation  # noqa: E402
from rl_manager.knobs import FnKnob  # noqa: E402
from rl_manager.managers.llm import LLMManager  # noqa: E402
from rl_manager.menu import build_action_space  # noqa: E402
from rl_manager.schema import ActionSpace, AuditRecord, EvalMetrics  # noqa: E402
from rl_manager.settings import LLMSettings  # noqa: E402

SECRET = "sk-fuzz-DO-NOT-LEAK-0123456789"
KNOBS = {  # name: (initial, low, high, role)
    "learning_rate": (3e-4, 1e-6, 1e-2, "learning_rate"),
    "ent_coef": (0.01, 0.0, 0.1, "exploration"),
    "clip_range": (0.2, 0.05, 0.4, "clip_range"),
    "collision_penalty": (5.0, 0.0, 50.0, "cost_penalty"),
}


class Weights:
    """A model without training: a weight counter (checkpoint/restore) and dict knobs."""

    def __init__(self) -> None:
        self.weights = {"w": 0.0}
        self.values = {name: spec[0] for name, spec in KNOBS.items()}

    def knobs(self) -> dict[str, FnKnob]:
        def knob(name: str) -> FnKnob:
            _, low, high, role = KNOBS[name]
            return FnKnob(
                name, lambda: self.values[name], lambda v: self.values.__setitem__(name, v), low, high, role=role
            )

        return {name: knob(name) for name in KNOBS}

    def checkpoint(self, path: Path | None = None) -> dict[str, float]:
        return dict(self.weights)

    def restore(self, checkpoint: Any) -> None:
        self.weights = dict(checkpoint) if isinstance(checkpoint, dict) else {"w": -1.0}


def out_of_menu(record: AuditRecord) -> list[str]:
    """Knob changes of a decision record that its menu did not offer."""
    if record.kind != "decision" or record.menu is None:
        return []
    problems = []
    best = record.snapshot.best.knobs if record.snapshot and record.snapshot.best else {}
    for name, after in record.knobs_after.items():
        if after == record.knobs_before.get(name):
            continue
        knob = record.menu.knob(name)
        offered = {o.value for o in (knob.options + knob.conservative_options)} if knob else set()
        low, high = KNOBS[name][1:3]
        if not (math.isfinite(after) and low <= after <= high and (after in offered or after == best.get(name))):
            problems.append(f"seq {record.seq}: {name} {record.knobs_before.get(name)} -> {after} not offered")
    return problems


def _shape(reply: str) -> str:
    """A short description of an accepted reply (its text with long runs elided)."""
    text = reply.strip()
    return (text[:100] + f"... ({len(reply)} chars)") if len(text) > 100 else text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replies", type=int, default=10_000, help="replies to serve (at least)")
    p.add_argument("--per-run", type=int, default=100, help="boundaries per run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--keep", default=None, help="keep the run folders here (default: deleted)")
    p.add_argument(
        "--two-stage",
        action="store_true",
        help="the LLM manager's two-stage protocol (prose, then the menu schema; both replies hostile); "
        "default: single-stage, every reply reaches the guard as sent",
    )
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    menu_now: list[ActionSpace] = []
    served: collections.Counter[str] = collections.Counter()
    category_of: dict[str, str] = {}

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        category, text = hostile_reply(rng, menu_now[-1])
        served[category] += 1
        category_of[text] = category
        return {"content": text}

    folder = Path(args.keep or tempfile.mkdtemp(prefix="fault_fuzz_"))
    totals: collections.Counter[str] = collections.Counter()
    accepted: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    leaks: list[str] = []
    examples: dict[str, set[str]] = {}
    t0 = time.monotonic()
    settings = LLMSettings(
        base_url="http://x/v1", model="fuzz", api_key=SECRET, timeout_s=10, max_retries=0, two_stage=args.two_stage
    )
    with FaultServer(responder) as server:
        settings.base_url = server.base_url
        segment = 0
        while sum(served.values()) < args.replies:
            run_dir = folder / f"run_{segment:04d}"
            adapter = Weights()
            ctl = Controller(
                adapter, LLMManager(settings), run_dir=run_dir, knobs=adapter.knobs(), fallback=None, verbose=0
            )
            ctl.probation = None
            ctl.start()
            for i in range(args.per_run):
                score = rng.random()
                adapter.weights["w"] = score
                obs = Observation(
                    step=1000 * (i + 1),
                    evaluation=EvalMetrics(n_episodes=20, mean_return=score, success_rate=score),
                    total_steps=1000 * args.per_run,
                    task="fuzz",
                    algo="ppo",
                )
                ctl.observation = obs
                menu_now.append(build_action_space(ctl.snapshot(), ctl.gates))
                del menu_now[:-1]
                try:
                    ctl.boundary(obs)
                except Exception as exc:  # a crash: what this script counts
                    totals["crashes"] += 1
                    problems.append(f"{run_dir.name} boundary {i}: {type(exc).__name__}: {exc}")
                    break
            ctl.close()
            records = read_audit(run_dir)
            totals["records"] += len(records)
            totals["verify_mismatches"] += len(verify(records))
            for r in records:
                problems += out_of_menu(r)
                totals["applied_changes"] += len(r.changes) if r.applied else 0
                for a in r.attempts:
                    if a.raw_reply is not None and not a.errors:
                        # two-stage: the recorded reply is the formatted one, with the prose as its reason
                        category = "two_stage" if args.two_stage else category_of.get(a.raw_reply, "?")
                        accepted[category] += 1
                        examples.setdefault(category, set()).add(_shape(a.raw_reply))
            for f in run_dir.rglob("*"):
                if f.is_file() and SECRET.encode() in f.read_bytes():
                    leaks.append(str(f))
            if not args.keep:
                shutil.rmtree(run_dir)
            segment += 1
    figures = {
        "command": " ".join(["python", "experiments/fault_fuzz.py", *(argv if argv is not None else sys.argv[1:])]),
        "replies": sum(served.values()),
        "requests_seen_by_server": len(server.requests),
        "by_category": dict(sorted(served.items())),
        "accepted_by_category": dict(sorted(accepted.items())),
        "accepted_shapes": {k: sorted(v)[:8] for k, v in sorted(examples.items())},
        "boundaries": totals["records"],
        "applied_changes": totals["applied_changes"],
        "out_of_menu_changes": sum("not offered" in p for p in problems),
        "crashes": totals["crashes"],
        "audit_verify_mismatches": totals["verify_mismatches"],
        "api_key_leaks": len(leaks),
        "wall_s": round(time.monotonic() - t0, 1),
        "problems": problems[:20],
    }
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    bad = figures["out_of_menu_changes"] or figures["crashes"] or figures["audit_verify_mismatches"] or leaks
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

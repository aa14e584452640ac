"""Markdown table of the decision-suite results in experiments/results/llm_local/*.json (issue 13).

python experiments/llm_local_table.py
python experiments/llm_local_table.py --categories fetch   # per category, runs whose name holds "fetch"
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from rl_manager.bench_decisions import load_suite, scenario_snapshot

FOLDER = Path(__file__).resolve().parent / "results" / "llm_local"
REPO = FOLDER.parents[2]


def strict_accuracy(d: dict) -> float:
    """Share of scenarios answered correctly *without* moving a knob outside the expected roles.

    The suite's own accuracy accepts an adjust that also moves other knobs (a "raise everything" reply
    passes wherever one of its moves is expected); this one does not.
    """
    suite = load_suite(None if d.get("suite") in (None, "visible") else str(REPO / d["suite"]))
    scenarios = {s.name: s for s in suite.scenarios}
    strict = 0
    for r in d["results"]:
        scenario = scenarios[r["name"]]
        roles = {k.name: k.role for k in scenario_snapshot(suite, scenario).knobs}
        allowed = {role for e in scenario.expect if e.action == r["action"] for role in e.roles} | {
            roles.get(k) for e in scenario.expect if e.action == r["action"] for k in e.knobs
        }
        strict += r["correct"] and all(roles.get(k) in allowed for k in r["changes"])
    return strict / len(d["results"])


def by_category(pattern: str) -> int:
    """Per-category correct/total of the runs whose file name holds ``pattern``, with the wrong answers."""
    for path in sorted(FOLDER.glob(f"*{pattern}*.json")):
        d = json.loads(path.read_text())
        right, total = Counter(), Counter()
        wrong: dict[str, Counter] = defaultdict(Counter)
        for r in d["results"]:
            total[r["category"]] += 1
            right[r["category"]] += r["correct"]
            if not r["correct"]:
                wrong[r["category"]][r["action"] + "".join(f" {k} {v}" for k, v in r["changes"].items())] += 1
        print(f"{path.stem}: " + ", ".join(f"{c} {right[c]}/{n}" for c, n in total.items()))
        for category, answers in wrong.items():
            print(f"  wrong in {category}: " + "; ".join(f"{a} x{n}" for a, n in answers.items()))
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--categories":
        return by_category(sys.argv[2])
    rows = []
    for path in sorted(FOLDER.glob("*.json")):
        d = json.loads(path.read_text())
        s, settings = d["summary"], d.get("settings") or {}
        model = Path(d["llm_gguf"]).name if d.get("llm_gguf") else d["manager"]
        if settings:
            variant = f"{settings.get('prompt')}, {settings.get('response_format')}"
            variant += ", two-stage" if settings.get("two_stage") and settings.get("prompt") == "compact" else ""
            variant += ", rule advice" if settings.get("advice") else ""
            variant += ", worked examples" if settings.get("examples") else ""
        else:
            variant = "-"
        source = str(d.get("suite"))
        suite = (
            "PickAndPlace"
            if "fetch_pick" in source
            else "held-out 2"
            if "heldout2" in source
            else "held-out"
            if "heldout" in source
            else "visible"
        )
        lat = (
            f"{s['latency_mean_s']:.1f} / {s['latency_p50_s']:.1f} / {s['latency_p95_s']:.1f}"
            if d["manager"] == "llm"
            else "0"
        )
        rows.append(
            f"| {path.stem} | {model} | {variant} | {suite} ({s['scenarios']}) | {s['accuracy']:.3f} | "
            f"{strict_accuracy(d):.3f} | "
            f"{s['invalid_rate']:.3f} | {s['invalid_after_reask']:.3f} | {lat} | {d.get('threads') or '-'} |"
        )
    print(
        "| run | model | prompt, format | suite (n) | accuracy | strict accuracy | invalid (1st reply) | "
        "invalid after re-ask | "
        "latency mean / p50 / p95 s | threads |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

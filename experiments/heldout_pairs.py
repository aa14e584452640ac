"""Two arms' held-out episodes side by side, scene by scene: paired differences, overall and by goal height.

An arm's ``heldout_<model>_episodes.json`` (``python -m rl_manager.train --evaluate MODEL``) holds each episode's
success, cost and scene; two arms of one seed play the same scenes, so their difference is taken episode by episode
(a 95 % normal interval of the paired mean difference, also of each cost term's where the env reports terms; the
episode cost's relative change with a 95 % paired bootstrap interval). For Fetch tasks with an object, the goals split
by how high they lie above the object's start: a goal less than ``--lift`` (default 0.05 m, the tasks' success
distance) above it is met by pushing the object, a higher one only by picking it up.

    python experiments/heldout_pairs.py RUNS/rule/run/heldout_final_model_episodes.json \\
        RUNS/fixed/run/heldout_final_model_episodes.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def load(path: Path, mode: str) -> dict[str, np.ndarray]:
    """One arm's episodes of ``mode`` (e.g. ``deterministic/all``) as arrays."""
    episodes = json.loads(path.read_text())
    if mode not in episodes:
        raise SystemExit(f"{path}: no {mode!r} episodes (has {sorted(episodes)})")
    return {k: np.asarray(v, dtype=float) for k, v in episodes[mode].items()}


def paired(a: np.ndarray, b: np.ndarray) -> str:
    """Mean of ``a``, of ``b`` and of their paired difference with its 95 % normal interval."""
    d = a - b
    half = 1.96 * float(np.std(d, ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{a.mean():.3f} vs {b.mean():.3f}: {d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"


def cost_change(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0) -> str:
    """Relative change of the mean episode cost from ``b`` to ``a``, with a 95 % paired bootstrap interval."""
    if b.mean() <= 0:
        return "n/a (no cost in the reference arm)"
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (reps, len(a)))
    ratios = a[idx].mean(axis=1) / np.maximum(b[idx].mean(axis=1), 1e-12) - 1.0
    low, high = np.percentile(ratios, [2.5, 97.5])
    return f"{100 * (a.mean() / b.mean() - 1):+.0f}% [{100 * low:+.0f}%, {100 * high:+.0f}%]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arm", type=Path, help="episodes file of the arm under test (e.g. the managed one)")
    p.add_argument("reference", type=Path, help="episodes file of the reference arm (e.g. fixed)")
    p.add_argument("--mode", default="deterministic/all")
    p.add_argument("--lift", type=float, default=0.05, help="goal height above the object's start that needs a lift")
    args = p.parse_args(argv)
    a, b = load(args.arm, args.mode), load(args.reference, args.mode)
    if len(a["return"]) != len(b["return"]) or ("goal" in a) != ("goal" in b):
        raise SystemExit("the two files hold different episode sets: not the same held-out scenes")
    if "goal" in a and not np.allclose(a["goal"], b["goal"], atol=1e-3):
        raise SystemExit("the two files' scenes differ (another seed or env?): no episode-by-episode comparison")
    print(f"{args.arm} vs {args.reference}, {len(a['return'])} episodes ({args.mode})")
    groups = {"all": np.ones(len(a["return"]), dtype=bool)}
    if "goal" in a:
        lift = a["goal"][:, 0, 2] - a["goal"][:, 1, 2]  # desired minus achieved (the object's) height at the start
        groups[f"goal < {args.lift:g} m up (push)"] = lift < args.lift
        groups[f"goal >= {args.lift:g} m up (lift)"] = lift >= args.lift
    terms = sorted(k for k in a if k.startswith("cost_") and k in b)  # the cost per term, where kept
    for name, mask in groups.items():
        if not mask.any():
            continue
        print(f"{name} ({int(mask.sum())} episodes)")
        for key in ("success", "cost", *terms):
            if key in a and key in b:
                print(f"  {key}: {paired(a[key][mask], b[key][mask])}")
        if "cost" in a and "cost" in b:
            print(f"  cost change: {cost_change(a['cost'][mask], b['cost'][mask])}")


if __name__ == "__main__":
    main()

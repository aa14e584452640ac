"""Which ``--gpu`` FetchPickAndPlace runs learned, next to their policy entropy at 100-200k env steps.

``python experiments/fetch_entropy_split.py``: one line per recorded run (its audit log under
``experiments/results/fetch_*``): the median policy entropy and entropy coefficient over its evaluations at
100-200k, the mean episode cost (table contact) of its training episodes at 25-100k where a ``monitor.csv.gz``
lies beside the audit, and the first evaluation with success >= 0.3. The ``--gpu`` recipe's target entropy is -4
(``-dim(A)``).
"""

import statistics
from pathlib import Path

from fetch_costknob_report import read_monitor

from rl_manager.audit import read_audit


def training_cost(monitor: Path, low: int = 25_000, high: int = 100_000) -> float | None:
    """Mean training-episode cost between two env steps (any recorded monitor layout); None without a monitor."""
    if not monitor.is_file():
        return None
    m = read_monitor(monitor)
    window = m[(m.step > low) & (m.step <= high)]
    return float(window.episode_cost.mean()) if len(window) else None


for path in sorted(Path("experiments/results").glob("fetch_*/**/audit.jsonl.gz")):
    snaps = {r.step: r.snapshot for r in read_audit(path.with_suffix("")) if r.snapshot is not None}
    first = next(iter(snaps.values()), None)
    if first is None or "PickAndPlace" not in first.task or first.algo != "fasttqc" or max(snaps) < 160_000:
        continue
    window = [snaps[k].health for k in snaps if 100_000 <= k <= 200_000]
    learned = next((k for k in sorted(snaps) if snaps[k].evaluation.success_rate >= 0.3), None)
    entropy = statistics.median(h.entropy for h in window)
    ent_coef = statistics.median(h.ent_coef for h in window)
    cost = training_cost(path.parent / "monitor.csv.gz")
    cost_text = "  -  " if cost is None else f"{cost:5.1f}"
    run = str(path.parent.relative_to("experiments/results"))
    print(
        f"{run:<55} entropy {entropy:6.2f}  ent_coef {ent_coef:.4f}  cost 25-100k {cost_text}"
        f"  success >= 0.3 from {learned} (to {max(snaps)})"
    )

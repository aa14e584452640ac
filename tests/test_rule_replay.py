"""The rule manager on main repeats every decision it took in the grids that judged it.

Each grid below was judged on fresh seeds (``experiments/results/*/REPORT.md`` or ``README.md``); its audit logs hold
the snapshot and menu of every boundary. A rule change written for one task (most lately the cost-pricing rules for
Fetch) that silently changes a decision on another would void that task's result. A change that does so on purpose
must be judged on fresh seeds, and this list must then name the new grid instead of the old one.
"""

from pathlib import Path

import pytest

from rl_manager.audit import read_audit, redecide
from rl_manager.managers import RuleManager

RESULTS = Path(__file__).resolve().parent.parent / "experiments" / "results"
# grid folder -> the rule runs in it (glob), and how many there are
JUDGED = {
    "paper_reacher_v13": ("runs/*-rule/s*", 15),  # seeds 205-209, three starts
    "planar_reacher_v13": ("runs/*-rule/s*", 15),  # seeds 210-214, three starts
    "safe_fetch_reach_v27_slack": ("runs/reckless-rule/s*", 16),  # seeds 391-406, the reckless start with the cost knob
    "fetch_pick_costknob": ("rule_s240_7b", 1),  # seed 240 from 200k (the trunk's first 200k had no manager)
}


@pytest.mark.parametrize("grid", sorted(JUDGED))
def test_the_rule_repeats_its_judged_decisions(grid):
    pattern, expected = JUDGED[grid]
    runs = sorted((RESULTS / grid).glob(pattern))
    assert len(runs) == expected, f"{grid}: {len(runs)} rule runs, expected {expected}"
    changed = []
    for run in runs:
        records = [r for r in read_audit(run / "audit.jsonl") if r.proposer == "rule"]
        assert records, f"{run}: no decision of the rule"
        changed += [f"{run.name} step {r.step}: {r.decision} -> {mine}" for r, mine in redecide(records, RuleManager())]
    assert not changed, f"the rule decides otherwise on {len(changed)} judged boundaries: {changed[:3]}"

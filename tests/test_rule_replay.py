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
from rl_manager.menu import build_action_space

RESULTS = Path(__file__).resolve().parent.parent / "experiments" / "results"
# grid folder -> the rule runs in it (a glob, or a tuple of globs), and how many there are
JUDGED = {
    # seed 249 from 600k; fresh seeds 259, 267 and 275, whole runs (267 and 275 on the normalised --gpu recipe): item
    # 2's target met on each (held-out, 400 scenes)
    "fetch_pick_costknob": (("rule_s249_720", "forked_s259/rule", "forked_s267/rule", "forked_s275/rule"), 4),
    # seeds 265, 266, 268, 272 and 274, whole runs on the 2-core machine: item 2's target met on 265 (the stuck rule's
    # one raise per spell), not on 266, 268, 272 and 274 (success level, held-out cost -53 %, -69.7 %, -58 %, -65 %;
    # 274 under a recipe's price ceiling of 4.0)
    "fetch_push_costknob": ("forked_s2[67][24568]_cpu/rule", 5),
    "paper_reacher_v13": ("runs/*-rule/s*", 15),  # seeds 205-209, three starts
    "planar_reacher_v13": ("runs/*-rule/s*", 15),  # seeds 210-214, three starts
    # seeds 391-406, the reckless start with the cost knob; its seed 395 is left out below
    "safe_fetch_reach_v27_slack": ("runs/reckless-rule/s*", 16),
    # seeds 413-418, the tuned start (auto entropy); its seed 418 is left out below
    "safe_fetch_reach_v28b_plateaufloor": ("runs/tuned-rule/s4??", 6),
    "safe_fetch_reach_v29_rollbacktask": ("runs/reckless-rule/s4??", 6),  # seeds 419-424, v27's configuration
    "safe_fetch_reach_v30_risinghold": ("runs/tuned-rule/s4??", 6),  # seeds 425-430, v28b's configuration
    # seeds 432-441, the conservative start; the old rule's run of 436 (the rule on main again), main's left out below
    "safe_fetch_reach_v31_rollbackfloor": ("runs/conservative-rule*/s4??", 11),
    # seeds 442-451, v31's configuration; the rule before the stuck rule's task-success veto in conservative-rule-old
    "safe_fetch_reach_v32_stucktask": ("runs/conservative-rule/s4??", 10),
    # seeds 488-497, main's rule against the tuned recipe left alone (level; pooled with v36, level)
    "safe_fetch_reach_v37_main_vs_fixed": ("runs/tuned-rule/s4??", 10),
}
# Changed on purpose, to be judged on a fresh seed: fetch_pick_costknob's rule_s240_7b (seed 240 from 200k), whose
# prices from 220k the rule no longer sets while success is below its target (see the test below and that grid's
# README, "The rule change written from it").
# Changed on purpose, judged in safe_fetch_reach_v29_rollbacktask (seeds 419-424): v27's seed 395, whose rollback at
# 25k (success 1.0, the safe score 0.85 against the best's 1.0, under the learn-first hold) the rule no longer takes
# (a rollback keeps the task: RuleManager._rollback_keeps_the_task).
# Changed on purpose, judged in safe_fetch_reach_v30_risinghold (seeds 425-430): v28b's seed 418, whose price at 15k
# (the hold's deadline, success 0.5 and 0.95, still rising) the rule no longer sets.
# Changed on purpose, judged in safe_fetch_reach_v31_rollbackfloor (seeds 432-441) and reverted there: its seed
# 436 under the floor on a rollback's best, which at 16k refused the rollback that the rule (again) takes.
# Changed on purpose, judged in safe_fetch_reach_v32_stucktask (seeds 442-451, kept by its criterion): v31's seeds 432
# (16k) and 433 (16k, 18k), whose *stuck* raises of the entropy bonus at task success 0.10-0.25 (safe success 0, the
# cost unpriced) the rule no longer makes (see the seed-260 test below).
# Changed on purpose, judged in safe_fetch_reach_v34_stuckonce (inert there) and SafeFetchPush seed 265: v30's seed 430,
# whose second raise of the target entropy (11k, after the 8k raise was measured neutral) the rule no longer makes.
CHANGED = {
    ("safe_fetch_reach_v30_risinghold", "runs/tuned-rule/s430"),
    ("safe_fetch_reach_v27_slack", "runs/reckless-rule/s395"),
    ("safe_fetch_reach_v28b_plateaufloor", "runs/tuned-rule/s418"),
    ("safe_fetch_reach_v31_rollbackfloor", "runs/conservative-rule/s436"),
    ("safe_fetch_reach_v31_rollbackfloor", "runs/conservative-rule/s432"),
    ("safe_fetch_reach_v31_rollbackfloor", "runs/conservative-rule/s433"),
}


@pytest.mark.parametrize("grid", sorted(JUDGED))
def test_the_rule_repeats_its_judged_decisions(grid):
    patterns, expected = JUDGED[grid]
    patterns = (patterns,) if isinstance(patterns, str) else patterns
    runs = sorted(run for pattern in patterns for run in (RESULTS / grid).glob(pattern))
    assert len(runs) == expected, f"{grid}: {len(runs)} rule runs, expected {expected}"
    changed = []
    for run in runs:
        if (grid, str(run.relative_to(RESULTS / grid))) in CHANGED:
            continue
        records = [r for r in read_audit(run / "audit.jsonl") if r.proposer == "rule"]
        assert records, f"{run}: no decision of the rule"
        changed += [f"{run.name} step {r.step}: {r.decision} -> {mine}" for r, mine in redecide(records, RuleManager())]
    assert not changed, f"the rule decides otherwise on {len(changed)} judged boundaries: {changed[:3]}"


def test_the_rule_prices_a_pick_and_place_run_once_it_has_learned():
    """Seed 240's unpriced run (FetchPickAndPlace, cost ~10-25 against a limit of 2.5, learned at 340-400k),
    replayed as a rule arm branched at 200k with a 520k budget: no move while success is below its target, not
    even the *stuck*/*collapse* moves that read the safe success held near 0 by the unpriced cost; the first price
    at 400k (success 0.92, 0.90), where the top penalty cut the held-out cost 99 % at success +0.05."""
    records = read_audit(RESULTS / "fetch_pick_costknob" / "fixed_s240_520" / "audit.jsonl")
    records = [r for r in records if r.kind == "decision" and r.snapshot is not None and r.step >= 220_000]
    assert len(records) == 16
    moves = []
    for r in records:
        r.snapshot.position.total_steps = 520_000
        decision = RuleManager().rule_decision(r.snapshot, r.menu)
        moves += [(r.step, c.knob, c.value) for c in getattr(decision, "changes", [])]
        if r.step < 400_000:
            assert "no safety move yet" in decision.reason or "learning" in decision.reason, (r.step, decision)
    assert moves[0] == (400_000, "cost_penalty", 0.2)


def test_an_unpriced_run_whose_task_success_is_off_the_floor_is_not_stuck():
    """Seed 260's rule run (FetchPickAndPlace, the cost unpriced): the *stuck* rule raised ``target_entropy`` at 300k,
    340k and 380k, reading the safe success (0-0.04) while the task's success was 0.14-0.26; the fixed copy of the
    run reached 0.98 by 560k, the managed one 0.42. The task's success off the floor (mean of the last 3 ≥ 0.1) now
    vetoes *stuck* while the cost is unpriced; at 160k (0.02-0.08) the raise stays, and with the cost priced the
    same snapshots are stuck again."""
    records = read_audit(RESULTS / "fetch_pick_costknob" / "forked_s260" / "rule" / "audit.jsonl")
    records = {r.step: r for r in records if r.kind == "decision" and r.snapshot is not None}
    for step, recorded in ((160_000, -3.0), (300_000, -2.25), (340_000, -1.6875), (380_000, -1.26562)):
        r = records[step]
        assert "explore more" in r.decision.reason and r.decision.changes[0].value == recorded
        decision = RuleManager().rule_decision(r.snapshot, r.menu)
        assert ("explore more" in decision.reason) == (step == 160_000), (step, decision)
        priced = r.snapshot.model_copy(deep=True)
        priced.knobs = [k.model_copy(update={"value": 0.5}) if k.name == "cost_penalty" else k for k in priced.knobs]
        for row in priced.history:
            row.mean_cost = row.violation_rate = row.train_episode_cost = 0.0  # priced and met: no safety move due
        priced.evaluation.mean_cost = priced.evaluation.violation_rate = 0.0
        priced.training.mean_episode_cost = 0.0
        # stuck again: the first raise (160k), then no second one (the 160k raise was not measured improved)
        again = RuleManager().rule_decision(priced, build_action_space(priced)).reason
        assert ("explore more" if step == 160_000 else "not compounded") in again, (step, again)


def test_the_rule_leaves_seed_234s_pick_and_place_run_alone_until_it_has_learned():
    """Seed 234's unpriced ``--gpu`` run (FetchPickAndPlace, 40k-step evaluations; success 0.34 at 200k, 0.94 at
    320k), which neither the learn-first hold nor the automatic-entropy change was written from, replayed with the
    cost knob of ``fetch_pick_costknob`` added to its recipe: no move at all while it learns (the rule raised
    ``target_entropy`` at 120k and 160k, reading the entropy's fall to its target as a collapse), then the first
    price at 360k, once success is at its target on 2 evaluations (0.94, 0.88)."""
    priced = read_audit(RESULTS / "fetch_pick_costknob" / "fixed_s240_520" / "audit.jsonl")
    knob = next(k for r in priced if r.snapshot is not None for k in r.snapshot.knobs if k.name == "cost_penalty")
    records = read_audit(RESULTS / "fetch_throughput" / "learning_gpu_s234" / "audit.jsonl")
    records = [r for r in records if r.kind == "decision" and r.snapshot is not None]
    assert [r.step for r in records] == list(range(40_000, 440_000, 40_000))
    moves = []
    for r in records:
        snapshot = r.snapshot.model_copy(update={"knobs": [*r.snapshot.knobs, knob]})
        decision = RuleManager().rule_decision(snapshot, build_action_space(snapshot))
        moves += [(r.step, c.knob, c.value) for c in getattr(decision, "changes", [])]
    assert moves[0] == (360_000, "cost_penalty", 0.2), moves


def test_no_plateau_decay_for_a_run_that_never_left_the_floor():
    """SafeFetchReach tuned, seed 411 (v28): success 0.00-0.05 on its first 8 evaluations, then the *plateau* rule
    halved the LR at 40 % of the budget; left alone, the run learned by 85 % (held-out 0.77 safe success), decayed it
    ended at 0.20. A flat score at the floor is a stuck (or slow) run, not a plateau to fine-tune; the same boundary
    with the run once at 0.3 still gets the decay."""
    records = read_audit(RESULTS / "safe_fetch_reach_v28_autoentropy" / "runs" / "tuned-rule" / "s411" / "audit.jsonl")
    record = next(r for r in records if r.kind == "decision" and r.step == 8000)
    assert [(c.knob, c.value) for c in record.decision.changes] == [("learning_rate", 0.0005)]
    assert "plateau" in record.decision.reason
    assert RuleManager().rule_decision(record.snapshot, record.menu).action == "no_action"
    off_the_floor = record.snapshot.model_copy(deep=True)
    off_the_floor.history[0].success_rate = off_the_floor.history[0].safe_success_rate = 0.3
    decision = RuleManager().rule_decision(off_the_floor, record.menu)
    assert [(c.knob, c.value) for c in decision.changes] == [("learning_rate", 0.0005)], decision


def test_the_rule_does_not_roll_seed_249s_pick_and_place_run_back_to_a_policy_that_had_not_moved():
    """Seed 249's unmanaged PickAndPlace run (at chance to 200k, success 0.48-0.70 at 360-420k, 0.98 at 480k),
    replayed at the budgets 520k and 720k from its recorded snapshots, with the best checkpoint's success as the
    controller now records it (the 20k model's 0.12; the best until 480k, by its safe success 0.12 at cost 0): the
    rule before the change rolled it back to that model at 140k, 400k and 420k; now no boundary gets a rollback
    until the run has learned. Nor is it priced while it learns: at 520k the hold's deadline (75 %, 390k) priced
    it at 400k, success 0.54 and climbing; past the deadline the hold now stays while success still rises, and the
    first price comes at 500k (success 0.98, 0.94) at either budget."""
    records = read_audit(RESULTS / "fetch_pick_costknob" / "long_s249_600" / "audit.jsonl")
    records = [r for r in records if r.kind == "decision" and r.snapshot is not None]
    success = {r.step: r.snapshot.evaluation.success_rate for r in records}
    for budget in (520_000, 720_000):
        rollbacks, prices = [], []
        for r in records:
            snapshot = r.snapshot.model_copy(deep=True)
            snapshot.position.total_steps = budget
            snapshot.best.success_rate = success[snapshot.best.step]
            decision = RuleManager().rule_decision(snapshot, build_action_space(snapshot))
            if decision.action.startswith("rollback") and r.step < 480_000:
                rollbacks.append(r.step)
            prices += [r.step for c in getattr(decision, "changes", []) if c.knob == "cost_penalty"]
        assert rollbacks == [], (budget, rollbacks)
        assert prices[0] == 500_000, (budget, prices)


@pytest.mark.parametrize(
    ("run", "step"),
    [
        ("fetch_pick_costknob/forked_s254", 100_000),
        ("fetch_pick_costknob/forked_s260", 120_000),
        ("fetch_pick_costknob/forked_s262_lost", 60_000),
        ("fetch_push_costknob/forked_s263_cpu", 180_000),
    ],
)
def test_a_critic_loss_spike_at_chance_is_not_divergence(run, step):
    """FetchPickAndPlace seeds 254, 260 and 262: at chance (success 0.00-0.02, the best 0.04-0.06 on 50 episodes)
    the critic's loss spiked for one evaluation (ratio 7.7-14.4) and the rule halved the learning rate, its first
    move in each run; SafeFetchPush seed 263 (not written from), the same at 180k (ratio 5.19). The score within its
    noise of the best is a score that holds: no divergence. With the same snapshot's score fallen beyond the noise
    (0 after a best of 0.5), the same jump halves the learning rate."""
    records = read_audit(RESULTS / run / "rule" / "audit.jsonl")
    r = next(r for r in records if r.kind == "decision" and r.step == step)
    assert "unstable" in r.decision.reason and r.decision.changes[0].knob == "learning_rate"
    decision = RuleManager().rule_decision(r.snapshot, r.menu)
    assert "unstable" not in decision.reason and decision.action != "adjust", decision
    fallen = r.snapshot.model_copy(deep=True)
    fallen.best = fallen.best.model_copy(update={"score": 0.5})
    decision = RuleManager().rule_decision(fallen, r.menu)
    assert "unstable" in decision.reason and [(c.knob, c.value) for c in decision.changes] == [("learning_rate", 5e-4)]

"""Resume a population whose Tune run stopped with an errored member (issue 17 item 3, PBT reckless s54).

    python experiments/population_resume.py OUT   (OUT: the -o folder of rl_manager.population; kind from OUT/pbt|pb2)

A Ray worker failed to start under a load spike (ActorUnschedulableError: worker startup repeatedly failed);
the member errored (no max_failures) and the synchronous scheduler then waited for it forever. This restores
the Tune experiment with ``resume_errored=True`` (the errored member restarts from its last checkpoint) and
writes ``summary.json`` as ``run_population`` does (that function has no resume entry point; the
held-out evaluation is the shared :func:`~rl_manager.population.best_heldout`). Tuner.restore brings
back the scheduler object pickled at the start, so PBT's synchronous perturbation clock restarts: one
exploit/explore step happens at the first boundary after the resume. ``wall_time_s`` is the resumed part
only; the first part's time is in ``time_first_part.txt``.
"""

import json
import sys
import time
from pathlib import Path

import ray
from ray import tune

from rl_manager.io import write_text_atomic
from rl_manager.population import SB3Member, best_heldout, collect_members, search_space

out = Path(sys.argv[1]).resolve()
kind = "pbt" if (out / "pbt").exists() else "pb2"
params = json.loads(next((out / kind).glob("SB3Member_*/params.json")).read_text())
run = params["run"]
space = search_space(run)
ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
start = time.time()
try:
    tuner = tune.Tuner.restore(
        str(out / kind), trainable=tune.with_resources(SB3Member, {"cpu": 1}), resume_errored=True
    )
    grid = tuner.fit()
finally:
    ray.shutdown()
wall = time.time() - start
members = collect_members(grid, space)
best = max(members, key=lambda m: m["final_score"])
heldout = best_heldout(run, best, 240)
summary = {
    "env_id": run["env_id"],
    "algo": run["algo"],
    "recipe": run.get("recipe_name", ""),
    "seed": run["seed"],
    "scheduler": kind,
    "population": len(members),
    "perturb_every": 4,
    "timesteps": 1_024_000,
    "env_steps_total": sum(m["env_steps"] for m in members),
    "wall_time_s": round(wall, 2),
    "resumed": "Tuner.restore(resume_errored=True) after a worker start failure; wall_time_s is the resumed part",
    "best_member": best["member"],
    "heldout": heldout,
    "members": members,
}
write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
held = heldout["deterministic/all"]
print(
    f"{kind}: best member {best['member']}, held-out safe success {held['safe_success_rate']}, "
    f"violation {held['violation_rate']}; {summary['env_steps_total']} env steps; resumed part {wall:.0f} s"
)

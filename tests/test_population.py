"""PBT and PB2 populations through Ray Tune over the manager's knobs (real PPO, tiny budgets)."""

import math

import pytest

pytest.importorskip("ray", reason="needs the 'ray' extra")

from rl_manager.population import main, search_space  # noqa: E402
from rl_manager.train import load_recipe  # noqa: E402

TINY = ["n_envs:2", "n_steps:128", "batch_size:64", "n_epochs:2", "policy_kwargs:{net_arch: [16], critic_lr: 0.001}"]


def test_search_space_is_the_managers_menu():
    import rl_manager.envs  # noqa: F401

    recipe = load_recipe("ppo", "rl_manager/PaperReacher-v0", "conservative", None)
    space = search_space({"env_id": "rl_manager/PaperReacher-v0", "algo": "ppo", "recipe": recipe})
    assert {"learning_rate", "critic_lr", "clip_range", "action_std", "collision_penalty", "success_bonus"} <= set(
        space
    )
    assert space["learning_rate"]["value"] == pytest.approx(3e-5)
    assert space["collision_penalty"]["value"] == 25.0  # the recipe's start, as the manager gets it
    assert (space["learning_rate"]["low"], space["learning_rate"]["high"]) == (1e-5, 3e-3)


@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_population_perturbs_knobs_that_take_effect(tmp_path, scheduler):
    if scheduler == "pb2":
        pytest.importorskip("GPy", reason="PB2 needs GPy")
    out = tmp_path / scheduler
    argv = ["--scheduler", scheduler, "--population", "2", "-n", "3072", "--eval-freq", "512", "--eval-episodes", "3"]
    argv += ["--heldout-episodes", "2", "--perturb-every", "2", "-params", *TINY, "-o", str(out)]
    assert main(argv) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert [m["member"] for m in summary["members"]] == [0, 1]
    assert summary["env_steps_total"] >= 2 * 3072  # copies rewind a member: it trains more than its budget
    assert 0.0 <= summary["heldout"]["deterministic/all"]["safe_success_rate"] <= 1.0
    bounds = {"learning_rate": (1e-5, 3e-3), "clip_range": (0.05, 0.4), "collision_penalty": (0.0, 100.0)}
    moved = False
    for member in summary["members"]:
        last_knobs = member["trajectory"][-1][2]
        for name, (low, high) in bounds.items():  # the model uses the member's own value, clamped into the bounds
            assert math.isclose(last_knobs[name], min(high, max(low, member["config"][name])), rel_tol=1e-6)
        moved |= any(not math.isclose(row[2]["learning_rate"], 3e-5) for row in member["trajectory"])
    assert moved  # a perturbation happened and was applied

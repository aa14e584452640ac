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


def _member(**knobs):
    import rl_manager.envs  # noqa: F401
    from rl_manager.population import SB3Member
    from rl_manager.train import parse_overrides

    recipe = load_recipe("ppo", "rl_manager/PaperReacher-v0", "conservative", None) | parse_overrides(TINY)
    run = {"env_id": "rl_manager/PaperReacher-v0", "algo": "ppo", "recipe": recipe, "seed": 0}
    run |= {"eval_freq": 256, "eval_episodes": 3}
    return SB3Member(config={"run": run, "member": 0, **knobs})  # a temporary logdir, no Tune run


def test_restore_keeps_the_learned_action_std_unless_the_member_perturbed_it(tmp_path):
    """A plain restore (a failed worker retried) must not reset the learned log_std to the configured
    action std; an exploit that perturbed the action std must write it (ray issue 62173's pitfall)."""
    donor = _member(action_std=0.5, learning_rate=3e-4)
    donor.model.policy.log_std.data += 0.3  # as if learned: the value in effect differs from the config
    learned = donor.actuators["action_std"].read(donor.model)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    donor.save_checkpoint(str(ckpt))

    same = _member(action_std=0.5, learning_rate=3e-4)
    same.load_checkpoint(str(ckpt))
    assert same.actuators["action_std"].read(same.model) == pytest.approx(learned)

    perturbed = _member(action_std=0.25, learning_rate=1e-3)
    perturbed.load_checkpoint(str(ckpt))
    assert perturbed.actuators["action_std"].read(perturbed.model) == pytest.approx(0.25)
    assert perturbed.actuators["learning_rate"].read(perturbed.model) == pytest.approx(1e-3)
    for member in (donor, same, perturbed):
        member.cleanup()


def test_pbt_perturbations_stay_within_the_bounds():
    from rl_manager.population import scheduler

    space = {"learning_rate": {"value": 2e-3, "low": 1e-5, "high": 3e-3, "values": [], "scale": "log"}}
    pbt = scheduler("pbt", space, 2)
    assert pbt._custom_explore_fn({"learning_rate": 1e-2})["learning_rate"] == 3e-3
    assert pbt._custom_explore_fn({"learning_rate": 1e-6})["learning_rate"] == 1e-5

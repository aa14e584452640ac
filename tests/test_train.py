"""End-to-end tests of ``python -m rl_manager.train`` on tiny budgets."""

import json

import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import VecNormalize

from rl_manager import train
from rl_manager.audit import read_audit
from rl_manager.train import GPU_HER_NORMALIZE, GPU_PRESET, gpu_preset, main

TINY_PPO = ["-params", "n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:2", "policy_kwargs:{net_arch: [16]}"]


def run_dir_of(folder):
    (run,) = [p for p in folder.glob("*/*") if p.is_dir()]
    return run


def test_train_cli_reacher_then_resume(tmp_path, capsys):
    args = ["--env", "PlanarReacher", "--recipe", "conservative", "-n", "1024", "--eval-freq", "256"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "-f", str(tmp_path), "--manager", "auto", *TINY_PPO]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("manager: auto -> rule")
    run = run_dir_of(tmp_path)
    for name in (
        "config.yml",
        "command.txt",
        "audit.jsonl",
        "evaluations.npz",
        "summary.json",
        "best_model.zip",
        "final_model.zip",
        "last_model.zip",
        "manager_state.json",
    ):
        assert (run / name).exists(), name
    assert list(run.glob("*.monitor.csv")) and list((run / "tb").rglob("events.out.tfevents*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timesteps"] == 1024 and summary["manager"]["decisions"] == 4
    assert np.load(run / "evaluations.npz")["timesteps"].tolist() == [256, 512, 768, 1024]
    assert {"deterministic/easy", "stochastic/hard"} <= set(summary["heldout"])
    # resume to a larger budget: the audit sequence continues without gaps or duplicates
    config = yaml.safe_load((run / "config.yml").read_text())
    config["n_timesteps"] = 2048
    (run / "config.yml").write_text(yaml.safe_dump(config))
    assert main(["--resume", str(run)]) == 0
    records = read_audit(run)
    assert [r.seq for r in records] == list(range(len(records)))
    (resumed,) = [r for r in records if r.kind == "resume"]
    assert resumed.seq == 4 and resumed.step == 1024 and "nothing lost" in resumed.message
    decisions = [r for r in records if r.kind == "decision"]
    assert [r.evaluation_index for r in decisions] == list(range(8))
    assert len(decisions) == 8 and records[-1].step == 2048
    assert len({r.run_id for r in records}) == 1


def test_train_cli_safe_fetch_reach_sac(tmp_path, monkeypatch):
    args = ["--env", "FetchReach", "--algo", "sac", "--recipe", "reckless", "-n", "400", "--eval-freq", "200"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "-f", str(tmp_path), "--manager", "rule"]
    args += ["-params", "learning_starts:100", "batch_size:32", "policy_kwargs:{net_arch: [16]}", "buffer_size:2000"]
    assert main(args) == 0
    run = run_dir_of(tmp_path)
    config = yaml.safe_load((run / "config.yml").read_text())
    assert config["env_id"] == "rl_manager/SafeFetchReach-v0"
    record = read_audit(run)[0]
    knobs = {k.name: k.value for k in record.snapshot.knobs}
    assert knobs["ent_coef"] == 0.5  # the reckless recipe's fixed coefficient, read from ent_coef_tensor
    assert record.snapshot.evaluation.mean_cost is not None
    assert record.snapshot.training.mean_episode_cost is not None
    # a saved model judged held-out on its own (as one brought back from a lost run): the run's seeds, its figures
    lone = tmp_path / "brought_back"
    lone.mkdir()
    for name in ("final_model.zip", "config.yml"):
        (lone / name).write_bytes((run / name).read_bytes())
    judged = []
    real = train.heldout_evaluation
    monkeypatch.setattr(train, "heldout_evaluation", lambda m, *a, **k: judged.append(m) or real(m, *a, **k))
    assert main(["--evaluate", str(lone / "final_model.zip"), "--heldout-episodes", "2", "--device", "cpu"]) == 0
    heldout = json.loads((lone / "heldout_final_model.json").read_text())["heldout"]
    summary = json.loads((run / "summary.json").read_text())
    assert heldout["deterministic/all"] == summary["heldout"]["deterministic/all"]
    # each episode beside the aggregates: its figures average to them, and its scene is the goal env's
    episodes = json.loads((lone / "heldout_final_model_episodes.json").read_text())["deterministic/all"]
    held = heldout["deterministic/all"]
    assert np.mean(episodes["success"]) == held["success_rate"] and np.mean(episodes["cost"]) == held["mean_cost"]
    assert np.mean(episodes["return"]) == pytest.approx(held["mean_return"], abs=1e-3)
    assert np.shape(episodes["goal"]) == (2, 2, 3)  # [desired, achieved] goal at each episode's start
    saved = load_from_zip_file(run / "final_model.zip", device="cpu")[1]["policy"]
    assert all(th.equal(v, saved[k]) for k, v in judged[0].policy.state_dict().items())  # the saved weights
    (lone / "config.yml").unlink()
    assert main(["--evaluate", str(lone / "final_model.zip")]) == 2


def test_fork_at_first_move_gives_the_fixed_arm_the_managed_runs_past(tmp_path):
    """``--fork-at-first-move``: the copy written before the manager's first move, resumed with no manager, is the
    fixed recipe's run: its evaluations up to the fork are those of a fixed run from scratch on the same seed."""
    args = ["--env", "PaperReacher", "--recipe", "conservative", "-n", "2048", "--eval-freq", "256", "--seed", "3"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "--fork-at-first-move", *TINY_PPO]
    assert main([*args, "--run-dir", str(tmp_path / "rule"), "--manager", "rule"]) == 0
    assert main([*args, "--run-dir", str(tmp_path / "fresh"), "--manager", "none"]) == 0
    assert not (tmp_path / "fresh_fork").exists()  # no move, no fork: the run is its own fixed arm
    fork = tmp_path / "rule_fork"
    step = json.loads((fork / "fork.json").read_text())["step"]
    rule = [r for r in read_audit(tmp_path / "rule") if r.kind == "decision"]
    first = next(r for r in rule if r.applied)
    assert step == first.step and not (fork / "tb").exists()
    saved = json.loads((fork / "manager_state.json").read_text())
    assert saved["knobs"] == pytest.approx(first.knobs_before) and saved["interventions"] == []
    fresh = [r for r in read_audit(tmp_path / "fresh") if r.kind == "decision"]

    def curve(records):
        return [(r.step, r.snapshot.evaluation.mean_return) for r in records if r.step <= step]

    assert curve(rule) == curve(fresh) and len(curve(rule)) == first.evaluation_index + 1
    config = yaml.safe_load((fork / "config.yml").read_text())
    (fork / "config.yml").write_text(yaml.safe_dump({**config, "manager": "none"}, sort_keys=False))
    assert main(["--resume", str(fork)]) == 0
    records = read_audit(fork)
    assert [r.kind for r in records].count("resume") == 1 and not any(r.applied for r in records)
    assert json.loads((fork / "summary.json").read_text())["timesteps"] == 2048


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["--env", "FetchPikAndPlace", "-f", str(tmp_path)]) == 2
    assert "did you mean" in capsys.readouterr().err.lower()
    assert main(["--env", "PlanarReacher", "--recipe", "nope", "-f", str(tmp_path)]) == 2
    assert main(["--resume", str(tmp_path / "missing")]) == 2


def test_subproc_vec_env_runs_the_envs_in_workers(tmp_path, capsys):
    """``vec_env: subproc`` (the GPU machine's recipe key): the envs step in worker processes, and the
    manager's env knobs (reward weights) are read from them."""
    args = ["--env", "PaperReacher", "--recipe", "conservative", "-n", "512", "--eval-freq", "256"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "-f", str(tmp_path), "--manager", "rule"]
    assert main([*args, *TINY_PPO, "vec_env:subproc"]) == 0
    run = run_dir_of(tmp_path)
    assert json.loads((run / "summary.json").read_text())["timesteps"] == 512
    knobs = {k.name: k.value for k in read_audit(run)[0].snapshot.knobs}
    assert knobs["collision_penalty"] == 25.0  # read through the workers
    assert main([*args, *TINY_PPO, "vec_env:threads"]) == 2
    assert "vec_env must be one of" in capsys.readouterr().err


def test_plug_in_three_lines(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0)
    # --- the README's three lines ---
    from rl_manager.callback import ManagerCallback

    manager = ManagerCallback("rule", eval_env=make_vec_env("Pendulum-v1"), eval_freq=128, run_dir=tmp_path)
    model.learn(256, callback=manager)
    # ---
    assert len(read_audit(tmp_path)) == 2


def test_evaluations_npz_keeps_every_evaluation(tmp_path):
    """60 evaluations: all 60 rows reach ``evaluations.npz`` (the state is not trimmed)."""
    import numpy as np

    from rl_manager.train import write_evaluations
    from tests.fakes import make_controller, observation

    ctl, _ = make_controller(tmp_path)
    for i in range(60):
        ctl.boundary(observation(1000 * (i + 1), i / 100))
    write_evaluations(tmp_path / "evaluations.npz", ctl.state.history)
    data = np.load(tmp_path / "evaluations.npz")
    assert data["timesteps"].tolist() == [1000 * (i + 1) for i in range(60)]
    assert data["scores"].shape == (60,) and data["scores"][0] == 0.0


def test_bad_numbers_are_usage_errors(capsys):
    """A zero --save-freq (a checkpoint, replay buffer included, at every step), a NaN interval, a negative
    max age...: refused by the argument parser (exit 2) with the argument named."""
    import pytest

    for args, message in (
        (["--save-freq", "0"], "--save-freq: must be positive"),
        (["--save-interval", "nan"], "--save-interval: must be positive"),
        (["--max-age", "-1"], "--max-age: must be >= 0"),
        (["-n", "abc"], "not a number: 'abc'"),
        (["--eval-episodes", "0"], "--eval-episodes: must be positive"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_her_learning_starts_covers_one_episode_of_every_env(tmp_path):
    """HER samples finished episodes only: 4 Fetch envs x 50 steps do not end within learning_starts=100, and
    SB3 raised "Unable to sample before the end of the first episode" (32 envs did so on the GPU machine's
    recipe, whose learning_starts is 1,000). train raises it to n_envs x 51, with a warning."""
    import pytest

    args = ["--env", "FetchReach", "--algo", "sac", "--recipe", "tuned", "-n", "400", "--eval-freq", "400"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "-f", str(tmp_path), "--manager", "none"]
    args += ["-params", "n_envs:4", "learning_starts:100", "batch_size:32", "policy_kwargs:{net_arch: [16]}"]
    with pytest.warns(UserWarning, match="learning_starts 100 < n_envs"):
        assert main([*args, "buffer_size:2000"]) == 0
    config = yaml.safe_load((run_dir_of(tmp_path) / "config.yml").read_text())
    assert config["recipe"]["n_envs"] == 4


@pytest.fixture
def tf32_reset():
    """A test whose run turns TensorFloat-32 on (process-wide): off again after it, whatever happened."""
    yield
    th.backends.cuda.matmul.allow_tf32 = th.backends.cudnn.allow_tf32 = False


def test_gpu_recipe_keys_device_her_buffer_and_tf32(tmp_path, tf32_reset):
    """The GPU recipe's keys: HER sampled on the model's device, TensorFloat-32 matmuls; both reach the run."""

    from rl_manager.device_her import DeviceHerReplayBuffer
    from rl_manager.train import _build_model, make_train_env

    args = ["--env", "FetchReach", "--algo", "sac", "--recipe", "tuned", "-n", "300", "--eval-freq", "300"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "-f", str(tmp_path), "--manager", "none"]
    args += ["-params", "learning_starts:100", "batch_size:32", "policy_kwargs:{net_arch: [16]}", "buffer_size:2000"]
    assert main([*args, "replay_buffer_class:DeviceHerReplayBuffer", "tf32:true"]) == 0
    assert th.backends.cuda.matmul.allow_tf32
    config = yaml.safe_load((run_dir_of(tmp_path) / "config.yml").read_text())
    assert config["recipe"]["replay_buffer_class"] == "DeviceHerReplayBuffer" and config["recipe"]["tf32"]
    env = make_train_env(config["env_id"], config["recipe"], seed=0)
    model = _build_model(config, env, run_dir_of(tmp_path), run_dir_of(tmp_path) / "last_model.zip")
    assert isinstance(model.replay_buffer, DeviceHerReplayBuffer) and model.replay_buffer.size() > 0
    model.replay_buffer.sample(8)  # a resumed run samples from the reloaded buffer (mirror rebuilt)
    env.close()


def test_gpu_flag_sets_the_measured_setup_and_params_still_override(tmp_path, tf32_reset):
    import pytest

    from rl_manager.io import InputError

    args = ["--env", "FetchReach", "--algo", "sac", "--recipe", "tuned", "-n", "200", "--eval-freq", "200"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "-f", str(tmp_path), "--manager", "none"]
    args += ["--gpu", "--device", "cpu"]  # the preset's keys, on this machine's CPU
    params = ["-params", "n_envs:2", "batch_size:32", "policy_kwargs:{net_arch: [16]}", "buffer_size:2000"]
    assert main([*args, *params]) == 0
    config = yaml.safe_load((run_dir_of(tmp_path) / "config.yml").read_text())
    recipe = config["recipe"]
    assert recipe["n_envs"] == 2 and recipe["batch_size"] == 32  # -params win
    assert recipe["gradient_steps"] == GPU_PRESET["gradient_steps"] and recipe["vec_env"] == "subproc"
    assert recipe["replay_buffer_class"] == "DeviceHerReplayBuffer" and recipe["tf32"] and config["device"] == "cpu"
    assert recipe["normalize"] == GPU_HER_NORMALIZE  # HER: observations normalised
    run = run_dir_of(tmp_path)
    assert (run / "final_model_vecnormalize.pkl").is_file()
    stats = run / "last_model_vecnormalize.pkl"
    saved = VecNormalize.load(str(stats), make_vec_env(config["env_id"]))
    config["n_timesteps"] = 400  # continued as the forked test's fixed arm is (a --gpu run resumed)
    (run / "config.yml").write_text(yaml.safe_dump(config))
    assert main(["--resume", str(run)]) == 0
    resumed = VecNormalize.load(str(stats), make_vec_env(config["env_id"]))
    assert resumed.obs_rms["observation"].count > saved.obs_rms["observation"].count + 150  # continued
    with pytest.raises(InputError, match="off-policy"):
        gpu_preset("ppo", {}, "cpu")


def test_gpu_flag_normalises_her_recipes_unless_the_recipe_says_otherwise():
    her = {"replay_buffer_class": "HerReplayBuffer"}
    assert gpu_preset("tqc", her, "cpu")["normalize"] == GPU_HER_NORMALIZE
    assert gpu_preset("tqc", {**her, "normalize": False}, "cpu")["normalize"] is False  # the recipe's own wins
    own = {"norm_obs": True, "clip_obs": 10.0}
    assert gpu_preset("tqc", {**her, "normalize": own}, "cpu")["normalize"] == own
    assert "normalize" not in gpu_preset("sac", {}, "cpu")  # without HER: not measured, not set


def test_a_stop_is_confirmed_on_fresh_episodes_where_boundaries_evaluate_through_sb3():
    assert train.parse_args(["--confirm-episodes", "0"]).confirm_episodes == 0
    with pytest.raises(SystemExit):
        train.parse_args(["--confirm-episodes", "-1"])
    paired = object()  # a run with the paired evaluator (PaperReacher): large paired boundary evaluations
    assert train._confirm_episodes({"confirm_episodes": None}, None) == train.CONFIRM_EPISODES
    assert train._confirm_episodes({}, None) == train.CONFIRM_EPISODES  # a run from before the key existed
    assert train._confirm_episodes({"confirm_episodes": None}, paired) == 0
    assert train._confirm_episodes({"confirm_episodes": 0}, None) == 0
    assert train._confirm_episodes({"confirm_episodes": 30}, paired) == 30


@pytest.mark.parametrize("allow_stop", [True, False])
def test_a_recipe_sets_the_managers_gates(tmp_path, allow_stop):
    """``gates`` in a recipe reaches the manager's menu: with ``allow_stop: false`` a run whose targets are met at
    every evaluation trains to its budget; by default the manager stops it."""
    args = ["--env", "FetchReach", "--algo", "sac", "--recipe", "tuned", "-n", "1200", "--eval-freq", "200"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "-f", str(tmp_path), "--manager", "rule"]
    args += ["--confirm-episodes", "0", "-params", "learning_starts:100", "batch_size:32", "buffer_size:2000"]
    args += ["policy_kwargs:{net_arch: [16]}", "targets:{success_rate: 0.0}", f"gates:{{allow_stop: {allow_stop}}}"]
    assert main(args) == 0
    decisions = [r for r in read_audit(run_dir_of(tmp_path)) if r.kind == "decision"]
    stops = [r for r in decisions if r.decision.action == "stop_training"]
    assert bool(stops) == allow_stop
    assert decisions[-1].step == (stops[0].step if allow_stop else 1200)
    # a key the gates (or targets) do not know is refused before a run folder is made
    bad = tmp_path / "bad"
    for param in ("gates:{allow_stopp: false}", "targets:{succes_rate: 0.5}"):
        assert main([*args[: args.index("-f")], "-f", str(bad), "--manager", "rule", "-params", param]) == 2
    assert not bad.exists()


def test_recipe_key_normalize_trains_resumes_and_judges_with_the_statistics(tmp_path, capsys):
    """rl-zoo3's ``normalize``: the training env normalises observations; every saved model has the statistics
    beside it, a resumed run continues them, and a saved model is judged held-out with them (the same figures as
    at the end of its run)."""
    args = ["--env", "PlanarReacher", "--recipe", "conservative", "-n", "512", "--eval-freq", "256"]
    args += ["--eval-episodes", "2", "--heldout-episodes", "2", "--manager", "rule", *TINY_PPO]
    assert main([*args, "normalize:{norm_reward: false}", "--run-dir", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    for name in ("last_model", "best_model", "final_model"):
        assert (run / f"{name}_vecnormalize.pkl").is_file(), name
    saved = VecNormalize.load(str(run / "last_model_vecnormalize.pkl"), make_vec_env("rl_manager/PlanarReacher-v0"))
    assert not saved.norm_reward and saved.obs_rms.count > 512  # fitted on every training observation
    config = yaml.safe_load((run / "config.yml").read_text())
    config["n_timesteps"] = 1024
    (run / "config.yml").write_text(yaml.safe_dump(config))
    assert main(["--resume", str(run)]) == 0
    resumed = VecNormalize.load(str(run / "last_model_vecnormalize.pkl"), make_vec_env("rl_manager/PlanarReacher-v0"))
    assert resumed.obs_rms.count > saved.obs_rms.count + 512  # continued, not restarted
    summary = json.loads((run / "summary.json").read_text())
    assert main(["--evaluate", str(run / "final_model.zip"), "--heldout-episodes", "2"]) == 0
    heldout = json.loads((run / "heldout_final_model.json").read_text())["heldout"]
    assert heldout["deterministic/all"] == summary["heldout"]["deterministic/all"]
    (run / "final_model_vecnormalize.pkl").unlink()
    assert main(["--evaluate", str(run / "final_model.zip")]) == 2
    assert "final_model_vecnormalize.pkl" in capsys.readouterr().err
    assert main([*args, "normalize:yes please", "--run-dir", str(tmp_path / "bad")]) == 2


def test_normalize_with_her_goal_observations(tmp_path, monkeypatch):
    """``normalize`` on a goal env (dict observations, HER relabelling raw goals): held-out episodes are played on
    observations normalised with the training statistics, and the saved model's judgement repeats the run's own."""
    from rl_manager import telemetry

    played_on = []
    real = telemetry.evaluate
    monkeypatch.setattr(telemetry, "evaluate", lambda m, env, *a, **k: played_on.append(env) or real(m, env, *a, **k))
    run = tmp_path / "run"
    args = ["--env", "FetchReach", "--algo", "sac", "-n", "400", "--eval-freq", "200", "--eval-episodes", "2"]
    args += ["--heldout-episodes", "2", "--manager", "rule", "--run-dir", str(run), "-params", "learning_starts:100"]
    args += ["batch_size:32", "policy_kwargs:{net_arch: [16]}", "buffer_size:2000", "normalize:{norm_reward: false}"]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert main(["--evaluate", str(run / "final_model.zip"), "--heldout-episodes", "2", "--device", "cpu"]) == 0
    heldout = json.loads((run / "heldout_final_model.json").read_text())["heldout"]
    assert heldout["deterministic/all"] == summary["heldout"]["deterministic/all"]
    assert len(played_on) >= 4 and all(isinstance(env, VecNormalize) and not env.training for env in played_on)

"""``python -m rl_manager.train``: train an SB3 agent with (or without) the bounded manager.

Flags follow rl-zoo3 (``--env --algo -n --seed --eval-freq --eval-episodes -tb -f -params``).
Recipes are zoo-style YAML, ``experiments/hyperparams/<algo>.yml``, shipped in the wheel as
``rl_manager/hyperparams/<algo>.yml`` (see :data:`HYPERPARAMS_DIRS`). Each run gets a folder::

    <log-folder>/<algo>/<EnvName>_<recipe>_<manager>_s<seed>[_<n>]/
        config.yml command.txt audit.jsonl manager_state.json evaluations.npz
        *.monitor.csv tb/ best_model.zip last_model.zip final_model.zip summary.json

``--resume RUN_DIR`` continues a run, killed or finished, up to its budget: from ``last_model.zip``
(model and replay buffer; written every ``--save-freq`` steps or ``--save-interval`` seconds), or
from scratch when it was killed before its first checkpoint. Knobs, manager state and the audit
sequence continue from ``manager_state.json``; the audit records the resume and the lost segment
(the steps after the checkpoint that are trained again). Every file is written atomically.

``--fork-at-first-move`` pairs a managed run with the fixed recipe at the cost of one run plus the fixed run's
tail: up to the manager's first move the managed run *is* the fixed run, so just before that move a resumable
copy is written to ``<run>_fork/`` (``fork.json`` names its step); ``--resume`` a copy of it with ``manager:
none`` in its ``config.yml`` and it continues as the fixed arm. A run whose manager never moves has no fork: it
is its own fixed arm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rl_manager.io import PARTIAL, InputError, atomic_path, load_data, remove_partial_files, write_text_atomic
from rl_manager.knobs import ManagerError
from rl_manager.managers import MANAGERS
from rl_manager.schema import HistoryRow

logger = logging.getLogger("rl_manager.train")

#: where ``<algo>.yml`` recipes are looked up, in order (as rl-zoo3 does): the package data of an
#: installed wheel (``experiments/hyperparams`` ships as ``rl_manager/hyperparams``), then the
#: ``experiments/hyperparams`` folder of a source checkout (editable installs)
HYPERPARAMS_DIRS = (
    Path(__file__).resolve().parent / "hyperparams",
    Path(__file__).resolve().parents[1] / "experiments" / "hyperparams",
)


def recipe_file(algo: str) -> Path:
    """The recipe YAML of ``algo``: the first of :data:`HYPERPARAMS_DIRS` that has one."""
    candidates = [d / f"{algo}.yml" for d in HYPERPARAMS_DIRS]
    return next((c for c in candidates if c.is_file()), candidates[-1])


DEFAULT_ALGO = {"Fetch": "tqc", "PlanarReacher": "ppo"}
#: algorithms whose checkpoints carry a replay buffer (expensive: checkpointed less often)
OFF_POLICY = ("sac", "tqc", "td3", "ddpg")
RECIPE_ALIASES = {"aggressive": "reckless", "baseline": "tuned"}
#: ``--gpu``: the GPU setup measured for FetchPickAndPlace on one H200 + 16 cores (issue 16,
#: ``experiments/results/fetch_throughput``): 16 envs in worker processes, 4 gradient steps of 4,096 per vector
#: step, TensorFloat-32 matmuls, and HER (if the recipe uses it) sampled on the GPU with observations normalised
#: (:data:`GPU_HER_NORMALIZE`). ``-params`` still overrides.
GPU_PRESET: dict[str, Any] = {
    "n_envs": 16,
    "vec_env": "subproc",
    "train_freq": 1,
    "gradient_steps": 4,
    "batch_size": 4096,
    "tf32": True,
}
#: ``--gpu`` with HER: observations (and goals) normalised, clipped at 5 standard deviations, unless the recipe sets
#: its own ``normalize``. Fresh FetchPickAndPlace seeds 269, 270 and 271 learned with it (held-out success 0.93, 0.77
#: and 0.94 at 400k) where the same seeds without it had not learned (0.03, 0.07 and 0.29)
#: (``experiments/results/push_normalize_pilot``); HER's reference implementation normalises the same way.
GPU_HER_NORMALIZE: dict[str, Any] = {"norm_obs": True, "norm_reward": False, "clip_obs": 5.0}
#: keys of a recipe that are not algorithm constructor arguments
RUN_KEYS = (
    "n_timesteps",
    "quick_timesteps",
    "n_envs",
    "vec_env",
    "policy",
    "manager_knobs",
    "targets",
    "gates",
    "env_kwargs",
    "normalize",
)
#: the recipe key ``vec_env``: how its ``n_envs`` copies run (``subproc``: one process each)
VEC_ENVS = ("dummy", "subproc")


def algo_classes() -> dict[str, type]:
    """The supported algorithms by name (``tqc``: :class:`~rl_manager.fast_tqc.FastTQC`, sb3-contrib's TQC
    with the same update and fewer device synchronisations)."""
    from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3

    from rl_manager.fast_tqc import FastTQC

    return {"ppo": PPO, "a2c": A2C, "sac": SAC, "tqc": FastTQC, "td3": TD3, "ddpg": DDPG}


class TrainingError(RuntimeError):
    """Training stopped on an error (non-finite values, a full or read-only run folder): what was
    written is kept and ``--resume`` continues from the last checkpoint."""


def positive(kind: type, least: float = 1e-12):
    """An ``argparse`` type: a number of ``kind`` at least ``least`` (a bad value is a usage error, exit 2)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value >= least:  # (also refuses NaN)
            raise argparse.ArgumentTypeError(f"must be {'positive' if least > 0 else '>= 0'}, got {text}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl_manager.train", description=__doc__.splitlines()[0])
    count = positive(int)
    p.add_argument("--env", default="FetchPickAndPlace", help="env short name or id (default: FetchPickAndPlace)")
    p.add_argument("--algo", default=None, help="ppo|a2c|sac|tqc|td3|ddpg (default: tqc for Fetch, ppo otherwise)")
    p.add_argument("--recipe", default="tuned", help="recipe in the hyperparams file (tuned|conservative|reckless)")
    p.add_argument("-n", "--n-timesteps", type=count, default=None, help="budget (default: the recipe's quick budget)")
    p.add_argument("--full", action="store_true", help="use the recipe's full budget (n_timesteps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-freq", type=count, default=None, help="env steps between decisions (default: budget/20)")
    p.add_argument("--eval-episodes", type=count, default=10)
    p.add_argument("--heldout-episodes", type=count, default=30, help="final evaluation on seeds the manager never saw")
    p.add_argument(
        "--confirm-episodes",
        type=positive(int, 0),
        default=None,
        help="fresh evaluation episodes that must meet the targets before a stop is applied (0: none; default: "
        f"{CONFIRM_EPISODES} where boundaries evaluate through SB3's loop (goal-conditioned tasks), 0 with the paired "
        "evaluator)",
    )
    p.add_argument("-tb", "--tensorboard-log", default=None, help="TensorBoard folder (default: <run>/tb)")
    p.add_argument("-f", "--log-folder", default="logs")
    p.add_argument("--run-dir", default=None, help="exact run folder (default: a new one under the log folder)")
    p.add_argument("-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE", help="recipe overrides")
    p.add_argument("--hyperparams-file", default=None, help="recipe YAML (default: the packaged <algo>.yml)")
    p.add_argument("--manager", default="auto", choices=[*sorted(MANAGERS), "auto"])
    p.add_argument(
        "--llm-gguf",
        default=None,
        metavar="MODEL",
        help="start a local llama-server with this GGUF file or pulled model name (rl-manager llm list) for the "
        "LLM manager; --manager llm without an endpoint uses the default pulled model",
    )
    p.add_argument(
        "--decisions",
        default="auto",
        choices=["auto", "sync", "async"],
        help="async: training never waits for the manager (auto: async for llm, sync otherwise)",
    )
    p.add_argument(
        "--max-age", type=positive(int, 0), default=2, help="async replies older than this many boundaries are stale"
    )
    p.add_argument(
        "--interim",
        default="none",
        choices=sorted(MANAGERS),  # "none" among them: nothing between replies
        help="async: the manager that decides at boundaries where no reply is applied, e.g. rule beside a slow LLM",
    )
    p.add_argument("--no-safety", action="store_true", help="use the plain env, without the safety-cost wrapper")
    p.add_argument("--save-freq", type=count, default=None, help="env steps between resumable checkpoints")
    p.add_argument(
        "--save-interval",
        type=positive(float),
        default=None,
        help="seconds between resumable checkpoints (default: 60 on-policy, 300 off-policy)",
    )
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument(
        "--fork-at-first-move",
        action="store_true",
        help="just before the manager's first move, write a resumable copy of the run to <run>_fork/ "
        "(resumed with manager: none it is the fixed recipe's run, sharing the managed run's past)",
    )
    p.add_argument(
        "--evaluate",
        default=None,
        metavar="MODEL_ZIP",
        help="only the held-out evaluation (--heldout-episodes) of a saved model, with the config.yml beside it",
    )
    p.add_argument("--device", default=None, help="torch device (default: auto; cuda with --gpu)")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="off-policy algorithms: the measured GPU setup (16 env workers, 4 gradient steps of 4,096 per vector "
        "step, TF32, HER sampled on the GPU with observations normalised); -params overrides its keys",
    )
    p.add_argument("-P", "--progress", action="store_true", help="show a progress bar")
    p.add_argument("-v", "--verbose", type=int, default=1)
    return p.parse_args(argv)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key:value`` pairs; values parsed as YAML (``safe_load``)."""
    out: dict[str, Any] = {}
    for item in items:
        if ":" not in item:
            raise InputError(f"-params expects KEY:VALUE, got {item!r}")
        key, value = item.split(":", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def gpu_preset(algo: str, recipe: dict[str, Any], device: str | None) -> dict[str, Any]:
    """The keys ``--gpu`` sets on ``recipe`` (:data:`GPU_PRESET`; with HER, its buffer on the device and
    :data:`GPU_HER_NORMALIZE` where the recipe has no ``normalize`` of its own)."""
    import torch as th

    if algo not in OFF_POLICY:
        raise InputError(f"--gpu is for off-policy algorithms {OFF_POLICY}, not {algo}")
    if device is None and not th.cuda.is_available():
        raise InputError("--gpu needs a CUDA device (torch.cuda.is_available() is False here)")
    preset = dict(GPU_PRESET)
    if recipe.get("replay_buffer_class") == "HerReplayBuffer":
        preset["replay_buffer_class"] = "DeviceHerReplayBuffer"
        preset["normalize"] = recipe.get("normalize", dict(GPU_HER_NORMALIZE))
    return preset


def load_recipe(algo: str, env_id: str, recipe: str, path: str | None) -> dict[str, Any]:
    """The recipe for ``algo`` on ``env_id`` (looked up by the env's short name, Safe prefix dropped)."""
    file = Path(path) if path else recipe_file(algo)
    if not file.is_file():
        raise InputError(f"no hyperparams file {file} for algo {algo!r}")
    table = load_data(file) or {}
    short = env_id.split("/")[-1].split("-v")[0].removeprefix("Safe")
    for key in (env_id, short, short.removesuffix("Easy").removesuffix("Medium").removesuffix("Hard")):
        if key in table:
            recipes = table[key]
            name = RECIPE_ALIASES.get(recipe, recipe)
            if name not in recipes:
                raise InputError(f"{file}: {key} has no recipe {recipe!r}; has {sorted(recipes)}")
            return dict(recipes[name])
    raise InputError(f"{file}: no recipe for {env_id!r} (keys: {sorted(table)})")


def choose_manager(name: str) -> tuple[str, str]:
    """Resolve ``--manager`` (``auto``: the LLM when an endpoint is configured, else rules)."""
    endpoint = os.environ.get("RL_MANAGER_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    if name == "auto":
        name = "llm" if endpoint else "rule"
        why = f"endpoint {endpoint}" if endpoint else "no LLM endpoint configured (RL_MANAGER_BASE_URL)"
        return name, f"auto -> {name}: {why}"
    return name, name


def _local_gguf(spec: str | None) -> str | None:
    """The GGUF file for a local llama-server (issue 13), or ``None`` to use the configured endpoint.

    ``spec`` is a path or a model name of ``rl-manager llm list``; without one, and without any
    endpoint or API key configured, the default pulled model is used (error if not pulled).
    """
    from rl_manager.models import DEFAULT_MODEL, ModelError, resolve_gguf

    configured = any(
        os.environ.get(v) for v in ("RL_MANAGER_BASE_URL", "OPENAI_BASE_URL", "RL_MANAGER_API_KEY", "OPENAI_API_KEY")
    )
    if spec is None and configured:
        return None
    try:
        return str(resolve_gguf(spec or DEFAULT_MODEL))
    except ModelError as exc:
        raise InputError(f"--manager llm without an endpoint needs a local model: {exc}") from exc


def _info_keywords(env_id: str) -> tuple[str, ...]:
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        env.reset(seed=0)
        _, _, _, _, info = env.step(env.action_space.sample())
    finally:
        env.close()
    return tuple(k for k in ("is_success", "episode_cost") if k in info)


def _run_dir(args: argparse.Namespace, algo: str, env_id: str, recipe: str, manager: str) -> Path:
    base = Path(args.log_folder) / algo / f"{env_id.split('/')[-1]}_{recipe}_{manager}_s{args.seed}"
    run_dir, i = base, 1
    while run_dir.exists():
        i += 1
        run_dir = base.with_name(f"{base.name}_{i}")
    return run_dir


def _her_learning_starts(learning_starts: int, env) -> int:
    """HER samples only from finished episodes: ``learning_starts`` (counted over all envs) must cover one
    episode of every env, else SB3 raises on the first gradient step (16 Fetch envs x 50 steps = 800 fit a
    recipe's 1,000; 32 envs do not). Raised to ``n_envs x (max_episode_steps + 1)`` where needed, with a
    warning."""
    spec = env.get_attr("spec", indices=0)[0]
    horizon = getattr(spec, "max_episode_steps", None)
    if horizon is None:
        return learning_starts
    needed = env.num_envs * (horizon + 1)
    if learning_starts < needed:
        warnings.warn(
            f"learning_starts {learning_starts} < n_envs x (max_episode_steps + 1) = {needed}: HER could not "
            f"sample before the first episodes end; using {needed}",
            stacklevel=2,
        )
        return needed
    return learning_starts


def _build_model(config: dict[str, Any], env, run_dir: Path, load_from: Path | None, cls: type | None = None):
    import torch as th
    from stable_baselines3 import HerReplayBuffer
    from stable_baselines3.common.noise import NormalActionNoise

    from rl_manager.device_her import DeviceHerReplayBuffer

    cls = cls or algo_classes()[config["algo"]]
    kwargs = {k: v for k, v in config["recipe"].items() if k not in RUN_KEYS}
    # recipe key tf32: CUDA matmuls in TensorFloat-32 (10-bit mantissa products; +26% env steps/s for the GPU
    # FetchPickAndPlace recipe on an H200, experiments/results/fetch_throughput); off unless the recipe asks
    th.backends.cuda.matmul.allow_tf32 = th.backends.cudnn.allow_tf32 = bool(kwargs.pop("tf32", False))
    buffers = {"HerReplayBuffer": HerReplayBuffer, "DeviceHerReplayBuffer": DeviceHerReplayBuffer}
    if kwargs.get("replay_buffer_class") in buffers:
        kwargs["replay_buffer_class"] = buffers[kwargs["replay_buffer_class"]]
        kwargs["learning_starts"] = _her_learning_starts(kwargs.get("learning_starts", 100), env)
    noise_std = kwargs.pop("noise_std", None)
    kwargs.pop("noise_type", None)
    if noise_std is not None:
        dim = env.action_space.shape[0]
        kwargs["action_noise"] = NormalActionNoise(np.zeros(dim), noise_std * np.ones(dim))
    tb = config["tensorboard_log"]
    if load_from is not None:
        model = cls.load(load_from, env=env, device=config["device"], tensorboard_log=tb)
        buffer = load_from.with_name("last_replay_buffer.pkl")
        if hasattr(model, "load_replay_buffer"):
            if buffer.exists():
                model.load_replay_buffer(buffer)
            else:  # an empty buffer: collect again before the first update (HER cannot sample before an episode ends)
                logger.warning("%s: no replay buffer beside the checkpoint: training refills one first", run_dir)
                model.learning_starts = model.num_timesteps + kwargs.get("learning_starts", model.learning_starts)
        return model
    return cls(
        config["recipe"].get("policy", "MlpPolicy"),
        env,
        seed=config["seed"],
        tensorboard_log=tb,
        device=config["device"],
        verbose=0,
        **kwargs,
    )


def write_evaluations(path: Path, history: list[HistoryRow]) -> None:
    """Write the learning curve (every evaluation of the run) to ``evaluations.npz``."""

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if getattr(r, name) is None else getattr(r, name) for r in history], dtype=float)

    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            timesteps=np.array([r.step for r in history], dtype=np.int64),
            scores=column("score"),
            returns=column("mean_return"),
            costs=column("mean_cost"),
        )


#: base seeds of the paired scene sets: boundary evaluations and the final held-out evaluation use
#: fixed scenes far from any training seed (the same for every run, so arms are paired too)
EVAL_BASE_SEED, HELDOUT_BASE_SEED = 1_000_000, 2_000_000
#: fresh episodes that confirm a stop where boundaries evaluate through SB3's loop: there each boundary plays a few
#: new episodes, and the first two that meet the targets are a favourable draw (SafeFetchReach v14-v16: held-out
#: cost +2.7 above what stopped runs read, +0.9 for runs left to their budget)
CONFIRM_EPISODES = 100


def difficulty_cells(env_id: str) -> dict[str, str] | None:
    """Per-difficulty env ids of the reachers (``None`` for other tasks)."""
    for family in ("PlanarReacher", "PaperReacher"):
        if env_id.startswith(f"rl_manager/{family}-"):
            return {d: f"rl_manager/{family}{d.capitalize()}-v0" for d in ("easy", "medium", "hard")}
    return None


def paired_evaluator(config: dict[str, Any], n_episodes: int, base_seed: int, observation_space):
    """The boundary :class:`~rl_manager.evaluation.PairedEvaluator` of the run's task (``n_episodes`` split
    over its difficulty cells), or ``None`` for dict observations."""
    import gymnasium as gym

    from rl_manager.evaluation import CellSpec, PairedEvaluator

    if isinstance(observation_space, gym.spaces.Dict):
        return None  # goal-conditioned Fetch tasks keep the SB3 evaluation loop
    env_kwargs = config["recipe"].get("env_kwargs") or None
    cells = difficulty_cells(config["env_id"])
    if cells:
        per_cell = max(1, n_episodes // len(cells))
        return PairedEvaluator.for_difficulties(
            cells, n_per_cell=per_cell, base_seed=base_seed, env_kwargs=env_kwargs, stochastic=True
        )
    return PairedEvaluator(
        [CellSpec("all", config["env_id"], n_episodes, env_kwargs=env_kwargs)], base_seed=base_seed, stochastic=True
    )


def _confirm_episodes(config: dict[str, Any], evaluator) -> int:
    """The run's ``confirm_episodes``; unset (and in runs from before it existed): :data:`CONFIRM_EPISODES` when
    boundaries evaluate through SB3's loop, 0 with the paired evaluator (large paired evaluations)."""
    n = config.get("confirm_episodes")
    return int(n) if n is not None else 0 if evaluator is not None else CONFIRM_EPISODES


def heldout_evaluation(model, config: dict[str, Any], n_episodes: int, per_episode: bool = False) -> dict[str, Any]:
    """Deterministic and stochastic evaluation on seeds the manager never saw.

    Tasks with difficulty cells play ``n_episodes`` per difficulty on a fixed held-out scene set.

    :param per_episode: also keep every episode's figures (tasks without difficulty cells), under ``"episodes"``
        in each entry: success, cost and return and, for goal-conditioned envs, the scene (see
        :class:`~rl_manager.telemetry.EvalResult`). Where an env's steps draw nothing from its random generator
        (the Fetch tasks), the scenes depend on the run's seed only, so two arms of one seed are compared episode
        by episode.
    """
    from rl_manager.evaluation import PairedEvaluator, concat_results

    cells = difficulty_cells(config["env_id"])
    if cells:
        evaluator = PairedEvaluator.for_difficulties(
            cells, n_per_cell=n_episodes, base_seed=HELDOUT_BASE_SEED, env_kwargs=config["recipe"].get("env_kwargs")
        )
        out: dict[str, Any] = {}
        try:
            for mode, deterministic in (("deterministic", True), ("stochastic", False)):
                results = evaluator.play(model, deterministic=deterministic)
                out[f"{mode}/all"] = concat_results(results).metrics().model_dump(mode="json")
                for cell, result in zip(evaluator.cells, results, strict=True):
                    out[f"{mode}/{cell.name}"] = result.metrics().model_dump(mode="json")
        finally:
            evaluator.close()
        return out
    return _sb3_heldout(model, config, n_episodes, per_episode)


def _sb3_heldout(model, config: dict[str, Any], n_episodes: int, per_episode: bool = False) -> dict[str, Any]:
    """Held-out evaluation through SB3 vec envs (tasks without difficulty cells)."""
    from stable_baselines3.common.env_util import make_vec_env

    from rl_manager.callback import eval_normalizer
    from rl_manager.telemetry import evaluate

    out: dict[str, Any] = {}
    env_ids = {"all": config["env_id"]}
    for mode, deterministic in (("deterministic", True), ("stochastic", False)):
        for cell, env_id in env_ids.items():
            env = make_vec_env(
                env_id, n_envs=1, seed=config["seed"] + 20_000, env_kwargs=config["recipe"].get("env_kwargs")
            )
            env = eval_normalizer(env, model.get_vec_normalize_env())
            result = evaluate(model, env, n_episodes, deterministic=deterministic)
            env.close()
            out[f"{mode}/{cell}"] = result.metrics().model_dump(mode="json")
            if per_episode:
                out[f"{mode}/{cell}"]["episodes"] = result.episodes()
    return out


def evaluate_saved(path: Path, n_episodes: int, device: str | None = None) -> int:
    """The held-out evaluation of a saved model (e.g. a ``best_model.zip`` brought back from a run lost with its
    machine), on the same seeds as at the end of its run; written to ``heldout_<model>.json`` beside it, and each
    episode's figures to ``heldout_<model>_episodes.json``.

    :param path: the model; its run's ``config.yml`` must lie beside it.
    :param device: torch device (default: auto, whatever the run trained on).
    """
    config_file = path.parent / "config.yml"
    if not path.is_file() or not config_file.is_file():
        raise InputError(f"{path}: needs the saved model and its run's config.yml beside it")
    config = load_data(config_file)
    # one env in this process is enough to rebuild the model (HER's buffer needs an env)
    from rl_manager.callback import normalizer_path

    env = make_train_env(config["env_id"], {**config["recipe"], "n_envs": 1, "vec_env": "dummy"}, seed=config["seed"])
    if config["recipe"].get("normalize"):
        stats = normalizer_path(path)
        if not stats.is_file():
            raise InputError(f"{path}: its recipe normalises observations; needs {stats.name} beside it")
        env = normalize_env(env, config["recipe"], stats)
    try:
        model = algo_classes()[config["algo"]].load(path, env=env, device=device or "auto")
        heldout = heldout_evaluation(model, config, n_episodes, per_episode=True)
    finally:
        env.close()
    dest = path.with_name(f"heldout_{path.stem}.json")
    # each episode's figures beside the aggregates, in one compact file (paired comparisons of two arms' models)
    episodes = {k: v.pop("episodes") for k, v in heldout.items() if "episodes" in v}
    if episodes:
        write_text_atomic(dest.with_name(f"heldout_{path.stem}_episodes.json"), json.dumps(episodes))
    write_text_atomic(dest, json.dumps({"model": str(path), "episodes": n_episodes, "heldout": heldout}, indent=2))
    print(f"{_heldout_line(heldout)} ({n_episodes} episodes of {path}) -> {dest}")
    return 0


def _heldout_line(heldout: dict[str, Any]) -> str:
    """One line of a held-out evaluation's deterministic figures."""
    held = heldout["deterministic/all"]
    return (
        f"held-out deterministic: return {held['mean_return']}, success {held['success_rate']}, "
        f"safe success {held['safe_success_rate']}, cost {held['mean_cost']}"
    )


def _training_error(exc: BaseException, model, manager_cb, run_dir: Path) -> TrainingError:
    """Audit the failure (if the run folder still takes a line) and say what is kept and how to go on."""
    lines = str(exc).strip().splitlines() or [""]
    what = f"{type(exc).__name__}: {lines[0]}" + (" [...]" if len(lines) > 1 else "")  # (torch appends whole tensors)
    try:
        manager_cb.controller.note(f"training stopped at step {model.num_timesteps}: {what}")
    except OSError:
        pass  # the folder takes no more writes: the message below still says what is kept
    last = run_dir / "last_model.zip"
    kept = f"last_model.zip (step {_checkpoint_step(last)})" if last.exists() else "no checkpoint yet"
    return TrainingError(
        f"training stopped at step {model.num_timesteps}: {what}\n"
        f"kept in {run_dir}: audit.jsonl, manager_state.json, {kept}; "
        f"fix the cause, then continue with: python -m rl_manager.train --resume {run_dir}"
    )


def _checkpoint_step(path: Path) -> int | str:
    """``num_timesteps`` saved in an SB3 zip (read from its ``data`` member, without loading the model)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return int(json.loads(z.read("data"))["num_timesteps"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return "?"


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on (for ``summary.json``)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in (
        "rl_manager",
        "stable-baselines3",
        "sb3-contrib",
        "gymnasium",
        "gymnasium-robotics",
        "mujoco",
        "torch",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def _check_manager_keys(recipe: dict[str, Any]) -> None:
    """Validate the recipe's ``targets`` and ``gates`` before a run folder is made.

    :raises InputError: for a key either model does not know or a value it refuses.
    """
    from pydantic import ValidationError

    from rl_manager.menu import GateConfig
    from rl_manager.schema import Targets

    for key, model in (("targets", Targets), ("gates", GateConfig)):
        try:
            model.model_validate(recipe.get(key, {}))
        except ValidationError as exc:
            raise InputError(f"recipe key {key}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return _main(args)
    except (InputError, ManagerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


def _main(args: argparse.Namespace) -> int:
    import rl_manager.envs  # noqa: F401  (registers the env ids)
    from rl_manager.envs import resolve_env_id

    if args.evaluate:
        return evaluate_saved(Path(args.evaluate), args.heldout_episodes, args.device)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yml").is_file():
            raise InputError(f"{run_dir}: not a run folder (no config.yml)")
        config = load_data(run_dir / "config.yml")
        manager_name, manager_line = config["manager"], f"{config['manager']} (resumed)"
    else:
        try:
            env_id = resolve_env_id(args.env, safe=not args.no_safety and "Fetch" in args.env)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        short = env_id.split("/")[-1]
        algo = (args.algo or next((a for k, a in DEFAULT_ALGO.items() if k in short), "ppo")).lower()
        if algo not in algo_classes():
            raise InputError(f"unknown algo {algo!r}; choose from {sorted(algo_classes())}")
        recipe_name = RECIPE_ALIASES.get(args.recipe, args.recipe)
        recipe = load_recipe(algo, env_id, args.recipe, args.hyperparams_file)
        if args.gpu:
            recipe.update(gpu_preset(algo, recipe, args.device))
        recipe.update(parse_overrides(args.hyperparams))
        _check_normalize(recipe.get("normalize", False))
        if recipe.get("vec_env", "dummy") not in VEC_ENVS:
            raise InputError(f"recipe key vec_env must be one of {VEC_ENVS}, not {recipe['vec_env']!r}")
        _check_manager_keys(recipe)
        manager_name, manager_line = choose_manager(args.manager)
        if args.llm_gguf:
            if args.manager not in ("auto", "llm"):
                raise InputError(f"--llm-gguf needs --manager llm (or auto), not {args.manager}")
            manager_name = "llm"
        llm_gguf = _local_gguf(args.llm_gguf) if manager_name == "llm" else None
        if llm_gguf is not None:
            manager_line = f"llm: local llama-server with {llm_gguf}"
        budget = args.n_timesteps or int(recipe["n_timesteps"] if args.full else recipe.get("quick_timesteps", 10_000))
        run_dir = Path(args.run_dir) if args.run_dir else _run_dir(args, algo, env_id, recipe_name, manager_name)
        if (run_dir / "config.yml").exists():
            raise InputError(f"{run_dir} already holds a run: use --resume {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "env_id": env_id,
            "algo": algo,
            "recipe_name": recipe_name,
            "recipe": recipe,
            "manager": manager_name,
            "seed": args.seed,
            "n_timesteps": budget,
            "eval_freq": args.eval_freq or max(250, budget // 20),
            "eval_episodes": args.eval_episodes,
            "heldout_episodes": args.heldout_episodes,
            "confirm_episodes": args.confirm_episodes,
            # off-policy checkpoints carry the replay buffer (hundreds of MB): at most every 50k steps,
            # but at least once mid-run so that short runs can be resumed too
            "save_freq": args.save_freq or max(budget // 10, min(50_000, budget // 2)),
            "save_interval_s": args.save_interval or (300.0 if algo in OFF_POLICY else 60.0),
            "tensorboard_log": args.tensorboard_log or str(run_dir / "tb"),
            "device": args.device or ("cuda" if args.gpu else "auto"),
            "info_keywords": list(_info_keywords(env_id)),
            "async_decisions": args.decisions == "async" or (args.decisions == "auto" and manager_name == "llm"),
            "max_age": args.max_age,
            "interim": None if args.interim == "none" else args.interim,
            "llm_gguf": llm_gguf,
            "fork_at_first_move": args.fork_at_first_move,
        }
        write_text_atomic(run_dir / "config.yml", yaml.safe_dump(config, sort_keys=False))
    with (run_dir / "command.txt").open("a") as f:
        f.write(" ".join([sys.executable, "-m", "rl_manager.train", *sys.argv[1:]]) + "\n")
    print(f"manager: {manager_line}")
    print(f"run: {run_dir}  env: {config['env_id']}  algo: {config['algo']}  recipe: {config['recipe_name']}")
    mode = "async" if config.get("async_decisions") else "sync"
    print(f"budget: {config['n_timesteps']} steps, {mode} decision every {config['eval_freq']} steps")
    with contextlib.ExitStack() as stack:
        if config.get("llm_gguf"):
            from rl_manager.llm_server import LlamaServer, LlamaServerError

            try:
                # sync: training waits for the decision, the server gets every core; async: one is left to training
                cores = os.cpu_count() or 1
                threads = max(1, cores - 1) if config.get("async_decisions") else cores
                server = stack.enter_context(
                    LlamaServer(config["llm_gguf"], threads=threads, log_path=run_dir / "llama_server.log")
                )
            except LlamaServerError as exc:
                raise InputError(str(exc)) from exc
            os.environ["RL_MANAGER_BASE_URL"], os.environ["RL_MANAGER_MODEL"] = server.base_url, server.model
            print(f"llama-server: {server.base_url} (model {server.model})")
        return train(config, run_dir, resume=bool(args.resume), progress=args.progress, verbose=args.verbose)


def make_train_env(env_id: str, recipe: dict[str, Any], seed: int, **kwargs: Any):
    """The recipe's ``n_envs`` training envs, in worker processes when its ``vec_env`` is ``subproc``.

    :param kwargs: more :func:`~stable_baselines3.common.env_util.make_vec_env` arguments (monitor files).
    """
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    n_envs = int(recipe.get("n_envs", 1))
    subproc = recipe.get("vec_env") == "subproc" and n_envs > 1
    env_kwargs = recipe.get("env_kwargs") or None
    env = make_vec_env(
        # gymnasium imports the module before the "module:id" lookup: worker processes register the envs too
        f"rl_manager.envs:{env_id}" if subproc else env_id,
        n_envs=n_envs,
        seed=seed,
        env_kwargs=env_kwargs,
        # MuJoCo steps in parallel worker processes; the manager's env knobs reach them through set_attr
        vec_env_cls=SubprocVecEnv if subproc else None,
        **kwargs,
    )
    if subproc and env.has_attr("compute_reward"):
        import gymnasium as gym

        from rl_manager.vec_env import LocalComputeReward

        env = LocalComputeReward(env, lambda: gym.make(env_id, **(env_kwargs or {})))
    return env


def _check_normalize(spec: Any) -> None:
    """The recipe key ``normalize``: a bool, or a mapping of ``VecNormalize`` keyword arguments."""
    import inspect

    from stable_baselines3.common.vec_env import VecNormalize

    known = set(inspect.signature(VecNormalize).parameters) - {"venv"}
    if not isinstance(spec, (bool, dict)) or (isinstance(spec, dict) and not set(spec) <= known):
        raise InputError(f"recipe key normalize must be true/false or a mapping of {sorted(known)}, not {spec!r}")


def normalize_env(env, recipe: dict[str, Any], stats: Path | None = None):
    """The recipe key ``normalize`` (rl-zoo3's): ``true`` (``VecNormalize``'s defaults) or a mapping of its keyword
    arguments (e.g. ``{norm_obs: true, norm_reward: false}``); ``gamma`` is the recipe's unless given. ``stats``: a
    file saved beside a checkpoint (:func:`~rl_manager.callback.normalizer_path`) to continue from, if it exists.
    """
    spec = recipe.get("normalize")
    if not spec:
        return env
    from stable_baselines3.common.vec_env import VecNormalize

    if stats is not None and stats.is_file():
        return VecNormalize.load(str(stats), env)
    kwargs = {} if spec is True else dict(spec)
    kwargs.setdefault("gamma", recipe.get("gamma", 0.99))
    return VecNormalize(env, **kwargs)


def fork_dir(run_dir: Path) -> Path:
    """Where ``--fork-at-first-move`` writes its copy of ``run_dir``."""
    return run_dir.with_name(run_dir.name + "_fork")


def fork_run(model: Any, manager_cb: Any, run_dir: Path, step: int) -> Path:
    """Checkpoint the run as it stands (model, replay buffer, manager state: before the move about to be applied)
    and copy its folder to :func:`fork_dir`, which appears whole (written beside it, then renamed)."""
    from rl_manager.callback import save_last

    manager_cb.controller.save_state()
    save_last(model, run_dir)
    dest = fork_dir(run_dir)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns("tb", f".*{PARTIAL}*"))
    write_text_atomic(partial / "fork.json", json.dumps({"step": int(step), "source": str(run_dir)}))
    shutil.rmtree(dest, ignore_errors=True)  # one from before a kill: the resumed run's first move is the one
    partial.rename(dest)
    logger.info("step %d: forked to %s before the first move", step, dest)
    return dest


def train(
    config: dict[str, Any], run_dir: Path, *, resume: bool = False, progress: bool = False, verbose: int = 1
) -> int:
    """Run (or resume) one training run described by ``config`` in ``run_dir``."""
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecCheckNan

    import rl_manager.policies  # noqa: F401  (registers SplitLRMlpPolicy)
    from rl_manager.callback import LastCheckpoint, ManagerCallback, normalizer_path, save_last, save_model
    from rl_manager.knobs import KnobBounds
    from rl_manager.menu import GateConfig
    from rl_manager.schema import Targets

    recipe = config["recipe"]
    n_envs = int(recipe.get("n_envs", 1))
    env_kwargs = recipe.get("env_kwargs") or None
    env = make_train_env(
        config["env_id"],
        recipe,
        seed=config["seed"] + (1000 if resume else 0),
        monitor_dir=str(run_dir),
        # a resumed run appends to its episode logs
        monitor_kwargs={"info_keywords": tuple(config["info_keywords"]), "override_existing": not resume},
    )
    env = normalize_env(env, recipe, normalizer_path(run_dir / "last_model.zip") if resume else None)
    # a NaN/inf observation, reward or action stops training at once with a clear error, before
    # it reaches the weights (and the last checkpoint)
    env = VecCheckNan(env, raise_exception=True)
    eval_env = make_vec_env(config["env_id"], n_envs=1, seed=config["seed"] + 10_000, env_kwargs=env_kwargs)
    evaluator = paired_evaluator(config, config["eval_episodes"], EVAL_BASE_SEED, env.observation_space)
    if resume and (partial := remove_partial_files(run_dir)):
        logger.warning("removed files a killed process was writing: %s", ", ".join(p.name for p in partial))
    checkpoint = run_dir / "last_model.zip" if resume else None
    if checkpoint is not None and not checkpoint.exists():
        logger.warning("%s: no last_model.zip (killed before the first checkpoint): training from step 0", run_dir)
        checkpoint = None
    model = _build_model(config, env, run_dir, checkpoint)
    knobs = {k: KnobBounds.model_validate(v) for k, v in (recipe.get("manager_knobs") or {}).items()}
    manager_cb = ManagerCallback(
        config["manager"],
        run_dir=run_dir,
        eval_env=eval_env,
        eval_freq=max(1, config["eval_freq"] // n_envs),
        n_eval_episodes=config["eval_episodes"],
        fallback=None if config["manager"] == "none" else "rule",
        targets=Targets.model_validate(recipe.get("targets", {})),
        gates=GateConfig.model_validate(recipe.get("gates", {})),
        knobs=knobs,
        async_decisions=bool(config.get("async_decisions", False)),
        max_age=int(config.get("max_age", 2)),
        interim=config.get("interim"),
        end_on_best=bool(getattr(MANAGERS.get(config["manager"]), "end_on_best", False)),
        evaluator=evaluator,
        confirm_episodes=_confirm_episodes(config, evaluator),
        verbose=verbose,
    )
    if config.get("fork_at_first_move"):
        manager_cb.controller.on_first_move = lambda step: fork_run(model, manager_cb, run_dir, step)
    remaining = config["n_timesteps"] - model.num_timesteps
    saver = LastCheckpoint(run_dir, config["save_freq"], config.get("save_interval_s"))
    start = time.time()
    if remaining > 0:
        try:
            model.learn(
                remaining,
                callback=CallbackList([manager_cb, saver]),
                reset_num_timesteps=checkpoint is None,
                progress_bar=progress,
                tb_log_name="run",
            )
        except (ValueError, FloatingPointError, RuntimeError, OSError) as exc:
            raise _training_error(exc, model, manager_cb, run_dir) from exc
    else:
        from stable_baselines3.common.logger import configure

        model.set_logger(configure(None, []))  # nothing left to train: still load the manager state for the summary
        manager_cb.init_callback(model)
    elapsed = time.time() - start
    save_last(model, run_dir)
    save_model(model, run_dir / "final_model.zip")
    history = manager_cb.state.history
    write_evaluations(run_dir / "evaluations.npz", history)
    summary = {
        "env_id": config["env_id"],
        "algo": config["algo"],
        "recipe": config["recipe_name"],
        "seed": config["seed"],
        "timesteps": int(model.num_timesteps),
        "wall_time_s": round(elapsed, 2),
        "steps_per_s": round(max(0, remaining) / elapsed, 2) if elapsed > 0 else None,
        "manager": manager_cb.summary(),
        "last_evaluation": history[-1].model_dump(mode="json") if history else None,
        "heldout": heldout_evaluation(model, config, config["heldout_episodes"]),
        "software": software_versions(),
    }
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    print(
        f"done: {model.num_timesteps} steps in {elapsed:.0f}s; {_heldout_line(summary['heldout'])}; "
        f"decisions {manager_cb.counts['decisions']}, applied {manager_cb.counts['applied']}"
    )
    print(f"audit: python -m rl_manager.audit show {run_dir}")
    env.close()
    eval_env.close()
    if evaluator is not None:
        evaluator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

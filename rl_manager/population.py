"""Population-based training baselines: PBT and PB2 through Ray Tune, over the manager's knobs.

``python -m rl_manager.population --env PaperReacher --recipe conservative --scheduler pbt --population 4``
trains a population of SB3 runs of one recipe and lets Ray Tune's :class:`~ray.tune.schedulers.PopulationBasedTraining`
(or :class:`~ray.tune.schedulers.pb2.PB2`) copy the weights of good members into bad ones and perturb their
knobs. The search space is the manager's: the knobs :func:`~rl_manager.actuators.discover_actuators` finds on
the recipe's model, within the same bounds, perturbed by the menu's multipliers (PBT) or searched within
the bounds (PB2). Every member starts from the recipe (the start the manager gets), with its own seed.

Each member is scored at every ``eval_freq`` env steps on the same paired evaluation scenes as a managed
run (:func:`rl_manager.train.paired_evaluator`). A copy restores the donor's weights and optimiser state
with ``set_parameters`` (hyperparameters are not part of it) and then writes the member's own, perturbed
knobs; the values read back from the model are reported with every result (``knob/<name>``), so a
perturbation that did not take effect is visible (the pitfall of ray issue 62173). At the end the member
with the best last score gets the held-out evaluation of :func:`rl_manager.train.heldout_evaluation`;
``summary.json`` holds it, the env steps of the whole population and the knob trajectories.

Install with ``pip install "rl_manager[ray]"`` (PB2 also needs ``GPy`` and ``scikit-learn``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

#: result keys
SCORE, STEPS = "score", "timesteps_total"


def _model(run: dict[str, Any], seed: int, workdir: Path):
    """The recipe's env, SB3 model and knobs (actuators) for one member."""
    from stable_baselines3.common.env_util import make_vec_env

    import rl_manager.envs  # noqa: F401  (registers the env ids)
    import rl_manager.policies  # noqa: F401  (registers SplitLRMlpPolicy)
    from rl_manager.actuators import discover_actuators
    from rl_manager.knobs import KnobBounds
    from rl_manager.train import _build_model

    recipe = run["recipe"]
    env = make_vec_env(
        run["env_id"], n_envs=int(recipe.get("n_envs", 1)), seed=seed, env_kwargs=recipe.get("env_kwargs") or None
    )
    config = {**run, "seed": seed, "tensorboard_log": None, "device": "cpu"}
    model = _build_model(config, env, workdir, None)
    overrides = {k: KnobBounds.model_validate(v) for k, v in (recipe.get("manager_knobs") or {}).items()}
    return env, model, discover_actuators(model, overrides)


def search_space(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The manager's knobs of the recipe: ``{name: {value, low, high, multipliers, values, scale}}``."""
    with tempfile.TemporaryDirectory() as tmp:
        env, model, actuators = _model(run, 0, Path(tmp))
        try:
            return {
                name: {
                    "value": knob.read(model),
                    "low": knob.low,
                    "high": knob.high,
                    "multipliers": list(knob.multipliers),
                    "values": list(knob.values),
                    "scale": knob.scale,
                }
                for name, knob in actuators.items()
            }
        finally:
            env.close()


class SB3Member(tune.Trainable):
    """One member of the population: an SB3 model trained ``eval_freq`` env steps per :meth:`step`.

    ``config`` holds the knob values (by knob name) and ``run``: the run description (env id, algo,
    recipe, seed, eval_freq, eval_episodes).
    """

    def setup(self, config: dict[str, Any]) -> None:
        from rl_manager.train import EVAL_BASE_SEED, paired_evaluator

        self.run_cfg = config["run"]
        seed = int(self.run_cfg["seed"]) * 100 + int(config.get("member", 0))
        self.env, self.model, self.actuators = _model(self.run_cfg, seed, Path(self.logdir))
        self.evaluator = paired_evaluator(
            self.run_cfg, self.run_cfg["eval_episodes"], EVAL_BASE_SEED, self.env.observation_space
        )
        self._apply(config)
        # env steps this member trained, over restarts of its actor (a copy rewinds num_timesteps)
        self._counter = Path(self.logdir) / "steps_trained.txt"
        self.steps_trained = int(self._counter.read_text()) if self._counter.exists() else 0

    def _apply(self, config: dict[str, Any]) -> None:
        """Write the member's knobs into the model (clamped into their bounds; :meth:`step` reports the
        values read back)."""
        for name, knob in self.actuators.items():
            if name in config:
                knob.write(self.model, float(config[name]))

    def step(self) -> dict[str, Any]:
        from rl_manager.evaluation import concat_results

        self.model.learn(int(self.run_cfg["eval_freq"]), reset_num_timesteps=False)
        self.steps_trained += int(self.run_cfg["eval_freq"])
        self._counter.write_text(str(self.steps_trained))
        metrics = concat_results(self.evaluator.play(self.model, deterministic=True)).metrics()
        score = metrics.safe_success_rate if metrics.safe_success_rate is not None else metrics.mean_return
        effective = {name: knob.read(self.model) for name, knob in self.actuators.items()}
        return {
            SCORE: float(score),
            "violation_rate": metrics.violation_rate,
            "env_steps": int(self.model.num_timesteps),
            "steps_trained": self.steps_trained,
            **{f"knob/{k}": v for k, v in effective.items()},
        }

    def _configured(self, config: dict[str, Any]) -> dict[str, float]:
        """The knob values ``config`` sets (as configured, before any clamping by the model)."""
        return {name: float(config[name]) for name in self.actuators if name in config}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        # Tune passes this folder to load_checkpoint
        self.model.save(Path(checkpoint_dir) / "model.zip")
        state = {"num_timesteps": int(self.model.num_timesteps), "knobs": self._configured(self.config)}
        (Path(checkpoint_dir) / "steps.json").write_text(json.dumps(state))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Restore weights and optimiser state; the member keeps its own (perturbed) knobs.

        A knob that is a parameter (the action std is ``log_std``) comes back with the weights. It is written
        again only where the member's configured value differs from the one the checkpoint was trained with
        (an exploit that perturbed it): a plain restore after a failure keeps the learned value.
        """
        self.model.set_parameters(str(Path(checkpoint_dir) / "model.zip"), exact_match=True, device=self.model.device)
        state = json.loads((Path(checkpoint_dir) / "steps.json").read_text())
        # the env-step count goes with the weights, as Tune's training_iteration does
        self.model.num_timesteps = state["num_timesteps"]
        saved = state.get("knobs")  # absent in checkpoints of older versions: write every knob
        mine = self._configured(self.config)
        self._apply({k: v for k, v in mine.items() if saved is None or saved.get(k) != v})

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._apply(new_config)
        self.config = new_config
        return True

    def cleanup(self) -> None:
        self.env.close()
        if self.evaluator is not None:
            self.evaluator.close()


def scheduler(kind: str, space: dict[str, dict[str, Any]], perturb_every: int):
    """Ray Tune's PBT (mutations: the menu's multipliers and listed values, resampling within the bounds)
    or PB2 (a GP-bandit search within the bounds of the continuous knobs; listed-value knobs stay put).

    Both are synchronous: every ``perturb_every`` evaluations the whole population is ranked at once, so
    a member that runs ahead cannot escape the exploit step (with populations of 2-4 it otherwise does).
    """
    from ray.tune.schedulers import PopulationBasedTraining

    from rl_manager.schema import DEFAULT_MULTIPLIERS

    if kind == "pbt":
        mutations: dict[str, Any] = {}
        for name, k in space.items():
            if k["values"]:
                mutations[name] = sorted(set(k["values"]) | {k["value"]})
            elif k["scale"] == "log" and k["low"] > 0:
                mutations[name] = tune.loguniform(k["low"], k["high"])
            else:
                mutations[name] = tune.uniform(k["low"], k["high"])

        def clip(config: dict[str, Any]) -> dict[str, Any]:
            # a perturbation (value x multiplier) may leave the bounds; the model clamps what it is given,
            # so an unclipped config would drift away from the value in effect, and later perturbations
            # of it would have no effect
            for name, k in space.items():
                if name in config and not k["values"]:
                    config[name] = min(k["high"], max(k["low"], float(config[name])))
            return config

        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=perturb_every,
            hyperparam_mutations=mutations,
            custom_explore_fn=clip,
            perturbation_factors=tuple(DEFAULT_MULTIPLIERS),
            resample_probability=0.25,
            quantile_fraction=0.25,
            synch=True,
        )
    if kind == "pb2":
        from ray.tune.schedulers.pb2 import PB2

        bounds = {name: [k["low"], k["high"]] for name, k in space.items() if not k["values"]}
        return PB2(
            time_attr="training_iteration",
            perturbation_interval=perturb_every,
            hyperparam_bounds=bounds,
            quantile_fraction=0.25,
            synch=True,
        )
    raise ValueError(f"unknown scheduler {kind!r}: pbt or pb2")


def collect_members(grid, space: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each member of a finished Tune run: last score, env steps, config, trajectory, checkpoint."""
    members = []
    for index, result in enumerate(grid):  # (the "member" key is copied from the donor on exploit)
        df = result.metrics_dataframe
        knob_cols = [c for c in df.columns if c.startswith("knob/")]
        members.append(
            {
                "member": index,
                "final_score": float(df[SCORE].iloc[-1]),
                # what this member trained (a copy rewinds its step count to the donor's)
                "env_steps": int(df["steps_trained"].max()),
                "config": {k: v for k, v in result.config.items() if k in space},
                "trajectory": [
                    [int(row["env_steps"]), float(row[SCORE]), {c[5:]: float(row[c]) for c in knob_cols}]
                    for _, row in df.iterrows()
                ],
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
            }
        )
    return sorted(members, key=lambda m: m["member"])


def best_heldout(run: dict[str, Any], best: dict[str, Any], episodes: int) -> dict[str, Any]:
    """The held-out evaluation of a member (from :func:`collect_members`): its knobs, then its checkpoint."""
    from rl_manager.train import heldout_evaluation

    with tempfile.TemporaryDirectory() as tmp:
        env, model, actuators = _model(run, 0, Path(tmp))
        try:
            for name, value in best["config"].items():
                actuators[name].write(model, float(value))
            # after the knobs: a knob that is a parameter (the action std) comes back as learned
            model.set_parameters(str(Path(best["checkpoint"]) / "model.zip"), exact_match=True)
            return heldout_evaluation(model, run, episodes)
        finally:
            env.close()


def run_population(
    run: dict[str, Any],
    out: Path,
    *,
    kind: str = "pbt",
    population: int = 4,
    n_timesteps: int = 1_024_000,
    perturb_every: int = 4,
    heldout_episodes: int = 240,
) -> dict[str, Any]:
    """Train a population of ``run`` under PBT/PB2 and write ``out/summary.json`` (returned).

    :param run: ``env_id``, ``algo``, ``recipe`` (dict), ``seed``, ``eval_freq``, ``eval_episodes``.
    :param perturb_every: evaluations between exploit/explore steps.
    """
    import ray

    from rl_manager.io import write_text_atomic

    space = search_space(run)
    param_space = {name: k["value"] for name, k in space.items()}
    param_space |= {"run": run, "member": tune.grid_search(list(range(population)))}
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    start = time.time()
    try:
        tuner = tune.Tuner(
            tune.with_resources(SB3Member, {"cpu": 1}),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                scheduler=scheduler(kind, space, perturb_every), metric=SCORE, mode="max", reuse_actors=False
            ),
            run_config=tune.RunConfig(
                name=kind,
                storage_path=str(out.resolve()),
                stop={"training_iteration": max(1, n_timesteps // int(run["eval_freq"]))},
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4, checkpoint_at_end=True),
                # a member whose worker dies is retried from its last checkpoint: without retries the
                # synchronous scheduler waits for it forever (a PBT population was lost so)
                failure_config=tune.FailureConfig(max_failures=3),
                verbose=0,
            ),
        )
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    wall = time.time() - start
    members = collect_members(grid, space)
    best = max(members, key=lambda m: m["final_score"])
    heldout = best_heldout(run, best, heldout_episodes)
    summary = {
        "env_id": run["env_id"],
        "algo": run["algo"],
        "recipe": run.get("recipe_name", ""),
        "seed": run["seed"],
        "scheduler": kind,
        "population": population,
        "perturb_every": perturb_every,
        "timesteps": n_timesteps,
        "env_steps_total": sum(m["env_steps"] for m in members),  # what the population consumed
        "wall_time_s": round(wall, 2),
        "best_member": best["member"],
        "heldout": heldout,
        "members": members,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl_manager.population", description=__doc__.splitlines()[0])
    p.add_argument("--env", default="PaperReacher")
    p.add_argument("--algo", default="ppo")
    p.add_argument("--recipe", default="conservative")
    p.add_argument("--scheduler", choices=("pbt", "pb2"), default="pbt")
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-n", "--n-timesteps", type=int, default=1_024_000, help="env steps per member")
    p.add_argument("--eval-freq", type=int, default=20_480, help="env steps between evaluations (Tune iterations)")
    p.add_argument("--eval-episodes", type=int, default=150)
    p.add_argument("--heldout-episodes", type=int, default=240)
    p.add_argument("--perturb-every", type=int, default=4, help="evaluations between exploit/explore steps")
    p.add_argument("-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE")
    p.add_argument("-o", "--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import rl_manager.envs  # noqa: F401
    from rl_manager.envs import resolve_env_id
    from rl_manager.io import InputError
    from rl_manager.train import RECIPE_ALIASES, load_recipe, parse_overrides

    args = parse_args(argv)
    try:
        env_id = resolve_env_id(args.env, safe="Fetch" in args.env)
        recipe = load_recipe(args.algo, env_id, args.recipe, None)
        recipe.update(parse_overrides(args.hyperparams))
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = {
        "env_id": env_id,
        "algo": args.algo,
        "recipe_name": RECIPE_ALIASES.get(args.recipe, args.recipe),
        "recipe": recipe,
        "seed": args.seed,
        "eval_freq": args.eval_freq,
        "eval_episodes": args.eval_episodes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run_population(
        run,
        args.out,
        kind=args.scheduler,
        population=args.population,
        n_timesteps=args.n_timesteps,
        perturb_every=args.perturb_every,
        heldout_episodes=args.heldout_episodes,
    )
    held = summary["heldout"]["deterministic/all"]
    print(
        f"{args.scheduler}({args.population}): best member {summary['best_member']}, held-out deterministic safe "
        f"success {held['safe_success_rate']}, violation rate {held['violation_rate']}; "
        f"{summary['env_steps_total']} env steps in {summary['wall_time_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

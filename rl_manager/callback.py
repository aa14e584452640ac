"""``ManagerCallback``: the bounded manager as a Stable-Baselines3 callback.

Two ways to use it::

    # 1. after each evaluation of an EvalCallback
    EvalCallback(eval_env, eval_freq=5000, callback_after_eval=ManagerCallback(run_dir="runs/x"))
    # 2. standalone: it runs its own evaluation every ``eval_freq`` calls (or, without an
    #    ``eval_env``, decides at checkpoint boundaries from training-window telemetry)
    model.learn(100_000, callback=ManagerCallback(eval_env=eval_env, eval_freq=5000, run_dir="runs/x"))

It never decides from ``_on_rollout_end`` (off-policy algorithms fire it every ``train_freq``
steps). A validated ``stop_training`` makes ``_on_step`` return ``False``, which ends training.
The decision loop is the integration-agnostic :class:`~rl_manager.controller.Controller`; this
module only observes the SB3 run, exposes its knobs and checkpoints its weights.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize, unwrap_vec_normalize

from rl_manager.actuators import KnobBounds, discover_actuators
from rl_manager.controller import ACTION_CODES, Controlled, Controller, Observation
from rl_manager.evaluation import PairedEvaluator
from rl_manager.io import atomic_path
from rl_manager.knobs import Knob
from rl_manager.managers import Manager
from rl_manager.menu import GateConfig
from rl_manager.schema import EvalMetrics, Targets
from rl_manager.telemetry import EvalResult, LoggerCapture, algo_health, evaluate, train_window

logger = logging.getLogger(__name__)

#: the key of an in-memory checkpoint that holds a ``VecNormalize`` training env's ``(obs_rms, ret_rms)``
NORMALIZER_KEY = "vec_normalize"


class LastCheckpoint(BaseCallback):
    """Saves ``last_model.zip`` (+ the replay buffer of off-policy algorithms) every ``save_freq`` steps
    or every ``save_interval_s`` seconds, whichever comes first; each file is written atomically.

    On-policy algorithms are saved when a rollout starts (their weights then hold every step
    counted so far, and a resumed run ends exactly on its budget); off-policy ones at any step.

    :param run_dir: the run folder.
    :param save_freq: env steps between checkpoints (what ``--resume`` continues from).
    :param save_interval_s: wall-clock seconds between checkpoints (``None``: steps only).
    """

    def __init__(self, run_dir: str | os.PathLike, save_freq: int, save_interval_s: float | None = None) -> None:
        super().__init__()
        self.run_dir, self.save_freq, self.save_interval_s = Path(run_dir), save_freq, save_interval_s
        self._last, self._last_time = 0, time.monotonic()

    def _init_callback(self) -> None:
        self._last, self._last_time = self.model.num_timesteps, time.monotonic()

    def _due(self) -> bool:
        late = self.save_interval_s is not None and time.monotonic() - self._last_time >= self.save_interval_s
        return late or self.model.num_timesteps - self._last >= self.save_freq

    def _save(self) -> None:
        self._last, self._last_time = self.model.num_timesteps, time.monotonic()
        save_last(self.model, self.run_dir)

    def _on_rollout_start(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm) and self._due():
            self._save()

    def _on_step(self) -> bool:
        if not isinstance(self.model, OnPolicyAlgorithm) and self._due():
            self._save()
        return True


def normalizer_path(path: str | os.PathLike) -> Path:
    """Where the statistics of a ``VecNormalize`` training env are saved beside the model ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_vecnormalize.pkl")


def eval_normalizer(env: VecEnv, normalizer: VecNormalize | None) -> VecEnv:
    """``env`` normalising observations as the training env's ``normalizer`` does, with a copy of its statistics,
    never updating them (evaluation); ``env`` itself where there is no normalizer."""
    if normalizer is None:
        return env
    frozen = VecNormalize(
        env,
        training=False,
        norm_obs=normalizer.norm_obs,
        norm_reward=False,
        clip_obs=normalizer.clip_obs,
        epsilon=normalizer.epsilon,
        norm_obs_keys=normalizer.norm_obs_keys,
    )
    frozen.obs_rms = copy.deepcopy(normalizer.obs_rms)
    return frozen


def save_model(model, path: str | os.PathLike) -> None:
    """``model.save(path)``, atomically (temp file, fsync, rename); where the training env normalises
    observations (``VecNormalize``), its statistics too, to :func:`normalizer_path` (the model is only
    meaningful with them)."""
    normalizer = model.get_vec_normalize_env()
    if normalizer is not None:
        with atomic_path(normalizer_path(path)) as tmp:
            normalizer.save(tmp)
    with atomic_path(path) as tmp:
        model.save(tmp)


def save_last(model, run_dir: str | os.PathLike) -> None:
    """Write ``last_model.zip`` and, for off-policy algorithms, ``last_replay_buffer.pkl`` (each atomically).

    The buffer is renamed into place first: a kill between the two renames leaves a buffer at most
    one checkpoint newer than the model, never a torn file.
    """
    if hasattr(model, "save_replay_buffer"):
        with atomic_path(Path(run_dir) / "last_replay_buffer.pkl") as tmp:
            model.save_replay_buffer(tmp)
    save_model(model, Path(run_dir) / "last_model.zip")


class ManagerCallback(BaseCallback, Controlled):
    """Bounded closed-loop control of an SB3 run.

    :param manager: a :class:`~rl_manager.managers.Manager` or a registered name (``"rule"``).
    :param run_dir: folder for ``audit.jsonl``, ``best_model.zip`` and the manager state.
    :param eval_env: evaluation env for standalone mode, a ``VecEnv`` or a plain ``gymnasium.Env``
        (wrapped in a ``DummyVecEnv``, as ``EvalCallback`` does); ``None``: use the parent
        EvalCallback's results, or training-window telemetry at checkpoint boundaries.
    :param eval_freq: standalone mode: decide every ``eval_freq`` calls (per env step of a VecEnv).
    :param n_eval_episodes: evaluation episodes per boundary (standalone mode).
    :param evaluator: a :class:`~rl_manager.evaluation.PairedEvaluator` used instead of ``eval_env``:
        the same scenes at every boundary, per-cell results, Wilson intervals, a stochastic pass.
    :param deterministic: deterministic evaluation actions.
    :param fallback: manager used when the primary gives no valid decision (``None``: no-op).
    :param gates: gate configuration.
    :param targets: success target and cost limit.
    :param knobs: per-knob bounds overrides (``enabled: false`` hides a knob).
    :param success_key: ``info`` key meaning success.
    :param cost_key: ``info`` key carrying the per-step safety cost.
    :param episode_cost_key: Monitor ``info_keywords`` key with the episode cost.
    :param run_id: run identifier (default: a random one, or the one found in ``run_dir``).
    :param async_decisions: ask the manager on a background thread: training never waits for it;
        a reply is re-validated against the current menu and applied at the first boundary after
        it arrives; one request in flight.
    :param max_age: async replies collected more than this many boundaries after their request are
        discarded and logged as stale.
    :param interim: async only: the manager that decides at boundaries where no reply is applied (e.g. ``"rule"``
        beside a slow LLM); ``None``: nothing happens there.
    :param end_on_best: at the end of training, restore the best checkpoint and its knobs.
    :param confirm_episodes: before a stop is applied, play this many more episodes on ``eval_env`` (fresh
        scenes: its stream continues) and refuse the stop if they miss the targets; 0: no confirmation. The gate
        stops at the first evaluations that meet the targets, a favourable draw when evaluations are small.
    :param on_first_move: called with the step just before the run's first change is applied (see
        :class:`~rl_manager.controller.Controller`).
    :param verbose: 1 prints each decision.
    """

    def __init__(
        self,
        manager: Manager | str = "rule",
        *,
        run_dir: str | os.PathLike = "runs/managed",
        eval_env: gym.Env | VecEnv | None = None,
        eval_freq: int = 0,
        n_eval_episodes: int = 10,
        deterministic: bool = True,
        fallback: Manager | str | None = "rule",
        gates: GateConfig | None = None,
        targets: Targets | None = None,
        knobs: dict[str, KnobBounds] | None = None,
        success_key: str = "is_success",
        cost_key: str = "cost",
        episode_cost_key: str = "episode_cost",
        run_id: str | None = None,
        async_decisions: bool = False,
        max_age: int = 2,
        interim: Manager | str | None = None,
        end_on_best: bool = False,
        evaluator: PairedEvaluator | None = None,
        confirm_episodes: int = 0,
        on_first_move: Callable[[int], None] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        # fmt: off
        self.controller = Controller(
            self, manager, run_dir=run_dir, fallback=fallback, gates=gates, targets=targets, run_id=run_id,
            async_decisions=async_decisions, max_age=max_age, interim=interim, best_file="best_model.zip",
            end_on_best=end_on_best, on_first_move=on_first_move, verbose=verbose,
        )
        # fmt: on
        if eval_env is not None and not isinstance(eval_env, VecEnv):
            eval_env = DummyVecEnv([lambda env=eval_env: env])  # a plain gymnasium env, wrapped as EvalCallback does
        self.eval_env, self.evaluator = eval_env, evaluator
        self.eval_freq = int(eval_freq)
        self.n_eval_episodes, self.confirm_episodes = n_eval_episodes, int(confirm_episodes)
        self.deterministic = deterministic
        self.knob_overrides = knobs or {}
        self.success_key, self.cost_key, self.episode_cost_key = success_key, cost_key, episode_cost_key
        self.capture = LoggerCapture()
        self.last_eval: EvalResult | None = None

    # ----------------------------------------------------------------------------- lifecycle
    def _init_callback(self) -> None:
        self.controller.knobs = discover_actuators(self.model, self.knob_overrides)
        self.controller.target = self.model
        if self.capture not in self.model.logger.output_formats:
            self.model.logger.output_formats.append(self.capture)
        self.controller.start(resumed_at=self.model.num_timesteps)
        normalizer = self.model.get_vec_normalize_env()
        if normalizer is not None and self.eval_env is not None and unwrap_vec_normalize(self.eval_env) is None:
            # the policy reads normalised observations: evaluate it on them, with the training env's statistics
            self.eval_env = eval_normalizer(self.eval_env, normalizer)
        if self.eval_freq <= 0 and not isinstance(self.parent, EvalCallback):
            logger.warning("ManagerCallback has no eval_freq and no EvalCallback parent: it will never decide")

    def _on_step(self) -> bool:
        if isinstance(self.parent, EvalCallback):
            # called by EvalCallback right after an evaluation
            return self.boundary(self._parent_eval_metrics())
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            return self.boundary(self._own_eval_metrics())
        return True

    def _on_training_end(self) -> None:
        self.controller.close()

    # ----------------------------------------------------------------------------- adapter
    def checkpoint(self, path: Path | None = None) -> dict[str, Any]:
        """Weights and optimiser state in memory (the replay buffer is kept), with the training env's observation
        statistics under :data:`NORMALIZER_KEY` where it normalises them (``VecNormalize``); also saved to ``path``."""
        if path is not None:
            save_model(self.model, path)
        checkpoint = self.model.get_parameters()
        normalizer = self.model.get_vec_normalize_env()
        if normalizer is not None:
            checkpoint[NORMALIZER_KEY] = (normalizer.obs_rms, normalizer.ret_rms)
        return copy.deepcopy(checkpoint)

    def restore(self, checkpoint: dict[str, Any] | Path) -> None:
        """Load weights, optimiser state and observation statistics from :meth:`checkpoint` or a saved zip (the
        statistics from beside it, :func:`normalizer_path`)."""
        normalizer = self.model.get_vec_normalize_env()
        if isinstance(checkpoint, Path):
            self.model.set_parameters(str(checkpoint), exact_match=False, device=self.model.device)
            if normalizer is not None and normalizer_path(checkpoint).is_file():
                saved = VecNormalize.load(str(normalizer_path(checkpoint)), normalizer.venv)
                normalizer.obs_rms, normalizer.ret_rms = saved.obs_rms, saved.ret_rms
            return
        parameters = copy.deepcopy(checkpoint)
        stats = parameters.pop(NORMALIZER_KEY, None)
        self.model.set_parameters(parameters, exact_match=True, device=self.model.device)
        if normalizer is not None and stats is not None:
            normalizer.obs_rms, normalizer.ret_rms = stats

    # ----------------------------------------------------------------------------- observation
    def _own_eval_metrics(self) -> EvalMetrics:
        if self.evaluator is not None:  # paired scenes: the same seeds at every boundary
            return self.evaluator.evaluate(self.model)
        if self.eval_env is None:
            return EvalMetrics()  # checkpoint boundary: training-window telemetry only
        self.last_eval = self._play(self.n_eval_episodes)
        return self.last_eval.metrics()

    def confirm_stop(self) -> EvalMetrics | None:
        """The metrics of ``confirm_episodes`` fresh evaluation episodes, or ``None`` without a confirmation."""
        if self.confirm_episodes <= 0 or self.eval_env is None:
            return None
        return self._play(self.confirm_episodes).metrics()

    def _play(self, n_episodes: int) -> EvalResult:
        """``n_episodes`` more episodes on ``eval_env``, whose scene stream continues from the last call; where the
        training env normalises observations, with its statistics of now (as ``EvalCallback`` syncs them)."""
        normalizer, frozen = self.model.get_vec_normalize_env(), unwrap_vec_normalize(self.eval_env)
        if normalizer is not None and frozen is not None:
            frozen.training = False
            frozen.obs_rms, frozen.ret_rms = copy.deepcopy((normalizer.obs_rms, normalizer.ret_rms))
        return evaluate(
            self.model,
            self.eval_env,
            n_episodes,
            deterministic=self.deterministic,
            success_key=self.success_key,
            cost_key=self.cost_key,
        )

    def _parent_eval_metrics(self) -> EvalMetrics:
        parent: EvalCallback = self.parent  # type: ignore[assignment]
        successes = [float(s) for s in parent._is_success_buffer] or None
        if parent.evaluations_results:  # kept only when the EvalCallback has a log_path
            returns = [float(r) for r in parent.evaluations_results[-1]]
            lengths = [int(n) for n in parent.evaluations_length[-1]]
            self.last_eval = EvalResult(returns=returns, lengths=lengths, successes=successes, costs=None)
            return self.last_eval.metrics()
        return EvalMetrics(
            n_episodes=parent.n_eval_episodes,
            mean_return=float(parent.last_mean_reward),
            success_rate=float(sum(successes) / len(successes)) if successes else None,
        )

    def observe(self, metrics: EvalMetrics) -> Observation:
        """The observation of this boundary: ``metrics``, the training window and the algorithm's health."""
        env_id = ""
        try:
            spec = self.training_env.get_attr("spec")[0]
            env_id = spec.id if spec is not None else ""
        except (AttributeError, IndexError):
            pass
        learning_starts = getattr(self.model, "learning_starts", 0)
        return Observation(
            step=self.num_timesteps,
            evaluation=metrics,
            training=train_window(self.model, self.episode_cost_key),
            health=algo_health(self.model, {**self.capture.latest, **self.model.logger.name_to_value}),
            total_steps=getattr(self.model, "_total_timesteps", 0) or None,
            task=env_id,
            algo=self.model.__class__.__name__.lower(),
            # off-policy warm-up: actions are random and nothing has been learned yet
            hold=f"learning has not started (learning_starts={learning_starts})"
            if self.num_timesteps <= learning_starts
            else None,
        )

    def boundary(self, metrics: EvalMetrics) -> bool:
        """Handle one decision boundary; returns ``False`` to stop training."""
        continue_training = self.controller.boundary(self.observe(metrics))
        self._log_tensorboard()
        return continue_training

    def _log_tensorboard(self) -> None:
        rec, ctl, outcome = self.logger.record, self.controller, self.controller.last_outcome
        m, t = ctl.observation.evaluation, ctl.observation.training
        rec("manager/action", ACTION_CODES[outcome.decision.action] if outcome else -1)
        rec("manager/applied_total", self.counts["applied"])
        rec("manager/rejected_attempts_total", self.counts["rejected_attempts"])
        rec("manager/latency_s", outcome.latency_s if outcome else 0.0)
        rec("manager/stale_total", self.counts["stale"])
        rec("manager/tokens_total", ctl.ledger.prompt_tokens + ctl.ledger.completion_tokens)
        if ctl.state.history and ctl.state.history[-1].score is not None:
            rec("manager/score", ctl.state.history[-1].score)
        for name, value in ctl.knob_values().items():
            rec(f"manager/knob/{name}", value)
        for key, value in (
            ("safety/eval_mean_cost", m.mean_cost),
            ("safety/eval_violation_rate", m.violation_rate),
            ("safety/eval_safe_success", m.safe_success_rate),
            ("safety/train_ep_cost", t.mean_episode_cost),
            ("safety/train_cost_rate", t.cost_rate),
        ):
            if value is not None:
                rec(key, value)

    @property
    def actuators(self) -> dict[str, Knob]:
        """The knobs discovered on the model."""
        return self.controller.knobs

"""``ManagerCallback``: the bounded manager as a Stable-Baselines3 callback.

Two ways to use it::

    # 1. after each evaluation of an EvalCallback
    EvalCallback(eval_env, eval_freq=5000, callback_after_eval=ManagerCallback(run_dir="runs/x"))
    # 2. standalone: it runs its own evaluation every ``eval_freq`` calls (or, without an
    #    ``eval_env``, decides at checkpoint boundaries from training-window telemetry)
    model.learn(100_000, callback=ManagerCallback(eval_env=eval_env, eval_freq=5000, run_dir="runs/x"))

It never decides from ``_on_rollout_end`` (off-policy algorithms fire it every ``train_freq``
steps). A validated ``stop_training`` makes ``_on_step`` return ``False``, which ends training.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.vec_env import VecEnv

from rl_manager.actuators import Actuator, KnobBounds, discover_actuators
from rl_manager.async_runner import AsyncDecider, revalidate
from rl_manager.audit import AuditLog
from rl_manager.core import DecisionLedger, Outcome, decide
from rl_manager.managers import Manager, make_manager
from rl_manager.menu import GateConfig, build_action_space
from rl_manager.schema import (
    AlgoHealth,
    Attempt,
    BestCheckpoint,
    DecisionAdapter,
    EvalMetrics,
    HistoryRow,
    NoAction,
    ResolvedChange,
    RunPosition,
    Targets,
    TelemetrySnapshot,
    TrainWindow,
)
from rl_manager.telemetry import (
    EvalResult,
    InterventionTracker,
    LoggerCapture,
    TelemetryState,
    algo_health,
    choose_score,
    evaluate,
    score_of,
    train_window,
)

logger = logging.getLogger(__name__)

#: numeric codes of actions for TensorBoard (``manager/action``)
ACTION_CODES = {"no_action": 0, "adjust": 1, "rollback_to_best": 2, "rollback_and_consolidate": 3, "stop_training": 4}
STATE_FILENAME = "manager_state.json"


class LastCheckpoint(BaseCallback):
    """Saves ``last_model.zip`` (+ the replay buffer of off-policy algorithms) every ``save_freq`` steps.

    :param run_dir: the run folder.
    :param save_freq: env steps between checkpoints (what ``--resume`` continues from).
    """

    def __init__(self, run_dir: str | os.PathLike, save_freq: int) -> None:
        super().__init__()
        self.run_dir, self.save_freq, self._last = Path(run_dir), save_freq, 0

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.save_freq:
            self._last = self.num_timesteps
            save_last(self.model, self.run_dir)
        return True


def save_last(model, run_dir: str | os.PathLike) -> None:
    """Write ``last_model.zip`` and, for off-policy algorithms, ``last_replay_buffer.pkl``."""
    model.save(Path(run_dir) / "last_model.zip")
    if hasattr(model, "save_replay_buffer"):
        model.save_replay_buffer(Path(run_dir) / "last_replay_buffer.pkl")


class ManagerCallback(BaseCallback):
    """Bounded closed-loop control of an SB3 run.

    :param manager: a :class:`~rl_manager.managers.Manager` or a registered name (``"rule"``).
    :param run_dir: folder for ``audit.jsonl``, ``best_model.zip`` and the manager state.
    :param eval_env: evaluation env for standalone mode (``None``: use the parent EvalCallback's
        results, or training-window telemetry at checkpoint boundaries).
    :param eval_freq: standalone mode: decide every ``eval_freq`` calls (per env step of a VecEnv).
    :param n_eval_episodes: evaluation episodes per boundary (standalone mode).
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
    :param verbose: 1 prints each decision.
    """

    def __init__(
        self,
        manager: Manager | str = "rule",
        *,
        run_dir: str | os.PathLike = "runs/managed",
        eval_env: VecEnv | None = None,
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
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.manager = make_manager(manager) if isinstance(manager, str) else manager
        self.fallback = make_manager(fallback) if isinstance(fallback, str) else fallback
        self.run_dir = Path(run_dir)
        self.eval_env = eval_env
        self.eval_freq = int(eval_freq)
        self.n_eval_episodes = n_eval_episodes
        self.deterministic = deterministic
        self.gates = gates or GateConfig()
        self.targets = targets or Targets()
        self.knob_overrides = knobs or {}
        self.success_key, self.cost_key, self.episode_cost_key = success_key, cost_key, episode_cost_key
        self.run_id = run_id
        self.state = TelemetryState()
        self.tracker = InterventionTracker()
        self.actuators: dict[str, Actuator] = {}
        self.audit: AuditLog | None = None
        self.capture = LoggerCapture()
        self.best_params: dict[str, Any] | None = None
        self.ledger = DecisionLedger()
        self.stopped = False
        self.last_eval: EvalResult | None = None
        self.decider = AsyncDecider(max_age=max_age) if async_decisions else None
        self._requested: TelemetrySnapshot | None = None

    # ----------------------------------------------------------------------------- lifecycle
    def _init_callback(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.actuators = discover_actuators(self.model, self.knob_overrides)
        if self.capture not in self.model.logger.output_formats:
            self.model.logger.output_formats.append(self.capture)
        self._load_state()
        self.run_id = self.run_id or uuid.uuid4().hex[:12]
        self.audit = AuditLog(self.run_dir, self.run_id)
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
        if self.decider is not None:
            self._close_async()
        self.save_state()

    def _close_async(self) -> None:
        assert self.decider is not None and self.audit is not None
        late = self.decider.poll(self.state.evaluation_index + 1)
        abandoned = late.submitted_at if late is not None else self.decider.close()
        self.decider.close()
        if abandoned is not None:
            outcome = late.value if late is not None and late.ok else None
            message = f"request from evaluation {abandoned} {'arrived' if late else 'pending'} after the end"
            self._log_unapplied("abandoned", outcome, message)

    def _log_unapplied(self, kind: str, outcome: Outcome | None, message: str) -> None:
        """Audit an async reply that is not applied (``stale`` or ``abandoned``), keeping its attempts."""
        assert self.audit is not None
        fields = outcome.audit_fields() if outcome is not None else {}
        fields["proposer"] = self.manager.name
        self.audit.append(
            kind=kind,
            step=self.num_timesteps,
            evaluation_index=self.state.evaluation_index,
            snapshot=self._requested,
            message=message,
            **fields,
        )

    # ----------------------------------------------------------------------------- evaluation
    def _own_eval_metrics(self) -> EvalMetrics:
        if self.eval_env is None:
            return EvalMetrics()  # checkpoint boundary: training-window telemetry only
        self.last_eval = evaluate(
            self.model,
            self.eval_env,
            self.n_eval_episodes,
            deterministic=self.deterministic,
            success_key=self.success_key,
            cost_key=self.cost_key,
        )
        return self.last_eval.metrics()

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

    # ----------------------------------------------------------------------------- the boundary
    def boundary(self, metrics: EvalMetrics) -> bool:
        """Handle one decision boundary; returns ``False`` to stop training."""
        state = self.state
        state.evaluation_index += 1
        training = train_window(self.model, self.episode_cost_key)
        health = algo_health(self.model, {**self.capture.latest, **self.model.logger.name_to_value})
        if state.score_name is None:
            state.score_name = choose_score(metrics, training)
        if state.score_name in ("safe_success_rate", "success_rate") and metrics.n_episodes:
            self.tracker.rate_episodes = metrics.n_episodes
        score = score_of(state.score_name, metrics, training)
        self.tracker.measure(state, score)
        state.history.append(self._history_row(metrics, training, health, score))
        del state.history[:-20]
        self._update_best(score)
        snapshot = self.snapshot(metrics, training, health)
        if self.num_timesteps <= getattr(self.model, "learning_starts", 0):
            # off-policy warm-up: actions are random and nothing has been learned yet
            reason = f"learning has not started (learning_starts={self.model.learning_starts})"
            outcome = Outcome(
                NoAction(reason=reason), [], build_action_space(snapshot, self.gates), proposer="callback"
            )
            continue_training = self._apply(snapshot, outcome)
        elif self.decider is None:
            outcome = decide(snapshot, self.manager, gates=self.gates, fallback=self.fallback)
            continue_training = self._apply(snapshot, outcome)
        else:
            outcome, continue_training = self._async_boundary(snapshot, metrics, training, health)
        self._log_tensorboard(metrics, training, outcome)
        self.save_state()
        return continue_training

    def _request(self, snapshot: TelemetrySnapshot) -> None:
        assert self.decider is not None
        # the worker (and the audit record of this request) must not see later edits of the shared
        # state, e.g. the intervention tracker filling in measured scores
        snapshot = snapshot.model_copy(deep=True)
        manager, fallback, gates = self.manager, self.fallback, self.gates
        if self.decider.submit(
            lambda: decide(snapshot, manager, gates=gates, fallback=fallback), snapshot.position.evaluation_index
        ):
            self._requested = snapshot

    def _async_boundary(
        self, snapshot: TelemetrySnapshot, metrics: EvalMetrics, training: TrainWindow, health: AlgoHealth
    ) -> tuple[Outcome | None, bool]:
        """Apply a reply that arrived since the last boundary (if still valid), then ask again."""
        assert self.decider is not None and self.audit is not None
        result = self.decider.poll(self.state.evaluation_index)
        outcome, continue_training = None, True
        if result is not None and result.stale:
            self.ledger.counts["stale"] += 1
            message = f"reply to evaluation {result.submitted_at} arrived {result.age} boundaries later: discarded"
            self._log_unapplied("stale", result.value if result.ok else None, message)
        elif result is not None:
            requested = self._requested or snapshot
            if not result.ok:
                outcome = Outcome(
                    NoAction(reason="fallback: the decision request failed"),
                    [],
                    build_action_space(snapshot, self.gates),
                    [Attempt(proposer=self.manager.name, errors=[f"request error: {result.error!r}"])],
                    proposer=self.manager.name,
                    fallback="no_action",
                )
            else:
                review = revalidate(result.value, snapshot, self.gates)
                if review.ok:
                    outcome = dataclasses.replace(result.value, decision=review.decision, changes=review.changes)
                else:
                    stale_errors = [
                        f"no longer valid at evaluation {self.state.evaluation_index}: {e}" for e in review.errors
                    ]
                    attempts = [*result.value.attempts, Attempt(proposer="guard", errors=stale_errors)]
                    outcome = dataclasses.replace(
                        result.value,
                        decision=NoAction(reason="reply no longer valid"),
                        changes=[],
                        attempts=attempts,
                        fallback="no_action",
                    )
            note = f"requested at evaluation {result.submitted_at}, applied at {self.state.evaluation_index}"
            continue_training = self._apply(requested, outcome, note=note)
            if continue_training:
                snapshot = self.snapshot(metrics, training, health)  # knobs may have changed
        if continue_training:
            self._request(snapshot)
        return outcome, continue_training

    def _history_row(self, m: EvalMetrics, t: TrainWindow, h: AlgoHealth, score: float | None) -> HistoryRow:
        train_loss = h.critic_loss if h.critic_loss is not None else h.value_loss
        return HistoryRow(
            evaluation_index=self.state.evaluation_index,
            step=self.num_timesteps,
            score=score,
            mean_return=m.mean_return if m.n_episodes else t.mean_return,
            success_rate=m.success_rate if m.n_episodes else t.success_rate,
            safe_success_rate=m.safe_success_rate,
            mean_cost=m.mean_cost if m.n_episodes else t.mean_episode_cost,
            violation_rate=m.violation_rate,
            train_episode_cost=t.mean_episode_cost,
            train_loss=train_loss,
            entropy=h.entropy,
        )

    def _update_best(self, score: float | None) -> None:
        best = self.state.best
        if score is None or not math.isfinite(score):
            return
        if best is None or score > best.score:
            self.state.best = BestCheckpoint(
                evaluation_index=self.state.evaluation_index,
                step=self.num_timesteps,
                score=score,
                knobs={name: a.read(self.model) for name, a in self.actuators.items()},
            )
            self.best_params = copy.deepcopy(self.model.get_parameters())
            self.model.save(self.run_dir / "best_model.zip")

    def snapshot(self, metrics: EvalMetrics, training: TrainWindow, health: AlgoHealth) -> TelemetrySnapshot:
        """Build the snapshot for the current boundary."""
        env_id = ""
        try:
            spec = self.training_env.get_attr("spec")[0]
            env_id = spec.id if spec is not None else ""
        except (AttributeError, IndexError):
            pass
        total = getattr(self.model, "_total_timesteps", 0) or None
        return TelemetrySnapshot(
            run_id=self.run_id or "",
            task=env_id,
            algo=self.model.__class__.__name__.lower(),
            kind="rl",
            score_name=self.state.score_name or "",
            position=RunPosition(
                step=self.num_timesteps,
                total_steps=total,
                evaluation_index=self.state.evaluation_index,
                last_rollback_at=self.state.last_rollback_at,
            ),
            knobs=[a.spec(self.model, self.state.knob_last_changed.get(name)) for name, a in self.actuators.items()],
            evaluation=metrics,
            training=training,
            health=health,
            history=self.state.history[-10:],
            best=self.state.best,
            interventions=self.state.interventions,
            targets=self.targets,
        )

    # ----------------------------------------------------------------------------- actuation
    def _write(self, changes: list[ResolvedChange]) -> list[ResolvedChange]:
        applied = []
        for c in changes:
            after = self.actuators[c.knob].write(self.model, c.after)
            applied.append(ResolvedChange(knob=c.knob, before=c.before, after=after))
            self.state.knob_last_changed[c.knob] = self.state.evaluation_index
        return applied

    def _rollback(self) -> list[ResolvedChange]:
        """Restore the best weights and optimiser state (the replay buffer is kept) and its knobs."""
        if self.best_params is None or self.state.best is None:
            raise RuntimeError("no best checkpoint in memory")
        self.model.set_parameters(copy.deepcopy(self.best_params), exact_match=True, device=self.model.device)
        restored = []
        for name, value in self.state.best.knobs.items():
            if name in self.actuators:
                before = self.actuators[name].read(self.model)
                if before != value:
                    restored.append(
                        ResolvedChange(knob=name, before=before, after=self.actuators[name].write(self.model, value))
                    )
        self.state.last_rollback_at = self.state.evaluation_index
        return restored

    def _apply(self, snapshot: TelemetrySnapshot, outcome: Outcome, note: str = "") -> bool:
        before = {name: a.read(self.model) for name, a in self.actuators.items()}
        decision = outcome.decision
        applied, message, continue_training = False, "", True
        changes: list[ResolvedChange] = []
        try:
            if decision.action == "adjust":
                changes = self._write(outcome.changes)
                applied = True
            elif decision.action in ("rollback_to_best", "rollback_and_consolidate"):
                changes = self._rollback()
                if decision.action == "rollback_and_consolidate":
                    changes += self._write(outcome.changes)
                applied = True
            elif decision.action == "stop_training":
                applied, continue_training, self.stopped = True, False, True
        except Exception as exc:  # an actuator failure is logged, never raised into training
            logger.exception("applying %s failed", decision.action)
            message = f"apply failed: {type(exc).__name__}: {exc}"
        if applied and decision.action != "no_action":
            self.tracker.record(self.state, decision.action, changes, decision.expected_outcome, self.num_timesteps)
        self.ledger.add(outcome, applied)
        assert self.audit is not None
        self.audit.append(
            kind="decision",
            step=self.num_timesteps,
            evaluation_index=self.state.evaluation_index,
            snapshot=snapshot,
            applied=applied,
            changes=changes,
            knobs_before=before,
            knobs_after={name: a.read(self.model) for name, a in self.actuators.items()},
            message="; ".join(m for m in (note, message) if m),
            **outcome.audit_fields(),
        )
        if self.verbose:
            summary = json.dumps(
                DecisionAdapter.dump_python(decision, mode="json", exclude={"reason", "expected_outcome"})
            )
            print(f"[manager] step {self.num_timesteps} eval {self.state.evaluation_index}: {summary}")
        return continue_training

    def _log_tensorboard(self, m: EvalMetrics, t: TrainWindow, outcome: Outcome | None) -> None:
        rec = self.logger.record
        rec("manager/action", ACTION_CODES[outcome.decision.action] if outcome else -1)
        rec("manager/applied_total", self.counts["applied"])
        rec("manager/rejected_attempts_total", self.counts["rejected_attempts"])
        rec("manager/latency_s", outcome.latency_s if outcome else 0.0)
        rec("manager/stale_total", self.counts["stale"])
        rec("manager/tokens_total", self.ledger.prompt_tokens + self.ledger.completion_tokens)
        if self.state.history and self.state.history[-1].score is not None:
            rec("manager/score", self.state.history[-1].score)
        for name, a in self.actuators.items():
            rec(f"manager/knob/{name}", a.read(self.model))
        for key, value in (
            ("safety/eval_mean_cost", m.mean_cost),
            ("safety/eval_violation_rate", m.violation_rate),
            ("safety/eval_safe_success", m.safe_success_rate),
            ("safety/train_ep_cost", t.mean_episode_cost),
            ("safety/train_cost_rate", t.cost_rate),
        ):
            if value is not None:
                rec(key, value)

    # ----------------------------------------------------------------------------- persistence
    def save_state(self) -> None:
        """Write the manager state (history, best, interventions, counters) for ``--resume``."""
        if not self.run_dir.exists():
            return
        data = {
            "run_id": self.run_id,
            "telemetry": self.state.model_dump(mode="json"),
            "ledger": dataclasses.asdict(self.ledger),
            "knobs": {name: a.read(self.model) for name, a in self.actuators.items()},
        }
        tmp = self.run_dir / (STATE_FILENAME + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.run_dir / STATE_FILENAME)

    def _load_state(self) -> None:
        path = self.run_dir / STATE_FILENAME
        if not path.exists():
            return
        data = json.loads(path.read_text())
        self.run_id = self.run_id or data.get("run_id")
        self.state = TelemetryState.model_validate(data["telemetry"])
        self.ledger = DecisionLedger(**data.get("ledger", {}))
        # env-side knobs (reward weights) are not saved with the model: re-apply every saved value
        for name, value in data.get("knobs", {}).items():
            if name in self.actuators and self.actuators[name].read(self.model) != value:
                self.actuators[name].write(self.model, value)
        best_zip = self.run_dir / "best_model.zip"
        if self.state.best is not None and best_zip.exists():
            current = copy.deepcopy(self.model.get_parameters())
            self.model.set_parameters(str(best_zip), exact_match=False, device=self.model.device)
            self.best_params = copy.deepcopy(self.model.get_parameters())
            self.model.set_parameters(current, exact_match=True, device=self.model.device)

    @property
    def counts(self) -> dict[str, int]:
        """Decision counters (see :class:`~rl_manager.core.DecisionLedger`)."""
        return self.ledger.counts

    def summary(self) -> dict[str, Any]:
        """Counters for ``summary.json``."""
        return {
            "run_id": self.run_id,
            "manager": self.manager.name,
            **self.ledger.summary(),
            "stopped_by_manager": self.stopped,
            "evaluations": self.state.evaluation_index + 1,
            "best": self.state.best.model_dump(mode="json") if self.state.best else None,
            "knobs_final": {name: a.read(self.model) for name, a in self.actuators.items()},
        }

"""``Controller``: the decision loop of every integration, written once.

Think of Ray Tune's scheduler versus its trial executor: the controller decides and keeps the
books, an *adapter* runs the training. :meth:`Controller.boundary` takes one
:class:`Observation` (the latest evaluation, the training window, the algorithm's health and the
position of the run) and owns everything else:

- run state (:class:`~rl_manager.state.TelemetryState`) with the *untrimmed* evaluation log
  (snapshots show the last ``history_len`` rows), the best checkpoint, the intervention tracker
  and the decision ledger;
- sync decisions, or the async protocol: one request in flight
  (:class:`~rl_manager.async_runner.AsyncDecider`), a reply re-validated against the *current*
  menu (a rejected reply becomes a no-op whose guard errors are an extra
  :class:`~rl_manager.schema.Attempt`), ``stale`` and ``abandoned`` replies audited with their
  attempts;
- apply, rollback, the audit log and persistence (``manager_state.json``, written atomically).

An adapter supplies only its knobs (:class:`~rl_manager.knobs.Knob`, read and written on
``target``) and :class:`Adapter` (``checkpoint()`` / ``restore()``): the SB3 callback
(:mod:`rl_manager.callback`) and the PyTorch loop (:mod:`rl_manager.supervised`) are thin adapters.
Nothing here imports SB3 or torch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_args

from rl_manager.async_runner import AsyncDecider, AsyncResult, revalidate, run_detached
from rl_manager.audit import AuditLog, read_audit
from rl_manager.core import DecisionLedger, Outcome, decide
from rl_manager.io import write_text_atomic
from rl_manager.knobs import Knob, ManagerError
from rl_manager.managers import Manager, make_manager
from rl_manager.menu import GateConfig, build_action_space, meets_targets
from rl_manager.probation import Probation, Trial
from rl_manager.schema import (
    ActionName,
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
from rl_manager.state import InterventionTracker, TelemetryState, choose_score, score_of

logger = logging.getLogger(__name__)

STATE_FILENAME = "manager_state.json"
#: numeric code of each action (TensorBoard ``manager/action``), in the schema's order
ACTION_CODES: dict[str, int] = {name: i for i, name in enumerate(get_args(ActionName))}


@dataclass
class Observation:
    """What an adapter observed at one decision boundary.

    :param step: training step (env steps for RL, optimisation steps otherwise).
    :param evaluation: the latest evaluation (empty at a checkpoint boundary without one).
    :param training: the training window since the last boundary.
    :param health: algorithm health signals.
    :param total_steps: the step budget, if known.
    :param task: task name shown to the manager.
    :param algo: algorithm (or optimiser) name shown to the manager.
    :param hold: a reason not to ask the manager at this boundary (e.g. off-policy warm-up): the
        boundary is measured and audited as a no-op.
    """

    step: int
    evaluation: EvalMetrics = field(default_factory=EvalMetrics)
    training: TrainWindow = field(default_factory=TrainWindow)
    health: AlgoHealth = field(default_factory=AlgoHealth)
    total_steps: int | None = None
    task: str = ""
    algo: str = ""
    hold: str | None = None


class Adapter(Protocol):
    """What an integration gives the controller besides its knobs."""

    def checkpoint(self, path: Path | None = None) -> Any:
        """An in-memory copy of the weights and optimiser state (any boundary); also written to ``path`` if given."""

    def restore(self, checkpoint: Any) -> None:
        """Load a checkpoint made by :meth:`checkpoint`, or the file it wrote (a :class:`~pathlib.Path`)."""

    # An adapter may also define ``confirm_stop() -> EvalMetrics | None``: the metrics of fresh episodes, played
    # before a stop is applied (``None``: no confirmation). A stop whose confirmation misses the targets is refused.


def history_row(index: int, score_name: str, score: float | None, obs: Observation) -> HistoryRow:
    """One row of the evaluation log: the evaluation, or the training window at a boundary without one."""
    m, t, h = obs.evaluation, obs.training, obs.health
    evaluated = m.n_episodes > 0 or m.val_loss is not None
    intervals = {"safe_success_rate": m.safe_success_ci, "success_rate": m.success_ci}
    return HistoryRow(
        evaluation_index=index,
        step=obs.step,
        score=score,
        mean_return=m.mean_return if evaluated else t.mean_return,
        success_rate=m.success_rate if evaluated else t.success_rate,
        safe_success_rate=m.safe_success_rate,
        mean_cost=m.mean_cost if evaluated else t.mean_episode_cost,
        violation_rate=m.violation_rate,
        train_episode_cost=t.mean_episode_cost,
        train_loss=next((x for x in (h.critic_loss, h.value_loss, t.train_loss) if x is not None), None),
        val_loss=m.val_loss,
        entropy=h.entropy,
        value_loss=h.value_loss,
        approx_kl=h.approx_kl,
        clip_fraction=h.clip_fraction,
        action_std=h.action_std,
        explained_variance=h.explained_variance,
        clipped_action_fraction=h.clipped_action_fraction,
        stochastic_safe_success_rate=m.stochastic.safe_success_rate if m.stochastic else None,
        score_ci=intervals.get(score_name),
    )


def _audit_run_id(run_dir: Path) -> str | None:
    """The run id of the audit log in ``run_dir`` (``None``: no readable record)."""
    try:
        records = read_audit(run_dir)
    except ValueError:
        return None
    return records[-1].run_id if records else None


class Controller:
    """Bounded closed-loop control of one training run, whatever runs the training.

    :param adapter: makes and restores checkpoints (see :class:`Adapter`).
    :param manager: a :class:`~rl_manager.managers.Manager` or a registered name (``"rule"``).
    :param run_dir: folder of ``audit.jsonl`` and ``manager_state.json``.
    :param knobs: the knobs by name (may also be set before :meth:`start`).
    :param target: what the knobs act on (the SB3 algorithm; ``None`` for self-contained knobs).
    :param kind: ``rl`` or ``supervised`` (shown in snapshots).
    :param score_name: the score (``None``: chosen from the first observation, see
        :func:`~rl_manager.state.choose_score`).
    :param fallback: manager used when the primary gives no valid decision (``None``: no-op).
    :param gates: gate configuration.
    :param targets: success target and cost limit.
    :param async_decisions: ask the manager on a background thread (training never waits).
    :param max_age: async replies collected more than this many boundaries after their request are stale.
    :param interim: async only: the manager that decides, synchronously, at every boundary where no reply of
        the primary is applied (none collected, or a stale one), e.g. the rule manager beside a slow LLM.
        Its moves are verified like any other; ``None``: nothing happens at those boundaries.
    :param decision_timeout_s: sync decisions: the longest a boundary waits for the manager; past it
        the request is abandoned on its thread and the fallback decides (default: the manager's
        ``settings.timeout_s`` if it has one, as the LLM manager does; else no limit).
    :param run_id: run identifier (default: the one saved in ``run_dir``, else a random one).
    :param history_len: evaluations shown in a snapshot (the state keeps them all).
    :param best_file: file name in ``run_dir`` the best checkpoint is also written to (``None``: memory only).
    :param resume: load ``manager_state.json`` from ``run_dir`` at :meth:`start` if there is one.
    :param end_on_best: at :meth:`close`, restore the best checkpoint (weights and knobs).
    :param probation: judges every applied ``adjust`` on the paired scores after it and reverts it
        (pre-change checkpoint and knobs) when it made the run significantly worse; the move is then
        recorded as ``worse`` so that no manager repeats it. Default :class:`Probation()`; set
        ``controller.probation = None`` to switch verification off.
    :param on_first_move: called once, with the step, just before the first decision that changes the run
        (adjust, rollback or stop) is applied, and only in a run with no applied intervention yet: up to there
        the managed run is the fixed recipe's run, so a fixed arm continued from a copy made then shares its whole
        past (``--fork-at-first-move``). An exception it raises is logged and noted in the audit, never raised.
    :param verbose: 1 prints each decision.
    """

    def __init__(
        self,
        adapter: Adapter,
        manager: Manager | str = "rule",
        *,
        run_dir: str | os.PathLike,
        knobs: Mapping[str, Knob] | None = None,
        target: Any = None,
        kind: str = "rl",
        score_name: str | None = None,
        fallback: Manager | str | None = "rule",
        gates: GateConfig | None = None,
        targets: Targets | None = None,
        async_decisions: bool = False,
        max_age: int = 2,
        interim: Manager | str | None = None,
        decision_timeout_s: float | None = None,
        run_id: str | None = None,
        history_len: int = 10,
        best_file: str | None = None,
        resume: bool = True,
        end_on_best: bool = False,
        probation: Probation | None = None,
        on_first_move: Callable[[int], None] | None = None,
        verbose: int = 0,
    ) -> None:
        self.adapter = adapter
        self.on_first_move = on_first_move
        self.manager = make_manager(manager) if isinstance(manager, str) else manager
        self.fallback = make_manager(fallback) if isinstance(fallback, str) else fallback
        self.run_dir = Path(run_dir)
        self.knobs: dict[str, Knob] = dict(knobs or {})
        self.target = target
        self.kind, self.score_name = kind, score_name
        self.gates = gates or GateConfig()
        self.targets = targets or Targets()
        self.async_decisions, self.max_age = async_decisions, max_age
        self.interim = make_manager(interim) if isinstance(interim, str) else interim
        if decision_timeout_s is None:
            decision_timeout_s = getattr(getattr(self.manager, "settings", None), "timeout_s", None)
        self.decision_timeout_s = decision_timeout_s
        self.run_id = run_id
        self.history_len, self.best_file = history_len, best_file
        self.resume, self.end_on_best, self.verbose = resume, end_on_best, verbose
        self.probation: Probation | None = probation if probation is not None else Probation()
        self.state = TelemetryState(score_name=score_name)
        self.tracker = InterventionTracker()
        self.ledger = DecisionLedger()
        self.audit: AuditLog | None = None
        self.decider: AsyncDecider | None = None
        #: in-memory best checkpoint (or the file it was saved to, after a resume)
        self.best_checkpoint: Any = None
        self.observation = Observation(step=0)
        #: the outcome applied at the last boundary (``None``: nothing was collected there)
        self.last_outcome: Outcome | None = None
        #: (step, evaluation index, action, changes) of every applied intervention, for plots
        self.interventions: list[dict[str, Any]] = []
        self.stopped = False
        self.closed = False
        self._requested: TelemetrySnapshot | None = None

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self, resumed_at: int | None = None) -> None:
        """Open the run: load the saved state (``resume``), the audit log and the async worker.

        :param resumed_at: the step training restarts from when resuming an interrupted run (the
            checkpoint's step, 0 without one): the audit gets a ``resume`` record naming the lost
            segment (steps after it that are trained again) and the knobs restored.
        :raises ManagerError: the saved state is unreadable or belongs to another run.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        first = self.audit is None  # (a second learn() of the same process starts again)
        saved = self._load_state() if self.resume and first else None
        self.run_id = self.run_id or (saved or {}).get("run_id") or _audit_run_id(self.run_dir) or uuid.uuid4().hex[:12]
        self.audit = AuditLog(self.run_dir, self.run_id)
        self.decider = AsyncDecider(max_age=self.max_age) if self.async_decisions else None
        self.closed = False
        if saved is not None or (first and resumed_at):  # a checkpoint continued before any boundary has no state
            self._reconcile(saved or {}, resumed_at)

    def _reconcile(self, saved: dict[str, Any], resumed_at: int | None) -> None:
        """Audit what a kill left behind: records written after the saved state, a request in
        flight, and (``resumed_at``) the segment of training that is lost."""
        assert self.audit is not None
        knobs = self.knob_values()
        index = max(0, self.state.evaluation_index)
        # the furthest step the run reached: its last audit record may be newer than the saved state
        last_step = max([r.step for r in self.state.history] + [self.observation.step])
        if self.audit.last is not None:
            last_step = max(last_step, self.audit.last.step)
        committed = saved.get("audit_next_seq")
        if committed is not None and self.audit.next_seq > committed:
            last = self.audit.last
            self.audit.append(
                kind="note",
                step=self.observation.step,
                evaluation_index=index,
                knobs_before=last.knobs_after if last is not None else {},
                knobs_after=knobs,
                message=f"records {committed}..{self.audit.next_seq - 1} were written after the last saved "
                f"state (killed in between): superseded, the run continues from evaluation {index}",
            )
        pending = saved.get("pending_request")
        if pending is not None:
            self.ledger.counts["abandoned"] += 1
            message = f"request from evaluation {pending} lost: the run was killed"
            self._log_unapplied("abandoned", None, message, pending)
        if resumed_at is None:
            return
        if not saved:
            self.ledger.counts["resumes"] = self.ledger.counts.get("resumes", 0) + 1
            self.audit.append(kind="resume", step=resumed_at, knobs_before=knobs, knobs_after=knobs,
                              message=f"resumed at step {resumed_at}, before the first boundary: the steps after it "
                              "up to the kill are trained again (not measured)")  # fmt: skip
            self.save_state()
            return
        lost = max(0, last_step - resumed_at)
        self.ledger.counts["resumes"] = self.ledger.counts.get("resumes", 0) + 1
        self.ledger.counts["lost_steps"] = self.ledger.counts.get("lost_steps", 0) + lost
        before = self.audit.last.knobs_after if self.audit.last is not None else knobs
        self.audit.append(
            kind="resume",
            step=resumed_at,
            evaluation_index=index,
            knobs_before=before,
            knobs_after=knobs,
            message=f"resumed at step {resumed_at} with the state of evaluation {index} (step {last_step}); "
            + (f"lost segment: steps {resumed_at}..{last_step} are trained again" if lost else "nothing lost"),
        )
        self.save_state()

    def close(self) -> dict[str, Any]:
        """End the run: audit a reply still pending (``abandoned``), optionally end on the best, save the state.

        :return: the summary.
        """
        if self.closed or self.audit is None:
            return self.summary()
        self.closed = True
        if self.decider is not None:
            late = self.decider.poll(self.state.evaluation_index + 1)
            abandoned = late.submitted_at if late is not None else self.decider.close()
            self.decider.close()
            if abandoned is not None:
                self.ledger.counts["abandoned"] += 1
                arrived = "arrived" if late is not None else "pending"
                message = f"request from evaluation {abandoned} {arrived} after the end"
                outcome = late.value if late is not None and late.ok else None
                self._log_unapplied("abandoned", outcome, message, abandoned)
        if self.end_on_best and self.best_checkpoint is not None and self.state.best is not None:
            before = self.knob_values()
            self._restore_best()
            self.audit.append(
                kind="note",
                step=self.observation.step,
                evaluation_index=max(0, self.state.evaluation_index),
                knobs_before=before,
                knobs_after=self.knob_values(),
                message=f"ended on the best checkpoint (evaluation {self.state.best.evaluation_index})",
            )
        self.save_state()
        return self.summary()

    def note(self, message: str) -> None:
        """Audit an event outside a decision (e.g. training stopped on an error), with the knobs in force."""
        if self.audit is None:
            return
        knobs = self.knob_values()
        index = max(0, self.state.evaluation_index)
        self.audit.append(kind="note", step=self.observation.step, evaluation_index=index, knobs_before=knobs,
                          knobs_after=knobs, message=message)  # fmt: skip
        logger.warning(message)

    # ------------------------------------------------------------------------------------- the boundary
    def boundary(self, observation: Observation) -> bool:
        """Handle one decision boundary.

        :return: ``False`` once the manager has stopped training.
        :raises ManagerError: before :meth:`start` or after :meth:`close`.
        """
        if self.audit is None or self.closed:
            raise ManagerError("boundary() needs start() first and no close()")
        self.observation = observation
        self.on_score(self._measure(observation))
        snapshot = self.snapshot()
        if observation.hold is not None:
            menu = build_action_space(snapshot, self.gates)
            self.last_outcome = Outcome(NoAction(reason=observation.hold), [], menu, proposer="controller")
            self._apply(snapshot, self.last_outcome)
        elif self.decider is None:
            self.last_outcome = self._decide_sync(snapshot)
            self._apply(snapshot, self.last_outcome)
        else:
            self.last_outcome = self._async_boundary(snapshot)
        self.save_state()
        return not self.stopped

    def _measure(self, obs: Observation) -> float | None:
        """Score the boundary, feed the intervention tracker and append the evaluation log."""
        state = self.state
        state.evaluation_index += 1
        if state.score_name is None:
            state.score_name = choose_score(obs.evaluation, obs.training)
        if state.score_name in ("safe_success_rate", "success_rate") and obs.evaluation.n_episodes:
            self.tracker.rate_episodes = obs.evaluation.n_episodes
        score = score_of(state.score_name, obs.evaluation, obs.training)
        row = history_row(state.evaluation_index, state.score_name, score, obs)
        self.tracker.measure(state, score, row.mean_cost)
        state.history.append(row)
        return score

    def on_score(self, score: float | None) -> None:
        """Process the measured score of this boundary: judge the change on probation, keep the best checkpoint."""
        if self.probation is not None and self.probation.active is not None:
            n = self.observation.evaluation.n_episodes if self._rate_score() else None
            verdict = self.probation.judge(score, n)
            if verdict == "revert":
                self._revert()
            elif verdict == "kept":
                self.probation.close()
        best = self.state.best
        if score is None or not math.isfinite(score) or (best is not None and score <= best.score):
            return
        self.state.best = BestCheckpoint(
            evaluation_index=self.state.evaluation_index,
            step=self.observation.step,
            score=score,
            knobs=self.knob_values(),
            success_rate=self.observation.evaluation.success_rate,
        )
        self.best_checkpoint = self.adapter.checkpoint(self.run_dir / self.best_file if self.best_file else None)

    def snapshot(self) -> TelemetrySnapshot:
        """The snapshot of the current boundary (knob values as they are now)."""
        obs, state = self.observation, self.state
        return TelemetrySnapshot(
            run_id=self.run_id or "",
            task=obs.task,
            algo=obs.algo,
            kind=self.kind,  # type: ignore[arg-type]
            score_name=state.score_name or "",
            position=RunPosition(
                step=obs.step,
                total_steps=obs.total_steps,
                evaluation_index=max(0, state.evaluation_index),
                last_rollback_at=state.last_rollback_at,
            ),
            knobs=[k.spec(self.target, state.knob_last_changed.get(name)) for name, k in self.knobs.items()],
            evaluation=obs.evaluation,
            training=obs.training,
            health=obs.health,
            history=state.history[-self.history_len :],
            best=state.best,
            interventions=state.interventions,
            targets=self.targets,
        )

    def _decide_sync(self, snapshot: TelemetrySnapshot) -> Outcome:
        """Ask the manager and wait for it at most ``decision_timeout_s``; past it, the fallback decides."""
        if self.decision_timeout_s is None:
            return decide(snapshot, self.manager, gates=self.gates, fallback=self.fallback)
        request, manager, gates = snapshot.model_copy(deep=True), self.manager, self.gates
        future = run_detached(lambda: decide(request, manager, gates=gates, fallback=None))
        try:
            outcome = future.result(timeout=self.decision_timeout_s)
        except FutureTimeout:  # the request goes on on its own thread; its reply is dropped
            message = f"manager error: no decision within {self.decision_timeout_s:g} s (request abandoned)"
            late = Attempt(proposer=self.manager.name, errors=[message], latency_s=self.decision_timeout_s)
            outcome = Outcome(
                NoAction(reason="fallback: no decision in time"),
                [],
                build_action_space(snapshot, self.gates),
                [late],
                proposer=self.manager.name,
                fallback="no_action",
            )
        if outcome.fallback is None or self.fallback is None or self.fallback is self.manager:
            return outcome
        backup = decide(snapshot, self.fallback, gates=self.gates, fallback=None, max_reasks=0)
        if backup.fallback is not None:  # the fallback had nothing valid either
            return dataclasses.replace(outcome, attempts=outcome.attempts + backup.attempts)
        return dataclasses.replace(backup, attempts=outcome.attempts + backup.attempts, fallback=self.fallback.name)

    # ------------------------------------------------------------------------------------- async protocol
    @property
    def pending(self) -> bool:
        """Whether an async request is in flight or its reply not yet collected."""
        return self.decider is not None and self.decider.busy

    def _async_boundary(self, snapshot: TelemetrySnapshot) -> Outcome | None:
        """Apply a reply that arrived since the last boundary (if still valid), then ask again."""
        assert self.decider is not None
        result = self.decider.poll(self.state.evaluation_index)
        outcome = None
        if result is not None and result.stale:
            self.ledger.counts["stale"] += 1
            message = f"reply to evaluation {result.submitted_at} arrived {result.age} boundaries later: discarded"
            self._log_unapplied("stale", result.value if result.ok else None, message, result.submitted_at)
        elif result is not None:
            outcome = self._review(result, snapshot)
            note = f"requested at evaluation {result.submitted_at}, applied at {self.state.evaluation_index}"
            self._apply(self._requested or snapshot, outcome, note=note, requested_at=result.submitted_at)
            snapshot = self.snapshot()  # knobs may have changed
        if outcome is None and self.interim is not None and not self.stopped:
            outcome = decide(snapshot, self.interim, gates=self.gates, fallback=None, max_reasks=0)
            self._apply(snapshot, outcome, note=f"interim ({self.interim.name}): no {self.manager.name} reply to apply")
            snapshot = self.snapshot()
        if not self.stopped:
            request = snapshot.model_copy(deep=True)  # the worker must not see later edits of the state
            manager, fallback, gates = self.manager, self.fallback, self.gates
            index = self.state.evaluation_index
            if self.decider.submit(lambda: decide(request, manager, gates=gates, fallback=fallback), index):
                self._requested = request
        return outcome

    def _review(self, result: AsyncResult, snapshot: TelemetrySnapshot) -> Outcome:
        """The outcome of a collected reply: a failed request and a reply no longer valid are no-ops."""
        if not result.ok:
            return Outcome(
                NoAction(reason="fallback: the decision request failed"),
                [],
                build_action_space(snapshot, self.gates),
                [Attempt(proposer=self.manager.name, errors=[f"request error: {result.error!r}"])],
                proposer=self.manager.name,
                fallback="no_action",
            )
        review = revalidate(result.value, snapshot, self.gates)
        if review.ok:
            return dataclasses.replace(result.value, decision=review.decision, changes=review.changes)
        self.ledger.counts["revalidation_rejected"] += 1
        errors = [f"revalidation at evaluation {self.state.evaluation_index}: {e}" for e in review.errors]
        return dataclasses.replace(
            result.value,
            decision=NoAction(reason="reply no longer valid"),
            changes=[],
            attempts=[*result.value.attempts, Attempt(proposer="guard", errors=errors)],
            fallback="no_action",
        )

    def _log_unapplied(self, kind: str, outcome: Outcome | None, message: str, requested_at: int) -> None:
        """Audit an async reply that is not applied (``stale`` or ``abandoned``), keeping its attempts."""
        assert self.audit is not None
        fields = outcome.audit_fields() if outcome is not None else {}
        fields["proposer"] = self.manager.name
        knobs = self.knob_values()
        self.audit.append(
            kind=kind,
            step=self.observation.step,
            evaluation_index=max(0, self.state.evaluation_index),
            snapshot=self._requested,
            knobs_before=knobs,
            knobs_after=knobs,
            message=message,
            requested_at=requested_at,
            **fields,
        )
        logger.info("%s: %s", kind, message)

    def _rate_score(self) -> bool:
        return self.state.score_name in ("safe_success_rate", "success_rate")

    def _revert(self) -> None:
        """Undo the change on probation: restore its pre-change checkpoint and knobs; record it as ``worse``."""
        assert self.probation is not None and self.audit is not None
        trial = self.probation.close()
        if trial is None:
            return
        before = self.knob_values()
        try:
            self.adapter.restore(trial.checkpoint)
            for name in self._set_knobs(trial.knobs_before):
                self.state.knob_last_changed[name] = self.state.evaluation_index
        except Exception as exc:  # never raised into training
            logger.exception("reverting the change of evaluation %d failed", trial.evaluation_index)
            self.audit.append(
                kind="note",
                step=self.observation.step,
                evaluation_index=self.state.evaluation_index,
                message=f"probation: revert failed: {type(exc).__name__}: {exc}",
            )
            return
        for item in self.state.interventions:
            if item.evaluation_index == trial.evaluation_index and item.action == "adjust":
                item.verdict = "worse"
        self.ledger.counts["reverts"] = self.ledger.counts.get("reverts", 0) + 1
        lost = max(0, self.observation.step - trial.step)
        self.ledger.counts["reverted_steps"] = self.ledger.counts.get("reverted_steps", 0) + lost
        after = self.knob_values()
        scores = ", ".join(f"{x:.3g}" for x in trial.scores_after)
        message = (
            f"probation: reverted {trial.describe()} of evaluation {trial.evaluation_index} "
            f"(score before {trial.score_before:.3g}, after [{scores}]); {lost} env steps discarded"
        )
        self.interventions.append(
            {
                "step": self.observation.step,
                "evaluation_index": self.state.evaluation_index,
                "action": "revert",
                "changes": [
                    ResolvedChange(knob=n, before=before[n], after=after[n]).model_dump()
                    for n in self.knobs
                    if before[n] != after[n]
                ],
            }
        )
        self.audit.append(
            kind="note",
            step=self.observation.step,
            evaluation_index=self.state.evaluation_index,
            knobs_before=before,
            knobs_after=after,
            message=message,
        )
        logger.info(message)

    def _open_trial(self, checkpoint: Any, before: dict[str, float], changes: list[ResolvedChange]) -> None:
        """Put an applied adjust on probation, measured from this boundary's score."""
        if self.probation is None:
            return
        score = self.state.history[-1].score if self.state.history else None
        if score is None or not math.isfinite(score):
            self.probation.close()
            return
        self.probation.open(
            Trial(
                evaluation_index=self.state.evaluation_index,
                step=self.observation.step,
                score_before=score,
                n_before=self.observation.evaluation.n_episodes if self._rate_score() else None,
                changes=changes,
                checkpoint=checkpoint,
                knobs_before=before,
            )
        )

    # ------------------------------------------------------------------------------------- actuation
    def knob_values(self) -> dict[str, float]:
        """Current value of every knob."""
        return {name: k.read(self.target) for name, k in self.knobs.items()}

    def _set_knobs(self, values: Mapping[str, float]) -> list[str]:
        """Write every known knob of ``values`` whose value differs; return the names written."""
        written = []
        for name, value in values.items():
            if name in self.knobs and self.knobs[name].read(self.target) != value:
                self.knobs[name].write(self.target, value)
                written.append(name)
        return written

    def _write(self, changes: list[ResolvedChange]) -> list[ResolvedChange]:
        applied = []
        for c in changes:
            knob = self.knobs[c.knob]
            before = knob.read(self.target)
            applied.append(ResolvedChange(knob=c.knob, before=before, after=knob.write(self.target, c.after)))
            self.state.knob_last_changed[c.knob] = self.state.evaluation_index
        return applied

    def _restore_best(self, keep_recipe: bool = False) -> list[ResolvedChange]:
        before = self.knob_values()
        self.adapter.restore(self.best_checkpoint)
        assert self.state.best is not None
        if not keep_recipe:
            self._set_knobs(self.state.best.knobs)
        after = self.knob_values()
        return [ResolvedChange(knob=n, before=before[n], after=after[n]) for n in self.knobs if before[n] != after[n]]

    def rollback(self, keep_recipe: bool = True) -> list[ResolvedChange]:
        """Restore the best checkpoint (weights, optimiser state); keep the current recipe (as the paper does).

        :param keep_recipe: keep the knobs as they are now (later changes are not undone); ``False``
            also restores the knobs the best checkpoint was reached with.

        :return: the knob changes (values before the rollback, values after it).
        :raises ManagerError: if there is no best checkpoint yet.
        """
        if self.best_checkpoint is None or self.state.best is None:
            raise ManagerError("no best checkpoint in memory")
        if self.probation is not None:
            self.probation.close()  # a rollback supersedes the change on probation
        changes = self._restore_best(keep_recipe)
        self.state.last_rollback_at = self.state.evaluation_index
        self.ledger.counts["rollbacks"] += 1
        return changes

    def _apply(
        self, snapshot: TelemetrySnapshot, outcome: Outcome, note: str = "", requested_at: int | None = None
    ) -> None:
        assert self.audit is not None
        before = self.knob_values()
        decision = outcome.decision
        applied, message = False, ""
        changes: list[ResolvedChange] = []
        if self.on_first_move is not None and decision.action != "no_action" and not self.interventions:
            hook, self.on_first_move = self.on_first_move, None
            try:
                hook(self.observation.step)
            except Exception as exc:  # the managed run goes on; only its fork point is lost
                logger.exception("on_first_move failed")
                self.note(f"on_first_move failed: {type(exc).__name__}: {exc}")
        try:
            if decision.action == "adjust":
                checkpoint = self.adapter.checkpoint() if self.probation is not None else None
                changes, applied = self._write(outcome.changes), True
                self._open_trial(checkpoint, before, changes)
            elif decision.action in ("rollback_to_best", "rollback_and_consolidate"):
                changes = self.rollback()
                if decision.action == "rollback_and_consolidate":
                    changes += self._write(outcome.changes)
                applied = True
            elif decision.action == "stop_training":
                applied, message = self._confirm_stop(snapshot)
                self.stopped = applied
        except Exception as exc:  # a knob failure is logged, never raised into training
            logger.exception("applying %s failed", decision.action)
            message = f"apply failed: {type(exc).__name__}: {exc}"
        step = self.observation.step
        if applied:
            self.tracker.record(self.state, decision.action, changes, decision.expected_outcome, step)
            self.interventions.append(
                {
                    "step": step,
                    "evaluation_index": self.state.evaluation_index,
                    "action": decision.action,
                    "changes": [c.model_dump() for c in changes],
                }
            )
        self.ledger.add(outcome, applied)
        self.audit.append(
            kind="decision",
            step=step,
            evaluation_index=self.state.evaluation_index,
            snapshot=snapshot,
            applied=applied,
            changes=changes,
            knobs_before=before,
            knobs_after=self.knob_values(),
            message="; ".join(m for m in (note, message) if m),
            requested_at=requested_at,
            **outcome.audit_fields(),
        )
        summary = json.dumps(DecisionAdapter.dump_python(decision, mode="json", exclude={"reason", "expected_outcome"}))
        if self.verbose:
            print(f"[manager] step {step} eval {self.state.evaluation_index}: {summary}")
        elif applied:
            logger.info("step %d eval %d: applied %s", step, self.state.evaluation_index, summary)

    def _confirm_stop(self, snapshot: TelemetrySnapshot) -> tuple[bool, str]:
        """Whether a stop goes ahead, and the figures of the adapter's confirmation episodes ("" without one).

        The gate stops at the first evaluations that meet the targets, so it stops on a favourable draw of a noisy
        estimate; fresh episodes, which that choice did not select, must meet them too, else the stop is refused.
        """
        confirm = getattr(self.adapter, "confirm_stop", None)
        metrics = confirm() if callable(confirm) else None
        if metrics is None:
            return True, ""
        figures = ", ".join(
            f"{name} {value:.3g}"
            for name, value in (
                ("success", metrics.success_rate),
                ("safe success", metrics.safe_success_rate),
                ("violation rate", metrics.violation_rate),
                ("episode cost", metrics.mean_cost),
            )
            if value is not None
        )
        if meets_targets(metrics, snapshot):
            return True, f"stop confirmed: {metrics.n_episodes} fresh episodes meet the targets ({figures})"
        return (
            False,
            f"stop refused: {metrics.n_episodes} fresh episodes miss the targets ({figures}); training continues",
        )

    # ------------------------------------------------------------------------------------- persistence
    def save_state(self) -> None:
        """Write ``manager_state.json`` atomically (temp file, fsync, rename) for resume."""
        if not self.run_dir.exists():
            return
        data = {
            "run_id": self.run_id,
            "telemetry": self.state.model_dump(mode="json"),
            "ledger": dataclasses.asdict(self.ledger),
            "knobs": self.knob_values(),
            "interventions": self.interventions,
            "step": self.observation.step,
            # the audit records this state accounts for, and a request in flight (for a resume)
            "audit_next_seq": self.audit.next_seq if self.audit is not None else None,
            "pending_request": self.decider.submitted_at if self.decider is not None and self.decider.busy else None,
        }
        write_text_atomic(self.run_dir / STATE_FILENAME, json.dumps(data))

    def _load_state(self) -> dict[str, Any] | None:
        """Load ``manager_state.json`` if there is one; return what was read.

        :raises ManagerError: naming the file, if it is unreadable, invalid or from another run.
        """
        path = self.run_dir / STATE_FILENAME
        if not path.exists():
            return None
        hint = f"move {path} away to start the manager afresh (the audit log is kept)"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            state = TelemetryState.model_validate(data["telemetry"])
            ledger = DecisionLedger(**copy.deepcopy(data.get("ledger", {})))
            knobs = {str(k): float(v) for k, v in data.get("knobs", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManagerError(f"{path}: not a valid manager state ({type(exc).__name__}: {exc}); {hint}") from exc
        owner = data.get("run_id")
        audit_owner = _audit_run_id(self.run_dir)
        for other in (self.run_id, audit_owner):
            if other is not None and owner is not None and owner != other:
                raise ManagerError(f"{path} belongs to run {owner!r}, not {other!r}; {hint}")
        self.run_id = self.run_id or owner
        self.state, self.ledger = state, ledger
        self.interventions = list(data.get("interventions", []))
        self.observation = Observation(step=int(data.get("step") or 0))
        # knobs outside the checkpoint (env reward weights, optimiser groups) are re-applied
        self._set_knobs(knobs)
        best = self.run_dir / self.best_file if self.best_file else None
        if self.state.best is not None and best is not None and best.exists():
            self.best_checkpoint = best
        return data

    # ------------------------------------------------------------------------------------- reporting
    @property
    def counts(self) -> dict[str, int]:
        """Decision counters (see :class:`~rl_manager.core.DecisionLedger`)."""
        return self.ledger.counts

    def summary(self) -> dict[str, Any]:
        """Counters, best checkpoint, final knobs and applied interventions (``summary.json``)."""
        return {
            "run_id": self.run_id,
            "manager": self.manager.name,
            "async": self.async_decisions,
            "interim": self.interim.name if self.interim is not None else None,
            **self.ledger.summary(),
            "stopped_by_manager": self.stopped,
            "evaluations": self.state.evaluation_index + 1,
            "best": self.state.best.model_dump(mode="json") if self.state.best else None,
            "knobs_final": self.knob_values(),
            "interventions": self.interventions,
            # the LLM manager's budget guard: calls and tokens used, with their limits
            "llm_budget": self.manager.budget() if callable(getattr(self.manager, "budget", None)) else None,
            # the LLM manager's settings (prompt, format, advice ...), so a run says how it was asked; no key
            "llm_settings": (
                settings.model_dump(mode="json", exclude={"api_key"})
                if (settings := getattr(self.manager, "settings", None)) is not None
                else None
            ),
        }


class Controlled:
    """Views of an adapter's :attr:`controller`, the same on every integration."""

    controller: Controller

    @property
    def state(self) -> TelemetryState:
        """The run state (evaluation log, best, interventions)."""
        return self.controller.state

    @property
    def counts(self) -> dict[str, int]:
        """Decision counters (see :class:`~rl_manager.core.DecisionLedger`)."""
        return self.controller.counts

    @property
    def stopped(self) -> bool:
        """Whether the manager stopped training."""
        return self.controller.stopped

    def knob_values(self) -> dict[str, float]:
        """Current value of every knob."""
        return self.controller.knob_values()

    def summary(self) -> dict[str, Any]:
        """Counters, best checkpoint, final knobs and applied interventions (``summary.json``)."""
        return self.controller.summary()

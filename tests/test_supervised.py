"""TorchManager: knobs written to a live optimiser/model and read back, rollback of weights and
optimiser state, stop, asynchronous decisions (non-blocking, stale, abandoned, re-validated) and
the audit log."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch as th
from torch import nn

from rl_manager.audit import read_audit
from rl_manager.managers.base import Manager, Proposal
from rl_manager.menu import GateConfig
from rl_manager.schema import ActionSpace, Targets, TelemetrySnapshot
from rl_manager.supervised import SupervisedManagerError, TorchManager, attribute_knob, lr_knob


class Scripted(Manager):
    """Replies with the next scripted decision (then no_action); optionally waits on an event first."""

    name = "scripted"

    def __init__(self, replies: list[dict[str, Any]], gate: threading.Event | None = None, sleep: float = 0.0) -> None:
        self.replies = list(replies)
        self.gate, self.sleep = gate, sleep
        self.calls = 0

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.sleep:
            time.sleep(self.sleep)
        reply = self.replies.pop(0) if self.replies else {"action": "no_action"}
        return Proposal(reply=json.dumps(reply))


def tiny(dropout: float = 0.0, lr: float = 1e-2) -> tuple[nn.Module, th.optim.Optimizer]:
    th.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))
    return model, th.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)


def train(model: nn.Module, opt: th.optim.Optimizer, steps: int, seed: int = 0) -> float:
    g = th.Generator().manual_seed(seed)
    loss = th.tensor(0.0)
    for _ in range(steps):
        x = th.randn(32, 4, generator=g)
        loss = ((model(x).squeeze(-1) - x.sum(-1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def adjust(**values: float) -> dict[str, Any]:
    return {"action": "adjust", "changes": [{"knob": k, "value": v} for k, v in values.items()]}


def records(run_dir: Path, kind: str | None = None):
    recs = read_audit(run_dir)
    assert [r.seq for r in recs] == list(range(len(recs)))  # contiguous
    return [r for r in recs if kind is None or r.kind == kind]


def test_knobs_applied_to_param_groups_dropout_and_attributes(tmp_path: Path) -> None:
    model, opt = tiny()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.0)
    smoothing = attribute_knob(
        criterion, "label_smoothing", low=0.0, high=0.3, values=(0.0, 0.1, 0.2), multipliers=(), role="regularization"
    )
    script = Scripted([adjust(learning_rate=0.005, dropout=0.1, weight_decay=0.01), adjust(label_smoothing=0.1)])
    tm = TorchManager(opt, model, script, run_dir=tmp_path, async_=False, extra_knobs=[smoothing], fallback=None)
    assert list(tm.knobs) == ["learning_rate", "dropout", "weight_decay", "label_smoothing"]
    assert tm.report(10, train_loss=train(model, opt, 2), val_loss=1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.01)
    assert model[2].p == pytest.approx(0.1)
    assert tm.report(20, train_loss=train(model, opt, 2), val_loss=0.9)
    assert criterion.label_smoothing == pytest.approx(0.1)
    # the optimiser really uses the new values
    train(model, opt, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    summary = tm.close()
    assert summary["applied"] == 2
    decisions = records(tmp_path, "decision")
    assert decisions[0].knobs_after["dropout"] == pytest.approx(0.1)
    assert decisions[0].snapshot is not None and decisions[0].snapshot.kind == "supervised"
    assert {c.knob for c in decisions[0].changes} == {"learning_rate", "dropout", "weight_decay"}


def test_lr_knob_keeps_group_ratios() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = th.optim.SGD([{"params": a.parameters(), "lr": 0.1}, {"params": b.parameters(), "lr": 0.01}])
    knob = lr_knob(opt, low=1e-4, high=1.0)
    assert knob.set(0.05) == pytest.approx(0.05)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.005)
    assert knob.set(10.0) == pytest.approx(1.0)  # clamped
    with pytest.raises(SupervisedManagerError):
        knob.set(float("nan"))


def test_rollback_restores_weights_and_optimizer_state(tmp_path: Path) -> None:
    model, opt = tiny()
    gates = GateConfig(rollback_margin=0.0, rollback_patience=1, rollback_cooldown=0)
    script = Scripted([{"action": "no_action"}, adjust(learning_rate=0.005), {"action": "rollback_to_best"}])
    tm = TorchManager(opt, model, script, run_dir=tmp_path, async_=False, gates=gates, fallback=None)
    tm.controller.probation = None  # (probation would revert the LR change before the rollback)
    tm.report(5, train_loss=train(model, opt, 5), val_loss=1.0)  # best
    best_weights = {k: v.clone() for k, v in model.state_dict().items()}
    best_avg = opt.state[model[0].weight]["exp_avg"].clone()
    best_step = float(opt.state[model[0].weight]["step"])
    tm.report(10, train_loss=train(model, opt, 5, seed=1), val_loss=2.0)  # lr -> 0.005
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    train(model, opt, 5, seed=2)
    assert not th.equal(model[0].weight, best_weights["0.weight"])
    assert tm.report(15, train_loss=0.5, val_loss=2.5)  # rollback (gate open: below the best)
    for k, v in model.state_dict().items():
        assert th.equal(v, best_weights[k]), k
    assert th.equal(opt.state[model[0].weight]["exp_avg"], best_avg)
    assert float(opt.state[model[0].weight]["step"]) == best_step
    # the rollback keeps the current recipe: the optimiser's state_dict does not bring the old LR back
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    # the stored best is a deep copy: training after the rollback does not change it
    train(model, opt, 3, seed=3)
    assert th.equal(tm.best_state["model"]["0.weight"], best_weights["0.weight"])
    tm.close()
    last = records(tmp_path, "decision")[-1]
    assert last.decision.action == "rollback_to_best" and last.applied
    assert tm.counts["rollbacks"] == 1


def test_rollback_without_best_raises(tmp_path: Path) -> None:
    model, opt = tiny()
    tm = TorchManager(opt, model, "none", run_dir=tmp_path, async_=False)
    with pytest.raises(SupervisedManagerError):
        tm.rollback()
    tm.close()
    with pytest.raises(SupervisedManagerError):
        tm.report(1, val_loss=1.0)


def test_stop_ends_the_loop(tmp_path: Path) -> None:
    model, opt = tiny()
    tm = TorchManager(
        opt, model, "rule", run_dir=tmp_path, async_=False, targets=Targets(success_rate=0.9, max_violation_rate=None)
    )
    steps_run = 0
    for step in range(1, 101):
        loss = train(model, opt, 1, seed=step)
        steps_run = step
        evaluate = step % 5 == 0
        if not tm.report(
            step, train_loss=loss, val_loss=1.0 if evaluate else None, accuracy=0.95 if evaluate else None
        ):
            break
    assert steps_run == 10  # stop gate opens after 2 evaluations meeting the target
    assert tm.stopped
    assert not tm.report(11, train_loss=0.1)
    assert tm.close()["stopped_by_manager"]
    assert records(tmp_path, "decision")[-1].decision.action == "stop_training"


def test_async_report_does_not_block_and_applies_at_next_boundary(tmp_path: Path) -> None:
    model, opt = tiny()
    script = Scripted([adjust(learning_rate=0.005)], sleep=1.0)
    tm = TorchManager(opt, model, script, run_dir=tmp_path, max_age=3)
    start = time.perf_counter()
    assert tm.report(5, train_loss=1.0, val_loss=1.0)
    assert time.perf_counter() - start < 0.25  # the 1 s decision runs in the background
    assert tm.pending
    slowest = 0.0
    for step in range(6, 10):  # training steps while the request is pending
        t = time.perf_counter()
        tm.report(step, train_loss=train(model, opt, 1))
        slowest = max(slowest, time.perf_counter() - t)
    t = time.perf_counter()
    tm.report(10, train_loss=0.9, val_loss=0.9)  # boundary 1: reply not there yet
    slowest = max(slowest, time.perf_counter() - t)
    assert slowest < 0.25
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert tm.controller.decider is not None and tm.controller.decider.wait(5)
    tm.report(15, train_loss=0.8, val_loss=0.8)  # boundary 2: applied, re-validated
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    tm.close()
    applied = [r for r in records(tmp_path, "decision") if r.applied]
    assert len(applied) == 1 and applied[0].evaluation_index == 2
    assert "requested at evaluation 0" in applied[0].message


def test_async_stale_reply_discarded_and_logged(tmp_path: Path) -> None:
    model, opt = tiny()
    release = threading.Event()
    tm = TorchManager(opt, model, Scripted([adjust(learning_rate=0.005)], gate=release), run_dir=tmp_path, max_age=1)
    for i in range(3):
        tm.report(i, train_loss=1.0, val_loss=1.0 + 0.01 * i)
    release.set()
    assert tm.controller.decider is not None and tm.controller.decider.wait(5)
    tm.report(3, train_loss=1.0, val_loss=1.0)  # age 3 > max_age 1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # not applied
    tm.close()
    stale = records(tmp_path, "stale")
    assert len(stale) == 1 and not stale[0].applied and stale[0].decision.action == "adjust"
    assert tm.counts["stale"] == 1


def test_async_revalidation_rejects_outdated_reply(tmp_path: Path) -> None:
    model, opt = tiny()
    release = threading.Event()
    tm = TorchManager(opt, model, Scripted([adjust(learning_rate=0.005)], gate=release), run_dir=tmp_path)
    tm.report(0, train_loss=1.0, val_loss=1.0)
    opt.param_groups[0]["lr"] = 0.005  # the recipe moved on while the request was pending
    release.set()
    assert tm.controller.decider is not None and tm.controller.decider.wait(5)
    tm.report(1, train_loss=1.0, val_loss=1.0)
    tm.close()
    rec = records(tmp_path, "decision")[0]
    assert not rec.applied and rec.decision.action == "no_action" and rec.requested_at == 0
    guard = rec.attempts[-1]  # the guard's errors are an extra attempt, as on the SB3 side
    assert guard.proposer == "guard" and guard.errors[0].startswith("revalidation at evaluation 1:")
    assert guard.errors[0] in rec.validation_errors
    assert tm.counts["revalidation_rejected"] == 1


def test_async_pending_request_abandoned_on_close(tmp_path: Path) -> None:
    model, opt = tiny()
    release = threading.Event()
    tm = TorchManager(opt, model, Scripted([], gate=release), run_dir=tmp_path)
    tm.report(0, train_loss=1.0, val_loss=1.0)
    summary = tm.close()
    release.set()
    assert summary["abandoned"] == 1
    abandoned = records(tmp_path, "abandoned")
    assert len(abandoned) == 1 and abandoned[0].snapshot is not None
    assert json.loads((tmp_path / "summary.json").read_text())["abandoned"] == 1


def test_rule_manager_reacts_to_overfitting(tmp_path: Path) -> None:
    model, opt = tiny()
    tm = TorchManager(opt, model, "rule", run_dir=tmp_path, async_=False, total_steps=100)
    val = [1.0, 0.8, 0.7, 0.75, 0.8]
    for i, v in enumerate(val):
        tm.report(10 * (i + 1), train_loss=1.0 - 0.1 * i, val_loss=v)
    tm.close()
    last = records(tmp_path, "decision")[-1]
    assert last.applied and last.decision.action == "adjust"
    assert {c.knob for c in last.changes} == {"dropout", "learning_rate"}
    assert model[2].p > 0 and opt.param_groups[0]["lr"] < 0.01


def test_tinystories_script_tiny(tmp_path: Path) -> None:
    """A tiny version of the TinyStories experiment: both arms, the benchmark and the summary."""
    import importlib.util
    import random as pyrandom

    pytest.importorskip("matplotlib")
    path = Path(__file__).resolve().parents[1] / "experiments" / "tinystories" / "train_lm.py"
    spec = importlib.util.spec_from_file_location("tinystories_train_lm", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = pyrandom.Random(0)
    words = ["Lily", "Tom", "saw", "a", "big", "red", "ball", "and", "the", "dog", "ran", "to", "park", "happy"]
    stories = [" ".join(rng.choice(words) for _ in range(60)) + "." for _ in range(40)]
    data = tmp_path / "stories.txt"
    data.write_text("<|endoftext|>".join(stories))
    common = ["--data", str(data), "--train-fraction", "0.5", "--width", "32", "--layers", "1", "--heads", "2"]
    common += ["--context", "16", "--batch-size", "8", "--eval-windows", "8", "--out", str(tmp_path / "out")]
    for arm in ("baseline", "managed"):
        mod.main(["train", "--arm", arm, "--steps", "30", "--eval-freq", "5", *common])
    result = json.loads((tmp_path / "out" / "managed_s0" / "result.json").read_text())
    assert result["steps"] == 30 and len(result["curve"]) == 6
    records(tmp_path / "out" / "managed_s0")
    mod.main(
        ["bench", "--rounds", "1", "--segment-steps", "10", "--decision-low", "0.05", "--decision-high", "0.1", *common]
    )
    bench = json.loads((tmp_path / "out" / "bench" / "bench.json").read_text())
    assert set(bench["tokens_per_s"]) == {"none", "async", "sync"}
    mod.main(["summarize", "--out", str(tmp_path / "out"), "--plot", str(tmp_path / "plot.png")])
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_label_smoothing_knob_is_a_regularisation_knob(tmp_path: Path) -> None:
    from rl_manager.supervised import label_smoothing_knob

    model, opt = tiny()
    criterion = nn.CrossEntropyLoss()
    knob = label_smoothing_knob(criterion)
    assert knob.name == "label_smoothing" and knob.role == "regularization" and knob.conservative == "up"
    tm = TorchManager(
        opt,
        model,
        Scripted([adjust(label_smoothing=0.1)]),
        run_dir=tmp_path,
        async_=False,
        extra_knobs=[knob],
        fallback=None,
    )
    tm.report(5, train_loss=1.0, val_loss=1.0)
    assert criterion.label_smoothing == pytest.approx(0.1)
    tm.close()
    with pytest.raises(SupervisedManagerError):
        label_smoothing_knob(nn.MSELoss())


def test_first_supervised_rules_roll_back_with_more_regularisation(tmp_path: Path) -> None:
    """The first versions of the supervised rule (issue 15): once the rollback gate opens on an overfitting
    run, back to the best weights with a regularisation knob raised, the LR in force kept."""
    from rl_manager.managers.supervised_rule import BoldRegularizeRuleManager, RegularizeFirstRuleManager
    from rl_manager.supervised import default_knobs

    val = [5.0, 4.6, 4.3, 4.1, 4.15, 4.3, 4.45, 4.6]
    for i, manager in enumerate((RegularizeFirstRuleManager(), BoldRegularizeRuleManager())):
        model, opt = tiny(lr=3e-3)
        tm = TorchManager(
            opt,
            model,
            manager,
            run_dir=tmp_path / str(i),
            async_=False,
            knobs=default_knobs(opt, model),
            gates=GateConfig(rollback_margin=0.02),
            total_steps=100,
            fallback=None,
        )
        for step, v in enumerate(val, start=1):
            tm.report(10 * step, train_loss=4.0 - 0.3 * step, val_loss=v)
        tm.close()
        decisions = [r for r in records(tmp_path / str(i), "decision") if r.applied]
        rollback = next(r for r in decisions if r.decision.action == "rollback_and_consolidate")
        assert rollback.decision.change.knob in {"dropout", "weight_decay"}
        assert rollback.knobs_after["learning_rate"] == rollback.knobs_before["learning_rate"]
        assert model[2].p > 0


def test_supervised_rule_versions_add_their_bolder_moves(tmp_path: Path) -> None:
    """The v4 candidates (issue 15): dropout joins the plateau LR cut; an LR halving joins the gap-onset move."""
    from rl_manager.managers.supervised_rule import OnsetAnnealRuleManager
    from rl_manager.supervised import default_knobs

    def applied(name: str, manager, total: int, train: list[float], val: list[float]):
        model, opt = tiny(lr=3e-3)
        tm = TorchManager(
            opt, model, manager, run_dir=tmp_path / name, async_=False, knobs=default_knobs(opt, model),
            total_steps=total, fallback=None,
        )  # fmt: skip
        for step, (t, v) in enumerate(zip(train, val, strict=True), start=1):
            tm.report(20 * step, train_loss=t, val_loss=v)
        tm.close()
        return [r for r in records(tmp_path / name, "decision") if r.applied]

    # a flat start while the training loss is above the validation loss: the plateau move, with dropout 0.3
    plateau = applied("plateau", OnsetAnnealRuleManager(plateau_dropout=0.3), 1000, [5.6, 5.3], [4.84, 4.83])
    assert plateau and plateau[0].knobs_after["learning_rate"] < 3e-3
    assert plateau[0].knobs_after["dropout"] == pytest.approx(0.3)
    # without it, v3's move: the LR alone
    v3 = applied("v3", OnsetAnnealRuleManager(onset_lr_factor=None), 1000, [5.6, 5.3], [4.84, 4.83])
    assert v3 and v3[0].knobs_after["dropout"] == 0.0
    # a generalisation gap opening (2.5% -> 7.7% -> 14%) after the early window, before the budget ends (no knob moves
    # at or past it): regularisation and LR x0.5
    train, val = [4.6, 4.3, 4.1, 3.9, 3.6, 3.3], [4.5, 4.25, 4.05, 4.0, 3.9, 3.85]
    onset = applied("onset", OnsetAnnealRuleManager(), 150, train, val)
    move = next(r for r in onset if r.knobs_after["dropout"] > 0)
    assert move.knobs_after["learning_rate"] == pytest.approx(1.5e-3)
    assert move.knobs_after["weight_decay"] > move.knobs_before["weight_decay"]


def test_supervised_rule_cuts_the_lr_with_new_moments_on_a_starting_plateau(tmp_path: Path) -> None:
    """``"supervised_rule"`` by name: on a flat start (training loss above the validation loss) the LR falls, the
    optimiser's moments are cleared once (``optimizer_restarts``) and dropout rises, in one decision."""
    from rl_manager.managers import MANAGERS, SupervisedRuleManager
    from rl_manager.supervised import default_knobs, optimizer_restart_knob

    model, opt = tiny(lr=3e-3)
    x = th.randn(8, 4)
    model(x).sum().backward()
    opt.step()
    assert opt.state  # Adam's moments exist
    tm = TorchManager(
        opt, model, "supervised_rule", run_dir=tmp_path, async_=False,
        knobs=[*default_knobs(opt, model), optimizer_restart_knob(opt)], total_steps=1000, fallback=None,
    )  # fmt: skip
    assert MANAGERS["supervised_rule"] is SupervisedRuleManager
    for step, (t, v) in enumerate([(5.6, 4.84), (5.3, 4.83)], start=1):
        tm.report(20 * step, train_loss=t, val_loss=v)
    assert not opt.state  # new moments from the next step on
    tm.close()
    (move,) = [r for r in records(tmp_path, "decision") if r.applied]
    assert move.knobs_after["learning_rate"] < 3e-3 and move.knobs_after["dropout"] == pytest.approx(0.3)
    assert move.knobs_after["optimizer_restarts"] == 1.0

"""Shared fakes: an adapter with a weight counter and dict knobs, scripted and gated managers."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

from rl_manager.controller import Controller, Observation
from rl_manager.knobs import FnKnob
from rl_manager.managers.base import Manager, Proposal
from rl_manager.schema import ActionSpace, EvalMetrics, TelemetrySnapshot


class FakeAdapter:
    """An integration without training: ``weights`` is the model, ``values`` holds the knobs."""

    def __init__(self) -> None:
        self.weights: dict[str, float] = {"w": 0.0}
        self.values: dict[str, float] = {"learning_rate": 1e-3, "ent_coef": 0.01}
        self.saved: list[Path] = []

    def knobs(self) -> dict[str, FnKnob]:
        def knob(name: str, low: float, high: float, role: str) -> FnKnob:
            return FnKnob(
                name, lambda: self.values[name], lambda v: self.values.__setitem__(name, v), low, high, role=role
            )

        return {
            "learning_rate": knob("learning_rate", 1e-5, 1e-2, "learning_rate"),
            "ent_coef": knob("ent_coef", 0.0, 0.1, "exploration"),
        }

    def checkpoint(self, path: Path | None = None) -> dict[str, float]:
        if path is not None:
            path.write_text(json.dumps(self.weights))
            self.saved.append(path)
        return copy.deepcopy(self.weights)

    def restore(self, checkpoint: dict[str, float] | Path) -> None:
        self.weights = json.loads(checkpoint.read_text()) if isinstance(checkpoint, Path) else dict(checkpoint)


class Scripted(Manager):
    """Replies with the next scripted reply (then ``no_action``); waits on ``gate`` first if given."""

    name = "scripted"

    def __init__(self, replies: list[dict[str, Any]] | None = None, gate: threading.Event | None = None) -> None:
        self.replies = list(replies or [])
        self.gate = gate
        self.calls = 0

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(10), "gate never opened"
        reply = self.replies.pop(0) if self.replies else {"action": "no_action"}
        return Proposal(reply=json.dumps(reply))


def adjust(**values: float) -> dict[str, Any]:
    """An ``adjust`` reply."""
    return {"action": "adjust", "changes": [{"knob": k, "value": v} for k, v in values.items()]}


def make_controller(tmp_path: Path, manager: Manager | str = "none", **kwargs: Any) -> tuple[Controller, FakeAdapter]:
    """A started controller on a :class:`FakeAdapter` (no fallback unless given)."""
    adapter = FakeAdapter()
    kwargs.setdefault("fallback", None)
    ctl = Controller(adapter, manager, run_dir=tmp_path, knobs=adapter.knobs(), **kwargs)
    ctl.start()
    return ctl, adapter


def observation(step: int, success: float, n: int = 20, cost: float | None = None) -> Observation:
    """An evaluation of ``n`` episodes with this success rate."""
    return Observation(
        step=step,
        evaluation=EvalMetrics(n_episodes=n, mean_return=success, success_rate=success, mean_cost=cost),
        total_steps=100_000,
    )

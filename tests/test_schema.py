import json
import math
import subprocess
import sys

import pytest
from pydantic import ValidationError

from rl_manager.schema import (
    Adjust,
    AuditRecord,
    DecisionAdapter,
    KnobSpec,
    NoAction,
    TelemetrySnapshot,
    json_schemas,
)
from tests.conftest import make_snapshot


def test_noop_cannot_carry_updates():
    with pytest.raises(ValidationError):
        DecisionAdapter.validate_python({"action": "no_action", "changes": [{"knob": "learning_rate", "value": 1e-4}]})


def test_adjust_needs_one_to_three_distinct_changes():
    with pytest.raises(ValidationError):
        Adjust(changes=[])
    with pytest.raises(ValidationError):
        Adjust(changes=[{"knob": f"k{i}", "value": 1.0} for i in range(4)])
    with pytest.raises(ValidationError):
        Adjust(changes=[{"knob": "a", "value": 1.0}, {"knob": "a", "value": 2.0}])
    assert len(Adjust(changes=[{"knob": "a", "value": 1.0}]).changes) == 1


def test_decision_union_discriminates():
    d = DecisionAdapter.validate_python({"action": "rollback_to_best", "reason": "r"})
    assert d.action == "rollback_to_best"
    with pytest.raises(ValidationError):
        DecisionAdapter.validate_python({"action": "launch_missiles"})


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(value=2.0, low=0.0, high=1.0),
        dict(value=0.5, low=1.0, high=0.0),
        dict(value=float("nan"), low=0.0, high=1.0),
        dict(value=0.5, low=0.0, high=1.0, multipliers=(0.0,)),
        dict(value=0.5, low=0.0, high=1.0, multipliers=(), values=()),
    ],
)
def test_knobspec_rejects_bad_specs(kwargs):
    with pytest.raises(ValidationError):
        KnobSpec(name="k", **kwargs)


def test_extra_fields_forbidden():
    data = make_snapshot().model_dump()
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        TelemetrySnapshot.model_validate(data)


def test_nan_telemetry_round_trips_as_strict_json():
    snap = make_snapshot()
    snap.health.critic_loss = float("nan")
    snap.evaluation.mean_return = float("-inf")
    text = snap.model_dump_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    back = TelemetrySnapshot.model_validate_json(text)
    assert math.isnan(back.health.critic_loss)
    assert back.evaluation.mean_return == float("-inf")


def test_audit_record_holds_a_decision():
    rec = AuditRecord(run_id="r", seq=0, time="t", decision=NoAction(reason="x"))
    back = AuditRecord.model_validate_json(rec.model_dump_json())
    assert back.decision.action == "no_action"


def test_schema_cli_prints_every_schema():
    out = subprocess.run([sys.executable, "-m", "rl_manager.schema"], capture_output=True, text=True, check=True)
    schemas = json.loads(out.stdout)
    assert (
        set(schemas)
        == set(json_schemas())
        >= {"KnobSpec", "ActionSpace", "Decision", "TelemetrySnapshot", "AuditRecord"}
    )
    assert schemas["KnobSpec"]["additionalProperties"] is False

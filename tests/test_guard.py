import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_manager.guard import Guard
from rl_manager.menu import build_action_space
from tests.conftest import make_snapshot
from tests.test_menu import regressed

guard = Guard()


def menu():
    return build_action_space(make_snapshot())


def test_accepts_an_offered_value_and_resolves_before_after():
    review = guard.review('{"action": "adjust", "changes": [{"knob": "learning_rate", "value": 0.0005}]}', menu())
    assert review.ok, review.errors
    assert review.changes[0].before == 1e-3 and review.changes[0].after == 5e-4


def test_accepts_fenced_json_and_equivalent_number_spelling():
    review = guard.review(
        '```json\n{"action": "adjust", "changes": [{"knob": "learning_rate", "value": 5e-4}]}\n```', menu()
    )
    assert review.ok, review.errors


def test_value_not_in_menu_rejected_with_the_offer():
    review = guard.review({"action": "adjust", "changes": [{"knob": "learning_rate", "value": 0.0007}]}, menu())
    assert not review.ok
    assert "not offered" in review.errors[0] and "0.0005" in review.errors[0]
    assert "rejected" in review.message


def test_exact_keys():
    extra = {"action": "adjust", "changes": [{"knob": "learning_rate", "value": 5e-4}], "bonus": 1}
    assert not guard.review(extra, menu()).ok
    nested = {"action": "adjust", "changes": [{"knob": "learning_rate", "value": 5e-4, "why": "x"}]}
    assert not guard.review(nested, menu()).ok
    missing = {"action": "adjust"}
    assert not guard.review(missing, menu()).ok


def test_booleans_and_strings_are_not_numbers():
    for value in (True, "0.0005", None, [5e-4]):
        review = guard.review({"action": "adjust", "changes": [{"knob": "learning_rate", "value": value}]}, menu())
        assert not review.ok, value


def test_unknown_knob_and_action_rejected():
    assert (
        "not offered"
        in guard.review({"action": "adjust", "changes": [{"knob": "gamma", "value": 0.9}]}, menu()).errors[0]
    )
    assert "unknown action" in guard.review({"action": "exec", "code": "rm -rf /"}, menu()).errors[0]


def test_must_change_something():
    # the current value is never offered, so proposing it is rejected
    review = guard.review({"action": "adjust", "changes": [{"knob": "learning_rate", "value": 0.001}]}, menu())
    assert not review.ok


def test_more_than_max_changes_rejected():
    changes = [{"knob": "learning_rate", "value": 5e-4}, {"knob": "ent_coef", "value": 0.1}]
    m = menu()
    m.max_changes = 1
    assert not guard.review({"action": "adjust", "changes": changes}, m).ok


def test_structural_actions_rejected_while_gated():
    m = menu()
    assert "rollback_to_best" not in m.actions and "stop_training" not in m.actions
    for action in ("rollback_to_best", "stop_training"):
        review = guard.review({"action": action, "reason": "x"}, m)
        assert not review.ok and "not available now" in review.errors[0]


def test_consolidation_must_be_conservative():
    m = build_action_space(regressed(2))
    up = {"action": "rollback_and_consolidate", "change": {"knob": "learning_rate", "value": 0.002}}
    assert not guard.review(up, m).ok
    down = {"action": "rollback_and_consolidate", "change": {"knob": "learning_rate", "value": 0.0005}}
    review = guard.review(down, m)
    assert review.ok, review.errors
    assert review.changes[0].before == 1e-3


def test_garbage_replies():
    for reply in ("", "not json", "[1, 2]", "null", b"\xff\xfe", 42, None, "{" * 5000, "x" * 30000):
        review = guard.review(reply, menu())
        assert not review.ok and review.errors


# ------------------------------------------------------------------ property test
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 5e-4, 0.0005, 0.1, 0.025, 0.0125, 1e-3]),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
knob_names = st.sampled_from(["learning_rate", "ent_coef", "gamma", "", "LEARNING_RATE"])
change = st.fixed_dictionaries({"knob": knob_names, "value": json_leaf})
proposal = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {
            "action": st.sampled_from(
                ["no_action", "adjust", "rollback_to_best", "rollback_and_consolidate", "stop_training", "x", ""]
            ),
        },
        optional={
            "changes": st.lists(change, max_size=5),
            "change": change,
            "reason": st.text(max_size=30),
            "expected_outcome": json_leaf,
            "extra": json_value,
        },
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proposal=proposal, as_text=st.booleans(), regression=st.booleans())
def test_guard_never_raises_and_never_leaves_bounds(proposal, as_text, regression):
    snap = regressed(2) if regression else make_snapshot()
    m = build_action_space(snap)
    bounds = {k.name: (k.low, k.high) for k in snap.knobs}
    offered = {k.name: [o.value for o in k.options + k.conservative_options] for k in m.knobs}
    if as_text:
        try:
            proposal = json.dumps(proposal)
        except (ValueError, OverflowError):
            pass
    review = guard.review(proposal, m)
    if review.ok:
        assert review.decision.action in m.actions
        for c in review.changes:
            low, high = bounds[c.knob]
            assert math.isfinite(c.after) and low <= c.after <= high
            assert c.after in offered[c.knob]
            assert c.after != c.before
    else:
        assert review.errors and review.decision is None

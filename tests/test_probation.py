import math

import pytest

from rl_manager.probation import Probation, Trial
from rl_manager.schema import ResolvedChange


def _trial(before: float, n: int | None = 200) -> Trial:
    return Trial(
        evaluation_index=0,
        step=0,
        score_before=before,
        n_before=n,
        changes=[ResolvedChange(knob="learning_rate", before=1e-4, after=3e-4)],
    )


def test_clear_harm_is_reverted_after_one_evaluation():
    p = Probation(window=3)
    p.open(_trial(0.8))
    assert p.judge(0.5, 200) == "revert"


def test_noise_is_kept_after_the_window():
    p = Probation(window=3)
    p.open(_trial(0.8))
    assert [p.judge(s, 200) for s in (0.76, 0.79, 0.77)] == ["pending", "pending", "kept"]


def test_a_moderate_but_consistent_drop_is_reverted_at_the_end():
    p = Probation(window=3)
    p.open(_trial(0.8))
    verdicts = [p.judge(s, 200) for s in (0.74, 0.73, 0.72)]
    assert verdicts[:2] == ["pending", "pending"] and verdicts[-1] == "revert"


def test_few_episodes_widen_the_noise():
    small = Probation(window=2)
    small.open(_trial(0.8, n=20))
    assert [small.judge(s, 20) for s in (0.7, 0.7)] == ["pending", "kept"]
    large = Probation(window=2)
    large.open(_trial(0.8, n=2000))
    assert large.judge(0.7, 2000) == "revert"


def test_improvement_is_kept_and_non_finite_scores_revert():
    p = Probation(window=1)
    p.open(_trial(0.3))
    assert p.judge(0.6, 200) == "kept"
    p.open(_trial(0.3))
    assert p.judge(float("nan"), 200) == "revert"
    p.open(_trial(0.3))
    assert p.judge(None) == "revert"


def test_non_rate_scores_use_the_relative_tolerance():
    p = Probation(window=2, tolerance=0.05)
    p.open(_trial(-4.0, n=None))  # e.g. a negative validation loss
    assert p.judge(-4.1) == "pending"  # 2.5% worse: within tolerance
    assert p.judge(-4.1) == "kept"
    p.open(_trial(-4.0, n=None))
    assert p.judge(-6.0) == "revert"


def test_no_open_trial_and_bad_window():
    p = Probation()
    assert p.active is None and p.judge(0.5, 10) == "kept"
    with pytest.raises(ValueError):
        Probation(window=0)
    p.open(_trial(0.5))
    assert p.close() is not None and p.active is None
    assert math.isinf(Probation().harm_z(_trial(0.5)))

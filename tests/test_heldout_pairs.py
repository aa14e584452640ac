import json

import pytest

from experiments import heldout_pairs

OBJECT_Z = 0.425


def _arm(path, success, cost, lifts):
    goals = [[[1.3, 0.7, OBJECT_Z + lift], [1.3, 0.8, OBJECT_Z]] for lift in lifts]
    episodes = {"return": [-10.0] * len(success), "success": success, "cost": cost, "goal": goals}
    episodes["cost_table_contact"] = cost  # every cost a table contact
    path.write_text(json.dumps({"deterministic/all": episodes}))
    return str(path)


def test_pairs_episodes_and_splits_push_from_lift_goals(tmp_path, capsys):
    lifts = [0.0, 0.0, 0.2, 0.3]  # two goals on the table, two in the air
    rule = _arm(tmp_path / "rule.json", [1, 1, 0, 0], [0.0, 1.0, 0.0, 1.0], lifts)
    fixed = _arm(tmp_path / "fixed.json", [1, 1, 1, 1], [4.0, 4.0, 4.0, 4.0], lifts)
    heldout_pairs.main([rule, fixed])
    out = capsys.readouterr().out
    assert "all (4 episodes)" in out and "success: 0.500 vs 1.000: -0.500" in out
    assert "goal < 0.05 m up (push) (2 episodes)\n  success: 1.000 vs 1.000: +0.000" in out
    assert "goal >= 0.05 m up (lift) (2 episodes)\n  success: 0.000 vs 1.000: -1.000" in out
    assert "cost change: -88%" in out and "cost_table_contact: 0.500 vs 4.000: -3.500" in out


def test_refuses_arms_of_different_scenes(tmp_path):
    rule = _arm(tmp_path / "rule.json", [1, 0], [0.0, 0.0], [0.0, 0.2])
    other = _arm(tmp_path / "other.json", [1, 0], [0.0, 0.0], [0.0, 0.3])
    with pytest.raises(SystemExit, match="scenes differ"):
        heldout_pairs.main([rule, other])

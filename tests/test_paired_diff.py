import json

from experiments import paired_diff


def _run(root, arm, seed, safe):
    d = root / "runs" / arm / f"s{seed}"
    d.mkdir(parents=True)
    cell = {"safe_success_rate": safe, "success_rate": 1.0}
    (d / "summary.json").write_text(json.dumps({"heldout": {"deterministic/all": cell}}))


def test_pairs_runs_by_seed_and_skips_unpaired_seeds(tmp_path, capsys):
    for seed, (rule, fixed) in enumerate([(0.9, 0.8), (0.7, 0.8), (0.6, 0.5)]):
        _run(tmp_path, "tuned-rule", seed, rule)
        _run(tmp_path, "tuned-fixed", seed, fixed)
    _run(tmp_path, "tuned-rule", 9, 0.0)  # no fixed run for seed 9: left out of the pairs
    paired_diff.main([str(tmp_path), "--others", "fixed", "kladaptive", "--starts", "tuned"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1  # no kladaptive runs: nothing printed for them
    assert "+0.033" in lines[0] and "2 of 3 >=" in lines[0] and "s9" not in lines[0]

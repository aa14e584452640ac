import json

from experiments import paired_diff


def _run(root, arm, seed, safe, success=1.0):
    d = root / "runs" / arm / f"s{seed}"
    d.mkdir(parents=True)
    cell = {"safe_success_rate": safe, "success_rate": success}
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


def test_pools_the_seeds_of_several_grids_and_reads_another_metric(tmp_path, capsys):
    a, b = tmp_path / "v1", tmp_path / "v2"
    _run(a, "tuned-rule", 1, 0.9, success=0.9)
    _run(a, "tuned-fixed", 1, 0.8, success=1.0)
    _run(b, "tuned-rule", 2, 0.7, success=1.0)
    _run(b, "tuned-fixed", 2, 0.7, success=0.8)
    _run(b, "tuned-rule", 3, 0.5, success=1.0)
    _run(b, "tuned-fixed", 3, 0.6, success=1.0)
    paired_diff.main([str(a), str(b), "--others", "fixed", "--starts", "tuned", "--metric", "success_rate"])
    line = capsys.readouterr().out.strip()
    assert "+0.033" in line and "2 of 3 >=, 1 lower, 1 higher" in line and "(s1, s2, s3)" in line

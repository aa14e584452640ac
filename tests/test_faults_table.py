"""FAULTS.md's table is generated from the fault scripts' figures and names only tests that exist."""

from experiments import fault_table


def test_faults_md_is_current_and_its_tests_exist() -> None:
    assert fault_table.missing_tests() == []
    assert fault_table.main(["--check"]) == 0, "FAULTS.md is stale: run python experiments/fault_table.py"


def test_the_check_notices_a_stale_table(tmp_path, monkeypatch) -> None:
    doc = tmp_path / "FAULTS.md"
    doc.write_text(fault_table.DOC.read_text().replace("| fault |", "| faults |"))
    monkeypatch.setattr(fault_table, "DOC", doc)
    assert fault_table.main(["--check"]) == 1
    assert fault_table.main([]) == 0 and fault_table.main(["--check"]) == 0  # regenerated

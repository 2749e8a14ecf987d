"""``veil experiment rag``: bad input is one line and exit code 2, before anything trains."""

from __future__ import annotations

import subprocess
import sys


def _veil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "veil.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_a_negative_seed_and_an_unwritable_out_are_refused(tmp_path) -> None:
    bad = _veil("experiment", "rag", "--seed", "-1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "veil: error: --seed must be >= 0, got -1"
    ]
    blocked = tmp_path / "file"
    blocked.write_text("x")
    out = _veil("experiment", "rag", "--out", str(blocked / "sub"))
    assert out.returncode == 2 and "--out" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_help_names_the_methods_measures() -> None:
    out = _veil("experiment", "rag", "--help")
    assert out.returncode == 0 and "MCC" in out.stdout and "--quick" in out.stdout


def test_the_table_shows_the_steps_the_decisions_are_scored_on() -> None:
    from rich.console import Console

    from veil.cli.experiment_rag import rag_table

    decisions = {"mcc": 0.5, "balanced_accuracy": 0.75, "steps": 7}
    method = {"em": 0.1, "f1": 0.2, "retrievals": 1.5, "decisions": decisions, "first_subquery_gold": 0.25,
              "malformed": 0.0}  # fmt: skip
    console = Console(width=200, record=True)
    console.print(rag_table({"world": {"test_questions": 4}, "methods": {"deeprag": method}}))
    row = next(line for line in console.export_text().splitlines() if "deeprag" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == [
        "deeprag", "0.100", "0.200", "1.50", "0.500", "0.750", "7", "0.25", "0.00",
    ]  # fmt: skip

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

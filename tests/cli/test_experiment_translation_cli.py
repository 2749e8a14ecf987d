"""``veil experiment translation``: bad input is one line and exit code 2, before anything runs."""

from __future__ import annotations

import subprocess
import sys


def _veil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "veil.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_an_unwritable_out_and_an_unknown_model_are_refused(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("x")
    out = _veil("experiment", "translation", "--out", str(blocked / "sub"))
    assert out.returncode == 2 and "--out" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    model = _veil("experiment", "translation", "--quick", "--model", "no-such-model", "--json")
    assert model.returncode == 2 and model.stdout == ""
    assert len(model.stderr.strip().splitlines()) == 1 and "no-such-model" in model.stderr


def test_help_names_the_measures() -> None:
    out = _veil("experiment", "translation", "--help")
    assert out.returncode == 0 and "chrF" in out.stdout and "--quick" in out.stdout

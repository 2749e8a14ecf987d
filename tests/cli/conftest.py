"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def veil_here(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(data_dir, *args)``: ``veil *args`` through the console entry point in this process, with the
    same error mapping as a real process (one line, exit 2), without a new interpreter importing torch."""

    def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        from veil.cli.main import main

        monkeypatch.setenv("VEIL_DATA_DIR", str(data_dir))
        monkeypatch.setattr(sys, "argv", ["veil", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["veil", *args], code, out, err)

    return run

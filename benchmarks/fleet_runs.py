"""Shared by the fleet benchmarks: one ``veil simulate --json --rounds 2`` run in its own process, and
the way each benchmark prints and keeps a row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def simulate_two_rounds(phones: int, extra: list[str]) -> dict:
    """The run's JSON report (the veil audit off; ``extra``: more ``veil simulate`` flags)."""
    work = tempfile.mkdtemp(prefix="veil-fleet-")
    cmd = [sys.executable, "-m", "veil.cli.main", "simulate", "--json", "--phones", str(phones)]
    cmd += ["--rounds", "2", "--audit-phones", "0", "--out", work, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{extra} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def emit(row: dict, out: str | Path | None, *, machine: bool = True) -> None:
    """Print ``row`` as one JSON line and append it to ``out`` when given (with the machine named)."""
    if machine:
        row["machine"] = f"{os.cpu_count()} CPUs, {sys.platform}"
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")

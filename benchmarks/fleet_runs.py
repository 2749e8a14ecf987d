"""Shared by the fleet benchmarks: one ``veil simulate --json --rounds 2`` run in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile


def simulate_two_rounds(phones: int, extra: list[str]) -> dict:
    """The run's JSON report (the veil audit off; ``extra``: more ``veil simulate`` flags)."""
    work = tempfile.mkdtemp(prefix="veil-fleet-")
    cmd = [sys.executable, "-m", "veil.cli.main", "simulate", "--json", "--phones", str(phones)]
    cmd += ["--rounds", "2", "--audit-phones", "0", "--out", work, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{extra} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])

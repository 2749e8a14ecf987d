"""One round through Flower's deployment engine (not the simulation): a real ``flower-superlink`` and
two ``flower-supernode`` processes on loopback, and ``flwr run .`` submitting the project's apps.

The phones' files live in one folder both SuperNodes can read (they share this machine); across
machines each SuperNode keeps its own, as a phone would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def test_one_round_through_superlink_and_two_supernodes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the SuperLink spawns flower-superexec
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "VEIL_ENVIRONMENT": "development",
        "VEIL_DATA_DIR": os.environ.get("VEIL_DATA_DIR", str(tmp_path / "data")),
    }
    port = _free_port()  # flwr 1.42 serves the Fleet and Control APIs on the SuperLink's one port
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=out, stderr=out, cwd=ROOT)
        procs.append(proc)
        return proc

    try:
        link = start(
            "superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
            "--health-server-address", f"127.0.0.1:{_free_port()}", "--database", str(tmp_path / "link.db"),
            "--disable-runtime-dependency-installation",
        )  # fmt: skip
        _wait_for_port(port, link)
        for pid in range(2):
            start(
                f"supernode{pid}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--node-config", f"partition-id={pid}", "--port", str(_free_port()),
            )  # fmt: skip
        work = tmp_path / "fleet"
        run_config = (
            f"phones=2 types=2 cohort=8 train-per-phone=2 test-per-phone=2 audit-phones=0 work-dir='{work}'"
        )
        submitted = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "local", "--run-config", run_config],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        deadline = time.monotonic() + 600  # the run goes on in the SuperLink's ServerApp process
        while not (work / "report.json").exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a Flower process exited during the run"
            time.sleep(1.0)
        assert (work / "report.json").exists(), f"no report after 600 s; see {logs}"
        report = json.loads((work / "report.json").read_text())
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    (r,) = report["rounds"]
    assert r["phones_asked"] == r["phones"] == 2 and r["dropped"] == r["missing"] == 0
    assert r["uploads"] == 4 and 0.0 <= r["accuracy"] <= 1.0

"""Rounds through Flower's deployment engine (not the simulation): a real ``flower-superlink`` and two
``flower-supernode`` processes on loopback, and ``flwr run .`` submitting the project's apps.

With ``cloud=local`` the ServerApp runs its own API and relay, and the phones' files live in one folder
both SuperNodes read (they share this machine). With ``cloud=deployed`` the parts run as a deployment
runs them: ``veil serve`` and ``veil relay`` as their own processes, the ServerApp reaching the API with
an operator key, each SuperNode reaching the relay by its node config and keeping its phones' files in
its own folder.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
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


class _Fleet:
    """Processes on loopback (logs under ``root/logs``), all stopped by :meth:`stop`."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root, self.procs = root, []
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the SuperLink spawns flower-superexec
            "FLWR_HOME": str(root / "flwr"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "VEIL_ENVIRONMENT": "development",
            "VEIL_DATA_DIR": os.environ.get("VEIL_DATA_DIR", str(root / "data")),
            **env,
        }
        (root / "logs").mkdir(parents=True)

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        out = open(self.root / "logs" / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], env={**self.env, **env}, stdout=out, stderr=out, cwd=ROOT
        )
        self.procs.append(proc)
        return proc

    def veil(self, *args: str, **env: str) -> str:
        done = subprocess.run(
            [str(BIN / "veil"), *args], env={**self.env, **env}, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    def flower(self, nodes: list[str], **link_env: str) -> None:
        """A SuperLink (with ``link_env``: its ServerApp process inherits it) and one SuperNode per
        node config."""
        self.port = _free_port()  # flwr 1.42 serves the Fleet and Control APIs on the SuperLink's one port
        (self.root / "flwr").mkdir()
        (self.root / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\n'
            "insecure = true\n"
        )
        link = self.start(
            "superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
            "--health-server-address", f"127.0.0.1:{_free_port()}", "--database", str(self.root / "link.db"),
            "--disable-runtime-dependency-installation", **link_env,
        )  # fmt: skip
        _wait_for_port(self.port, link)
        for i, node in enumerate(nodes):
            self.start(
                f"supernode{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                "--node-config", node, "--port", str(_free_port()),
            )  # fmt: skip

    def kill(self, proc: subprocess.Popen) -> None:
        """Stop one process now (a machine that goes away); the others must not mind."""
        proc.kill()
        proc.wait(timeout=20)
        self.procs.remove(proc)

    def run(self, run_config: str, work: Path) -> dict:
        """``flwr run .`` with ``run_config``; the report the ServerApp writes into ``work``."""
        submitted = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "local", "--run-config", run_config],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        deadline = time.monotonic() + 600  # the run goes on in the SuperLink's ServerApp process
        while not (work / "report.json").exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.procs), "a process exited during the run"
            time.sleep(1.0)
        assert (work / "report.json").exists(), f"no report after 600 s; see {self.root / 'logs'}"
        return json.loads((work / "report.json").read_text())

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_one_round_through_superlink_and_two_supernodes(tmp_path: Path) -> None:
    fleet = _Fleet(tmp_path)
    try:
        fleet.flower([f"partition-id={pid}" for pid in range(2)])
        work = tmp_path / "fleet"
        report = fleet.run(
            f"phones=2 types=2 cohort=8 train-per-phone=2 test-per-phone=2 audit-phones=0 work-dir='{work}'",
            work,
        )
    finally:
        fleet.stop()
    (r,) = report["rounds"]
    assert r["phones_asked"] == r["phones"] == 2 and r["dropped"] == r["missing"] == 0
    assert r["uploads"] == 4 and 0.0 <= r["accuracy"] <= 1.0


def test_a_deployed_cloud_serves_the_fleet_through_its_own_relay_and_api(tmp_path: Path) -> None:
    from veil.simulation.fleet import FleetConfig
    from veil.simulation.fleet.population import fleet_population, write_phone
    from veil.simulation.fleet.server import _stage1

    phones, nodes = 6, 2
    spec = {"phones": phones, "task": "classification", "types": 2, "train_per_phone": 2, "test_per_phone": 2,
            "seed": 0, "skew": 0.0, "late_join": 0.0}  # fmt: skip
    _, data = fleet_population(spec)
    train, test, join = data[5]  # phone 5 (node 1) fails on its third upload: a label the model lacks
    write_phone(tmp_path / "node1", 5, ([*train, (train[0][0], "no-such-label")], test, join))
    model, _ = _stage1(
        FleetConfig(phones=phones, types=2, cohort=8, work_dir=str(tmp_path)), tmp_path / "model"
    )
    api_port, relay_port = _free_port(), _free_port()
    secret = "relay-secret-for-the-loopback-deployment-test"
    key = "veil_sk_" + secrets.token_urlsafe(32)  # provisioned with the other secrets, as bootstrap.py does
    fleet = _Fleet(tmp_path / "run")
    served = {"VEIL_DATA_DIR": str(tmp_path / "api"), "VEIL_RELAY_SECRET": secret, "VEIL_FLEET_API_KEY": key}
    try:
        plain = fleet.veil("keys", "create", "--label", "consumer", **served)
        gateway_key = fleet.veil("gateway", "public-key", **served)
        api = fleet.start(
            "api", "veil", "serve", "--host", "127.0.0.1", "--port", str(api_port), "--model", str(model),
            "--max-batch", "64", **served,
        )  # fmt: skip
        _wait_for_port(api_port, api, timeout=180)
        relay = fleet.start(
            "relay", "veil", "relay", "--gateway", f"http://127.0.0.1:{api_port}", "--host", "127.0.0.1",
            "--port", str(relay_port), VEIL_RELAY_SECRET=secret,
        )  # fmt: skip
        _wait_for_port(relay_port, relay)
        fleet.flower(
            [
                f"partition-id={i} relay-url='http://127.0.0.1:{relay_port}' phones-dir='{tmp_path / f'node{i}'}'"
                for i in range(nodes)
            ],
            VEIL_FLEET_API_KEY=key,
        )
        work = tmp_path / "server"
        report = fleet.run(
            f"cloud='deployed' api-url='http://127.0.0.1:{api_port}' gateway-key='{gateway_key}' "
            f"phones={phones} nodes={nodes} types=2 train-per-phone=2 test-per-phone=2 work-dir='{work}'",
            work,
        )
        published = httpx.get(
            f"http://127.0.0.1:{api_port}/v1/codebook", headers={"authorization": f"Bearer {plain}"}
        ).json()
        refused = httpx.put(
            f"http://127.0.0.1:{api_port}/v1/codebook",
            json=published,
            headers={"authorization": f"Bearer {plain}"},
        )
    finally:
        fleet.stop()
    (r,) = report["rounds"]
    # the phone that raised is reported, and the round completed without it; its two uploads count
    assert r["phones_asked"] == phones and r["phones"] == phones - 1 and r["failed"] == 1
    assert r["dropped"] == r["missing"] == 0
    assert r["uploads"] == 2 * phones and 0.0 <= r["accuracy"] <= 1.0
    assert 1 / phones <= r["attribution"] <= 1.0 / r["smallest_group"] + 1e-9
    assert published["version"] == r["codebook_version"]  # the ServerApp published into the running API
    assert refused.status_code == 403  # with the operator key; a consumer's key may not
    assert "skipped" in r["audit"]  # the phones' files and the store are not on the ServerApp's machine
    for i in range(nodes):  # each SuperNode wrote and kept only its own cell's phones
        held = sorted(int(p.name) for p in (tmp_path / f"node{i}" / "phones").iterdir())
        assert held == list(range(i, phones, nodes))
    assert not (work / "phones").exists()
    with sqlite3.connect(tmp_path / "api" / "veil.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM uploads").fetchone()[0] == 2 * phones


def test_a_supernode_that_goes_away_stops_the_run_with_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    fleet = _Fleet(tmp_path)
    try:
        fleet.flower([f"partition-id={pid}" for pid in range(2)])
        time.sleep(3.0)  # both registered
        fleet.kill(fleet.procs[-1])
        work = tmp_path / "fleet"
        started = time.monotonic()
        report = fleet.run(
            "phones=2 types=2 cohort=8 train-per-phone=2 test-per-phone=2 audit-phones=0 timeout-s=30 "
            f"work-dir='{work}'",
            work,
        )
    finally:
        fleet.stop()
    error = report["error"]  # the node is named as missing, or as not registered when the round began
    assert report["rounds"] == [] and ("did not answer" in error or "registered" in error), error
    assert time.monotonic() - started < 300

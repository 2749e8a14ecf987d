"""Two gateway processes on one database refuse each other's replays, and so does a restart.

The fast test runs the real database-backed gateway in bare worker processes (``gateway_worker.py``);
the slow one runs the same scenario with ``veil serve`` (model, API and all).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from veil.client_sdk.ohttp import BinaryRequest, decode_key_configs, encapsulate_request
from veil.cloud_service.background import free_port

pytestmark = pytest.mark.integration

HEADERS = {"content-type": "message/ohttp-req"}


WORKER = Path(__file__).with_name("gateway_worker.py")


def _spawn(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if "VEIL_TEST_BARE_GATEWAY" in env:
        cmd = [sys.executable, str(WORKER), env["VEIL_DATABASE_URL"], str(port)]
    else:
        cmd = [sys.executable, "-m", "veil.cli.main", "serve", "--port", str(port), "--model", "tiny-llama"]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=WORKER.parent)
    return proc, f"http://127.0.0.1:{port}"


def _wait(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/.well-known/ohttp-gateway", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize(
    "kind", ["bare", pytest.param("veil-serve", marks=pytest.mark.slow)], ids=["workers", "veil-serve"]
)
def test_replay_is_refused_by_another_worker_and_after_a_restart(
    kind: str, store_url: str, data_dir: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "VEIL_DATA_DIR": data_dir,  # the converted tiny model is cached there
        "VEIL_DATABASE_URL": store_url,
        "VEIL_GATEWAY_KEK": base64.b64encode(bytes(range(32))).decode(),
    }
    if kind == "bare":
        env["VEIL_TEST_BARE_GATEWAY"] = "1"
    log = tmp_path / "servers.log"
    procs = [_spawn(env, log) for _ in range(2)]  # started together: they also race to make the key
    try:
        for proc, url in procs:
            _wait(proc, url, log)
        (a, url_a), (b, url_b) = procs
        configs = [
            decode_key_configs(httpx.get(u + "/.well-known/ohttp-gateway").content) for u in (url_a, url_b)
        ]
        assert configs[0] == configs[1] and len(configs[0]) == 1  # one key, whoever made it
        inner = BinaryRequest("GET", "https", "veil.invalid", "/v1/models", [], b"").encode()
        sealed, context = encapsulate_request(configs[0][0], inner)

        first = httpx.post(url_a + "/ohttp", content=sealed, headers=HEADERS)
        assert first.status_code == 200, first.text
        context.decapsulate_response(first.content)
        for url in (url_b, url_a):  # the other worker, and the same one again
            replay = httpx.post(url + "/ohttp", content=sealed, headers=HEADERS)
            assert replay.status_code == 400 and replay.json()["error"]["type"] == "replayed_ohttp_request"

        a.kill()  # worker A crashes (SIGKILL) and restarts: nothing of the replay memory lived in it
        a.wait(timeout=30)
        a, url_a = _spawn(env, log)
        procs[0] = (a, url_a)
        _wait(a, url_a, log)
        replay = httpx.post(url_a + "/ohttp", content=sealed, headers=HEADERS)
        assert replay.status_code == 400 and replay.json()["error"]["type"] == "replayed_ohttp_request"
        fresh, _ = encapsulate_request(configs[0][0], inner)
        assert httpx.post(url_a + "/ohttp", content=fresh, headers=HEADERS).status_code == 200
    finally:
        for proc, _ in procs:
            _stop(proc)

"""``veil serve --metrics-port``: the API and the operator's metrics in one process, on two ports."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from veil.cloud_service.background import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a real `veil serve` process: ~20 s here


def test_serve_puts_metrics_on_their_own_port_and_stops_both(data_dir: str, tmp_path: Path) -> None:
    shared = Path(data_dir) / "models"
    shared.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(shared)  # reuse the converted tokenizer and models
    api, ops = free_port(), free_port()
    env = {
        **os.environ,
        "VEIL_DATA_DIR": str(tmp_path),
        "VEIL_ENVIRONMENT": "development",
        "VEIL_RELAY_SECRET": secrets.token_urlsafe(32),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "veil.cli.main", "serve", "--model", "tiny-llama", "--port", str(api)]
    proc = subprocess.Popen(
        [*cmd, "--metrics-port", str(ops)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{api}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"veil serve did not start: {proc.communicate()[0].decode()[-2000:]}")
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{api}/metrics").status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{ops}/metrics")
        assert metrics.status_code == 200 and 'route="/health"' in metrics.text
        assert httpx.get(f"http://127.0.0.1:{ops}/v1/models").status_code == 404  # nothing else there
        unsigned = httpx.post(
            f"http://127.0.0.1:{api}/ohttp", content=b"x" * 64, headers={"content-type": "message/ohttp-req"}
        )
        assert unsigned.status_code == 401  # the secret came from VEIL_RELAY_SECRET
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)  # both servers stop on one signal
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

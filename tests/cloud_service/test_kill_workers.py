"""Acknowledged uploads survive SIGKILLs of API workers under load: phones -> relay -> 2 workers -> SQLite.

The phones are the SDK's (``PhoneAPI`` over ``AsyncOHTTPClient``, keys verified), each retrying an upload
with its idempotency key until it is acknowledged, as a phone would after a 502 from the relay. Workers
are killed at random while uploads are in flight; uvicorn replaces them. Afterwards every acknowledged
upload is in the database exactly once, with the id the phone was given, and nothing is stored twice.
The long version (10 kills) is ``benchmarks/kill_workers.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from veil.cloud_service.background import free_port

pytestmark = pytest.mark.integration

SHAPE = (1, 64)  # tiny-llama


def _start(cmd: list[str], port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=out, stderr=out)


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"did not become healthy: {log.read_text()[-2000:]}")


def _workers(parent: int) -> list[int]:
    """uvicorn's live workers under ``parent`` (no zombies, not multiprocessing's resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if (
                int(ppid) == parent
                and state != "Z"
                and b"resource_tracker" not in (entry / "cmdline").read_bytes()
            ):
                out.append(int(entry.name))
    return out


async def _phones(relay: str, public_key: bytes, n_phones: int, stop: asyncio.Event) -> dict[str, tuple]:
    """Upload until ``stop``; returns {idempotency key: (id, text)} of every acknowledged upload."""
    from veil.client_sdk.api import PhoneAPI, VeilAPIError
    from veil.client_sdk.ohttp import AsyncOHTTPClient
    from veil.client_sdk.ohttp.client import RelayError

    acked: dict[str, tuple] = {}
    embedding = np.random.default_rng(0).standard_normal(SHAPE)

    async def phone(p: int) -> None:
        async with AsyncOHTTPClient(
            relay + "/ohttp",
            key_config_url=relay + "/.well-known/ohttp-gateway",
            gateway_public_key=public_key,
        ) as transport:
            api = PhoneAPI(transport, "tiny-llama", retries=0)
            n = 0
            while not stop.is_set():
                key, text = secrets.token_urlsafe(24), f"phone {p} upload {n}"
                deadline = time.monotonic() + 60
                while True:  # the same key until acknowledged: a retry is stored once
                    try:
                        out = await api.upload("next_word", text, "word", embedding, idempotency_key=key)
                        acked[key] = (out["id"], text)
                        break
                    except (RelayError, VeilAPIError) as exc:
                        if isinstance(exc, VeilAPIError) and exc.status < 500 or time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.1)
                n += 1

    await asyncio.gather(*(phone(p) for p in range(n_phones)))
    return acked


def test_acknowledged_uploads_survive_sigkill_of_workers(data_dir: str, tmp_path: Path) -> None:
    from veil.client_sdk.ohttp.keysig import public_key_bytes, signing_key_from_seed
    from veil.cloud_service.store import make_engine, migrate
    from veil.cloud_service.store.tables import Upload

    url = f"sqlite:///{tmp_path / 'veil.sqlite3'}"
    db = make_engine(url, tmp_path)
    migrate(db)
    seed = secrets.token_bytes(32)
    env = {
        **os.environ,
        "VEIL_ENVIRONMENT": "production",
        "VEIL_DATA_DIR": data_dir,
        "VEIL_DATABASE_URL": url,
        "VEIL_GATEWAY_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
        "VEIL_GATEWAY_SIGNING_KEY": base64.b64encode(seed).decode(),
        "VEIL_RELAY_SECRET": secrets.token_urlsafe(32),
        "OMP_NUM_THREADS": "1",
    }
    cli = [sys.executable, "-m", "veil.cli.main"]
    api_port = free_port()
    relay_port = next(port for port in iter(free_port, None) if port != api_port)
    api, relay = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{relay_port}"
    # Both at once: the relay needs nothing from the gateway until the first phone asks for keys.
    serve = _start(
        [*cli, "serve", "--model", "tiny-llama", "--workers", "2"], api_port, env, tmp_path / "api.log"
    )
    relay_cmd = [*cli, "relay", "--gateway", api, "--rate-per-s", "0"]
    relay_proc = _start(relay_cmd, relay_port, env, tmp_path / "relay.log")
    try:
        _wait_healthy(relay_proc, relay, tmp_path / "relay.log")
        _wait_healthy(serve, api, tmp_path / "api.log")
        deadline = time.monotonic() + 120
        while len(_workers(serve.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        rng = random.Random(0)
        kills: list[int] = []

        async def run() -> dict[str, tuple]:
            stop = asyncio.Event()
            load = asyncio.create_task(_phones(relay, public_key_bytes(signing_key_from_seed(seed)), 8, stop))
            for _ in range(2):
                await asyncio.sleep(1.0)
                victim = rng.choice(_workers(serve.pid))
                os.kill(victim, signal.SIGKILL)
                kills.append(victim)
            await asyncio.sleep(1.0)
            stop.set()
            return await load

        acked = asyncio.run(run())
        assert len(kills) == 2 and len(acked) > 20
        with db.connect() as conn:
            rows = conn.execute(select(Upload.idempotency_key, Upload.id, Upload.text)).all()
            per_key = dict(
                conn.execute(
                    select(Upload.idempotency_key, func.count()).group_by(Upload.idempotency_key)
                ).all()
            )
        stored = {key: (id_, text) for key, id_, text in rows}
        lost = [key for key in acked if key not in stored]
        assert lost == [], f"{len(lost)} acknowledged uploads lost"
        assert all(stored[key] == acked[key] for key in acked)  # the id the phone got, its content
        assert max(per_key.values()) == 1 and len({text for _, _, text in rows}) == len(rows)  # none twice
        assert len(rows) == len(acked)  # every upload a phone sent was retried until acknowledged
    finally:
        for proc in (relay_proc, serve):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        db.dispose()

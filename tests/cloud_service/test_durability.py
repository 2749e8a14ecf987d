"""An acknowledged upload survives SIGKILL of the server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from veil.cloud_service.background import free_port
from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory
from veil.cloud_service.store.tables import Upload

pytestmark = pytest.mark.integration


def _start(data_dir: str, url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "VEIL_DATA_DIR": data_dir, "VEIL_DATABASE_URL": url}
    cmd = [sys.executable, "-m", "veil.cli.main", "serve", "--port", str(port), "--model", "tiny-llama"]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def _uploader(base: str, key: str, worker: int, acked: dict[str, dict], stop: threading.Event) -> None:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        n = 0
        while not stop.is_set():
            ikey = f"durability-w{worker}-{n:06d}"
            body = {
                "task": "next_word",
                "text": f"example {worker} {n}",
                "label": "word",
                "embedding": [[0.25] * 64],
            }
            try:
                r = client.post("/v1/uploads", json=body, headers={"Idempotency-Key": ikey})
            except httpx.HTTPError:
                return  # the server is gone
            if r.status_code in (200, 201):
                acked[ikey] = body
            n += 1


def test_acknowledged_uploads_survive_sigkill(store_url: str, data_dir: str, tmp_path: Path) -> None:
    db = make_engine(store_url, Path(data_dir))
    migrate(db)
    sessions = session_factory(db)
    with sessions() as s:
        key = create_api_key(s, "durability")
    port = free_port()
    log = tmp_path / "server.log"
    proc = _start(data_dir, store_url, port, log)
    acked: dict[str, dict] = {}
    stop = threading.Event()
    workers = [
        threading.Thread(target=_uploader, args=(f"http://127.0.0.1:{port}", key, w, acked, stop))
        for w in range(4)
    ]
    try:
        for t in workers:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(timeout=30)
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=30)
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 60, log.read_text()[-2000:]

    proc = _start(data_dir, store_url, port, log)  # restart on the same store
    try:
        with sessions() as s:
            rows = dict(
                s.execute(select(Upload.idempotency_key, func.count()).group_by(Upload.idempotency_key)).all()
            )
        missing = [k for k in acked if k not in rows]
        assert not missing, f"{len(missing)} acknowledged uploads lost, e.g. {missing[:3]}"
        assert all(rows[k] == 1 for k in acked)
        # a client retrying an acknowledged upload after the crash gets the same row back
        first = next(iter(acked))
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/uploads",
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": first},
            json=acked[first],
        )
        assert r.status_code == 200 and r.json()["status"] == "duplicate"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        db.dispose()

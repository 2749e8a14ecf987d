"""Uploads per second end to end (phones sealing, ``veil relay``, ``veil serve --workers N``, the store).

Each configuration starts a fresh stack as child processes on loopback: ``veil serve`` (with ``--workers
N``) against a fresh database and ``veil relay`` in front of it, with a relay secret and a signed key
configuration as in production. The load generator is this process: ``--concurrency`` phones, each
building its request with the SDK (``AsyncOHTTPClient``'s JSON, BHTTP and padding, then
``encapsulate_request`` with a fresh HPKE context per upload, keys verified and pinned) and sending it
over one keep-alive HTTP/1.1 connection of its own. Only httpx is left out of the load generator: on a
2-core machine its ~0.5 ms per request would be a quarter of the budget, and real phones do not share
this machine's CPU.

For every configuration the table shows uploads/s, latency, and the CPU microseconds per upload of
the relay and of the gateway (all worker processes), read from ``/proc``; the ratios are against the
first configuration of the same run, the baseline (by default one worker committing each upload in
its own transaction: ``VEIL_GROUP_COMMIT_MAX_BATCH=1``). Afterwards the store is checked: every
acknowledged upload is there, once.

Usage::

    .venv/bin/python benchmarks/upload_throughput.py --quick
    .venv/bin/python benchmarks/upload_throughput.py --uploads 6000 --workers 1 2 3 --backends sqlite postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from service_stack import load_average, machine, postgres_database, spawn_healthy, summarise

__all__ = ["LeanPhone", "UploadStack", "main", "run_load"]

UPLOAD_TEXT = "the quick brown fox jumps over the lazy dog while the phone learns which word comes next"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all threads), from ``/proc/<pid>/stat``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (uvicorn's workers and multiprocessing's helpers), zombies left out."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if state != "Z":  # a killed worker stays a zombie until uvicorn reaps it
                    parents.setdefault(int(ppid), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class UploadStack:
    """``veil serve --workers N`` and ``veil relay`` as child processes on a fresh database."""

    def __init__(
        self, model: str, database_url: str, workdir: Path, models_dir: Path, workers: int, **env: str
    ) -> None:
        self.model, self.database_url, self.workdir, self.models_dir = (
            model,
            database_url,
            workdir,
            models_dir,
        )
        self.workers, self.extra_env = workers, env
        self.procs: dict[str, subprocess.Popen] = {}
        self.signing_seed = secrets.token_bytes(32)
        self.env: dict[str, str] = {}
        self.api_url = self.relay_url = ""

    def __enter__(self) -> UploadStack:
        from veil.cloud_service.store import make_engine, migrate

        self.db = make_engine(self.database_url, self.workdir)
        migrate(self.db)
        self.env = {
            **os.environ,
            "VEIL_ENVIRONMENT": "production",
            "VEIL_DATA_DIR": str(self.models_dir),
            "VEIL_DATABASE_URL": self.database_url,
            "VEIL_GATEWAY_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
            "VEIL_GATEWAY_SIGNING_KEY": base64.b64encode(self.signing_seed).decode(),
            "VEIL_RELAY_SECRET": secrets.token_urlsafe(32),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            **self.extra_env,
        }
        cli = [sys.executable, "-m", "veil.cli.main"]
        try:
            serve = [*cli, "serve", "--model", self.model, "--workers", str(self.workers)]
            self.api_url = self.spawn("api", serve)
            relay = [*cli, "relay", "--gateway", self.api_url, "--rate-per-s", "0"]
            self.relay_url = self.spawn("relay", relay)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def spawn(self, name: str, cmd: list[str], timeout_s: float = 300.0) -> str:
        self.procs[name], url = spawn_healthy(name, cmd, self.env, self.workdir, timeout_s)
        return url

    def worker_pids(self) -> list[int]:
        """The API worker processes (uvicorn's children running the app)."""
        pids = descendants(self.procs["api"].pid)
        keep = []
        for pid in pids:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"resource_tracker" not in cmdline:
                    keep.append(pid)
        return keep if self.workers > 1 else [self.procs["api"].pid]

    def cpu_seconds(self) -> dict[str, float]:
        api = self.procs["api"].pid
        return {
            "relay": _cpu_s(self.procs["relay"].pid),
            "gateway": _cpu_s(api) + sum(_cpu_s(p) for p in descendants(api)),
            "load generator": time.process_time(),
        }

    def public_key(self) -> bytes:
        from veil.client_sdk.ohttp.keysig import public_key_bytes, signing_key_from_seed

        return public_key_bytes(signing_key_from_seed(self.signing_seed))

    def stored(self) -> dict[str, int]:
        """How many rows each idempotency key has (the unique constraint makes it at most 1)."""
        from sqlalchemy import func, select

        from veil.cloud_service.store.tables import Upload

        with self.db.connect() as conn:
            stmt = select(Upload.idempotency_key, func.count()).group_by(Upload.idempotency_key)
            return dict(conn.execute(stmt).all())

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=20)
        self.procs.clear()
        if hasattr(self, "db"):
            self.db.dispose()


class LeanPhone:
    """One phone: the SDK builds, pads and seals each request; one keep-alive HTTP/1.1 connection sends it.

    ``sdk`` is an ``AsyncOHTTPClient`` whose key configuration is already fetched and verified.
    """

    def __init__(self, sdk: Any, config: Any, host: str, port: int) -> None:
        self.sdk, self.config, self.host, self.port = sdk, config, host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _exchange(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST /ohttp HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: message/ohttp-req\r\n"
            f"accept: message/ohttp-res\r\nuser-agent: ohttp-client\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        assert self.reader is not None
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        length = int(fields.get(b"content-length", fields.get(b"Content-Length", b"0")))
        content = await self.reader.readexactly(length)
        if fields.get(b"connection", b"").strip().lower() == b"close":
            await self.close()
        return status, content

    async def upload(self, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        """One upload; returns the inner status and JSON answer (``(0, {})`` when the exchange failed)."""
        from veil.client_sdk.ohttp import BinaryResponse, encapsulate_request
        from veil.client_sdk.ohttp.padding import pad_to_bucket, request_overhead

        inner = self.sdk._inner("POST", "/v1/uploads", body, None, {"idempotency-key": key})
        padded = pad_to_bucket(inner, request_overhead(self.config), self.sdk.padding_buckets)
        sealed, context = encapsulate_request(self.config, padded)
        try:
            status, content = await self._exchange(sealed)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            await self.close()
            return 0, {}
        if status != 200:
            return status, {}
        answer = BinaryResponse.decode(context.decapsulate_response(content))
        return answer.status, json.loads(answer.content)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def make_phones(stack: UploadStack, concurrency: int) -> tuple[Any, list[LeanPhone]]:
    from urllib.parse import urlsplit

    from veil.client_sdk.ohttp import AsyncOHTTPClient

    sdk = AsyncOHTTPClient(
        stack.relay_url + "/ohttp",
        key_config_url=stack.relay_url + "/.well-known/ohttp-gateway",
        gateway_public_key=stack.public_key(),
    )
    config = await sdk.key_config()  # fetched through the relay, signature checked
    url = urlsplit(stack.relay_url)
    return sdk, [LeanPhone(sdk, config, url.hostname or "", url.port or 80) for _ in range(concurrency)]


def upload_body(model: str, text: str, embedding: np.ndarray) -> dict[str, Any]:
    from veil.client_sdk.api import embedding_field

    return {
        "model": model,
        "task": "next_word",
        "text": text,
        "label": "word",
        **embedding_field("embedding", embedding),
    }


async def run_load(
    stack: UploadStack, n: int, concurrency: int, model: str, shape: tuple[int, int], tag: str = "u"
) -> dict[str, Any]:
    """``n`` uploads from ``concurrency`` phones; each retries with its key until acknowledged."""
    sdk, phones = await make_phones(stack, concurrency)
    embedding = np.random.default_rng(0).standard_normal(shape)
    acked: dict[str, int] = {}
    latencies: list[float] = []
    left = iter(range(n))

    async def phone_loop(phone: LeanPhone) -> None:
        for i in left:
            key = f"{tag}{i:08d}{secrets.token_hex(8)}"
            body = upload_body(model, f"{tag} {i} {UPLOAD_TEXT}", embedding)
            started = time.perf_counter()
            for _ in range(100):
                status, answer = await phone.upload(body, key)
                if status in (200, 201):
                    acked[key] = answer["id"]
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"upload {key} never acknowledged (last status {status})")
            latencies.append(time.perf_counter() - started)

    for phone in phones:  # warm-up, untimed: connections, the first commits
        status, _ = await phone.upload(upload_body(model, "warm-up", embedding), secrets.token_hex(16))
        if status not in (200, 201):
            raise RuntimeError(f"warm-up upload answered {status}; see {stack.workdir}")
    load, cpu_before, started = load_average(), stack.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(phone_loop(p) for p in phones))
    wall = time.perf_counter() - started
    cpu = {k: 1e6 * (v - cpu_before[k]) / n for k, v in stack.cpu_seconds().items()}
    for phone in phones:
        await phone.close()
    await sdk.aclose()
    return {"uploads": n, "seconds": wall, "uploads_per_s": n / wall, "latency_ms": summarise(latencies),
            "cpu_us_per_upload": cpu, "load_before": load, "acked": acked}  # fmt: skip


def _check_store(stack: UploadStack, acked: dict[str, int]) -> dict[str, int]:
    stored = stack.stored()
    lost = sum(1 for key in acked if stored.get(key, 0) == 0)
    duplicated = sum(1 for count in stored.values() if count > 1)
    if lost or duplicated:
        raise RuntimeError(f"store check failed: {lost} acknowledged uploads lost, {duplicated} duplicated")
    return {"acknowledged": len(acked), "lost": lost, "duplicated": duplicated}


def _configurations(args: argparse.Namespace) -> list[tuple[str, int, dict[str, str]]]:
    rows = [("sqlite", 1, {"VEIL_GROUP_COMMIT_MAX_BATCH": "1"})] if args.baseline else []
    for backend in args.backends:
        rows += [(backend, w, {}) for w in args.workers]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, help="uploads per configuration (default 4000, --quick 800)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent phones")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="API worker counts")
    parser.add_argument("--backends", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite"])
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the baseline")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--embedding-dim", type=int, default=64, help="the served model's hidden size")
    parser.add_argument("--postgres-url", help="PostgreSQL server whose role may CREATE DATABASE")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.uploads = args.uploads or (800 if args.quick else 4000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from veil.settings import get_settings

    models_dir, rows = get_settings().resolved_data_dir(), []
    with tempfile.TemporaryDirectory(prefix="veil-upload-bench-") as tmp:
        for i, (backend, workers, env) in enumerate(_configurations(args)):
            with contextlib.ExitStack() as stack:
                workdir = Path(tmp, str(i))
                workdir.mkdir()
                url = f"sqlite:///{workdir / 'veil.sqlite3'}"
                if backend == "postgresql":
                    try:
                        url = stack.enter_context(postgres_database(args.postgres_url))
                    except RuntimeError as exc:
                        rows.append({"backend": backend, "workers": workers, "skipped": str(exc)})
                        continue
                name = f"{backend} x{workers}" + (" (1 upload per commit)" if env else "")
                print(f"{name}: starting ...", file=sys.stderr, flush=True)
                service = stack.enter_context(
                    UploadStack(args.model, url, workdir, models_dir, workers, **env)
                )
                shape = (1, args.embedding_dim)
                out = asyncio.run(run_load(service, args.uploads, args.concurrency, args.model, shape))
                out["store"] = _check_store(service, out.pop("acked"))
                rows.append({"name": name, "backend": backend, "workers": workers, **out})
    base = next((r for r in rows if "uploads_per_s" in r), None)
    for r in rows:
        if base is not None and "uploads_per_s" in r:
            r["ratio"] = r["uploads_per_s"] / base["uploads_per_s"]
            r["cpu_ratio"] = {k: v / base["cpu_us_per_upload"][k] for k, v in r["cpu_us_per_upload"].items()}
    result = {"machine": machine(), "model": args.model, "concurrency": args.concurrency, "rows": rows}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"\nuploads end to end: {args.uploads} per configuration, {args.concurrency} phones, {args.model}")
    print(f"{machine()}; the load generator runs on the same cores")
    head = f"{'configuration':<34}{'up/s':>8}{'ratio':>7}{'p50/p99 ms':>16}{'relay µs':>10}{'gateway µs':>12}"
    print(head + f"{'loadgen µs':>12}{'ratio relay/gw':>16}{'load':>6}\n" + "-" * (len(head) + 34))
    for r in rows:
        if "skipped" in r:
            print(f"{r['backend'] + ' x' + str(r['workers']):<34}skipped: {r['skipped']}")
            continue
        c, cr, lat = r["cpu_us_per_upload"], r["cpu_ratio"], r["latency_ms"]
        print(
            f"{r['name']:<34}{r['uploads_per_s']:>8.0f}{r['ratio']:>7.2f}{lat['p50']:>8.1f} /{lat['p99']:>6.1f}"
            f"{c['relay']:>10.0f}{c['gateway']:>12.0f}{c['load generator']:>12.0f}"
            f"{cr['relay']:>8.2f} /{cr['gateway']:>5.2f}{r['load_before']:>6.1f}"
        )
    checked = sum(r["store"]["acknowledged"] for r in rows if "store" in r)
    print(f"store check: {checked} acknowledged uploads, 0 lost, 0 duplicated", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared parts of the service benchmarks: the service as child processes, PostgreSQL, a direct transport.

:class:`ServiceStack` starts ``veil serve`` and ``veil relay`` as separate processes on loopback (so the
benchmark's client, the relay and the API do not share one GIL) against a store it has migrated and
given an API key. :func:`postgres_database` yields a fresh PostgreSQL database, on ``--postgres-url`` or
on a throwaway server at default durability settings. :class:`DirectTransport` sends ``PhoneAPI``'s
requests straight to the API with that key: the "without OHTTP" baseline.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import platform
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

__all__ = [
    "DirectTransport",
    "ServiceStack",
    "compact_json",
    "load_average",
    "machine",
    "postgres_database",
    "summarise",
]


def machine() -> str:
    """CPU model and core count, for every table's header."""
    from personalization_latency import cpu_model

    return f"{platform.machine()} {cpu_model()}, {os.cpu_count()} cores"


def load_average() -> float:
    """The 1-minute load average: the tables show it, since other jobs on the machine skew timings."""
    return round(os.getloadavg()[0], 2)


def summarise(seconds: Sequence[float], scale: float = 1e3) -> dict[str, float]:
    """p50/p90/p99/mean of durations in seconds, times ``scale`` (1e3: ms, 1e6: µs)."""
    values = np.asarray(seconds, dtype=np.float64) * scale
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "n": len(values),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(values.mean()),
    }


@dataclass
class _Answer:
    status: int
    content: bytes


class DirectTransport:
    """``PhoneAPI``'s transport without OHTTP: the same inner requests, straight to the API with a key.

    The JSON is encoded as compactly as the OHTTP client encodes it, so both carry the same bytes.
    """

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 120.0) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            trust_env=False,
        )

    async def request(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> _Answer:
        fields = dict(headers or {})
        content = None
        if json is not None:
            content = compact_json(json)
            fields["content-type"] = "application/json"
        response = await self.http.request(method, path, content=content, headers=fields)
        return _Answer(response.status_code, response.content)

    async def aclose(self) -> None:
        await self.http.aclose()


def compact_json(body: Any) -> bytes:
    """JSON as the OHTTP client encodes it (no spaces), so both modes carry the same bytes."""
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _free_port() -> int:
    from veil.cloud_service.background import free_port

    return free_port()


class ServiceStack:
    """``veil serve`` and ``veil relay`` as child processes on loopback, with one API key.

    Parameters
    ----------
    model: the model ``veil serve`` loads (from ``models_dir``).
    database_url: SQLAlchemy URL of the store (migrated and given an API key before the server starts).
    workdir: logs and the SQLite file live here.
    models_dir: ``VEIL_DATA_DIR`` of the server (model cache).
    torch_threads: the API process's torch threads (``OMP_NUM_THREADS``); ``None`` keeps torch's default.
    """

    def __init__(
        self, model: str, database_url: str, workdir: Path, models_dir: Path, torch_threads: int | None = None
    ) -> None:
        self.model, self.database_url, self.torch_threads = model, database_url, torch_threads
        self.workdir, self.models_dir = workdir, models_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_url = self.relay_url = self.api_key = self.model_id = ""
        self.embedding_shape: tuple[int, int] = (1, 1)
        self.signing_seed = secrets.token_bytes(32)  # the gateway's; phones pin its public half

    def __enter__(self) -> ServiceStack:
        from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory

        self.db = make_engine(self.database_url, self.workdir)
        migrate(self.db)
        self.sessions = session_factory(self.db)
        with self.sessions() as session:
            self.api_key = create_api_key(session, "benchmark")
        env = {
            **os.environ,
            "VEIL_DATA_DIR": str(self.models_dir),
            "VEIL_DATABASE_URL": self.database_url,
            "VEIL_GATEWAY_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
            "VEIL_RELAY_SECRET": secrets.token_urlsafe(32),  # the gateway answers only this relay
            "VEIL_GATEWAY_SIGNING_KEY": base64.b64encode(self.signing_seed).decode(),
            "HF_HUB_OFFLINE": "1",
        }
        if self.torch_threads is not None:
            env["OMP_NUM_THREADS"] = str(self.torch_threads)
        cli = [sys.executable, "-m", "veil.cli.main"]
        try:
            self.api_url = self._spawn("api", [*cli, "serve", "--model", self.model], env)
            # No per-address rate limit: every simulated phone here shares 127.0.0.1.
            relay_cmd = [*cli, "relay", "--gateway", self.api_url, "--rate-per-s", "0"]
            self.relay_url = self._spawn("relay", relay_cmd, env)
            card = httpx.get(self.api_url + "/v1/models", headers={"authorization": f"Bearer {self.api_key}"})
            card.raise_for_status()
            self.model_id = card.json()["data"][0]["id"]
            self.embedding_shape = tuple(card.json()["data"][0]["embedding_shape"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], timeout_s: float = 300.0) -> str:
        self.procs[name], url = spawn_healthy(name, cmd, env, self.workdir, timeout_s)
        return url

    def ohttp_client(self) -> Any:
        """A phone's ``AsyncOHTTPClient`` through this stack's relay (keys fetched through the relay too)."""
        from veil.client_sdk.ohttp import AsyncOHTTPClient
        from veil.client_sdk.ohttp.keysig import public_key_bytes, signing_key_from_seed

        relay = self.relay_url
        return AsyncOHTTPClient(
            relay + "/ohttp",
            key_config_url=relay + "/.well-known/ohttp-gateway",
            timeout=120,
            gateway_public_key=public_key_bytes(signing_key_from_seed(self.signing_seed)),
        )

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, all threads) used so far by this process and each server process."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {"client": time.process_time()}
        for name, proc in self.procs.items():
            # /proc/<pid>/stat: fields 14 and 15 (utime, stime) follow the ")" that ends the command name.
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def count_uploads(self) -> int:
        from veil.cloud_service.store import count_uploads

        with self.sessions() as session:
            return count_uploads(session)

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self.procs.clear()
        if hasattr(self, "db"):
            self.db.dispose()


def _pg_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` with initdb, else the directory of ``initdb`` on PATH."""
    found = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    initdb = shutil.which("initdb")
    return found[-1] if found else (Path(initdb).parent if initdb else None)


@contextlib.contextmanager
def _throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir on a free port, at default durability (fsync on)."""
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no initdb found (install Debian's postgresql package)")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="veil-bench-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user") from None
        os.chown(root, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-400:]}")

    data, port, started = root / "data", _free_port(), False
    try:
        # --no-sync only speeds up creating the cluster; the server itself keeps fsync on.
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "veil", "--auth=trust", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start")
        started = True
        yield f"postgresql+psycopg://veil@127.0.0.1:{port}/postgres"
    finally:
        if started:
            with contextlib.suppress(Exception):
                run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_database(server_url: str | None) -> Iterator[str]:
    """A fresh database on ``server_url`` (or on a throwaway server), dropped at the end.

    Raises ``RuntimeError`` with the reason when no PostgreSQL can be had.
    """
    from sqlalchemy.engine import make_url

    with contextlib.ExitStack() as stack:
        url = make_url(server_url or stack.enter_context(_throwaway_postgres()))
        name = f"veil_bench_{secrets.token_hex(6)}"
        try:
            import psycopg

            admin = {
                "host": url.host,
                "port": url.port or 5432,
                "user": url.username,
                "password": url.password,
            }
            with psycopg.connect(**admin, dbname=url.database or "postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except Exception as exc:  # ImportError, psycopg.Error: all mean "no PostgreSQL here"
            raise RuntimeError(f"cannot create a database: {' '.join(str(exc).split())}") from exc
        try:
            yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(
                hide_password=False
            )
        finally:
            with psycopg.connect(**admin, dbname=url.database or "postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def spawn_healthy(
    name: str, cmd: list[str], env: dict[str, str], workdir: Path, timeout_s: float = 300.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``cmd --port P`` (output to ``workdir/<name>.log``) and wait for its ``/health``."""
    port = _free_port()
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text()[-1500:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer /health within {timeout_s:.0f} s")

"""Database fixtures: SQLite in a temp dir, and a real PostgreSQL server.

PostgreSQL comes from ``VEIL_TEST_POSTGRES_URL`` (``.ci/run`` sets it), else from a throwaway server
this session starts with the local ``initdb``/``pg_ctl`` (Debian's ``postgresql`` package); when
neither works, the PostgreSQL tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    import psycopg

BACKENDS = ["sqlite", "postgresql"]


def _pg_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` with initdb, or the directory of ``initdb`` on PATH."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ThrowawayPostgres:
    """A PostgreSQL cluster in a temp dir, on a free loopback port, trust auth, gone at the end."""

    def __init__(self) -> None:
        bin_dir = _pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no initdb found (install Debian's postgresql package)")
        self.bin_dir = bin_dir
        self.prefix: list[str] = []
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user") from None
            self.prefix = ["runuser", "-u", "postgres", "--"]
        # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="veil-test-pg-"))
        if self.owner is not None:
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)
        self.data = self.root / "data"
        self.port = _free_port()
        self.started = False

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def start(self) -> str:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "veil",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        # Test data need not survive a machine crash: fsync off makes CREATE DATABASE fast.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=100"
        )
        log = self.root / "server.log"
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start"
        )
        self.started = True
        return f"postgresql+psycopg://veil@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(Exception):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server whose role may CREATE DATABASE (skips when none can be had)."""
    url = os.environ.get("VEIL_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL unavailable: psycopg is not installed (pip install 'psycopg[binary]')")
    server = None
    try:
        server = _ThrowawayPostgres()
        url = server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if server is not None:
            server.stop()
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield url
    finally:
        server.stop()


def _admin_connect(url: str) -> psycopg.Connection:
    import psycopg

    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        dbname=parsed.database or "postgres",
        autocommit=True,
        connect_timeout=10,
    )


@pytest.fixture()
def postgres_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped after the test."""
    name = f"veil_test_{secrets.token_hex(6)}"
    with _admin_connect(postgres_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(postgres_url, name)


def _drop_database(url: str, name: str) -> None:
    """Drop a test database, ending the sessions a test left open.

    ``WITH (FORCE)`` refuses a role without ``pg_signal_backend`` while an autovacuum worker happens
    to be in the database (the worker belongs to no role the test's role is a member of); the worker
    is done within moments, so the drop is tried again for a few seconds.
    """
    import psycopg

    deadline = time.monotonic() + 15
    with _admin_connect(url) as conn:
        while True:
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a fresh, empty database, once per backend (SQLite file, PostgreSQL database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'veil.sqlite3'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture()
def store_engine(store_url: str, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh database of each backend, migrated to head."""
    from veil.cloud_service.store import make_engine, migrate

    engine = make_engine(store_url, tmp_path)
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture()
def store_session(store_engine: Engine) -> Iterator[Session]:
    """A session on ``store_engine``."""
    from veil.cloud_service.store import session_factory

    with session_factory(store_engine)() as session:
        yield session

"""Opening databases: SQLite pragmas, URL handling, clear errors, atomic and concurrent migrations."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect

from veil.cloud_service.store import (
    StoreError,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    normalise_url,
    sqlite_path,
)


def test_default_is_sqlite_in_data_dir_with_wal_and_full_sync(tmp_path: Path) -> None:
    engine = make_engine(None, tmp_path / "data")
    try:
        migrate(engine)
        assert (
            Path(engine.url.database or "")
            == sqlite_path(tmp_path / "data")
            == tmp_path / "data" / "veil.sqlite3"
        )
        assert (tmp_path / "data" / "veil.sqlite3").exists()
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        assert pragma == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30000}
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://veil:pw@db.example:5432/veil", "postgresql+psycopg"),
        ("postgres://veil:pw@db.example/veil", "postgresql+psycopg"),
        ("postgresql+psycopg://veil@db.example/veil", "postgresql+psycopg"),
        ("sqlite:////var/lib/veil/x.sqlite3", "sqlite+pysqlite"),
    ],
)
def test_url_normalisation(url: str, driver: str) -> None:
    assert normalise_url(url, Path("/unused")).drivername == driver


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url with p4ssw0rd-secret", "invalid database URL"),
        ("postgresql+psycopg2://u:p4ssw0rd-secret@h/db", "unsupported PostgreSQL driver"),
        ("mysql://u:p4ssw0rd-secret@h/db", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_bad_urls_raise_store_error_without_password(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=message) as info:
        make_engine(url, tmp_path)
    assert "p4ssw0rd-secret" not in str(info.value) and "\n" not in str(info.value)


def test_unreachable_postgres_is_a_clear_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError) as info:
        make_engine(f"postgresql://veil:p4ssw0rd-secret@127.0.0.1:{port}/veil", tmp_path)
    message = str(info.value)
    assert message.startswith(f"cannot open the database postgresql+psycopg://veil:***@127.0.0.1:{port}/veil")
    assert "p4ssw0rd-secret" not in message and "\n" not in message


def test_unwritable_data_dir(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match="cannot create the database directory"):
        make_engine(None, tmp_path / "a-file" / "data")


def test_failed_migration_leaves_nothing_behind(store_url: str, tmp_path: Path) -> None:
    engine = make_engine(store_url, tmp_path)
    try:
        with engine.begin() as connection:  # the last table of the migration already exists: it must fail
            connection.exec_driver_sql("CREATE TABLE training_runs (x INTEGER)")
        with pytest.raises(StoreError, match="migrating"):
            migrate(engine)
        assert inspect(engine).get_table_names() == ["training_runs"]  # earlier tables rolled back too
        assert current_revision(engine) is None
    finally:
        engine.dispose()


def test_opening_waits_for_a_writer_that_blocks_the_switch_to_wal(tmp_path: Path) -> None:
    """SQLite answers the switch to WAL 'database is locked' at once, busy timeout or not, while another
    connection holds the write lock of a file still in rollback mode (what processes opening a fresh file
    together run into); the engine must wait for the lock instead of failing."""
    import sqlite3
    import threading

    path = tmp_path / "veil.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=5)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):  # the immediate refusal worked around
            other.execute("PRAGMA journal_mode = WAL")
    finally:
        other.close()
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    start = time.monotonic()
    engine = make_engine(f"sqlite:///{path}", tmp_path)
    try:
        assert time.monotonic() - start >= 0.25  # it waited for the writer
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        release.join()
        writer.close()
        engine.dispose()


_MIGRATOR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from veil.cloud_service.store import make_engine, migrate
    url, data_dir, ready, go = sys.argv[1:5]
    engine = make_engine(url, Path(data_dir))
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.002)
    migrate(engine)
    """
)


@pytest.mark.integration
def test_processes_migrating_at_once(store_url: str, tmp_path: Path) -> None:
    n = 4
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATOR, store_url, str(tmp_path), str(tmp_path / f"ready{i}"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)) and time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            break
        time.sleep(0.01)
    go.touch()  # release them together
    outputs = [child.communicate(timeout=60)[0] for child in children]
    assert [child.returncode for child in children] == [0] * n, outputs
    engine: Engine = make_engine(store_url, tmp_path)
    try:
        assert current_revision(engine) == head_revision()
        assert sorted(inspect(engine).get_table_names()) == [
            "alembic_version", "api_keys", "gateway_key_tombstones", "gateway_keys", "ohttp_replays",
            "training_runs", "uploads",
        ]  # fmt: skip
    finally:
        engine.dispose()

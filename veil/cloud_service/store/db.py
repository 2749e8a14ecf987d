"""Engines, sessions and migrations for the store: SQLite in the data directory, or PostgreSQL by URL.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is on disk, so an
upload the API acknowledged survives a ``SIGKILL`` of the server (and a power cut). SQLAlchemy, not the
``sqlite3`` module, emits ``BEGIN``, so DDL is transactional and the migration can take the write lock
up front with ``BEGIN IMMEDIATE``. PostgreSQL goes through psycopg 3; concurrent ``migrate`` calls are
serialised by a transaction-scoped advisory lock.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from veil.cloud_service.store.errors import StoreError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "SQLITE_FILENAME",
    "current_revision",
    "head_revision",
    "make_engine",
    "migrate",
    "normalise_url",
    "safe_url",
    "session_factory",
    "sqlite_path",
]

SQLITE_FILENAME = "veil.sqlite3"
"""The default database file inside the data directory."""

BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another writer before failing with 'database is locked'."""

PG_CONNECT_TIMEOUT_S = 10
"""How long connecting to PostgreSQL may take before the store reports it unreachable."""

# Any fixed 64-bit value works; it only has to be the same in every process migrating one database.
_PG_MIGRATION_LOCK = 0x7665696C_6D696772  # "veilmigr"
# Execution option read by the SQLite ``begin`` hook: which BEGIN to emit.
_BEGIN_OPTION = "veil_sqlite_begin"


def sqlite_path(data_dir: Path) -> Path:
    """The default SQLite database file of a data directory."""
    return Path(data_dir).expanduser() / SQLITE_FILENAME


def safe_url(url: URL) -> str:
    """The URL as text with the password masked, for messages and logs."""
    return url.render_as_string(hide_password=True)


def normalise_url(url: str | None, data_dir: Path) -> URL:
    """Parse a database URL and pick the supported driver.

    Parameters
    ----------
    url:
        ``None`` (or empty) for SQLite in ``data_dir``; ``sqlite:///<file>``; or ``postgresql://``,
        ``postgres://`` or ``postgresql+psycopg://`` (all three mean psycopg 3).
    data_dir:
        The data directory (used only when ``url`` is empty).

    Raises
    ------
    StoreError
        The URL cannot be parsed, names another database or driver, or is in-memory SQLite.
    """
    if url is None or not url.strip():
        return URL.create("sqlite", database=str(sqlite_path(data_dir)))
    try:
        parsed = make_url(url.strip())
    except ArgumentError:
        # The text itself is never echoed: it may carry a password.
        raise StoreError(
            "invalid database URL (not shown; it may hold a password): expected "
            "postgresql://USER:PASSWORD@HOST:PORT/DB or sqlite:///PATH"
        ) from None
    # Split by hand: SQLAlchemy's accessors would try to load a dialect for "postgres".
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if parsed.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise StoreError(
                f"unsupported PostgreSQL driver {driver!r} in {safe_url(parsed)}: use postgresql+psycopg://"
            )
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise StoreError(f"unsupported SQLite driver {driver!r}: use sqlite:///PATH")
        if parsed.database in (None, "", ":memory:") or (parsed.database or "").startswith("file::memory:"):
            raise StoreError("in-memory SQLite is not durable: give a file, sqlite:///PATH")
        return parsed.set(drivername="sqlite+pysqlite")
    raise StoreError(f"unsupported database {backend!r} in {safe_url(parsed)}: use SQLite or PostgreSQL")


def _one_line(exc: BaseException, url: URL) -> str:
    """The driver's message on one line, with the password scrubbed in case the driver echoed it."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    message = re.sub(r"\s+", " ", message)
    if url.password:
        message = message.replace(str(url.password), "***")
    return message[:300]


def _enter_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the lock it needs.

    The busy timeout does not cover this switch: connections that open a fresh file at once each
    hold a shared lock and each need the exclusive one, and SQLite answers one of them
    ``SQLITE_BUSY`` at once rather than let them wait on each other (https://sqlite.org/c3ref/busy_handler.html).
    The mode is stored in the file, so once another connection has switched, the retry is a no-op.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.25)


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (the `begin` hook below); the driver's own implicit
        # transactions would commit before DDL and never cover a SELECT.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enter_wal(cursor)
            # FULL syncs the WAL at every commit (NORMAL can lose the last commits on power loss).
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get(_BEGIN_OPTION, "BEGIN"))


def make_engine(url: str | None, data_dir: Path, *, echo: bool = False) -> Engine:
    """Open the store's database and check that it answers.

    Parameters
    ----------
    url:
        ``settings.database_url``: ``None`` for ``<data_dir>/veil.sqlite3``, else a SQLite or
        PostgreSQL URL (see :func:`normalise_url`).
    data_dir:
        The data directory (created if missing when SQLite lives there).
    echo:
        Log every SQL statement (debugging only: statements carry upload text).

    Raises
    ------
    StoreError
        Invalid URL, unwritable SQLite location, or a database that cannot be reached or logged into.
    """
    parsed = normalise_url(url, data_dir)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the database directory {path.parent}: {exc.strerror}") from None
        engine = create_engine(parsed, echo=echo, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _install_sqlite_pragmas(engine)
    else:
        try:
            engine = create_engine(
                parsed,
                echo=echo,
                pool_pre_ping=True,
                connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
            )
        except NoSuchModuleError:
            raise StoreError("PostgreSQL needs psycopg 3: pip install 'psycopg[binary]'") from None
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot open the database {safe_url(parsed)}: {_one_line(exc, parsed)}") from None
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (repository functions commit their writes)."""
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection | None = None) -> Any:
    # lazy: alembic costs ~0.3 s at import; only migrations and revision checks need it
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration shipped with this code."""
    # lazy: alembic costs ~0.3 s at import; only migrations and revision checks need it
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise StoreError("the store ships no migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (``None`` before the first :func:`migrate`)."""
    # lazy: alembic costs ~0.3 s at import; only migrations and revision checks need it
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``; a no-op when it is already there.

    Safe when several processes start at once: the whole upgrade is one transaction that first takes
    the database's write lock (SQLite ``BEGIN IMMEDIATE``) or an advisory lock (PostgreSQL), so a
    second process waits, then sees the upgraded version and does nothing.

    Raises
    ------
    StoreError
        The upgrade failed (it was rolled back as a whole).
    """
    # lazy: alembic costs ~0.3 s at import; only migrations and revision checks need it
    from alembic import command

    url = engine.url
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                connection = connection.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                    )
                command.upgrade(_alembic_config(connection), revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"migrating {safe_url(url)} failed: {_one_line(exc, url)}") from None

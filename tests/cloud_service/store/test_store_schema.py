"""The migrated schema: matches the ORM, and holds no identifier and no time finer than a day."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    Integer,
    Interval,
    MetaData,
    String,
    Table,
    Time,
    inspect,
)

from veil.cloud_service.store import current_revision, head_revision, make_engine, migrate
from veil.cloud_service.store.tables import Base

# Name fragments of columns that could identify a person or device, or hold a fine time.
_SUBSTRINGS = (
    "user", "addr", "device", "session", "client", "account", "email", "mail", "phone", "fingerprint",
    "agent", "cookie", "token", "login", "person", "owner", "customer", "member", "subscriber", "visitor",
    "imei", "imsi", "msisdn", "udid", "idfa", "advert", "location", "hostname", "forwarded", "referer",
    "referrer", "origin", "time", "geo", "serial", "uuid", "guid", "browser", "platform",
)  # fmt: skip
# Short ones matched as whole ``_``-separated words ("ip" would hit "description" as a substring).
_WORDS = ("ip", "ipv4", "ipv6", "mac", "uid", "sid", "ssn", "lat", "lon", "lng", "at", "ts", "name", "host")
# Reviewed exceptions: a count of LM tokens, and the hash of an API key (not of a person).
_ALLOWED = {("uploads", "n_tokens"), ("api_keys", "key_hash")}


def identifier_violations(engine: Engine) -> list[str]:
    """Every column of the live database that breaks the no-identifier, day-only rule."""
    inspector = inspect(engine)
    problems = []
    for table in inspector.get_table_names():
        for column in inspector.get_columns(table):
            name = column["name"].lower()
            if (table, name) in _ALLOWED:
                continue
            words = set(re.split(r"[^a-z0-9]+", name))
            hits = [s for s in _SUBSTRINGS if s in name] + sorted(words & set(_WORDS))
            if hits:
                problems.append(f"{table}.{name}: identifier-like name ({', '.join(hits)})")
            kind = column["type"]
            if isinstance(kind, DateTime | Time | Interval) or re.search(
                r"TIME|INTERVAL", str(kind.compile(dialect=engine.dialect)).upper()
            ):
                problems.append(f"{table}.{name}: {kind} is finer than a day (use Date)")
    return problems


def test_migrated_schema_has_no_identifier_or_timestamp(store_engine: Engine) -> None:
    tables = set(inspect(store_engine).get_table_names())
    assert {"uploads", "api_keys", "gateway_keys", "training_runs"} <= tables
    assert {"gateway_key_tombstones", "ohttp_replays"} <= tables  # 0002: checked by the same rule
    assert identifier_violations(store_engine) == []
    date_columns = [
        c["name"] for c in inspect(store_engine).get_columns("uploads") if isinstance(c["type"], Date)
    ]
    assert date_columns == ["day"]


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("user_id", Integer, "user"),
        ("client_ip", String(45), "ip"),
        ("device", String(64), "device"),
        ("seen_at", Date, "at"),
        ("received", DateTime, "finer than a day"),
        ("duration", Interval, "finer than a day"),
    ],
)
def test_checker_catches_a_forbidden_column(
    store_engine: Engine, name: str, kind: object, reason: str
) -> None:
    # The same checker, on the same real database, once a bad column exists (e.g. uploads.user_id).
    throwaway = Table(
        "throwaway_uploads", MetaData(), Column("id", Integer, primary_key=True), Column(name, kind)
    )
    throwaway.create(store_engine)
    try:
        problems = identifier_violations(store_engine)
    finally:
        throwaway.drop(store_engine)
    assert len(problems) == 1 and problems[0].startswith(f"throwaway_uploads.{name}:")
    assert reason in problems[0]


def test_adding_uploads_user_id_fails_the_check(store_engine: Engine) -> None:
    with store_engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE uploads ADD COLUMN user_id INTEGER")
    assert identifier_violations(store_engine) == ["uploads.user_id: identifier-like name (user)"]


def test_orm_matches_migrated_schema(store_engine: Engine) -> None:
    with store_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        # The comparison does see a difference when there is one.
        drifted = MetaData()
        for table in Base.metadata.tables.values():
            table.to_metadata(drifted)
        drifted.tables["uploads"].append_column(Column("extra", Integer))
        diffs = compare_metadata(context, drifted)
    assert [d[0] for d in diffs] == ["add_column"] and diffs[0][3].name == "extra"


def test_migrate_twice_is_a_no_op(store_engine: Engine) -> None:
    assert current_revision(store_engine) == head_revision()
    before = {t: inspect(store_engine).get_columns(t) for t in inspect(store_engine).get_table_names()}
    migrate(store_engine)
    after = {t: inspect(store_engine).get_columns(t) for t in inspect(store_engine).get_table_names()}
    assert current_revision(store_engine) == head_revision()
    assert repr(before) == repr(after)


def test_fresh_database_has_no_revision(store_url: str, tmp_path: Path) -> None:
    engine = make_engine(store_url, tmp_path)
    try:
        assert current_revision(engine) is None
        migrate(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()

"""API keys: hashed, verified in constant time, revocable, operator or not (gateway keys:
``test_store_ohttp.py``); migration 0003 leaves every existing key a plain one."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from veil.cloud_service.store import (
    API_KEY_PREFIX,
    create_api_key,
    current_revision,
    hash_api_key,
    list_api_keys,
    make_engine,
    migrate,
    revoke_api_key,
    session_factory,
    utc_day,
    verify_api_key,
)


def _dump_table(session: Session, table: str) -> str:
    """Every value of every row as text (bytes decoded leniently), to search for secrets."""
    rows = session.execute(text(f"SELECT * FROM {table}")).all()
    return repr([[v.decode("latin-1") if isinstance(v, bytes | memoryview) else v for v in r] for r in rows])


def test_api_key_format_and_storage(store_session: Session) -> None:
    key = create_api_key(store_session, "benchmark runner")
    assert re.fullmatch(r"veil_sk_[A-Za-z0-9_-]{43}", key)
    dump = _dump_table(store_session, "api_keys")
    secret = key[len(API_KEY_PREFIX) :]
    assert key not in dump and secret not in dump and secret[8:16] not in dump  # only prefix and hash
    assert hash_api_key(key) in dump
    (info,) = list_api_keys(store_session)
    assert info.prefix == secret[:8] and info.label == "benchmark runner"
    assert info.created_day == utc_day() and not info.revoked


def test_verify_accepts_only_the_exact_key(store_session: Session) -> None:
    key = create_api_key(store_session, "a")
    other = create_api_key(store_session, "b")
    info = verify_api_key(store_session, key)
    assert info is not None and info.label == "a"
    assert verify_api_key(store_session, other).label == "b"  # type: ignore[union-attr]
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")  # same prefix, wrong secret
    for wrong in (flipped, key + "x", key[:-1], "", "veil_sk_", key.upper(), "Bearer " + key, None, 42):
        assert verify_api_key(store_session, wrong) is None  # type: ignore[arg-type]


def test_revoke(store_session: Session) -> None:
    key = create_api_key(store_session, "to revoke")
    keep = create_api_key(store_session, "to keep")
    prefix = key[len(API_KEY_PREFIX) :][:8]
    assert revoke_api_key(store_session, prefix)
    assert verify_api_key(store_session, key) is None
    assert verify_api_key(store_session, keep) is not None
    assert revoke_api_key(store_session, API_KEY_PREFIX + prefix)  # display form, already revoked
    assert not revoke_api_key(store_session, "zzzzzzzz")
    assert not revoke_api_key(store_session, "short")
    assert [(k.label, k.revoked) for k in list_api_keys(store_session)] == [
        ("to revoke", True),
        ("to keep", False),
    ]


@pytest.mark.parametrize("label", ["", "  ", "x" * 257, "nul\x00", None])
def test_api_key_label_validation(store_session: Session, label: object) -> None:
    with pytest.raises(ValueError, match="label"):
        create_api_key(store_session, label)  # type: ignore[arg-type]
    assert list_api_keys(store_session) == []


def test_only_a_key_created_as_operator_is_one(store_session: Session) -> None:
    plain = create_api_key(store_session, "consumer")
    operator = create_api_key(store_session, "flower server", operator=True)
    assert verify_api_key(store_session, plain).operator is False  # type: ignore[union-attr]
    assert verify_api_key(store_session, operator).operator is True  # type: ignore[union-attr]
    assert [(k.label, k.operator) for k in list_api_keys(store_session)] == [
        ("consumer", False),
        ("flower server", True),
    ]
    revoke_api_key(store_session, operator[len(API_KEY_PREFIX) :][:8])
    assert verify_api_key(store_session, operator) is None  # revoked is revoked, operator or not


@pytest.mark.parametrize("operator", [1, "yes", None])
def test_operator_must_be_a_bool(store_session: Session, operator: object) -> None:
    with pytest.raises(ValueError, match="operator must be a bool"):
        create_api_key(store_session, "x", operator=operator)  # type: ignore[arg-type]
    assert list_api_keys(store_session) == []


def test_migration_0003_leaves_existing_keys_plain_and_downgrades(store_url: str, tmp_path: Path) -> None:
    from alembic import command

    from veil.cloud_service.store.db import _alembic_config

    engine = make_engine(store_url, tmp_path)
    try:
        migrate(engine, "0002")
        keys = [API_KEY_PREFIX + secrets.token_urlsafe(32) for _ in range(3)]
        with engine.begin() as conn:  # rows as 0002 wrote them: no operator column yet
            for i, key in enumerate(keys):
                conn.execute(
                    text(
                        "INSERT INTO api_keys (prefix, key_hash, label, created_day, revoked) "
                        "VALUES (:prefix, :hash, :label, '2026-01-01', :revoked)"
                    ),
                    {"prefix": key[8:16], "hash": hash_api_key(key), "label": f"old {i}", "revoked": i == 2},
                )
        migrate(engine)
        assert current_revision(engine) == "0003"
        with session_factory(engine)() as s:
            assert [(k.label, k.revoked, k.operator) for k in list_api_keys(s)] == [
                ("old 0", False, False),
                ("old 1", False, False),
                ("old 2", True, False),
            ]
            assert verify_api_key(s, keys[0]).operator is False  # type: ignore[union-attr]
            assert verify_api_key(s, create_api_key(s, "new", operator=True)).operator  # type: ignore[union-attr]
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "0002")
        assert current_revision(engine) == "0002"
        assert "operator" not in {c["name"] for c in inspect(engine).get_columns("api_keys")}
        with engine.connect() as conn:  # the keys themselves survive the downgrade
            assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar() == 4
    finally:
        engine.dispose()

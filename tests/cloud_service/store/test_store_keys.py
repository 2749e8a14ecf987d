"""API keys: hashed, verified in constant time, revocable (gateway keys: ``test_store_ohttp.py``)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from veil.cloud_service.store import (
    API_KEY_PREFIX,
    create_api_key,
    hash_api_key,
    list_api_keys,
    revoke_api_key,
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

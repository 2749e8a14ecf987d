"""Upload ids are random 63-bit numbers: nothing in the uploads table keeps arrival order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session

from veil.cloud_service.store import (
    UploadIn,
    add_upload,
    current_revision,
    head_revision,
    iter_uploads,
    make_engine,
    migrate,
    session_factory,
)


def _upload(i: int) -> UploadIn:
    return UploadIn(
        idempotency_key=f"upload-id-test-{i:06d}",
        task="next_word",
        text=f"text {i}",
        label="w",
        embedding=np.full((1, 4), float(i)),
        model="m",
    )


def test_ids_are_random_not_arrival_order(store_session: Session) -> None:
    ids = [add_upload(store_session, _upload(i)).id for i in range(64)]
    assert len(set(ids)) == 64 and all(1 <= i < 2**63 for i in ids)
    assert ids != sorted(ids) and ids != sorted(ids, reverse=True)
    assert not any(abs(a - b) == 1 for a, b in zip(ids, ids[1:], strict=False))  # nothing consecutive
    assert max(ids) > 2**60  # drawn from the whole 63-bit range (fails with odds 2^-192 if random)
    # A retry answers the same id; reading back (id order) returns every upload once.
    assert add_upload(store_session, _upload(5)).id == ids[5]
    assert sorted(u.id for u in iter_uploads(store_session, batch=7)) == sorted(ids)


def test_no_hidden_counter_in_the_table(store_engine: Engine) -> None:
    sessions = session_factory(store_engine)
    with sessions() as s:
        ids = [add_upload(s, _upload(i)).id for i in range(8)]
    with store_engine.connect() as conn:
        if store_engine.dialect.name == "sqlite":
            # INTEGER PRIMARY KEY is the rowid itself: no second, counting rowid.
            rows = conn.execute(text("SELECT rowid, id FROM uploads")).all()
            assert sorted(rows) == sorted((i, i) for i in ids)
            assert not conn.execute(
                text("SELECT name FROM sqlite_master WHERE name = 'sqlite_sequence'")
            ).all()
        else:
            assert conn.execute(text("SELECT pg_get_serial_sequence('uploads', 'id')")).scalar() is None
            column = next(c for c in inspect(store_engine).get_columns("uploads") if c["name"] == "id")
            assert column["default"] is None and column.get("autoincrement") is not True


def test_migration_0002_randomises_stored_ids_and_drops_unbound_key_records(
    store_url: str, tmp_path: Path
) -> None:
    engine = make_engine(store_url, tmp_path)
    try:
        migrate(engine, "0001")
        with engine.begin() as conn:
            for i in range(1, 31):
                conn.execute(
                    text(
                        "INSERT INTO uploads (id, idempotency_key, task, text, model, day, request_hash) "
                        "VALUES (:id, :key, 'next_word', :text, 'm', '2026-01-01', 'h')"
                    ),
                    {"id": i, "key": f"old-upload-{i:08d}", "text": f"text {i}"},
                )
            conn.execute(
                text(
                    "INSERT INTO gateway_keys (key_id, record, created_day, retired) "
                    "VALUES (1, :r, '2026-01-01', false)"
                ),
                {"r": b"sealed with the v1 associated data"},
            )
        migrate(engine, "0002")
        assert current_revision(engine) == "0002"
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT idempotency_key, id FROM uploads")).all())
            texts = dict(conn.execute(text("SELECT idempotency_key, text FROM uploads")).all())
            keys = conn.execute(text("SELECT count(*) FROM gateway_keys")).scalar()
        assert len(rows) == 30 and keys == 0
        assert all(texts[f"old-upload-{i:08d}"] == f"text {i}" for i in range(1, 31))  # content kept
        assert all(rows[k] > 2**32 for k in rows)  # none kept its small counting id
        with session_factory(engine)() as s:  # new uploads get random ids too
            assert add_upload(s, _upload(0)).id not in range(1, 32)
    finally:
        engine.dispose()


def test_migration_0002_downgrades_and_upgrades_again(store_url: str, tmp_path: Path) -> None:
    from alembic import command

    from veil.cloud_service.store.db import _alembic_config

    engine = make_engine(store_url, tmp_path)
    try:
        migrate(engine)
        with session_factory(engine)() as s:
            add_upload(s, _upload(1))
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "0001")
        assert current_revision(engine) == "0001"
        assert "ohttp_replays" not in inspect(engine).get_table_names()
        with engine.begin() as conn:  # 0001 numbers new rows itself again
            conn.execute(
                text(
                    "INSERT INTO uploads (idempotency_key, task, text, model, day, request_hash) "
                    "VALUES ('after-downgrade-0001', 'next_word', 't', 'm', '2026-01-01', 'h')"
                )
            )
        migrate(engine)  # through 0002 and every later revision again
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM uploads")).scalar() == 2
    finally:
        engine.dispose()

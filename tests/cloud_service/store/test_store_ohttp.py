"""Gateway key records (epochs, tombstones, compare-and-set) and the replay table, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session

from veil.cloud_service.store import (
    add_gateway_key,
    forget_replays,
    load_gateway_keys,
    record_replays,
    retire_gateway_key,
    session_factory,
)


def test_gateway_key_records_epochs_and_tombstones(store_session: Session) -> None:
    assert load_gateway_keys(store_session) == ([], {})
    assert add_gateway_key(store_session, 1, 1, b"sealed-1")
    assert add_gateway_key(store_session, 2, 2, b"sealed-2")
    assert not add_gateway_key(store_session, 3, 2, b"same epoch")  # compare-and-set: epoch taken
    assert not add_gateway_key(store_session, 1, 3, b"same live id")  # key ids unique among live keys
    live, retired = load_gateway_keys(store_session)
    assert [(k.key_id, k.epoch, k.record) for k in live] == [(1, 1, b"sealed-1"), (2, 2, b"sealed-2")]
    assert isinstance(live[0].record, bytes) and retired == {}

    assert retire_gateway_key(store_session, 1) and not retire_gateway_key(store_session, 1)
    assert load_gateway_keys(store_session) == ([(2, 2, b"sealed-2")], {1: 1})
    assert not add_gateway_key(store_session, 1, 1, b"sealed-1")  # a tombstoned epoch stays dead
    assert add_gateway_key(store_session, 1, 3, b"sealed-3")  # the key id itself is free again
    assert load_gateway_keys(store_session)[0] == [(2, 2, b"sealed-2"), (1, 3, b"sealed-3")]


@pytest.mark.parametrize(
    ("key_id", "epoch", "record"),
    [(-1, 1, b"r"), (256, 1, b"r"), (True, 1, b"r"), (1, 0, b"r"), (1, "1", b"r"), (1, 1, b""), (1, 1, "s")],
)
def test_gateway_key_validation(
    store_session: Session, key_id: object, epoch: object, record: object
) -> None:
    with pytest.raises(ValueError):
        add_gateway_key(store_session, key_id, epoch, record)  # type: ignore[arg-type]
    assert load_gateway_keys(store_session) == ([], {})


def test_replays_are_recorded_once_and_refused_for_retired_keys(store_session: Session) -> None:
    add_gateway_key(store_session, 1, 1, b"k1")
    add_gateway_key(store_session, 2, 2, b"k2")
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    assert record_replays(store_session, [(a, 1, 1), (b, 2, 2), (a, 1, 1)]) == ["fresh", "fresh", "replay"]
    assert record_replays(store_session, [(b, 2, 2), (c, 9, 9)]) == ["replay", "key_retired"]
    retire_gateway_key(store_session, 1)
    # Once retired, nothing more is recorded under the key, even by a process that has not noticed.
    assert record_replays(store_session, [(c, 1, 1)]) == ["key_retired"]
    assert forget_replays(store_session, [1], chunk=1) == 1 and forget_replays(store_session, [1]) == 0
    rows = store_session.execute(text("SELECT enc_digest, key_id, key_epoch FROM ohttp_replays")).all()
    store_session.rollback()
    assert [(bytes(d), k, e) for d, k, e in rows] == [(b, 2, 2)]
    with pytest.raises(ValueError, match="enc_digest"):
        record_replays(store_session, [(b"short", 2, 2)])


def test_forget_works_in_chunks(store_session: Session) -> None:
    add_gateway_key(store_session, 1, 1, b"k1")
    record_replays(store_session, [(i.to_bytes(16, "big"), 1, 1) for i in range(25)])
    retire_gateway_key(store_session, 1)
    assert forget_replays(store_session, [1], chunk=10) == 25
    assert store_session.scalar(text("SELECT count(*) FROM ohttp_replays")) == 0


def test_concurrent_duplicate_is_accepted_exactly_once(store_engine: Engine) -> None:
    sessions = session_factory(store_engine)
    with sessions() as s:
        add_gateway_key(s, 1, 1, b"k1")
    digests = [i.to_bytes(16, "big") for i in range(40)]
    verdicts: list[list[str]] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        with sessions() as s:
            verdicts.append(record_replays(s, [(d, 1, 1) for d in digests]))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(verdicts) == 4
    for i in range(len(digests)):
        assert sorted(v[i] for v in verdicts) == ["fresh", "replay", "replay", "replay"]


def test_concurrent_rotations_one_wins(store_engine: Engine) -> None:
    sessions = session_factory(store_engine)
    wins: list[bool] = []
    start = threading.Barrier(4)

    def rotate(key_id: int) -> None:
        start.wait()
        with sessions() as s:
            wins.append(add_gateway_key(s, key_id, 1, f"key {key_id}".encode()))

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    with sessions() as s:
        assert len(load_gateway_keys(s)[0]) == 1


def test_replay_table_keeps_no_order_and_no_time(store_engine: Engine) -> None:
    columns = {c["name"]: c for c in inspect(store_engine).get_columns("ohttp_replays")}
    assert set(columns) == {"enc_digest", "key_id", "key_epoch"}
    if store_engine.dialect.name == "sqlite":
        with store_engine.connect() as conn:
            sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'ohttp_replays'").scalar()
        assert "WITHOUT ROWID" in sql.upper()  # no hidden rowid counting arrivals

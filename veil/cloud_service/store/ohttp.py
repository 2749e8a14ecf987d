"""Data access for the OHTTP gateway: sealed key records, their tombstones, and seen encapsulations.

Each write is one short transaction whose first statement writes (SQLite then takes the write lock at
once and its busy timeout covers concurrent writers); the guards are in the statements themselves
(``INSERT ... SELECT ... WHERE [NOT] EXISTS``, primary keys), so they hold across processes on SQLite
and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

from sqlalchemy import BigInteger, Date, Integer, LargeBinary, delete, exists, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from veil.cloud_service.store.tables import GatewayKey, GatewayKeyTombstone, OhttpReplay
from veil.cloud_service.store.util import db_errors, utc_day

__all__ = [
    "GatewayKeyRow",
    "add_gateway_key",
    "forget_replays",
    "load_gateway_keys",
    "record_replays",
    "retire_gateway_key",
]

FRESH, REPLAY, KEY_RETIRED = "fresh", "replay", "key_retired"
"""The verdicts of :func:`record_replays`."""


class GatewayKeyRow(NamedTuple):
    """A live gateway key as stored: OHTTP key id, epoch, sealed record."""

    key_id: int
    epoch: int
    record: bytes


def _check_ids(key_id: int, epoch: int) -> None:
    for name, value, low, high in (("key_id", key_id, 0, 255), ("epoch", epoch, 1, 2**63 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")


@db_errors
def load_gateway_keys(session: Session) -> tuple[list[GatewayKeyRow], dict[int, int]]:
    """The live keys (by epoch) and the tombstones (``epoch -> key_id``), read in one transaction."""
    live = session.execute(
        select(GatewayKey.key_id, GatewayKey.epoch, GatewayKey.record).order_by(GatewayKey.epoch)
    ).all()
    retired = session.execute(select(GatewayKeyTombstone.epoch, GatewayKeyTombstone.key_id)).all()
    session.rollback()  # end the read transaction
    return [GatewayKeyRow(k, e, bytes(r)) for k, e, r in live], {e: k for e, k in retired}


@db_errors
def add_gateway_key(session: Session, key_id: int, epoch: int, record: bytes) -> bool:
    """Insert a new live key; ``False`` (nothing written) when the epoch is used or tombstoned, or the
    key id is live. The compare-and-set of rotation: of concurrent proposals of one epoch, one wins."""
    _check_ids(key_id, epoch)
    if not isinstance(record, bytes | bytearray) or not record:
        raise ValueError("record must be non-empty bytes")
    values = select(
        literal(epoch, BigInteger),
        literal(key_id, Integer),
        literal(bytes(record), LargeBinary),
        literal(utc_day(), Date),
    ).where(~exists().where(GatewayKeyTombstone.epoch == epoch))
    stmt = insert(GatewayKey).from_select(["epoch", "key_id", "record", "created_day"], values)
    try:
        # RETURNING, not rowcount: psycopg reports -1 rows for an INSERT ... SELECT compiled this way.
        added = session.execute(stmt.returning(GatewayKey.epoch)).first() is not None
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return added


@db_errors
def retire_gateway_key(session: Session, epoch: int) -> bool:
    """Delete the live key of ``epoch`` and leave its tombstone, in one transaction; ``False`` if not live.

    Its replay rows are dropped separately, in chunks (:func:`forget_replays`): once the key is gone
    from this table, :func:`record_replays` refuses new rows for it.
    """
    _check_ids(0, epoch)
    tombstone = select(GatewayKey.epoch, GatewayKey.key_id, literal(utc_day(), Date)).where(
        GatewayKey.epoch == epoch, ~exists().where(GatewayKeyTombstone.epoch == epoch)
    )
    try:
        session.execute(
            insert(GatewayKeyTombstone).from_select(["epoch", "key_id", "retired_day"], tombstone)
        )
        gone = session.connection().execute(delete(GatewayKey).where(GatewayKey.epoch == epoch)).rowcount
        session.commit()
    except IntegrityError:  # another process tombstoned it at the same moment
        session.rollback()
        return False
    return bool(gone)


_RECORD = (
    "INSERT INTO ohttp_replays (enc_digest, key_id, key_epoch) "
    "SELECT {d}, {k}, {e} WHERE EXISTS (SELECT 1 FROM gateway_keys WHERE epoch = {e}) "
    "ON CONFLICT DO NOTHING"
)
# Sent to the driver as is (no SQLAlchemy compilation per row: a third of the cost of the check).
_RECORD_SQL = {
    "sqlite": _RECORD.format(d=":digest", k=":key_id", e=":epoch"),  # sqlite3 takes named parameters
    "postgresql": _RECORD.format(d="%(digest)s", k="%(key_id)s", e="%(epoch)s"),
}


@db_errors
def record_replays(session: Session, seen: Sequence[tuple[bytes, int, int]]) -> list[str]:
    """Record ``(enc_digest, key_id, epoch)`` items in one transaction; a verdict per item, in order.

    ``"fresh"``: inserted now. ``"replay"``: the digest was already there (or earlier in ``seen``).
    ``"key_retired"``: the epoch is no longer live, nothing written. The insert is conditional on the
    key being live in the same statement, so a process that has not yet noticed a retirement cannot
    add rows for the retired key.
    """
    for digest, key_id, epoch in seen:
        _check_ids(key_id, epoch)
        if not isinstance(digest, bytes) or not 8 <= len(digest) <= 32:
            raise ValueError(f"enc_digest must be 8-32 bytes, got {digest!r:.40}")
    connection = session.connection()
    sql = _RECORD_SQL[connection.dialect.name]
    inserted = [
        connection.exec_driver_sql(sql, {"digest": d, "key_id": k, "epoch": e}).rowcount for d, k, e in seen
    ]
    missed = {e for (_, _, e), n in zip(seen, inserted, strict=True) if not n}
    live = set()
    if missed:
        live = set(session.scalars(select(GatewayKey.epoch).where(GatewayKey.epoch.in_(missed))))
    session.commit()
    pairs = zip(seen, inserted, strict=True)
    return [FRESH if n else REPLAY if e in live else KEY_RETIRED for (_, _, e), n in pairs]


@db_errors
def forget_replays(session: Session, epochs: Collection[int], chunk: int = 10_000) -> int:
    """Delete the replay rows of these epochs, ``chunk`` rows per transaction; returns how many went.

    Short transactions keep the write lock brief, so uploads are not held up by a retirement.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    total = 0
    for epoch in sorted(set(epochs)):
        _check_ids(0, epoch)
        while True:
            batch = select(OhttpReplay.enc_digest).where(OhttpReplay.key_epoch == epoch).limit(chunk)
            stmt = delete(OhttpReplay).where(OhttpReplay.enc_digest.in_(batch))
            n = session.connection().execute(stmt).rowcount
            session.commit()
            total += n
            if n < chunk:
                break
    return total

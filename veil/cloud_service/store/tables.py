"""The database schema as SQLAlchemy 2 ORM tables.

Privacy rule (the product's privacy model): no column may hold anything that identifies a person or a
device (no IP, user, device, session, client or account field), and no column has a time finer than
a day: every date is a :class:`~sqlalchemy.Date` holding the UTC day. ``tests/cloud_service/store``
checks this on the migrated database, so a new column that breaks it fails the tests.

The migration in ``migrations/versions`` creates exactly these tables; a test compares the two.
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from veil.client_sdk.constants import TASKS  # re-exported: the CHECK constraint below lists them

__all__ = [
    "ApiKey",
    "Base",
    "GatewayKey",
    "GatewayKeyTombstone",
    "OhttpReplay",
    "NAMING_CONVENTION",
    "RUN_STATUSES",
    "TASKS",
    "TrainingRun",
    "Upload",
    "new_upload_id",
]

RUN_STATUSES = ("queued", "running", "succeeded", "failed")
"""The life cycle of a training run."""

# Explicit names make constraints identical on SQLite and PostgreSQL, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# On SQLite a column declared exactly ``INTEGER PRIMARY KEY`` is the rowid (64-bit), so the row's place
# in the table is its id; any other declaration adds a hidden rowid that counts up in arrival order.
_BIG_ID = BigInteger().with_variant(Integer, "sqlite")


def new_upload_id() -> int:
    """A random upload id in ``1 .. 2**63 - 1``: ids (and SQLite's row order) keep no arrival order.

    Two ids collide with probability ``2**-63`` per pair; an insert that hits one fails like any store
    error, and the phone's retry (same idempotency key) draws a new id.
    """
    return 1 + secrets.randbelow(2**63 - 1)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Upload(Base):
    """One anonymous training example sent by a phone through the OHTTP gateway."""

    __tablename__ = "uploads"
    __table_args__ = (
        CheckConstraint(_in("task", TASKS), name="task"),
        # The shape is there exactly when the embedding is.
        CheckConstraint(
            "(embedding IS NULL AND n_tokens IS NULL AND hidden IS NULL) OR "
            "(embedding IS NOT NULL AND n_tokens >= 1 AND hidden >= 1)",
            name="embedding_shape",
        ),
        Index(None, "task", "model"),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=False, default=new_upload_id)
    """Random (:func:`new_upload_id`), never a counter: it is returned to the phone."""
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    """Client-generated random key (16-128 of ``[A-Za-z0-9_-]``), fresh per upload: makes retries safe."""
    task: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(256))
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The sampled embedding, float32 little-endian, row-major ``(n_tokens, hidden)``."""
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    hidden: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(256))
    day: Mapped[dt.date] = mapped_column(Date)
    """UTC day of the upload (never a finer time: it would help link uploads)."""
    request_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 hex of the canonical content, to tell a retry from a reused key."""


class ApiKey(Base):
    """An API key of a cloud API consumer; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(8), unique=True)
    """The first 8 characters of the random part (after ``veil_sk_``): lookup and display."""
    key_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(256))
    """What the key is for (free text chosen by the operator)."""
    created_day: Mapped[dt.date] = mapped_column(Date)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    operator: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The key may publish the codebook (``PUT /v1/codebook``), not only call the model routes."""


class GatewayKey(Base):
    """A live OHTTP gateway key, as a record the gateway has already sealed (AAD: key id and epoch)."""

    __tablename__ = "gateway_keys"
    __table_args__ = (
        CheckConstraint("key_id >= 0 AND key_id <= 255", name="key_id_range"),
        CheckConstraint("epoch >= 1", name="epoch_positive"),
    )

    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    """Deployment-wide key number, never reused; a rotation inserts ``max + 1`` and only one wins."""
    key_id: Mapped[int] = mapped_column(Integer, unique=True)
    """The one-byte OHTTP key id (unique among live keys, reused after retirement)."""
    record: Mapped[bytes] = mapped_column(LargeBinary)
    created_day: Mapped[dt.date] = mapped_column(Date)


class GatewayKeyTombstone(Base):
    """A retired gateway key: its record is gone; a record of this epoch that reappears is refused."""

    __tablename__ = "gateway_key_tombstones"

    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    key_id: Mapped[int] = mapped_column(Integer)
    retired_day: Mapped[dt.date] = mapped_column(Date)


class OhttpReplay(Base):
    """The digest of an accepted HPKE ``enc`` (first 16 bytes of SHA-256), kept until its key retires.

    No time column: the key's epoch says when the row can go. On SQLite the table has no rowid (the
    digest's b-tree is the table), so nothing in it records arrival order.
    """

    __tablename__ = "ohttp_replays"
    __table_args__ = (Index(None, "key_epoch"), {"sqlite_with_rowid": False})

    enc_digest: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer)
    key_epoch: Mapped[int] = mapped_column(BigInteger)


class TrainingRun(Base):
    """One training job (e.g. stage 3 personalised fine-tuning) and its outcome."""

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        Index(None, "kind", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_day: Mapped[dt.date] = mapped_column(Date)
    config: Mapped[str] = mapped_column(Text)
    """JSON object."""
    metrics: Mapped[str | None] = mapped_column(Text)
    """JSON object, once there are metrics."""
    checkpoint: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

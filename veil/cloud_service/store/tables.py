"""The database schema as SQLAlchemy 2 ORM tables.

Privacy rule (the product's privacy model): no column may hold anything that identifies a person or a
device (no IP, user, device, session, client or account field), and no column has a time finer than
a day: every date is a :class:`~sqlalchemy.Date` holding the UTC day. ``tests/cloud_service/store``
checks this on the migrated database, so a new column that breaks it fails the tests.

The migration in ``migrations/versions`` creates exactly these tables; a test compares the two.
"""

from __future__ import annotations

import datetime as dt

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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiKey",
    "Base",
    "GatewayKey",
    "NAMING_CONVENTION",
    "RUN_STATUSES",
    "TASKS",
    "TrainingRun",
    "Upload",
]

TASKS = ("classification", "next_word")
"""The upload tasks the service trains on."""

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

# SQLite only auto-increments a column declared exactly ``INTEGER PRIMARY KEY``.
_BIG_ID = BigInteger().with_variant(Integer, "sqlite")


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

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
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


class GatewayKey(Base):
    """An OHTTP gateway key, as a record the gateway has already encrypted."""

    __tablename__ = "gateway_keys"
    __table_args__ = (CheckConstraint("key_id >= 0 AND key_id <= 255", name="key_id_range"),)

    key_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    record: Mapped[bytes] = mapped_column(LargeBinary)
    created_day: Mapped[dt.date] = mapped_column(Date)
    retired: Mapped[bool] = mapped_column(Boolean, default=False)


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

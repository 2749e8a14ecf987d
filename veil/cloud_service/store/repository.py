"""Data access: uploads here; API and gateway keys (:mod:`.keys`) and training runs (:mod:`.runs`) re-exported.

Conventions: functions take a :class:`~sqlalchemy.orm.Session`; reads return ``None`` for "not found";
writes commit before they return (an acknowledged write is durable) and roll back on error; nothing
here knows about HTTP. Every write is a single INSERT or UPDATE, never read-then-write, so SQLite's
busy timeout covers concurrent writers (a write after a read in one WAL transaction fails at once).
Database failures other than the documented ones raise :class:`StoreError`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from veil.client_sdk.constants import IDEMPOTENCY_KEY_PATTERN, MAX_TEXT_CHARS, TASKS
from veil.cloud_service.store.errors import IdempotencyConflict, StoreError
from veil.cloud_service.store.keys import (
    API_KEY_PREFIX,
    ApiKeyInfo,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    verify_api_key,
)
from veil.cloud_service.store.runs import (
    TrainingRunInfo,
    create_training_run,
    get_training_run,
    latest_training_run,
    update_training_run,
)
from veil.cloud_service.store.tables import Upload
from veil.cloud_service.store.util import check_text, db_errors, utc_day

__all__ = [
    "API_KEY_PREFIX",
    "ApiKeyInfo",
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_LABEL_CHARS",
    "MAX_TEXT_CHARS",
    "StoredUpload",
    "TrainingRunInfo",
    "UploadIn",
    "UploadResult",
    "add_upload",
    "count_uploads",
    "create_api_key",
    "create_training_run",
    "get_training_run",
    "iter_uploads",
    "latest_training_run",
    "list_api_keys",
    "revoke_api_key",
    "update_training_run",
    "utc_day",
    "verify_api_key",
]

MAX_LABEL_CHARS = 256
MAX_MODEL_CHARS = 256


@dataclass(kw_only=True)
class UploadIn:
    """One anonymous training example, validated on construction.

    Raises ``ValueError`` naming the field when any constraint below fails.
    """

    idempotency_key: str
    """Client-generated random key, 16-128 characters of ``[A-Za-z0-9_-]``, fresh for each upload."""
    task: str
    """One of ``TASKS`` ("classification", "next_word")."""
    text: str
    """The example text: not blank, at most ``MAX_TEXT_CHARS`` characters."""
    model: str
    """The model the embedding was sampled for."""
    label: str | None = None
    """Class label (classification) or target word; at most ``MAX_LABEL_CHARS`` characters."""
    embedding: np.ndarray | None = None
    """Sampled user embedding, finite, shape ``(n_tokens, hidden)``; stored as float32."""

    def __post_init__(self) -> None:
        if not isinstance(self.idempotency_key, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(
            self.idempotency_key
        ):
            raise ValueError(
                "idempotency_key must be 16-128 characters of [A-Za-z0-9_-], got "
                f"{str(self.idempotency_key)[:40]!r}"
            )
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {str(self.task)[:40]!r}")
        check_text("text", self.text, MAX_TEXT_CHARS)
        check_text("model", self.model, MAX_MODEL_CHARS)
        if self.label is not None:
            check_text("label", self.label, MAX_LABEL_CHARS, allow_blank=True)
        if self.embedding is not None:
            self.embedding = _check_embedding(self.embedding)

    def content_hash(self) -> str:
        """SHA-256 hex of the canonical content (every field but the idempotency key)."""
        digest = hashlib.sha256(b"veil-upload-v1")

        def put(field: bytes | None) -> None:
            # Length-prefixed fields, with None distinct from empty, so no two contents collide.
            if field is None:
                digest.update(b"\x00")
            else:
                digest.update(b"\x01" + len(field).to_bytes(8, "big") + field)

        put(self.task.encode())
        put(self.text.encode())
        put(None if self.label is None else self.label.encode())
        put(self.model.encode())
        if self.embedding is None:
            put(None)
        else:
            n_tokens, hidden = self.embedding.shape
            put(n_tokens.to_bytes(8, "big") + hidden.to_bytes(8, "big") + _encode(self.embedding))
        return digest.hexdigest()


def _check_embedding(value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"embedding must be a numpy array, got {type(value).__name__}")
    if value.ndim != 2 or value.shape[0] < 1 or value.shape[1] < 1:
        raise ValueError(f"embedding must have shape (n_tokens, hidden) with both >= 1, got {value.shape}")
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise ValueError(f"embedding must be real numbers, got dtype {value.dtype}")
    # Cast first: a float64 beyond float32's range becomes inf and is refused below. A float32 array
    # (what the wire codec decodes) is neither copied nor converted.
    with np.errstate(over="ignore"):
        as_f32 = np.ascontiguousarray(value, dtype="<f4")
    if not np.isfinite(as_f32).all():
        raise ValueError("embedding must be finite (no NaN or Inf, and within float32 range)")
    return as_f32


def _encode(embedding: np.ndarray) -> bytes:
    """The stored form: the little-endian float32 bytes that travelled in ``embedding_b64``."""
    return np.ascontiguousarray(embedding, dtype="<f4").tobytes()


def _decode(blob: bytes, n_tokens: int, hidden: int) -> np.ndarray:
    flat = np.frombuffer(blob, dtype="<f4")
    if flat.size != n_tokens * hidden:
        raise StoreError(f"stored embedding has {flat.size} values, expected {n_tokens} x {hidden}")
    return flat.reshape(n_tokens, hidden).astype(np.float32)  # a native, writable copy


@dataclass(frozen=True)
class UploadResult:
    """Outcome of :func:`add_upload`."""

    id: int
    created: bool
    """False when this was a retry of an upload already stored."""


@dataclass(frozen=True)
class StoredUpload:
    """An upload as read back for training."""

    id: int
    task: str
    text: str
    label: str | None
    embedding: np.ndarray | None
    """float32, shape (n_tokens, hidden)."""
    model: str
    day: dt.date


@db_errors
def add_upload(session: Session, upload: UploadIn) -> UploadResult:
    """Store an upload once per idempotency key.

    A retry with the same key and content returns the stored id with ``created=False``. Correct under
    concurrency: of several inserts racing on one key, the unique constraint lets one win and the
    others read its row back.

    Raises
    ------
    IdempotencyConflict
        The key is already stored with different content.
    """
    content_hash = upload.content_hash()
    row = Upload(
        idempotency_key=upload.idempotency_key,
        task=upload.task,
        text=upload.text,
        label=upload.label,
        embedding=None if upload.embedding is None else _encode(upload.embedding),
        n_tokens=None if upload.embedding is None else upload.embedding.shape[0],
        hidden=None if upload.embedding is None else upload.embedding.shape[1],
        model=upload.model,
        day=utc_day(),
        request_hash=content_hash,
    )
    # Insert first (not look-up first): retries are rare, and on SQLite a read before the write
    # would make a concurrent insert fail with 'database is locked' instead of waiting.
    session.add(row)
    try:
        session.commit()
        return UploadResult(id=row.id, created=True)
    except IntegrityError as exc:
        session.rollback()
        stored = session.execute(
            select(Upload.id, Upload.request_hash).where(Upload.idempotency_key == upload.idempotency_key)
        ).one_or_none()
        session.rollback()  # end the read transaction
        if stored is None:
            raise StoreError(f"upload rejected by the database: {str(exc.orig).splitlines()[0]}") from None
    if stored.request_hash != content_hash:
        raise IdempotencyConflict("idempotency_key was already used for a different upload")
    return UploadResult(id=stored.id, created=False)


def _upload_filter(stmt: Any, task: str | None, model: str | None) -> Any:
    if task is not None:
        stmt = stmt.where(Upload.task == task)
    if model is not None:
        stmt = stmt.where(Upload.model == model)
    return stmt


@db_errors
def count_uploads(session: Session, task: str | None = None, model: str | None = None) -> int:
    """How many uploads are stored (for one task and/or model when given)."""
    return int(session.scalar(_upload_filter(select(func.count()).select_from(Upload), task, model)) or 0)


_UPLOAD_COLUMNS = (
    Upload.id,
    Upload.task,
    Upload.text,
    Upload.label,
    Upload.embedding,
    Upload.n_tokens,
    Upload.hidden,
    Upload.model,
    Upload.day,
)


def iter_uploads(
    session: Session, task: str | None = None, model: str | None = None, batch: int = 500
) -> Iterator[StoredUpload]:
    """Stored uploads in id order (ids are random: no arrival order), ``batch`` rows at a time.

    Memory stays flat for any count.

    The session's transaction is committed after each batch, so a slow consumer (a training loop)
    does not hold one read transaction open for hours (on SQLite that would stop WAL checkpoints).
    Uploads added meanwhile are included when their (random) id is above the last one read.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    last_id = 0
    while True:
        stmt = _upload_filter(select(*_UPLOAD_COLUMNS), task, model).where(Upload.id > last_id)
        try:
            rows = session.execute(stmt.order_by(Upload.id).limit(batch)).all()
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(f"reading uploads failed: {str(exc).splitlines()[0]}") from None
        for id_, task_, text, label, blob, n_tokens, hidden, model_, day in rows:
            embedding = None if blob is None else _decode(blob, n_tokens, hidden)
            yield StoredUpload(id_, task_, text, label, embedding, model_, day)
        if len(rows) < batch:
            return
        last_id = rows[-1][0]

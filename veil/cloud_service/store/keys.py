"""Data access for API keys (cloud API consumers); OHTTP gateway keys are in :mod:`.ohttp`.

API keys are ``veil_sk_`` followed by 32 random bytes in URL-safe base64 (43 characters). Only the
SHA-256 of the whole key is stored: a fast hash is right for 256 random bits (no dictionary to
search), and it keeps verification cheap on every request. The first 8 characters of the random part
are stored as the ``prefix``, to find the row and to name the key in listings.

An *operator* key may also publish the prototype codebook (``PUT /v1/codebook``); a key is created an
operator key or not, and stays so (a new key is the way to change it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from veil.cloud_service.store.errors import StoreError
from veil.cloud_service.store.tables import ApiKey
from veil.cloud_service.store.util import db_errors, utc_day

__all__ = [
    "API_KEY_PREFIX",
    "ApiKeyInfo",
    "create_api_key",
    "hash_api_key",
    "list_api_keys",
    "revoke_api_key",
    "verify_api_key",
]

API_KEY_PREFIX = "veil_sk_"
_SECRET_BYTES = 32
_SECRET_CHARS = 43  # unpadded URL-safe base64 of 32 bytes
_LOOKUP_CHARS = 8
_KEY_PATTERN = re.compile(re.escape(API_KEY_PREFIX) + rf"[A-Za-z0-9_-]{{{_SECRET_CHARS}}}")


@dataclass(frozen=True)
class ApiKeyInfo:
    """What the store knows about an API key (never the key itself)."""

    id: int
    prefix: str
    """First 8 characters after ``veil_sk_``; shown as ``veil_sk_<prefix>...``."""
    label: str
    created_day: dt.date
    revoked: bool
    operator: bool = False
    """May publish the codebook (``PUT /v1/codebook``), besides calling the model routes."""


def _new_key() -> str:
    """A fresh key whose prefix does not start with ``-`` (so ``veil keys revoke <prefix>`` is never read
    as an option); redrawing 1 key in 64 leaves the other 252 random bits as they were."""
    while True:
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        if not secret.startswith("-"):
            return API_KEY_PREFIX + secret


def hash_api_key(plaintext: str) -> str:
    """SHA-256 hex of an API key, as stored in ``api_keys.key_hash``."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(row.id, row.prefix, row.label, row.created_day, row.revoked, row.operator)


@db_errors
def create_api_key(session: Session, label: str, operator: bool = False) -> str:
    """Create a key and return its plaintext; this is the only time it exists outside the caller.

    ``operator=True`` makes a key that may also publish the codebook (``PUT /v1/codebook``).

    Raises
    ------
    ValueError
        ``label`` is blank, longer than 256 characters, or contains NUL; ``operator`` is not a bool.
    """
    if not isinstance(label, str) or not label.strip() or len(label) > 256 or "\x00" in label:
        raise ValueError("label must be a non-blank string of at most 256 characters without NUL")
    if not isinstance(operator, bool):
        raise ValueError(f"operator must be a bool, got {operator!r}")
    # A prefix collision (48 random bits) is astronomically rare; the unique constraint catches it.
    for _attempt in range(3):
        plaintext = _new_key()
        session.add(
            ApiKey(
                prefix=plaintext[len(API_KEY_PREFIX) : len(API_KEY_PREFIX) + _LOOKUP_CHARS],
                key_hash=hash_api_key(plaintext),
                label=label,
                created_day=utc_day(),
                revoked=False,
                operator=operator,
            )
        )
        try:
            session.commit()
            return plaintext
        except IntegrityError:
            session.rollback()
    raise StoreError("could not create a unique API key prefix")


@db_errors
def verify_api_key(session: Session, plaintext: str) -> ApiKeyInfo | None:
    """The key's info when ``plaintext`` is a valid, unrevoked key; None otherwise."""
    if not isinstance(plaintext, str) or not _KEY_PATTERN.fullmatch(plaintext):
        return None
    prefix = plaintext[len(API_KEY_PREFIX) : len(API_KEY_PREFIX) + _LOOKUP_CHARS]
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
    # Constant-time comparison so the response time says nothing about how much of the hash matched.
    if row is None or not hmac.compare_digest(row.key_hash, hash_api_key(plaintext)) or row.revoked:
        return None
    return _info(row)


@db_errors
def revoke_api_key(session: Session, prefix: str) -> bool:
    """Revoke the key with this prefix (``veil_sk_`` in front is accepted); False when there is none.

    Revoking an already revoked key returns True: the key exists and is revoked afterwards.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, got {type(prefix).__name__}")
    if prefix.startswith(API_KEY_PREFIX):
        prefix = prefix[len(API_KEY_PREFIX) :]
    prefix = prefix[:_LOOKUP_CHARS]
    if len(prefix) != _LOOKUP_CHARS:
        return False
    result = session.execute(update(ApiKey).where(ApiKey.prefix == prefix).values(revoked=True))
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


@db_errors
def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    """All keys, revoked ones included, oldest first."""
    return [_info(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.id))]

"""Typed errors of the store: callers map them to HTTP statuses, the store never does."""

from __future__ import annotations

__all__ = ["IdempotencyConflict", "StoreError"]


class StoreError(Exception):
    """The database cannot be opened, migrated or used; the message is one line and holds no password."""


class IdempotencyConflict(StoreError):  # noqa: N818 - the name the API layer uses
    """An idempotency key was reused for different content (a client bug, not a retry)."""

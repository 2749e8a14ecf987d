"""Helpers shared by the repository modules."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from veil.cloud_service.store.errors import StoreError

__all__ = ["check_text", "db_errors", "utc_day"]

P = ParamSpec("P")
R = TypeVar("R")


def utc_day() -> dt.date:
    """Today in UTC: the only time the store keeps (a finer one would help link uploads)."""
    return dt.datetime.now(dt.UTC).date()


def db_errors(fn: Callable[Concatenate[Session, P], R]) -> Callable[Concatenate[Session, P], R]:
    """Turn a database failure into a one-line :class:`StoreError`, after rolling the session back."""

    @functools.wraps(fn)
    def wrapper(session: Session, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(session, *args, **kwargs)
        except SQLAlchemyError as exc:
            session.rollback()
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise StoreError(f"{fn.__name__} failed: {detail[0] if detail else type(exc).__name__}") from None

    return wrapper


def check_text(name: str, value: object, max_chars: int, *, allow_blank: bool = False) -> str:
    """Return ``value`` if it is a storable string of at most ``max_chars``; else raise ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_blank and not value.strip():
        raise ValueError(f"{name} must not be empty or blank")
    if len(value) > max_chars:
        raise ValueError(f"{name} must be at most {max_chars} characters, got {len(value)}")
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: refuse both up front
    # so the insert cannot fail half-way.
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode (lone surrogate)") from None
    return value

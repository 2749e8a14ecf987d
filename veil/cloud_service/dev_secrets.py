"""Secrets a development deployment keeps for itself in its data directory (never in production)."""

from __future__ import annotations

import secrets
from pathlib import Path

from veil.client_sdk.atomic_files import create_once

__all__ = ["development_secret"]


def development_secret(path: Path, size: int = 32) -> bytes:
    """Read or create ``path``: ``size`` random bytes, mode 0600, fsynced.

    Several workers starting at once all read the same bytes: each writes a private temporary file and
    links it into place, and the first link wins.
    """
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if len(data) != size:
            raise ValueError(f"{path} must hold exactly {size} bytes, found {len(data)}")
        return data
    create_once(path, secrets.token_bytes(size))
    return development_secret(path, size)

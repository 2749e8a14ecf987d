"""Secrets a development deployment keeps for itself in its data directory (never in production)."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(size))
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return development_secret(path, size)

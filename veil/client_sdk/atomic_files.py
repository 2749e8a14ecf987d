"""Replace a file atomically: readers see the old content or the new, never half of it.

The content goes to a temporary file in the same directory, is flushed to disk, and is renamed over
the target with :func:`os.replace` (atomic on POSIX, ``rename(2)``); then the directory is fsynced so
that the rename itself survives a crash. On any failure the temporary file is removed and the target
is untouched.

This is *replace*, not *create once*: a file that must be written by exactly one of several racing
processes (a pinned key, a development secret) is linked into place instead, which fails when the
target exists (see :mod:`veil.client_sdk.ohttp.keypin`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["create_once", "atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, mode: int = 0o600
) -> None:
    """Replace ``path`` with what ``write`` writes to the binary file handle it is given.

    Parameters
    ----------
    path : path-like
        The target; its directory must exist.
    write : callable
        Writes the content, e.g. ``lambda fh: np.savez(fh, **arrays)``.
    mode : int
        Permission bits of the new file, set explicitly (not through the umask): ``0o600`` (private,
        the default) or ``0o644`` for files meant to be public.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a crash
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data), mode=mode)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` encoded as UTF-8 (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def create_once(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data`` unless it already exists: the first writer wins.

    Each writer fills and fsyncs a private temporary file and hard-links it into place, so readers see
    either no file or a complete one, and concurrent creators (workers starting at once) agree on one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another writer created it first; theirs stands
    finally:
        tmp.unlink(missing_ok=True)

"""The service's retrieval collections: created, filled, listed and deleted over HTTP, kept in the data dir.

Each collection is a :class:`~veil.models.rag.Collection` saved under ``<data_dir>/rag/<name>`` (the same
place ``veil.models.rag`` reads and writes, so a collection built offline, e.g. the Wikipedia sample of
:func:`~veil.models.rag.default_collection`, is served as is). A collection created over HTTP and still
empty cannot be saved as a ``Collection`` (an index needs passages); until its first documents it is a
small JSON file ``<data_dir>/rag/.<name>.empty.json`` holding its index settings.

Collections load lazily and are cached; the cache is keyed by the inode of the collection's directory,
which every save replaces (``Collection.save`` renames a fresh copy into place), so a collection another
API worker changed is read again on next use. Writes to a collection take an exclusive ``flock`` on
``<data_dir>/rag/.<name>.lock`` and loads a shared one: one writer at a time across the threads and
processes of one machine, and no load sees a save half-done (a cached collection is served without
waiting for an ingestion into it). A write works on a fresh copy and swaps it into the cache
only once saved, so an ingestion that fails leaves both the cache and the disk as they were, and a
question being answered keeps searching the copy it started with.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from veil.client_sdk.atomic_files import atomic_write_text
from veil.models.rag import (
    Collection,
    Document,
    IndexConfig,
    Passage,
    collection_dir,
    is_saved_collection,
    validate_collection_name,
)

__all__ = ["CollectionInfo", "CollectionStore", "describe"]

_EMPTY = ".{}.empty.json"
_LOCK = ".{}.lock"


@dataclass(frozen=True)
class CollectionInfo:
    """What ``GET /v1/rag/collections`` lists for one collection."""

    name: str
    passages: int
    documents: int
    dense: bool


def describe(collection: Collection) -> CollectionInfo:
    return CollectionInfo(
        collection.name,
        len(collection),
        len({p.doc_id for p in collection.passages}),
        collection.config.dense,
    )


class CollectionStore:
    """The collections under ``<data_dir>/rag``.

    Every method returns ``None`` (or ``False``) for a collection that does not exist and leaves HTTP
    errors to the routes; a bad name raises :class:`~veil.models.rag.CollectionNameError`, and a failed
    ingestion the :class:`~veil.models.rag.RagError` (or ``ValueError``) of the retrieval layer.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir).expanduser() / "rag"
        self._cache: dict[str, tuple[int, Collection]] = {}
        self._guard = threading.Lock()  # the cache dict itself

    # -- reading ---------------------------------------------------------------------------------------

    def get(self, name: str) -> Collection | None:
        """The collection, from the cache when its directory is unchanged; ``None`` if there is none."""
        validate_collection_name(name)
        directory = collection_dir(name, self.root.parent)
        cached = self._cached(name, directory)
        if cached is not None:
            return cached
        with self._locked(name, fcntl.LOCK_SH):
            collection = self._load(name)
            if collection is not None:
                self._remember(name, directory, collection)
            return collection

    def names(self) -> list[str]:
        """Every collection's name, sorted."""
        if not self.root.is_dir():
            return []
        found = set()
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                name = entry.name[1:].removesuffix(".empty.json")
                if entry.name == _EMPTY.format(name) or entry.name == f".{name}.previous":
                    found.add(name)  # ``.previous``: a save crashed between its two renames
            elif entry.is_dir():
                found.add(entry.name)
        return sorted(n for n in found if _valid(n) and self._exists(n))

    def info(self) -> list[CollectionInfo]:
        """Name, size and kind of every collection (loads each one not cached yet)."""
        out = []
        for name in self.names():
            collection = self.get(name)
            if collection is not None:
                out.append(describe(collection))
        return out

    # -- writing ---------------------------------------------------------------------------------------

    def create(self, name: str, config: IndexConfig) -> bool:
        """Record a new, empty collection; ``False`` when one of that name exists."""
        validate_collection_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked(name, fcntl.LOCK_EX):
            if self._exists(name):
                return False
            atomic_write_text(self._empty(name), json.dumps(asdict(config)))
            return True

    def add(self, name: str, documents: Sequence[Document]) -> tuple[Collection, list[Passage]] | None:
        """Index ``documents`` into collection ``name`` and save it atomically: the collection now and
        the new passages; ``None`` if it does not exist. On any error the collection (on disk and as
        served) is the one from before the call."""
        validate_collection_name(name)
        with self._locked(name, fcntl.LOCK_EX):
            fresh = self._load(name)  # a copy of its own: the served one stays untouched until saved
            if fresh is None:
                return None
            passages = fresh.add(documents)
            directory = fresh.save(collection_dir(name, self.root.parent))
            self._remember(name, directory, fresh)
            self._empty(name).unlink(missing_ok=True)
            return fresh, passages

    def delete(self, name: str) -> bool:
        """Remove the collection from disk and the cache; ``False`` if it did not exist."""
        validate_collection_name(name)
        with self._locked(name, fcntl.LOCK_EX):
            if not self._exists(name):
                return False
            directory = collection_dir(name, self.root.parent)
            for path in (directory, directory.parent / f".{name}.previous"):
                shutil.rmtree(path, ignore_errors=True)
            self._empty(name).unlink(missing_ok=True)
            with self._guard:
                self._cache.pop(name, None)
            return True

    # -- internals -------------------------------------------------------------------------------------

    def _empty(self, name: str) -> Path:
        return self.root / _EMPTY.format(name)

    def _exists(self, name: str) -> bool:
        return is_saved_collection(collection_dir(name, self.root.parent)) or self._empty(name).is_file()

    def _cached(self, name: str, directory: Path) -> Collection | None:
        inode = _inode(directory)
        with self._guard:
            cached = self._cache.get(name)
        return cached[1] if cached is not None and inode is not None and cached[0] == inode else None

    def _load(self, name: str) -> Collection | None:
        directory = collection_dir(name, self.root.parent)
        if is_saved_collection(directory):
            return Collection.load(directory)
        if self._empty(name).is_file():
            return Collection(name, IndexConfig(**json.loads(self._empty(name).read_text())))
        return None

    def _remember(self, name: str, directory: Path, collection: Collection) -> None:
        inode = _inode(directory)
        with self._guard:
            if inode is None:
                self._cache.pop(name, None)
            else:
                self._cache[name] = (inode, collection)

    @contextlib.contextmanager
    def _locked(self, name: str, mode: int) -> Iterator[None]:
        """``flock`` on ``<root>/.<name>.lock``: shared for loads, exclusive for writes (blocks until
        granted)."""
        if not self.root.is_dir():
            if mode == fcntl.LOCK_SH:  # nothing was ever written: nothing to read half-done
                yield
                return
            self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _LOCK.format(name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock


def _inode(directory: Path) -> int | None:
    try:
        return directory.stat().st_ino
    except OSError:
        return None


def _valid(name: str) -> bool:
    try:
        validate_collection_name(name)
    except ValueError:
        return False
    return True

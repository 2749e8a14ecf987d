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

The default collection (``wikipedia-sample``) exists out of the box: the first request that needs it
while it is missing builds it from gensim's Wikipedia sample, BM25 only (about 10 s on 2 busy cores;
embedding it with MiniLM would take about 25 minutes, so a dense copy is the operator's to build with
``veil rag build-default --dense``). The build holds the collection's exclusive lock, so one build runs
across threads and processes and the others wait for it, then load it; requests of one process
waiting for it share one build (:meth:`CollectionStore.get_or_build`). A collection already there, of
either kind, is never rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from veil.client_sdk.atomic_files import atomic_write_text
from veil.models.rag import (
    DEFAULT_COLLECTION,
    Collection,
    Document,
    IndexConfig,
    Passage,
    collection_dir,
    is_saved_collection,
    validate_collection_name,
)

__all__ = ["CollectionInfo", "CollectionStore", "build_default_collection", "describe"]

log = logging.getLogger(__name__)

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


def build_default_collection() -> Collection:
    """The service's default collection: the whole Wikipedia sample, BM25 only (seconds, not minutes)."""
    from veil.models.rag.wikipedia import build_wikipedia_sample

    return build_wikipedia_sample(config=IndexConfig(dense=False))


class CollectionStore:
    """The collections under ``<data_dir>/rag``.

    Every method returns ``None`` (or ``False``) for a collection that does not exist and leaves HTTP
    errors to the routes; a bad name raises :class:`~veil.models.rag.CollectionNameError`, and a failed
    ingestion the :class:`~veil.models.rag.RagError` (or ``ValueError``) of the retrieval layer.

    ``build_default`` makes the default collection when it is missing (tests pass a small one).
    """

    def __init__(
        self, data_dir: Path | str, build_default: Callable[[], Collection] = build_default_collection
    ) -> None:
        self.root = Path(data_dir).expanduser() / "rag"
        self._cache: dict[str, tuple[int, Collection]] = {}
        self._guard = threading.Lock()  # the cache dict itself
        self._build_default = build_default
        self._building: asyncio.Future[Collection] | None = None  # this process's build in flight

    # -- reading ---------------------------------------------------------------------------------------

    def get(self, name: str) -> Collection | None:
        """The collection, from the cache when its directory is unchanged; ``None`` if there is none."""
        validate_collection_name(name)
        directory = collection_dir(name, self.root.parent)
        cached = self._cached(name, directory)
        if cached is not None:
            return cached
        with self._locked(name, fcntl.LOCK_SH):
            collection = self._cached_or_loaded(name, directory)
            if collection is not None:
                self._remember(name, directory, collection)
            return collection

    async def get_or_build(self, name: str) -> Collection | None:
        """:meth:`get` off the event loop; the default collection is built first when it is missing.

        Concurrent callers in this process await one build; a failed build raises its error (a
        :class:`~veil.models.rag.RagError`, e.g. gensim missing) to every caller waiting on it, and the
        next call tries again.
        """
        collection = await asyncio.to_thread(self.get, name)
        if collection is not None or name != DEFAULT_COLLECTION:
            return collection
        if self._building is None or self._building.done():
            self._building = asyncio.ensure_future(asyncio.to_thread(self.ensure_default))
        # shielded: a caller that goes away must not cancel the build the others wait on
        return await asyncio.shield(self._building)

    def ensure_default(self) -> Collection:
        """The default collection, built with ``build_default`` and saved when there is none.

        Under the collection's exclusive lock: a build that another thread or process (or ``veil rag
        build-default``) finished meanwhile is loaded, not repeated.
        """
        with self._locked(DEFAULT_COLLECTION, fcntl.LOCK_EX):
            directory = collection_dir(DEFAULT_COLLECTION, self.root.parent)
            collection = self._cached_or_loaded(DEFAULT_COLLECTION, directory)
            if collection is None:
                started = time.perf_counter()
                collection = self._build_default()
                if collection.name != DEFAULT_COLLECTION:
                    raise ValueError(f"build_default made {collection.name!r}, not {DEFAULT_COLLECTION!r}")
                collection.save(directory)
                log.info(
                    "built the default collection %r (%d passages, BM25 only) in %.1f s",
                    DEFAULT_COLLECTION, len(collection), time.perf_counter() - started,
                )  # fmt: skip
            self._remember(DEFAULT_COLLECTION, directory, collection)
            return collection

    def put(self, collection: Collection) -> Path:
        """Save a collection built elsewhere (e.g. by ``veil rag build-default``) in place of the one of
        its name, atomically, under the exclusive lock; it is served from the next request on."""
        name = validate_collection_name(collection.name)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked(name, fcntl.LOCK_EX):
            directory = collection.save(collection_dir(name, self.root.parent))
            self._remember(name, directory, collection)
            self._empty(name).unlink(missing_ok=True)
            return directory

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

    def _cached_or_loaded(self, name: str, directory: Path) -> Collection | None:
        """Under the collection's lock: the cached copy if a save (e.g. the default's build) cached it
        while the caller waited for the lock, else the one on disk (a second copy of the same would
        differ from what the others were served)."""
        cached = self._cached(name, directory)
        return cached if cached is not None else self._load(name)

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

"""The default collection out of the box: :class:`CollectionStore` builds it on first need, once across
concurrent callers and stores (two API workers), never over an existing one, and not at all when the
build fails (the next call tries again). The builder is a small BM25-only one: the real one (the whole
Wikipedia sample) runs in ``test_api_rag_default.py``."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from veil.cloud_service.rag_store import CollectionStore
from veil.models.rag import DEFAULT_COLLECTION, Collection, Document, IndexConfig, RagError, collection_dir


class Builder:
    """Counts its builds; each takes ``delay`` seconds, so concurrent callers overlap it."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail, self.calls = delay, fail, 0
        self._count = threading.Lock()

    def __call__(self) -> Collection:
        with self._count:
            self.calls += 1
        time.sleep(self.delay)
        if self.fail:
            raise RagError("the Wikipedia sample needs gensim (a test's failure)")
        collection = Collection(DEFAULT_COLLECTION, IndexConfig(dense=False))
        collection.add([Document("turing", "Alan Turing was born in London.", "Alan Turing")])
        return collection


class OneHotEncoder:
    """Every text to the same unit vector: enough for a dense index to exist."""

    name, dim = "one-hot", 4

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[:, 0] = 1.0
        return out


def test_a_missing_default_collection_is_built_saved_and_served_from_then_on(tmp_path: Path) -> None:
    build = Builder()
    store = CollectionStore(tmp_path, build_default=build)
    assert store.get(DEFAULT_COLLECTION) is None and store.names() == []
    collection = asyncio.run(store.get_or_build(DEFAULT_COLLECTION))
    assert collection is not None and [p.id for p in collection.passages] == ["turing#0"]
    assert not collection.config.dense and build.calls == 1
    assert store.names() == [DEFAULT_COLLECTION]
    assert asyncio.run(store.get_or_build(DEFAULT_COLLECTION)) is collection  # the cached copy
    again = CollectionStore(tmp_path, build_default=build)  # a restart reads it from disk
    assert len(asyncio.run(again.get_or_build(DEFAULT_COLLECTION))) == 1 and build.calls == 1


@pytest.mark.parametrize("attempt", range(8))
def test_concurrent_questions_share_one_build(tmp_path: Path, attempt: int) -> None:
    """More callers than the default thread pool has workers, so some callers' first look at the cache
    runs while the build saves: they must still get the build's copy, not a second one read from disk
    (a race CI caught once; repeated to make it likelier to show)."""
    build = Builder(delay=0.05 * (1 + attempt % 3))
    store = CollectionStore(tmp_path, build_default=build)

    async def ask_many() -> list[Collection | None]:
        return await asyncio.gather(*(store.get_or_build(DEFAULT_COLLECTION) for _ in range(12)))

    got = asyncio.run(ask_many())
    assert build.calls == 1 and all(c is got[0] for c in got)


def test_two_workers_build_it_once(tmp_path: Path) -> None:
    build = Builder(delay=0.3)
    stores = [CollectionStore(tmp_path, build_default=build) for _ in range(2)]  # two API processes
    results: list[Collection] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.ensure_default())) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert build.calls == 1 and [len(c) for c in results] == [1, 1]


@pytest.mark.parametrize("dense", [False, True])
def test_an_existing_default_collection_is_never_rebuilt(tmp_path: Path, dense: bool) -> None:
    own = Collection(DEFAULT_COLLECTION, IndexConfig(dense=dense), OneHotEncoder() if dense else None)
    own.add([Document("mine", "An operator's own default collection.", "Mine")])
    own.save(collection_dir(DEFAULT_COLLECTION, tmp_path))
    build = Builder(fail=True)
    store = CollectionStore(tmp_path, build_default=build)
    served = asyncio.run(store.get_or_build(DEFAULT_COLLECTION))
    assert served is not None and [p.id for p in served.passages] == ["mine#0"] and build.calls == 0
    assert served.config.dense is dense


def test_a_failed_build_leaves_nothing_and_the_next_call_tries_again(tmp_path: Path) -> None:
    build = Builder(fail=True)
    store = CollectionStore(tmp_path, build_default=build)
    with pytest.raises(RagError, match="needs gensim"):
        asyncio.run(store.get_or_build(DEFAULT_COLLECTION))
    assert store.names() == [] and not collection_dir(DEFAULT_COLLECTION, tmp_path).exists()
    build.fail = False
    assert len(asyncio.run(store.get_or_build(DEFAULT_COLLECTION))) == 1 and build.calls == 2


def test_only_the_default_collection_is_built_on_demand(tmp_path: Path) -> None:
    build = Builder()
    store = CollectionStore(tmp_path, build_default=build)
    assert asyncio.run(store.get_or_build("people")) is None and build.calls == 0


def test_put_replaces_a_served_collection_and_the_store_serves_the_new_one(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path, build_default=Builder())
    first = store.ensure_default()
    newer = Collection(DEFAULT_COLLECTION, IndexConfig(dense=False))
    newer.add([Document("lovelace", "Ada Lovelace wrote the first program.", "Ada Lovelace")])
    store.put(newer)
    assert store.get(DEFAULT_COLLECTION) is newer and first is not newer
    other = CollectionStore(tmp_path)  # another worker: loads the new copy from disk
    assert [p.id for p in other.get(DEFAULT_COLLECTION).passages] == ["lovelace#0"]

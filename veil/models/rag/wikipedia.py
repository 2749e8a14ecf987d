"""The default collection: the English Wikipedia sample that ships with gensim's test data.

gensim's wheel carries the first articles of an ``enwiki-latest-pages-articles1.xml`` dump (106 full
articles, from Anarchism to Ayn Rand, CC BY-SA). Redirects and non-article namespaces are dropped, the
wikitext is stripped by gensim's ``filter_wiki`` plus :func:`~veil.models.rag.markup.strip_wiki_leftovers`
(section headings become section breaks), and each article becomes one document with id ``wiki-<pageid>``.
DeepRAG retrieves from DPR's Wikipedia passages (arXiv:2502.01142); this is the offline stand-in.
"""

from __future__ import annotations

import bz2
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veil.models.rag.collection import Collection, IndexConfig, collection_dir, is_saved_collection
from veil.models.rag.corpus import Document
from veil.models.rag.dense import Encoder
from veil.models.rag.errors import CorpusError
from veil.models.rag.markup import strip_wiki_leftovers

__all__ = [
    "DEFAULT_COLLECTION",
    "build_wikipedia_sample",
    "default_collection",
    "default_collection_name",
    "wikipedia_sample_documents",
    "wikipedia_sample_path",
]

DEFAULT_COLLECTION = "wikipedia-sample"
WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def wikipedia_sample_path() -> Path:
    """The compressed dump inside the installed gensim package (found, not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the Wikipedia sample needs gensim: pip install 'veil[cloud]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / WIKI_SAMPLE
    if not path.is_file():
        raise CorpusError(f"gensim's test data has no {WIKI_SAMPLE} (looked in {path.parent})")
    return path


def wikipedia_sample_documents(limit: int | None = None) -> Iterator[Document]:
    """The sample's articles as plain-text documents, in dump order (the first ``limit`` if given)."""
    # lazy: gensim's import costs about a second
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    count = 0
    with bz2.open(wikipedia_sample_path(), "rb") as f:
        for title, wikitext, pageid in extract_pages(f, filter_namespaces=("0",)):
            if limit is not None and count >= limit:
                return
            if wikitext.lstrip().lower().startswith("#redirect"):
                continue
            text = strip_wiki_leftovers(filter_wiki(wikitext))
            if text.split():
                count += 1
                yield Document(id=f"wiki-{pageid}", text=text, title=title, source=f"{WIKI_SAMPLE}:{pageid}")


def default_collection_name(limit: int | None = None) -> str:
    """``wikipedia-sample``, or ``wikipedia-sample-<limit>`` for the first ``limit`` articles alone."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    return DEFAULT_COLLECTION if limit is None else f"{DEFAULT_COLLECTION}-{limit}"


def build_wikipedia_sample(
    *,
    config: IndexConfig | None = None,
    encoder: Encoder | None = None,
    limit: int | None = None,
    progress: Any = None,
) -> Collection:
    """The Wikipedia-sample collection, indexed in memory and not saved (:meth:`Collection.save` does).

    With ``config.dense`` (the default) every passage is embedded (MiniLM unless ``encoder`` is given):
    about 25 minutes for the full sample on 2 busy CPU cores; BM25 alone (``IndexConfig(dense=False)``)
    takes seconds, most of them gensim stripping the wikitext (``benchmarks/README.md``, "RAG retrieval").
    ``progress`` is a :class:`veil.progress.Progress`: one stage for reading the articles, one for
    embedding the passages.
    """
    from veil.progress import NullProgress

    progress = progress or NullProgress()
    config = config or IndexConfig()
    name = default_collection_name(limit)
    with progress.stage("reading the Wikipedia sample (articles)", limit) as bar:
        documents = []
        for doc in wikipedia_sample_documents(limit):
            documents.append(doc)
            bar.advance()
    if not config.dense:
        collection = Collection(name, config, encoder)
        collection.add(documents)
        return collection
    from veil.models.rag.dense import load_minilm

    encoder = encoder or load_minilm()
    with progress.stage(f"embedding passages ({encoder.name})", None) as bar:
        counted = _Counted(encoder, bar)
        collection = Collection(name, config, counted)
        collection.add(documents)
    counted.bar = None  # later queries embed silently
    return collection


class _Counted:
    """An encoder that advances a progress bar as it embeds, in batches (the bar's total set on first
    use)."""

    def __init__(self, encoder: Encoder, bar: Any | None, batch: int = 64) -> None:
        self.encoder, self.bar, self.batch = encoder, bar, batch
        self.name, self.dim = encoder.name, encoder.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.bar is None:
            return self.encoder.encode(texts)
        self.bar.update(0, len(texts))
        parts = []
        for start in range(0, len(texts), self.batch):
            parts.append(np.asarray(self.encoder.encode(texts[start : start + self.batch]), dtype=np.float32))
            self.bar.advance(len(parts[-1]))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)


def default_collection(
    data_dir: Path | str | None = None,
    *,
    encoder: Encoder | None = None,
    config: IndexConfig | None = None,
    limit: int | None = None,
) -> Collection:
    """The Wikipedia-sample collection, built and saved on first use, loaded from the data dir after.

    ``limit`` keeps the first ``limit`` articles, in a collection of its own
    (``wikipedia-sample-<limit>``). ``config`` applies only when the collection is built; a cached one keeps
    the config it was built with. See :func:`build_wikipedia_sample` for what building costs; the command
    ``veil rag build-default`` does the same with a progress bar, and the service builds a BM25-only copy
    on first need.
    """
    target = collection_dir(default_collection_name(limit), data_dir)
    if is_saved_collection(target):
        return Collection.load(target, encoder)
    collection = build_wikipedia_sample(config=config, encoder=encoder, limit=limit)
    collection.save(target)
    return collection

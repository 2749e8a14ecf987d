"""The retrieval layer's typed errors: one family, so callers can catch :class:`RagError` alone."""

from __future__ import annotations

__all__ = [
    "CollectionNameError",
    "CorpusError",
    "DuplicateIdError",
    "EmptyCorpusError",
    "IndexFormatError",
    "MalformedRecordError",
    "RagError",
]


class RagError(ValueError):
    """Base of every retrieval error; the message is one line, fit for a CLI or an API error body."""


class CorpusError(RagError):
    """The input documents cannot be ingested."""


class EmptyCorpusError(CorpusError):
    """Ingestion found no passage to index."""


class MalformedRecordError(CorpusError):
    """A JSONL line is not a ``{"id", "contents"}`` object; ``path`` and ``line`` (1-based) locate it."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}, line {line}: {problem}")
        self.path = path
        self.line = line


class DuplicateIdError(CorpusError):
    """Two documents share an id (within one ingestion, or with a document already indexed)."""


class CollectionNameError(RagError):
    """A collection name is not 1-64 characters of lowercase letters, digits, ``-`` and ``_``."""


class IndexFormatError(RagError):
    """A saved index is missing, incomplete or of an unknown format."""

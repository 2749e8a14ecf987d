"""The translation package's typed errors: one family, so callers can catch :class:`TranslationError`."""

from __future__ import annotations

__all__ = ["AssetNotInstalledError", "MalformedRecordError", "TranslationDataError", "TranslationError"]


class TranslationError(ValueError):
    """Base of every translation error; the message is one line, fit for a CLI or an API error body."""


class TranslationDataError(TranslationError):
    """A data file cannot be read as the format asked for."""


class MalformedRecordError(TranslationDataError):
    """One record is not of the expected shape; ``path`` and ``line`` (1-based) locate it.

    For a JSON array, ``line`` is the record's 1-based position in the array.
    """

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}, record {line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class AssetNotInstalledError(ModuleNotFoundError):
    """A package that ships data offline is not installed; the message says how to install it."""

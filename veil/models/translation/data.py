"""Translation data: the HSK zh-en pairs and readers for the published formats.

* :func:`hsk_pairs`: Chinese-English sentence pairs from the ``hsk-sentences-audio`` wheel (4,354 graded
  HSK 3.0 sentences with an English translation each, CC BY-SA 4.0; 4,349 distinct Chinese texts).
* :func:`load_metaphortrans`: DRT-o1's MetaphorTrans records ``{"text", "trans", "thought"}``
  (arXiv:2412.17498): an English literary sentence, its Chinese translation and the long thought.
* :func:`load_ragtrans`: RAGtrans records (arXiv:2412.04342). Train and validation lines are
  ``{"src", "tgt", "doc", "tag"}`` with tags ``clean_<lang>`` or ``noisy_<lang>`` (a noisy document is
  irrelevant); test lines are ``{"src", "tgt", "en_doc", "zh_doc", "de_doc"}``, every document relevant, and
  each becomes one ``clean_<lang>`` record per document, in key order.

Both readers accept a JSON array or JSON Lines (one object per line, blank lines skipped), told apart by
the first non-blank character. A record that is not of its format raises
:class:`~veil.models.translation.errors.MalformedRecordError` naming the file and the record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.models.translation.errors import (
    AssetNotInstalledError,
    MalformedRecordError,
    TranslationDataError,
)
from veil.models.translation.languages import primary_subtag

__all__ = [
    "HSK_LEVELS",
    "MetaphorTransRecord",
    "RagTransRecord",
    "TranslationPair",
    "hsk_pairs",
    "load_metaphortrans",
    "load_ragtrans",
    "read_json_records",
]

HSK_LEVELS = (1, 2, 3, 4, 5, 6)
_HSK_INSTALL_HINT = "pip install hsk-sentences-audio==1.0.0"
_TAG = re.compile(r"(clean|noisy)_([a-z]{2,3})")


@dataclass(frozen=True)
class TranslationPair:
    """A source sentence and its reference translation."""

    id: str
    source: str
    target: str
    source_language: str
    """BCP 47 code, e.g. ``"zh"``."""
    target_language: str


@dataclass(frozen=True)
class MetaphorTransRecord:
    """One MetaphorTrans example: ``text`` (English), ``trans`` (Chinese) and the long ``thought``."""

    text: str
    trans: str
    thought: str

    def to_json(self) -> dict[str, str]:
        return {"text": self.text, "trans": self.trans, "thought": self.thought}


@dataclass(frozen=True)
class RagTransRecord:
    """One RAGtrans example: translate ``src`` into ``tgt`` with the document ``doc``.

    ``tag`` is ``clean_<lang>`` (the document is relevant) or ``noisy_<lang>`` (it is not), where
    ``<lang>`` is the document's language.
    """

    src: str
    tgt: str
    doc: str
    tag: str

    def __post_init__(self) -> None:
        if _TAG.fullmatch(self.tag) is None:
            raise ValueError(f"tag must be clean_<lang> or noisy_<lang>, got {self.tag!r}")

    @property
    def is_clean(self) -> bool:
        return self.tag.startswith("clean_")

    @property
    def doc_language(self) -> str:
        return self.tag.split("_", 1)[1]

    def to_json(self) -> dict[str, str]:
        return {"src": self.src, "tgt": self.tgt, "doc": self.doc, "tag": self.tag}


def hsk_pairs(
    source_language: str = "zh", target_language: str = "en", levels: Sequence[int] | None = None
) -> list[TranslationPair]:
    """The HSK sentences as translation pairs, in the package's order, one per distinct Chinese text.

    Parameters
    ----------
    source_language, target_language: ``"zh"`` and ``"en"`` in either order.
    levels: HSK levels to keep (1-6); all when ``None``.
    """
    langs = (primary_subtag(source_language), primary_subtag(target_language))
    if langs not in (("zh", "en"), ("en", "zh")):
        raise ValueError(f"the HSK set is Chinese-English; got {source_language!r} -> {target_language!r}")
    wanted = set(HSK_LEVELS if levels is None else levels)
    if not wanted <= set(HSK_LEVELS):
        raise ValueError(f"HSK levels are {HSK_LEVELS}, got {sorted(wanted)}")
    try:
        from hsk_sentences_audio import load_sentences
    except ModuleNotFoundError as e:
        raise AssetNotInstalledError(f"the HSK sentences are not installed; {_HSK_INSTALL_HINT}") from e
    pairs: list[TranslationPair] = []
    seen: set[str] = set()
    for i, rec in enumerate(load_sentences(), start=1):
        try:
            level, zh, en, rid = rec["hsk_level"], rec["chinese"], rec["translation"]["en"], rec["id"]
        except (KeyError, TypeError) as e:
            raise MalformedRecordError("hsk_sentences_audio/data/sentences.json", i, f"no {e}") from e
        if level not in wanted or zh in seen:
            continue
        seen.add(zh)
        src, tgt = (zh, en) if langs[0] == "zh" else (en, zh)
        pairs.append(TranslationPair(str(rid), src, tgt, langs[0], langs[1]))
    return pairs


def read_json_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(position, value)`` for each record of a JSON array or a JSON Lines file (1-based positions).

    For JSON Lines the position is the line number; blank lines are skipped.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TranslationDataError(f"cannot read {p}: {e}") from e
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise TranslationDataError(f"{p} is not valid JSON: {e}") from e
        yield from enumerate(values, start=1)
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise MalformedRecordError(str(p), n, f"not valid JSON ({e.msg})") from e


def _strings(path: Path, n: int, value: Any, keys: Sequence[str], nonempty: Sequence[str]) -> list[str]:
    if not isinstance(value, dict):
        raise MalformedRecordError(str(path), n, f"expected a JSON object, got {type(value).__name__}")
    out = []
    for key in keys:
        if key not in value:
            raise MalformedRecordError(str(path), n, f"missing field {key!r}")
        if not isinstance(value[key], str):
            raise MalformedRecordError(
                str(path), n, f"field {key!r} must be a string, got {type(value[key]).__name__}"
            )
        if key in nonempty and not value[key].strip():
            raise MalformedRecordError(str(path), n, f"field {key!r} is empty")
        out.append(value[key])
    return out


def load_metaphortrans(path: str | Path) -> list[MetaphorTransRecord]:
    """MetaphorTrans records from a JSON array or JSON Lines file; every field a non-empty string."""
    p = Path(path)
    keys = ("text", "trans", "thought")
    records = [MetaphorTransRecord(*_strings(p, n, v, keys, keys)) for n, v in read_json_records(p)]
    if not records:
        raise TranslationDataError(f"{p} holds no records")
    return records


def load_ragtrans(path: str | Path) -> list[RagTransRecord]:
    """RAGtrans records (train/validation lines as they are, test lines one per document)."""
    p = Path(path)
    records: list[RagTransRecord] = []
    for n, v in read_json_records(p):
        if isinstance(v, dict) and "doc" not in v and any(k.endswith("_doc") for k in v):
            src, tgt = _strings(p, n, v, ("src", "tgt"), ("src",))
            doc_keys = [k for k in v if k.endswith("_doc")]
            for key, doc in zip(doc_keys, _strings(p, n, v, doc_keys, ()), strict=True):
                lang = key[: -len("_doc")]
                if _TAG.fullmatch(f"clean_{lang}") is None:
                    raise MalformedRecordError(str(p), n, f"{key!r} does not name a language")
                records.append(RagTransRecord(src, tgt, doc, f"clean_{lang}"))
            continue
        src, tgt, doc, tag = _strings(p, n, v, ("src", "tgt", "doc", "tag"), ("src",))
        if _TAG.fullmatch(tag) is None:
            raise MalformedRecordError(str(p), n, f"tag must be clean_<lang> or noisy_<lang>, got {tag!r}")
        records.append(RagTransRecord(src, tgt, doc, tag))
    if not records:
        raise TranslationDataError(f"{p} holds no records")
    return records

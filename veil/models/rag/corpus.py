"""Documents from files, and documents cut into passages.

Files: plain text (``.txt``), Markdown (``.md``, ``.markdown``; markup stripped, one section per heading)
and JSON lines in FlashRAG's corpus format (``.jsonl``: one ``{"id": ..., "contents": "title\\ntext"}``
per line; Jin et al., arXiv:2405.13576). Directories are walked in sorted order, hidden entries skipped.
A file that cannot be read, is binary, is not UTF-8 or has an unknown extension is skipped and reported
in :attr:`CorpusLoad.skipped`; input that is wrong rather than unreadable (a malformed JSONL line, two
documents with one id, nothing to index) raises a :class:`~veil.models.rag.errors.CorpusError`.

Passages are windows of ``passage_words`` whitespace-separated words, as DPR's ``psgs_w100`` split of
Wikipedia (Karpukhin et al., arXiv:2004.04906, §4.1) that DeepRAG retrieves from (arXiv:2502.01142).
Choices the papers leave open: a window never crosses a section break; a last window shorter than
``min_tail_words`` joins the one before; sections shorter than that join the next section. Passage ids
are ``<document id>#<k>`` with ``k`` counted from 0, so they are stable for a given text and config.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from veil.models.rag.errors import CorpusError, DuplicateIdError, EmptyCorpusError, MalformedRecordError
from veil.models.rag.markup import SECTION_BREAK, strip_markdown

__all__ = [
    "ChunkConfig",
    "CorpusLoad",
    "Document",
    "Passage",
    "SkippedFile",
    "SUFFIXES",
    "check_unique_ids",
    "chunk_document",
    "chunk_documents",
    "load_corpus",
]

TEXT_SUFFIXES = (".txt",)
MARKDOWN_SUFFIXES = (".md", ".markdown")
JSONL_SUFFIXES = (".jsonl",)
SUFFIXES = TEXT_SUFFIXES + MARKDOWN_SUFFIXES + JSONL_SUFFIXES
"""File extensions :func:`load_corpus` reads; others are skipped and reported."""

_BINARY_PROBE = 8192  # bytes searched for a NUL, the usual sign of a binary file


@dataclass(frozen=True)
class Document:
    """One source document before chunking."""

    id: str
    """Unique within a collection; passages are ``<id>#<k>``."""
    text: str
    """Plain text; sections separated by :data:`~veil.models.rag.markup.SECTION_BREAK`."""
    title: str = ""
    """Shown with each passage and indexed with it (FlashRAG's ``contents`` = ``title\\ntext``)."""
    source: str = ""
    """Where it came from (a path, ``path:line`` for JSONL), for error messages."""


@dataclass(frozen=True)
class Passage:
    """A retrievable unit: a window of a document."""

    id: str
    doc_id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """What the indexes see: ``title\\ntext`` (FlashRAG's format), or the text when untitled."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class SkippedFile:
    """A file :func:`load_corpus` did not ingest, and why."""

    path: str
    reason: str


@dataclass
class CorpusLoad:
    """The result of :func:`load_corpus`."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


@dataclass(frozen=True)
class ChunkConfig:
    """How documents are cut into passages (DPR's 100-word windows, arXiv:2004.04906)."""

    passage_words: int = 100
    """Words per passage window."""
    min_tail_words: int = 25
    """A last window (or a section) shorter than this joins its neighbour instead of standing alone."""

    def __post_init__(self) -> None:
        if self.passage_words < 1:
            raise ValueError(f"passage_words must be >= 1, got {self.passage_words}")
        if not 0 <= self.min_tail_words <= self.passage_words:
            raise ValueError(
                f"min_tail_words must be in [0, passage_words={self.passage_words}], got {self.min_tail_words}"
            )


def _windows(words: list[str], cfg: ChunkConfig) -> list[list[str]]:
    # n=100, tail 25: 230 words -> [0:100] [100:200] [200:230]; 210 words -> [0:100] [100:210]
    out = [words[i : i + cfg.passage_words] for i in range(0, len(words), cfg.passage_words)]
    if len(out) > 1 and len(out[-1]) < cfg.min_tail_words:
        tail = out.pop()
        out[-1] = out[-1] + tail
    return out


def chunk_document(doc: Document, cfg: ChunkConfig | None = None) -> list[Passage]:
    """Cut one document into passages ``<doc.id>#0``, ``#1``, ... (none when it has no words)."""
    cfg = cfg or ChunkConfig()
    units: list[list[str]] = []
    pending: list[str] = []
    for section in doc.text.split(SECTION_BREAK):
        pending += section.split()
        if len(pending) >= cfg.min_tail_words:
            units.append(pending)
            pending = []
    if pending:  # a short last section joins the one before
        if units:
            units[-1] = units[-1] + pending
        else:
            units.append(pending)
    windows = [window for unit in units for window in _windows(unit, cfg)]
    return [
        Passage(id=f"{doc.id}#{k}", doc_id=doc.id, title=doc.title, text=" ".join(window))
        for k, window in enumerate(windows)
    ]


def chunk_documents(documents: Iterable[Document], cfg: ChunkConfig | None = None) -> list[Passage]:
    """Passages of every document, in order; raises :class:`EmptyCorpusError` when there are none."""
    documents = list(documents)
    passages = [p for doc in documents for p in chunk_document(doc, cfg)]
    if not passages:
        raise EmptyCorpusError(f"no passage to index: {len(documents)} document(s) without any words")
    return passages


def check_unique_ids(documents: Sequence[Document], existing: Iterable[str] = ()) -> None:
    """Raise :class:`DuplicateIdError` if two documents, or a document and ``existing``, share an id."""
    seen: dict[str, str] = dict.fromkeys(existing, "the collection")
    for doc in documents:
        if doc.id in seen:
            raise DuplicateIdError(
                f"duplicate document id {doc.id!r}: {doc.source or 'a document'} and {seen[doc.id]}"
            )
        seen[doc.id] = doc.source or "another document"


def _not_regular(path: Path) -> str:
    """Why ``path`` cannot be read as a file (a FIFO would block, a broken link fails), or ``""``."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return "" if stat.S_ISREG(mode) else "not a regular file"


def _read_text(path: Path) -> tuple[str | None, str]:
    """The file's text, or ``None`` and why it is skipped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    nul = data.find(b"\0", 0, _BINARY_PROBE)
    if nul >= 0:
        return None, f"binary (NUL byte at offset {nul})"
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"


def _jsonl_documents(path: Path, label: str) -> tuple[list[Document], str]:
    try:
        with path.open("rb") as f:
            if b"\0" in f.read(_BINARY_PROBE):
                return [], "binary (NUL byte)"
            f.seek(0)
            docs = []
            for number, raw in enumerate(f, start=1):
                docs.extend(_jsonl_record(raw, label, number))
    except OSError as exc:
        return [], f"unreadable: {exc.strerror or exc}"
    return docs, ""


def _jsonl_record(raw: bytes, label: str, number: int) -> list[Document]:
    try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
    except UnicodeDecodeError as exc:
        raise MalformedRecordError(label, number, f"not UTF-8 (offset {exc.start})") from None
    if not line:
        return []
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MalformedRecordError(label, number, f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise MalformedRecordError(label, number, f"expected a JSON object, got {type(record).__name__}")
    doc_id, contents = record.get("id"), record.get("contents")
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or str(doc_id) == "":
        raise MalformedRecordError(
            label, number, f'"id" must be a non-empty string or integer, got {doc_id!r}'
        )
    if not isinstance(contents, str):
        raise MalformedRecordError(
            label, number, f'"contents" must be a string, got {type(contents).__name__}'
        )
    title, sep, text = contents.partition("\n")
    if not sep:  # no title line
        title, text = "", contents
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':  # FlashRAG's Wikipedia dumps quote titles
        title = title[1:-1]
    return [Document(id=str(doc_id), text=text, title=title, source=f"{label}:{number}")]


def _file_documents(path: Path, doc_id: str) -> tuple[list[Document], str]:
    suffix = path.suffix.lower()
    label = str(path)
    if suffix in SUFFIXES and (reason := _not_regular(path)):
        return [], reason
    if suffix in JSONL_SUFFIXES:
        return _jsonl_documents(path, label)
    if suffix not in TEXT_SUFFIXES + MARKDOWN_SUFFIXES:
        return [], f"unsupported file type {suffix or '(none)'!r}; reads {', '.join(SUFFIXES)}"
    text, reason = _read_text(path)
    if text is None:
        return [], reason
    title = ""
    if suffix in MARKDOWN_SUFFIXES:
        text, title = strip_markdown(text)
    if not text.split():
        return [], "no text"
    return [Document(id=doc_id, text=text, title=title, source=label)], ""


def _walk(root: Path, skipped: list[SkippedFile]) -> list[Path]:
    def report(exc: OSError) -> None:
        skipped.append(SkippedFile(str(exc.filename), f"unreadable directory: {exc.strerror or exc}"))

    files = []
    for here, dirs, names in os.walk(root, onerror=report):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(here) / n for n in sorted(names) if not n.startswith(".")]
    return files


def load_corpus(paths: str | Path | Sequence[str | Path]) -> CorpusLoad:
    """Read documents from files and directories.

    A text or Markdown file's document id is its path relative to the directory given (the path as
    given when the file itself is), e.g. ``notes/a.md``; a JSONL record's id is its ``id`` field.

    Raises
    ------
    CorpusError
        A path does not exist (:class:`~veil.models.rag.errors.CorpusError`), a JSONL line is malformed
        (:class:`MalformedRecordError`, with the line number), two documents share an id
        (:class:`DuplicateIdError`) or nothing readable was found (:class:`EmptyCorpusError`).
    """
    roots = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not roots:
        raise EmptyCorpusError("no input path given")
    result = CorpusLoad()
    for root in roots:
        if root.is_dir():
            files = [(f, f.relative_to(root).as_posix()) for f in _walk(root, result.skipped)]
        elif root.exists() or root.is_symlink():
            files = [(root, root.as_posix())]
        else:
            raise CorpusError(f"no such file or directory: {root}")
        for path, doc_id in files:
            docs, reason = _file_documents(path, doc_id)
            if reason:
                result.skipped.append(SkippedFile(str(path), reason))
            result.documents += docs
    if not result.documents:
        raise EmptyCorpusError(
            f"no document found in {', '.join(map(str, roots))} ({len(result.skipped)} file(s) skipped"
            + (f", first: {result.skipped[0].path}: {result.skipped[0].reason})" if result.skipped else ")")
        )
    check_unique_ids(result.documents)
    return result

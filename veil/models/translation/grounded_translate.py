"""Document-grounded translation (RAGtrans, arXiv:2412.04342): judge each document's relevance, drop the
irrelevant ones, and translate with the rest placed before the source.

RAGtrans conditions translation on a document that may be relevant (``clean``) or not (``noisy``) and
trains the model to be robust to the noisy kind; how a served model should treat a document it was given
is left open. Veil judges every document first and keeps only those judged relevant, so an irrelevant
document cannot change the translation: with every document dropped, the prompt is exactly the one of
translation without documents. The judge is a field of :class:`GroundedConfig`:

* ``"names"`` (default; offline, no model call): a document is relevant when it names something the
  source names. A *name* is a maximal run of capitalised Latin words (function words such as ``The`` or
  ``It`` break a run and are never names); in the source, a lower-case word that is not a function word
  also counts, as a name may be written in lower case (``a piece of tavrenite``). The document is relevant
  when at least ``min_name_matches`` of its names equal one of the source's, compared whole and
  case-insensitively: a document about the ``Tavreno Company`` does not match a source about the
  ``Tavreno River``, nor one about ``Tavreno`` the town. A Chinese document is judged by the Latin
  names it carries (RAGtrans's and the generated set's Chinese documents give the English name in
  parentheses); one with none is judged irrelevant, which is where ``"lm"`` is needed.
* ``"lm"``: the translating model is asked :func:`relevance_prompt` and the document is relevant when
  its reply starts with ``yes``. The prompt is the one of the relevance-discrimination objective of the
  multi-task training (:mod:`~veil.models.translation.multitask`), so a model trained on it is its own
  judge.
* ``"all"``: keep every document (RAGtrans's own setting, where the model has to ignore noise itself).

The prompt lists the kept documents, numbered, before the source (the order RAGtrans uses), and asks for
the translation only; the first line of the reply is the translation
(:func:`~veil.models.translation.long_thought.clean_translation`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from veil.models.rag.lm import TextLM
from veil.models.translation.errors import TranslationError
from veil.models.translation.languages import LANGUAGE_NAMES, language_name
from veil.models.translation.long_thought import clean_translation

__all__ = [
    "RELEVANCE_METHODS",
    "GroundedConfig",
    "GroundedTranslation",
    "GroundedTranslator",
    "document_names",
    "name_matches",
    "relevance_prompt",
    "source_names",
    "translation_prompt",
]

RelevanceMethod = Literal["names", "lm", "all"]
RELEVANCE_METHODS: tuple[str, ...] = get_args(RelevanceMethod)

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
# words that start sentences or label renderings, never names
_FUNCTION_WORD_LIST = """a an the of in on at to by for from with and or but not no nor as is are was were be been being it
    its this that these those there here he she we they i you me him her us them my your his our their
    who whom which what when where why how many much some any all each every few more most other such
    one two three first last new old also very so than then too can could may might must shall should
    will would do does did has have had if because while after before about into over under up down
    out only just"""
_FUNCTION_WORDS = frozenset(_FUNCTION_WORD_LIST.split()) | {name.lower() for name in LANGUAGE_NAMES.values()}


@dataclass(frozen=True)
class GroundedConfig:
    """Document-grounded translation's settings (RAGtrans, arXiv:2412.04342, publishes none).

    Attributes
    ----------
    source_language, target_language: BCP 47 codes.
    relevance: how documents are judged, one of :data:`RELEVANCE_METHODS` (see the module docstring).
    min_name_matches: for ``"names"``, how many of a document's names the source must name.
    max_documents: the most documents one request may carry.
    max_document_chars: the longest document accepted, in characters.
    translation_tokens, judgement_tokens: generation budgets.
    judge_prefix: how the ``"lm"`` judge's answer starts (the assistant turn is continued after it):
        ``"Answer:"`` steers an instruct model to a one-word reply; a model trained on the multi-task
        relevance examples (whose answers are a bare ``yes`` or ``no``) takes ``""``.
    """

    source_language: str = "en"
    target_language: str = "zh"
    relevance: str = "names"
    min_name_matches: int = 1
    max_documents: int = 8
    max_document_chars: int = 4000
    translation_tokens: int = 128
    judgement_tokens: int = 3
    judge_prefix: str = "Answer:"

    def __post_init__(self) -> None:
        language_name(self.source_language), language_name(self.target_language)  # raise if unsupported
        if self.relevance not in RELEVANCE_METHODS:
            raise ValueError(f"relevance must be one of {RELEVANCE_METHODS}, got {self.relevance!r}")
        if self.min_name_matches < 1:
            raise ValueError(f"min_name_matches must be >= 1, got {self.min_name_matches}")
        if self.max_documents < 1 or self.max_document_chars < 1:
            raise ValueError(
                f"max_documents and max_document_chars must be >= 1, got {self.max_documents}, "
                f"{self.max_document_chars}"
            )
        if self.translation_tokens < 1 or self.judgement_tokens < 1:
            raise ValueError(
                f"token budgets must be >= 1, got {self.translation_tokens}, {self.judgement_tokens}"
            )


@dataclass(frozen=True)
class GroundedTranslation:
    """One source's translation and which of its documents were used."""

    translation: str
    documents_used: tuple[int, ...]
    """Indices (0-based, into the documents given) of the documents judged relevant, in order."""
    relevance: tuple[float, ...] = field(default=())
    """Each document's relevance score: matched names (``"names"``), 1/0 (``"lm"``, ``"all"``)."""


def _runs(text: str, keep_lower: bool) -> list[str]:
    """Names of ``text``: maximal runs of capitalised non-function words joined by single spaces, and,
    when ``keep_lower``, lower-case non-function words on their own."""
    names: list[str] = []
    run: list[str] = []
    last_end = -1
    for m in _WORD.finditer(text):
        word = m.group(0)
        contiguous = last_end >= 0 and text[last_end : m.start()] == " "
        last_end = m.end()
        is_function = word.lower() in _FUNCTION_WORDS
        if word[0].isupper() and not is_function:
            if not (run and contiguous):
                if run:
                    names.append(" ".join(run))
                run = []
            run.append(word)
            continue
        if run:
            names.append(" ".join(run))
            run = []
        if keep_lower and not is_function and len(word) > 2:
            names.append(word)
    if run:
        names.append(" ".join(run))
    return names


def source_names(text: str) -> set[str]:
    """The names a source mentions, lower-cased (see the module docstring).

    >>> sorted(source_names("The Tavreno River floods every spring."))
    ['floods', 'spring', 'tavreno river']
    """
    return {n.lower() for n in _runs(text, keep_lower=True)}


def document_names(text: str) -> set[str]:
    """The capitalised names a document mentions, lower-cased.

    >>> sorted(document_names("Tavreno River (Chinese: 索卡河) is a river. It is long."))
    ['tavreno river']
    >>> sorted(document_names("【索卡河】索卡河（Tavreno River）是一条河流。"))
    ['tavreno river']
    """
    return {n.lower() for n in _runs(text, keep_lower=False)}


def name_matches(source: str, document: str) -> int:
    """How many of ``document``'s names ``source`` names, each compared whole.

    >>> name_matches("We spent the summer in Tavreno.", "Tavreno River (Chinese: 索卡河) is a river.")
    0
    >>> name_matches("A ring set with tavrenite.", "Tavrenite (Chinese: 索卡石) is a mineral.")
    1
    """
    return len(document_names(document) & source_names(source))


def relevance_prompt(text: str, document: str, source_language: str) -> str:
    """The question the ``"lm"`` judge answers with ``yes`` or ``no`` (and the multi-task training's
    relevance-discrimination prompt)."""
    return (
        f"Document: {document}\n\n{language_name(source_language)} text: {text}\n"
        "Is the document about something the text mentions? Answer yes or no."
    )


def translation_prompt(
    text: str, documents: Sequence[str], source_language: str, target_language: str
) -> str:
    """The translation prompt, the documents first; with no documents, plain translation's prompt."""
    src, tgt = language_name(source_language), language_name(target_language)
    ask = f"Translate the following text from {src} to {tgt}.\nText: {text}\nReply with the {tgt} translation only."
    if not documents:
        return ask
    listed = "\n".join(f"[{i}] {' '.join(d.split())}" for i, d in enumerate(documents, start=1))
    return f"Documents:\n{listed}\n\nThe documents may tell how to render names in the text. {ask}"


@dataclass
class GroundedTranslator:
    """Translate with documents over a :class:`~veil.models.rag.lm.TextLM`.

    Parameters
    ----------
    lm: the translating model (and the ``"lm"`` judge).
    config: the settings.
    """

    lm: TextLM
    config: GroundedConfig = field(default_factory=GroundedConfig)

    def check(self, text: str, documents: Sequence[str]) -> None:
        """Raise :class:`~veil.models.translation.errors.TranslationError` for input the method refuses."""
        if not isinstance(text, str) or not text.strip():
            raise TranslationError("the text to translate must be non-empty")
        if isinstance(documents, str):
            raise TranslationError("documents must be a list of strings, not one string")
        if len(documents) > self.config.max_documents:
            raise TranslationError(
                f"at most {self.config.max_documents} documents per text, got {len(documents)}"
            )
        for i, d in enumerate(documents):
            if not isinstance(d, str) or not d.strip():
                raise TranslationError(f"document {i} must be non-empty text")
            if len(d) > self.config.max_document_chars:
                raise TranslationError(
                    f"document {i} has {len(d)} characters; at most {self.config.max_document_chars}"
                )

    def judge(self, texts: Sequence[str], documents: Sequence[Sequence[str]]) -> list[tuple[float, ...]]:
        """Each document's relevance score (see :class:`GroundedTranslation`), batched over all texts."""
        cfg = self.config
        if cfg.relevance == "names":
            return [
                tuple(float(name_matches(t, d)) for d in docs)
                for t, docs in zip(texts, documents, strict=True)
            ]
        if cfg.relevance == "all":
            return [tuple(1.0 for _ in docs) for docs in documents]
        flat = [(t, d) for t, docs in zip(texts, documents, strict=True) for d in docs]
        prompts = [
            self.lm.chat_prompt(relevance_prompt(t, d, cfg.source_language), cfg.judge_prefix)
            for t, d in flat
        ]
        replies = (
            self.lm.complete(prompts, stop=["\n"], max_new_tokens=cfg.judgement_tokens) if prompts else []
        )
        verdicts = iter(float(r.text.strip().lower().startswith("yes")) for r in replies)
        return [tuple(next(verdicts) for _ in docs) for docs in documents]

    def threshold(self) -> float:
        """The relevance score from which a document is kept."""
        return float(self.config.min_name_matches) if self.config.relevance == "names" else 1.0

    def translate(
        self, texts: Sequence[str], documents: Sequence[Sequence[str]] | None = None
    ) -> list[GroundedTranslation]:
        """One translation per text; ``documents[i]`` are text ``i``'s documents (none when ``None``)."""
        if isinstance(texts, str):
            raise TranslationError("texts must be a sequence of strings, not one string")
        if documents is not None and any(isinstance(d, str) for d in documents):
            raise TranslationError("each text's documents must be a list of strings, not one string")
        docs = [list(d) for d in documents] if documents is not None else [[] for _ in texts]
        if len(docs) != len(texts):
            raise TranslationError(f"need one document list per text, got {len(docs)} for {len(texts)}")
        for t, d in zip(texts, docs, strict=True):
            self.check(t, d)
        scores = self.judge(texts, docs)
        used = [tuple(i for i, s in enumerate(sc) if s >= self.threshold()) for sc in scores]
        cfg = self.config
        prompts = [
            self.lm.chat_prompt(
                translation_prompt(t, [d[i] for i in u], cfg.source_language, cfg.target_language)
            )
            for t, d, u in zip(texts, docs, used, strict=True)
        ]
        replies = self.lm.complete(prompts, stop=["\n\n"], max_new_tokens=cfg.translation_tokens)
        return [
            GroundedTranslation(clean_translation(r.text), u, sc)
            for r, u, sc in zip(replies, used, scores, strict=True)
        ]

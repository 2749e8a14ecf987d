"""Long-form writing tasks: "Write about T in about L words" over the shipped corpus, and LongBench-Write.

LongDPO (arXiv:2502.02095, §4) evaluates on LongBench-Write (arXiv:2408.07055), whose records are
``{prompt, type, length}``; :func:`load_longbench_write` reads them. Offline, :func:`topics_from_documents`
turns the shipped Wikipedia sample (:mod:`veil.models.rag.wikipedia`) into topics, each with its
article's sentences, its keywords and a few generated ``(subject, attribute, value)`` facts, and
:func:`make_prompts` asks for each topic at a required length drawn from ``lengths`` in turn, so every
length bucket holds about as many prompts.

Choices the papers leave open (all arguments): keywords are the article's words of 4+ letters ranked by
tf-idf against the other articles; facts are drawn from :data:`ATTRIBUTES` with seeded values and are
stated as ``"The <attribute> of <subject> is <value>."``, the form :func:`veil.models.longform.facts.extract_facts`
reads back.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.models.longform.facts import Fact

__all__ = [
    "ATTRIBUTES",
    "LongformPrompt",
    "Topic",
    "load_longbench_write",
    "make_prompts",
    "topics_from_documents",
    "wikipedia_topics",
]

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "origin": ("Vellmark", "Ostrava", "Talmoor", "Quenby", "Harrowgate", "Lindqvist", "Marrowby", "Seaholm"),
    "colour": ("amber", "crimson", "teal", "violet", "ochre", "silver", "indigo", "olive"),
    "year": tuple(str(y) for y in range(1820, 1990, 7)),
    "patron": ("Ada Brun", "Felix Orme", "Iris Vale", "Otto Kemp", "Nina Roth", "Paul Dorn", "Vera Lind"),
}
"""The generated facts' attributes and their value pools."""

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Topic:
    """What a prompt is about, with the material a writer (and the rule-based judge) draws on."""

    name: str
    sentences: tuple[str, ...]
    keywords: tuple[str, ...]
    facts: tuple[Fact, ...] = ()


@dataclass(frozen=True)
class LongformPrompt:
    """One writing task.

    Attributes
    ----------
    prompt: the user turn.
    target_words: the required length ``L`` in words (LongBench-Write's ``length``).
    type: LongBench-Write's ``type`` (``"generated"`` for :func:`make_prompts`).
    topic: the topic, for generated prompts (``None`` for loaded ones).
    """

    prompt: str
    target_words: int
    type: str = "generated"
    topic: Topic | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("a long-form prompt must not be empty")
        if self.target_words < 1:
            raise ValueError(f"the required length must be >= 1 word, got {self.target_words}")

    @property
    def keywords(self) -> tuple[str, ...]:
        return self.topic.keywords if self.topic else ()


def _sentences(text: str, min_words: int, max_words: int) -> list[str]:
    out = []
    for para in text.split("\n"):
        for s in _SENTENCE.split(para.strip()):
            n = len(s.split())
            if min_words <= n <= max_words and s[-1:] == "." and s[:1].isupper() and "(" not in s:
                out.append(s)
    return out


def topics_from_documents(
    documents: Iterable[tuple[str, str]],
    n_keywords: int = 5,
    n_facts: int = 2,
    min_sentences: int = 6,
    max_sentences: int | None = None,
    sentence_words: tuple[int, int] = (6, 24),
    seed: int = 0,
) -> list[Topic]:
    """Topics from ``(title, text)`` pairs: those with at least ``min_sentences`` usable sentences.

    ``max_sentences`` keeps each topic's first sentences only (a small model learns fewer by heart).
    Keywords: the title's article words of 4+ letters with the highest tf-idf, title words excluded.
    Facts: ``n_facts`` attributes of :data:`ATTRIBUTES` per topic, values drawn with ``seed``.
    """
    if n_facts > len(ATTRIBUTES):
        raise ValueError(f"n_facts must be <= {len(ATTRIBUTES)}, got {n_facts}")
    docs = [(t, _sentences(x, *sentence_words)) for t, x in documents]
    docs = [(t, s) for t, s in docs if len(s) >= min_sentences and "(" not in t and not t.startswith("List")]
    words = [Counter(w.lower() for s in ss for w in re.findall(r"[A-Za-z]{4,}", s)) for _, ss in docs]
    df = Counter(w for c in words for w in c)
    rng = random.Random(seed)
    topics = []
    for (title, sents), counts in zip(docs, words, strict=True):
        own = {w.lower() for w in title.split()}
        ranked = sorted(
            (w for w in counts if w not in own),
            key=lambda w: (-counts[w] * math.log(len(docs) / df[w]), w),
        )
        attrs = rng.sample(sorted(ATTRIBUTES), n_facts)
        facts = tuple(Fact(title, a, rng.choice(ATTRIBUTES[a])) for a in attrs)
        kept = tuple(sents[:max_sentences] if max_sentences else sents)
        topics.append(Topic(title, kept, tuple(ranked[:n_keywords]), facts))
    return topics


def wikipedia_topics(limit: int | None = None, seed: int = 0, **kwargs: Any) -> list[Topic]:
    """:func:`topics_from_documents` over the shipped Wikipedia sample (gensim's test data)."""
    from veil.models.rag.wikipedia import wikipedia_sample_documents

    docs = [(d.title, d.text) for d in wikipedia_sample_documents(limit)]
    return topics_from_documents(docs, seed=seed, **kwargs)


def make_prompts(
    topics: Sequence[Topic], lengths: Sequence[int] = (20, 40, 80), seed: int = 0, per_topic: int = 1
) -> list[LongformPrompt]:
    """``per_topic`` prompts per topic, "Write about T in about L words.", ``L`` cycling through
    ``lengths`` in a seeded order so every length gets about ``len(topics) * per_topic / len(lengths)``
    and one topic's prompts have different lengths (while ``per_topic <= len(lengths)``)."""
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be non-empty and >= 1, got {lengths}")
    rng = random.Random(seed)
    first = [i % len(lengths) for i in range(len(topics))]
    rng.shuffle(first)
    out = []
    for k in range(per_topic):  # round k moves every topic k lengths on: a topic's prompts differ in L
        for topic, i in zip(topics, first, strict=True):
            n = lengths[(i + k) % len(lengths)]
            out.append(LongformPrompt(f"Write about {topic.name} in about {n} words.", n, topic=topic))
    return out


def load_longbench_write(path: str | Path) -> list[LongformPrompt]:
    """LongBench-Write's JSON-lines records ``{"prompt": str, "type": str, "length": int}`` (other keys
    are kept in ``extra``); a record without them, or with a length < 1, raises ``ValueError`` naming
    its line."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise ValueError(f"{path}:{number}: a record needs a string 'prompt'")
            length = rec.get("length")
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise ValueError(f"{path}:{number}: 'length' must be an integer >= 1, got {length!r}")
            try:
                out.append(
                    LongformPrompt(
                        rec["prompt"], length, str(rec.get("type", "")),
                        extra={k: v for k, v in rec.items() if k not in ("prompt", "type", "length")},
                    )
                )  # fmt: skip
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    return out

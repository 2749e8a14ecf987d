"""LongDPO's memory pool: facts of the accepted steps veto a contradicting candidate
(arXiv:2502.02095, §3.2).

After each step is accepted the judge extracts its facts and the first ``facts_per_step`` join the pool.
The next step's candidates are tried in value order: each is cut into chunks, the chunks are embedded
(MiniLM here, an embedding API in the paper), and for every fact-chunk pair with cosine above
``threshold`` (paper: 0.8) the judge is asked whether the chunk contradicts the fact. The first
candidate with no contradiction is taken; if all contradict, the first (best-valued) one.

Our choices: a fact is embedded as its sentence (:func:`~veil.models.longform.facts.fact_sentence`);
chunks are ``chunk_words`` words (the paper's 128 tokens are about 96 words) cut at sentence ends.

``within_step`` (our extension; off by default, as the paper has it): the paper checks a candidate
against the facts of *earlier* steps only, so a step that contradicts itself ("The colour of X is teal.
... The colour of X is violet.") passes. With it on, the candidate's own chunks are treated as if each
had been accepted before the next: the facts the judge extracts from chunk ``i`` are checked, by the
same cosine gate and the same judge question, against chunks ``i, i+1, ...`` of the candidate. This is
the pool's own test applied at chunk granularity; it needs one fact extraction per chunk and nothing
the paper's judge does not already answer.

The threshold is a property of the embedding model: the paper's 0.8 is for an embedding API whose
cosines between related sentences sit high; MiniLM puts two sentences giving one attribute of one
subject different values as low as 0.61 (patrons), 0.66 (origins) and 0.69 (colours), so at 0.8 most
such contradictions never reach the judge (two years stay above 0.8).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veil.models.longform.facts import Fact, fact_sentence
from veil.models.longform.judge import Judge

__all__ = ["MemoryConfig", "MemoryPool", "chunks"]


@dataclass(frozen=True)
class MemoryConfig:
    """threshold: the fact-chunk cosine above which the judge is asked (paper: 0.8).
    facts_per_step: facts of each accepted step kept (paper: 2).
    chunk_words: the most words per chunk (about the paper's 128 tokens).
    within_step: also check the candidate's own chunks against the facts of its earlier chunks (and
        their own); off in the paper (module docstring)."""

    threshold: float = 0.8
    facts_per_step: int = 2
    chunk_words: int = 96
    within_step: bool = False

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine in [-1, 1], got {self.threshold}")
        if self.facts_per_step < 1 or self.chunk_words < 1:
            raise ValueError("facts_per_step and chunk_words must be >= 1")


def chunks(text: str, max_words: int) -> list[str]:
    """Sentences packed greedily into chunks of at most ``max_words`` words (a longer sentence is one).

    >>> chunks("A b c. D e. F g h i.", 4)
    ['A b c.', 'D e.', 'F g h i.']
    """
    out: list[str] = []
    for s in (s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s.strip()):
        if out and len(out[-1].split()) + len(s.split()) <= max_words:
            out[-1] += " " + s
        else:
            out.append(s)
    return out


class MemoryPool:
    """Facts of one response's accepted steps, and the veto (see the module docstring).

    Parameters
    ----------
    judge: extracts facts and checks contradictions.
    encoder: anything with ``encode(texts) -> (n, dim)`` unit-norm vectors (MiniLM).
    """

    def __init__(self, judge: Judge, encoder: object, config: MemoryConfig | None = None) -> None:
        self.judge, self.encoder, self.config = judge, encoder, config or MemoryConfig()
        self.facts: list[Fact] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self.checks = 0
        self.vetoes = 0
        self.seconds = 0.0

    def add(self, step: str) -> None:
        start = time.perf_counter()
        new = self.judge.facts(step)[: self.config.facts_per_step]
        if new:
            vectors = self.encoder.encode([fact_sentence(f) for f in new])  # (k, dim)
            self._vectors = vectors if not self.facts else np.vstack([self._vectors, vectors])
            self.facts += new
        self.seconds += time.perf_counter() - start

    def contradicted(self, text: str) -> bool:
        """Whether any chunk of ``text`` close to a stored fact contradicts it, by the judge (and, with
        ``within_step``, to a fact of the same or an earlier chunk of ``text``)."""
        if not text.strip() or not (self.facts or self.config.within_step):
            return False
        parts = chunks(text, self.config.chunk_words)
        vectors = self.encoder.encode(parts)  # (chunks, dim)
        if self.facts:
            sims = vectors @ self._vectors.T  # (chunks, facts)
            for i, j in zip(*np.nonzero(sims > self.config.threshold), strict=True):
                self.checks += 1
                if self.judge.contradicts(self.facts[j], parts[i]):
                    return True
        return self.config.within_step and self._self_contradicted(parts, vectors)

    def _self_contradicted(self, parts: Sequence[str], vectors: np.ndarray) -> bool:
        """A fact of chunk ``i`` contradicted by chunk ``j >= i`` (cosine-gated, judge-checked)."""
        own = [(i, f) for i, part in enumerate(parts) for f in self.judge.facts(part)]
        if not own:
            return False
        sims = self.encoder.encode([fact_sentence(f) for _, f in own]) @ vectors.T  # (facts, chunks)
        for k, j in zip(*np.nonzero(sims > self.config.threshold), strict=True):
            i, fact = own[k]
            if j >= i:
                self.checks += 1
                if self.judge.contradicts(fact, parts[j]):
                    return True
        return False

    def choose(self, ranked: Sequence[str]) -> int:
        """The index of the first candidate in ``ranked`` (best first) that contradicts no stored fact;
        0 if every one does."""
        start = time.perf_counter()
        try:
            for k, text in enumerate(ranked):
                if not self.contradicted(text):
                    self.vetoes += k
                    return k
            return 0
        finally:
            self.seconds += time.perf_counter() - start

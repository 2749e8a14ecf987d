"""A literary simile set mined from the English prose that ships with gensim's test data.

DRT-o1 (arXiv:2412.17498, §3.1) mines Project Gutenberg books for sentences with similes or metaphors
whose literal translation would confuse a native reader, using Qwen2.5-72B-Instruct as the judge. No such
books or judge are available offline, so this set is built from what ships (gensim 4.4's test data):

* ``wikipedia``: the 106 English Wikipedia articles of the sample dump (stripped as in
  :func:`veil.models.rag.wikipedia.wikipedia_sample_documents`), cut into sentences;
* ``lee``: the Lee news corpus (``lee_background.cor``, 300 Australian news articles, one per line);
* ``reviews``: the Pang & Lee movie-review sentences (``pang_lee_polarity.cor``, Windows-1252, one lower-cased,
  space-tokenised sentence per line after a ``__label__`` tag), detokenised.

A sentence is kept when it has 8-40 words, no wiki markup left (``|``, ``=``, ``{``, ``}``), and a
simile cue (:func:`simile_cue`, rules instead of the paper's LLM judge):

* ``like a`` / ``like an``, unless the word before is a modal, a pronoun or ``to`` (``would like a``,
  ``I like a`` are the verb);
* ``as if`` / ``as though``;
* ``as <word> as a|an|the`` unless ``<word>`` makes a quantity or time comparison (``as well as``,
  ``as soon as``, ``as many as``, ...).

The rules cannot tell a figurative comparison from a literal one (``looks like a cupboard`` passes), so
this is a superset of the paper's filter; the set has no reference translations (the DRT loop's evaluator
scores rounds without one). Sentences are deduplicated and kept in source order, each with a stable id
``<source>-<k>``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from veil.models.translation.errors import AssetNotInstalledError

__all__ = [
    "SIMILE_SOURCES",
    "SimileSentence",
    "detokenize_review",
    "find_similes",
    "simile_cue",
    "simile_set",
    "split_sentences",
]

SimileSource = Literal["wikipedia", "lee", "reviews"]
SIMILE_SOURCES: tuple[str, ...] = get_args(SimileSource)
MIN_WORDS, MAX_WORDS = 8, 40

_NOT_SIMILE_BEFORE_LIKE = {
    "would", "could", "should", "might", "may", "will", "i", "we", "you", "they", "to", "'d",
    "don't", "didn't", "doesn't", "not", "really", "also", "who",
}  # fmt: skip
_QUANTITY_AS = {
    "well", "soon", "long", "much", "many", "far", "early", "late", "recently", "high", "low", "few",
    "little", "often", "such", "large", "small", "great", "good", "quickly",
}  # fmt: skip
_LIKE = re.compile(r"\blike\s+an?\b", re.I)
_AS_IF = re.compile(r"\bas\s+(?:if|though)\b", re.I)
_AS_AS = re.compile(r"\bas\s+([a-z]+)\s+as\s+(?:an?|the)\b", re.I)
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z])")


@dataclass(frozen=True)
class SimileSentence:
    """An English sentence with a simile cue."""

    id: str
    text: str
    cue: str
    """The matched cue as it appears in ``text`` (e.g. ``"like a"``, ``"as if"``, ``"as cold as the"``)."""
    source: str
    """One of :data:`SIMILE_SOURCES`."""


def simile_cue(sentence: str) -> str | None:
    """The first simile cue in ``sentence`` (see the module docstring), or ``None``.

    >>> simile_cue("Newton draws our attention like a magnet.")
    'like a'
    >>> simile_cue("I would like a copy.") is None, simile_cue("Apples as well as the pears.") is None
    (True, True)
    """
    hits: list[tuple[int, str]] = []
    for m in _LIKE.finditer(sentence):
        before = sentence[: m.start()].split()[-1:]
        if not before or before[0].lower().strip("\"'(,") not in _NOT_SIMILE_BEFORE_LIKE:
            hits.append((m.start(), m.group(0)))
            break
    if (m := _AS_IF.search(sentence)) is not None:
        hits.append((m.start(), m.group(0)))
    for m in _AS_AS.finditer(sentence):
        if m.group(1).lower() not in _QUANTITY_AS:
            hits.append((m.start(), m.group(0)))
            break
    return min(hits)[1] if hits else None


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph: cut after ``.``, ``!`` or ``?`` (and a closing quote) before a capital."""
    out = []
    for para in text.split("\n"):
        out += [s.strip() for s in _SENTENCE_END.split(para) if s.strip()]
    return out


def detokenize_review(line: str) -> str:
    """One Pang & Lee line as prose: the label dropped, punctuation re-attached, the first letter upper.

    >>> detokenize_review("__label__neg stinks from start to finish , like a wet sack .")
    'Stinks from start to finish, like a wet sack.'
    """
    text = re.sub(r"^__label__\w+\s+", "", line.strip())
    text = re.sub(r"\s+([,.!?;:%)])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    text = re.sub(r"\s+(n't|'s|'re|'ve|'ll|'d)\b", r"\1", text)
    return text[:1].upper() + text[1:]


def find_similes(sentences: Iterable[str], source: str) -> Iterator[SimileSentence]:
    """The sentences that pass the length, markup and cue filters, deduplicated, with ids."""
    seen: set[str] = set()
    k = 0
    for s in sentences:
        words = s.split()
        if not (MIN_WORDS <= len(words) <= MAX_WORDS) or any(c in s for c in "|={}") or s in seen:
            continue
        cue = simile_cue(s)
        if cue is None:
            continue
        seen.add(s)
        k += 1
        yield SimileSentence(f"{source}-{k}", s, cue, source)


def gensim_test_data(name: str) -> Path:
    """A file of gensim's test data (the package is found, not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise AssetNotInstalledError("the simile set needs gensim's test data: pip install 'veil[cloud]'")
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / name


def _sentences(source: str) -> Iterator[str]:
    if source == "wikipedia":
        # lazy: parsing the dump takes ~10 s and gensim's import about a second
        from veil.models.rag.wikipedia import wikipedia_sample_documents

        for doc in wikipedia_sample_documents():
            yield from split_sentences(doc.text)
    elif source == "lee":
        for line in gensim_test_data("lee_background.cor").read_text(encoding="utf-8").splitlines():
            yield from split_sentences(line)
    else:
        for line in (
            gensim_test_data("pang_lee_polarity.cor")
            .read_text(encoding="cp1252", errors="replace")
            .splitlines()
        ):
            if line.strip():
                yield detokenize_review(line)


def simile_set(sources: Sequence[str] = SIMILE_SOURCES) -> list[SimileSentence]:
    """The simile sentences of ``sources`` (see the module docstring), source by source."""
    unknown = [s for s in sources if s not in SIMILE_SOURCES]
    if unknown or not sources:
        raise ValueError(f"sources must be a non-empty subset of {SIMILE_SOURCES}, got {list(sources)}")
    return [s for source in sources for s in find_similes(_sentences(source), source)]

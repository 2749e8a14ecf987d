"""RAGtrans's multi-task training data (arXiv:2412.04342): document-grounded translation plus three
auxiliary objectives built from multilingual text without extra labels, as TRL SFT examples.

The paper says there are three auxiliary objectives, built "from existing multilingual corpora without
additional labeling requirements"; their names are recalled (unverified) as cross-lingual information
completion, self-knowledge-enhanced translation and cross-lingual relevance discrimination, and their
exact definitions are not published. Veil's definitions, each built from *parallel text* (pairs of
texts that say the same thing in two languages, e.g. HSK sentences or an entity's English and Chinese
documents) and each an :data:`OBJECTIVES` name:

* ``translation`` (the main task): a RAGtrans record ``{src, tgt, doc, tag}`` in
  :func:`~veil.models.translation.grounded_translate.translation_prompt`'s form, the document first, the
  reference as the answer, whether the document is clean or noisy (so noise robustness is trained).
* ``completion`` (cross-lingual information completion): one side of a pair with a contiguous span of
  words (``mask_fraction`` of them, at least one) replaced by ``[MASK]``, the other side as the
  document; the answer is the masked words. It teaches reading a document in another language for the
  content a text lacks, which is what a document gives a translation. With ``completion_mask="term"``,
  a pair that names a term (:attr:`ParallelText.terms`: e.g. an entity's English documents name it and
  its Chinese one writes its Chinese rendering) has *the term* masked instead, every occurrence of it,
  and the answer is the term: the content a translator cannot know is exactly the term, and a random
  span hits it rarely (about one example in ten here), so the copy that grounded translation needs is
  seldom trained. Pairs without terms keep the random span.
* ``self_knowledge`` (self-knowledge-enhanced translation): the pair translated with *no* document, so the
  model keeps translating from its own knowledge when there is no document or every document was judged
  irrelevant (then grounded translation's prompt is exactly this one).
* ``relevance`` (cross-lingual relevance discrimination): one side of a pair and a document in the other
  language, answered ``yes`` when the document is the pair's other side and ``no`` when it is another
  pair's (``negatives`` per positive), in the prompt of the ``"lm"`` relevance judge
  (:func:`~veil.models.translation.grounded_translate.relevance_prompt`), so the trained model is its
  own judge. With ``record_relevance``, every translation record also gives one such example, its source
  and its document, answered by the record's tag (``clean``: ``yes``, ``noisy``: ``no``): the records
  carry the tag anyway, and the judge is then trained on the question it is asked at inference (a source
  sentence and a document in either language) and not only on pairs of parallel texts.

Which objectives are built, the mask fraction and the negatives are fields of :class:`MultiTaskConfig`.
Examples are TRL's conversational prompt-completion form ``{"prompt": [user], "completion": [assistant]}``
(:func:`~veil.models.translation.sft.tokenize_examples` renders them with the chat template).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from veil.models.translation.data import RagTransRecord
from veil.models.translation.grounded_translate import relevance_prompt, translation_prompt
from veil.models.translation.languages import is_chinese, language_name

__all__ = [
    "MASK",
    "OBJECTIVES",
    "MultiTaskConfig",
    "ParallelText",
    "completion_prompt",
    "mask_span",
    "mask_term",
    "multitask_examples",
]

Objective = Literal["translation", "completion", "self_knowledge", "relevance"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
MASK = "[MASK]"


@dataclass(frozen=True)
class ParallelText:
    """Two texts that say the same thing: ``a`` in ``a_language``, ``b`` in ``b_language`` (BCP 47)."""

    a: str
    b: str
    a_language: str
    b_language: str
    terms: tuple[str, str] | None = None
    """The same term as ``a`` and ``b`` write it (an entity's name and its rendering), if the pair
    names one; ``completion_mask="term"`` masks it."""

    def __post_init__(self) -> None:
        if self.terms is not None and not (self.terms[0] in self.a and self.terms[1] in self.b):
            raise ValueError(f"terms {self.terms!r} must occur in a and b respectively")


@dataclass(frozen=True)
class MultiTaskConfig:
    """Which training examples to build (see the module docstring; RAGtrans publishes none of this).

    Attributes
    ----------
    objectives: the objectives to build, a non-empty subset of :data:`OBJECTIVES`.
    mask_fraction: for ``completion``, the share of a text's words masked (one contiguous span), (0, 1).
    negatives: for ``relevance``, irrelevant documents per relevant one, >= 0.
    seed: seeds the masks, the negatives and the final shuffle.
    record_relevance: also one relevance example per translation record, answered by its tag.
    completion_mask: ``"span"``: ``completion`` masks a random span; ``"term"``: it masks a pair's term
        where the pair names one (a random span otherwise).
    """

    objectives: tuple[str, ...] = OBJECTIVES
    mask_fraction: float = 0.3
    negatives: int = 1
    seed: int = 0
    record_relevance: bool = False
    completion_mask: Literal["span", "term"] = "span"

    def __post_init__(self) -> None:
        if self.completion_mask not in ("span", "term"):
            raise ValueError(f"completion_mask must be 'span' or 'term', got {self.completion_mask!r}")
        if not self.objectives or not set(self.objectives) <= set(OBJECTIVES):
            raise ValueError(f"objectives must be a non-empty subset of {OBJECTIVES}, got {self.objectives}")
        if not 0.0 < self.mask_fraction < 1.0:
            raise ValueError(f"mask_fraction must be in (0, 1), got {self.mask_fraction}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")


def _units(text: str, language: str) -> list[str]:
    # Chinese has no spaces: its characters are its maskable units
    return [c for c in text if not c.isspace()] if is_chinese(language) else text.split()


def mask_span(text: str, language: str, fraction: float, rng: random.Random) -> tuple[str, str]:
    """``text`` with one contiguous span of its words (characters, for Chinese) replaced by :data:`MASK`,
    and the span.

    >>> mask_span("the river floods every spring", "en", 0.4, random.Random(0))
    ('the river floods [MASK]', 'every spring')
    """
    units = _units(text, language)
    if not units:
        raise ValueError("cannot mask an empty text")
    n = max(1, round(fraction * len(units)))
    start = rng.randint(0, len(units) - n)
    joiner = "" if is_chinese(language) else " "
    masked = units[:start] + [MASK] + units[start + n :]
    return joiner.join(masked), joiner.join(units[start : start + n])


def mask_term(text: str, term: str) -> str:
    """``text`` with every occurrence of ``term`` replaced by :data:`MASK`.

    >>> mask_term("【索卡河】索卡河（Tavreno River）是一条河流。", "索卡河")
    '【[MASK]】[MASK]（Tavreno River）是一条河流。'
    """
    if not term or term not in text:
        raise ValueError(f"term {term!r} does not occur in the text")
    return text.replace(term, MASK)


def completion_prompt(masked: str, document: str, language: str) -> str:
    """The cross-lingual information-completion prompt."""
    return (
        f"Document: {document}\n\n{language_name(language)} text: {masked}\n"
        f"Using the document, write the words that {MASK} stands for."
    )


def _example(user: str, answer: str, objective: str) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": user}],
        "completion": [{"role": "assistant", "content": answer}],
        "objective": objective,
    }


def multitask_examples(
    records: Sequence[RagTransRecord],
    parallel: Sequence[ParallelText],
    source_language: str = "en",
    target_language: str = "zh",
    config: MultiTaskConfig | None = None,
) -> list[dict[str, Any]]:
    """The multi-task examples, shuffled: ``translation`` from ``records``, the auxiliary objectives from
    ``parallel`` (each pair used in both directions). Each example carries its ``objective``."""
    cfg = config or MultiTaskConfig()
    rng = random.Random(cfg.seed)
    out: list[dict[str, Any]] = []
    if "translation" in cfg.objectives:
        out += [
            _example(
                translation_prompt(r.src, [r.doc], source_language, target_language), r.tgt, "translation"
            )
            for r in records
        ]
    if "relevance" in cfg.objectives and cfg.record_relevance:
        out += [
            _example(
                relevance_prompt(r.src, r.doc, source_language),
                "yes" if r.tag.startswith("clean") else "no",
                "relevance",
            )
            for r in records
        ]
    sides = [(p.a, p.a_language, p.b, p.b_language, p.terms and p.terms[0]) for p in parallel]
    sides += [(p.b, p.b_language, p.a, p.a_language, p.terms and p.terms[1]) for p in parallel]
    for k, (text, lang, other, other_lang, term) in enumerate(sides):
        if "completion" in cfg.objectives:
            if cfg.completion_mask == "term" and term:
                masked, span = mask_term(text, term), term
            else:
                masked, span = mask_span(text, lang, cfg.mask_fraction, rng)
            out.append(_example(completion_prompt(masked, other, lang), span, "completion"))
        if "self_knowledge" in cfg.objectives:
            out.append(_example(translation_prompt(text, [], lang, other_lang), other, "self_knowledge"))
        if "relevance" in cfg.objectives:
            out.append(_example(relevance_prompt(text, other, lang), "yes", "relevance"))
            # another pair's side in the same language as the document
            candidates = [
                s[2]
                for j, s in enumerate(sides)
                if j % len(parallel) != k % len(parallel) and s[3] == other_lang and s[2] != other
            ]
            for neg in rng.sample(candidates, min(cfg.negatives, len(candidates))):
                out.append(_example(relevance_prompt(text, neg, lang), "no", "relevance"))
    rng.shuffle(out)
    return out

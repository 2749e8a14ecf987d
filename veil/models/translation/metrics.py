"""Translation metrics: corpus BLEU and chrF through sacreBLEU, and term accuracy.

BLEU follows sacreBLEU's defaults (Post, arXiv:1804.08771) with one choice made from the target language:
Chinese is tokenised with sacreBLEU's ``zh`` tokenizer (each CJK character a token), everything else with
``13a`` (the WMT standard). Scoring Chinese with ``13a`` treats an unspaced sentence as one token and
gives meaningless numbers. chrF (Popović, 2015) is character n-gram F-score (n = 6, beta = 2) and needs no
tokenizer. RAGtrans (arXiv:2412.04342) and DRT-o1 (arXiv:2412.17498) report BLEU this way; their COMET
scores need a hub download and are not computed here.

Every score is on sacreBLEU's 0-100 scale and carries sacreBLEU's signature, so a reported number says how
it was computed. sacreBLEU is imported on first use (``pip install sacrebleu``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veil.models.translation.languages import is_chinese

__all__ = [
    "CorpusScore",
    "bleu_tokenizer",
    "corpus_bleu",
    "corpus_chrf",
    "sentence_chrf",
    "term_accuracy",
]


@dataclass(frozen=True)
class CorpusScore:
    """A corpus-level score.

    Attributes
    ----------
    score: on a 0-100 scale.
    signature: sacreBLEU's description of the metric's settings (e.g. ``nrefs:1|case:mixed|...|tok:zh``).
    """

    score: float
    signature: str


def bleu_tokenizer(target_language: str) -> str:
    """sacreBLEU's tokenizer for a BCP 47 target language: ``"zh"`` for Chinese, ``"13a"`` otherwise.

    >>> bleu_tokenizer("zh-Hans"), bleu_tokenizer("en")
    ('zh', '13a')
    """
    return "zh" if is_chinese(target_language) else "13a"


def _sacrebleu() -> Any:
    try:
        from sacrebleu import metrics
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("translation metrics need sacreBLEU: pip install sacrebleu") from e
    return metrics


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("hypotheses and references must be sequences of strings, not one string")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"need one reference per hypothesis, got {len(hypotheses)} hypotheses and {len(references)} references"
        )
    if not hypotheses:
        raise ValueError("cannot score an empty corpus")
    return [str(h) for h in hypotheses], [str(r) for r in references]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], target_language: str) -> CorpusScore:
    """Corpus BLEU of ``hypotheses`` against one reference each, tokenised for ``target_language``."""
    hyps, refs = _check(hypotheses, references)
    bleu = _sacrebleu().BLEU(tokenize=bleu_tokenizer(target_language))
    return CorpusScore(float(bleu.corpus_score(hyps, [refs]).score), str(bleu.get_signature()))


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusScore:
    """Corpus chrF (character 6-grams, beta 2) of ``hypotheses`` against one reference each."""
    hyps, refs = _check(hypotheses, references)
    chrf = _sacrebleu().CHRF()
    return CorpusScore(float(chrf.corpus_score(hyps, [refs]).score), str(chrf.get_signature()))


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """chrF of one sentence (0-100); what a reference-based evaluator can score a single round with."""
    return float(_sacrebleu().CHRF().sentence_score(hypothesis, [reference]).score)


def term_accuracy(hypotheses: Sequence[str], terms: Sequence[str]) -> float:
    """The fraction of hypotheses that contain their required term verbatim (0-1).

    The entity accuracy of document-grounded translation: ``terms[i]`` is the rendering of the entity in
    source ``i`` that only a document states.

    >>> term_accuracy(["维摩拉河很长。", "那条河很长。"], ["维摩拉河", "维摩拉河"])
    0.5
    """
    hyps, required = _check(hypotheses, terms)
    if any(not t for t in required):
        raise ValueError("every required term must be a non-empty string")
    return sum(t in h for h, t in zip(hyps, required, strict=True)) / len(hyps)

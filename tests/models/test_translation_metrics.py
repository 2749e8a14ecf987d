"""Translation metrics: corpus BLEU pinned to a naive implementation, tokenizer choice, chrF, term accuracy."""

from __future__ import annotations

import doctest
import math
import random
from collections import Counter

import pytest

from veil.models.translation import languages, metrics
from veil.models.translation.metrics import (
    bleu_tokenizer,
    corpus_bleu,
    corpus_chrf,
    sentence_chrf,
    term_accuracy,
)


def _naive_bleu(hyps: list[list[str]], refs: list[list[str]]) -> float:
    """Papineni et al.'s corpus BLEU-4 with sacreBLEU's default 'exp' smoothing of zero counts."""
    correct, total = [0] * 4, [0] * 4
    for h, r in zip(hyps, refs, strict=True):
        for n in range(1, 5):
            hn = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rn = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            correct[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            total[n - 1] += max(0, len(h) - n + 1)
    log_p, halvings = 0.0, 1
    for c, t in zip(correct, total, strict=True):
        if c == 0:
            halvings *= 2
            log_p += math.log(1.0 / (halvings * t))
        else:
            log_p += math.log(c / t)
    sys_len, ref_len = sum(map(len, hyps)), sum(map(len, refs))
    bp = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len)
    return 100.0 * bp * math.exp(log_p / 4)


@pytest.mark.parametrize("seed", range(6))
def test_chinese_bleu_counts_characters_and_matches_the_naive_formula(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "我你他她们是的了在有不人这中大"
    refs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(5, 14))) for _ in range(8)]
    hyps = [
        "".join(c if rng.random() < 0.7 else rng.choice(alphabet) for c in r)[: rng.randint(4, len(r) + 2)]
        for r in refs
    ]
    got = corpus_bleu(hyps, refs, "zh")
    assert got.score == pytest.approx(_naive_bleu([list(h) for h in hyps], [list(r) for r in refs]), abs=1e-6)
    assert "tok:zh" in got.signature


def test_english_bleu_uses_13a_and_matches_the_naive_formula() -> None:
    hyps = ["the cat sat on the mat today", "a dog ran in the park"]
    refs = ["the cat sat on the mat", "the dog ran in the big park"]
    got = corpus_bleu(hyps, refs, "en-GB")
    assert "tok:13a" in got.signature
    assert got.score == pytest.approx(
        _naive_bleu([h.split() for h in hyps], [r.split() for r in refs]), abs=1e-6
    )


def test_the_13a_tokenizer_would_score_unspaced_chinese_as_one_token() -> None:
    hyp, ref = ["他今天吃了很多米饭。"], ["他今天吃了很多面条。"]
    assert corpus_bleu(hyp, ref, "zh").score > 40.0
    assert corpus_bleu(hyp, ref, "en").score < 1.0
    assert bleu_tokenizer("zh-Hant-TW") == "zh" and bleu_tokenizer("de") == "13a"


def test_identical_corpora_score_100_and_disjoint_ones_0() -> None:
    refs = ["他食量很大。", "这个消息迅速传开了。"]
    assert corpus_bleu(refs, refs, "zh").score == pytest.approx(100.0)
    assert corpus_chrf(refs, refs).score == pytest.approx(100.0)
    assert corpus_chrf(["xyz", "qqq"], refs).score == pytest.approx(0.0)
    assert sentence_chrf(refs[0], refs[0]) == pytest.approx(100.0)


def test_corpus_chrf_of_one_sentence_is_its_sentence_chrf() -> None:
    hyp, ref = "The storm sounded like a train.", "The storm sounded like a freight train."
    assert corpus_chrf([hyp], [ref]).score == pytest.approx(sentence_chrf(hyp, ref))
    assert 50.0 < sentence_chrf(hyp, ref) < 100.0


@pytest.mark.parametrize(
    ("hyps", "refs", "match"),
    [
        (["a"], ["a", "b"], "one reference per hypothesis"),
        ([], [], "empty corpus"),
        ("abc", "abc", "not one string"),
    ],
)
def test_bad_corpora_are_refused(hyps, refs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        corpus_bleu(hyps, refs, "en")
    with pytest.raises(ValueError, match=match):
        corpus_chrf(hyps, refs)


def test_unsupported_or_malformed_languages_are_refused() -> None:
    with pytest.raises(ValueError, match="BCP 47"):
        corpus_bleu(["a"], ["a"], "")
    with pytest.raises(ValueError, match="unsupported language 'ja'"):
        languages.language_name("ja")


def test_term_accuracy_counts_verbatim_renderings() -> None:
    assert term_accuracy(["去索卡河", "去河边", "索卡河很长"], ["索卡河"] * 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="non-empty"):
        term_accuracy(["x"], [""])


@pytest.mark.parametrize("module", [metrics, languages])
def test_docstring_examples_hold(module) -> None:
    assert doctest.testmod(module).failed == 0

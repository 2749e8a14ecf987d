from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from attack_populations import neutral_texts, quirky_texts

from veil.client_sdk.distributions import GaussianDistribution
from veil.privacy_analysis.attacks import run_attacks
from veil.privacy_analysis.attacks.base import stratified_split
from veil.privacy_analysis.attacks.stylometric import StylometricConfig, char_ngram_tfidf, stylometric_attack


def _naive_tfidf(texts: list[str], lo: int, hi: int) -> list[dict[str, float]]:
    """TF-IDF over the n-gram strings themselves (no hashing), rows L2-normalised."""
    counts = [Counter(t[i : i + n] for n in range(lo, hi + 1) for i in range(len(t) - n + 1)) for t in texts]
    df = Counter(g for c in counts for g in c)
    rows = []
    for c in counts:
        row = {g: (1 + math.log(v)) * (math.log((1 + len(texts)) / (1 + df[g])) + 1) for g, v in c.items()}
        norm = math.sqrt(sum(v * v for v in row.values())) or 1.0
        rows.append({g: v / norm for g, v in row.items()})
    return rows


def test_hashed_tfidf_matches_the_unhashed_definition() -> None:
    texts = ["Hello there!!", "hello THERE", "colour é ü 😀 ok", "", "ab", "aaaa aaaa"]
    # With 2**22 buckets the few dozen n-grams do not collide, so every row holds the same values.
    cfg = StylometricConfig(n_features=2**22)
    x = char_ngram_tfidf(texts, cfg)
    assert x.shape == (6, 2**22)
    for row, naive in zip(x, _naive_tfidf(texts, 2, 4), strict=True):
        np.testing.assert_allclose(np.sort(row.data), np.sort(list(naive.values())), rtol=1e-12)
    assert x[3].nnz == 0  # the empty text


def test_tfidf_is_deterministic_and_respects_case_folding() -> None:
    texts = ["Same Text", "same text"]
    a, b = char_ngram_tfidf(texts), char_ngram_tfidf(list(texts))
    assert (a != b).nnz == 0
    assert (a[0] @ a[1].T).toarray()[0, 0] < 0.9
    folded = char_ngram_tfidf(texts, StylometricConfig(lowercase=True))
    assert (folded[0] @ folded[1].T).toarray()[0, 0] == pytest.approx(1.0)


def test_style_quirks_give_users_away_even_when_their_embeddings_are_identical() -> None:
    rng = np.random.default_rng(4)
    k, per_user = 5, 120
    dists = [GaussianDistribution(np.zeros((1, 4)), np.ones((1, 4)))] * k
    owners = np.repeat(np.arange(k), per_user)
    uploads = np.concatenate([d.sample(rng, size=per_user) for d in dists])
    texts = quirky_texts(owners, rng)
    res = {r.name: r for r in run_attacks(dists, uploads, owners, rng, texts=texts, aux_fraction=0.3)}
    style = res["stylometric"]
    slack = 4 * math.sqrt(0.2 * 0.8 / style.details["n_eval"])
    assert style.ci[0] > 0.2 + 0.15  # far above chance
    assert abs(style.details["embedding_accuracy"] - 0.2) < slack  # the embedding alone is at chance
    assert style.details["combined_accuracy"] > style.details["text_accuracy"] - 0.03
    assert style.details["text_weight"] > style.details["embedding_weight"]  # stacking trusts the text
    assert abs(res["learned_attributor"].accuracy - 0.2) < slack


def test_text_and_embedding_combine() -> None:
    # Each source alone is weak; together they are stronger than either.
    rng = np.random.default_rng(6)
    k, per_user = 4, 200
    dists = [GaussianDistribution(0.5 * rng.normal(size=(1, 2)), np.ones((1, 2))) for _ in range(k)]
    owners = np.repeat(np.arange(k), per_user)
    uploads = np.concatenate([d.sample(rng, size=per_user) for d in dists])
    texts = quirky_texts(owners, rng)
    aux = stratified_split(owners, 0.4, rng)
    res = stylometric_attack(texts, uploads, owners, k, aux, rng)
    d = res.details
    assert d["combined_accuracy"] > max(d["text_accuracy"], d["embedding_accuracy"]) + 0.03
    assert res.accuracy == d["combined_accuracy"] and res.name == "stylometric"


def test_known_embedding_posteriors_and_plain_sum() -> None:
    rng = np.random.default_rng(7)
    owners = np.repeat(np.arange(3), 30)
    uploads = rng.normal(size=(90, 2))
    texts = neutral_texts(90, rng)
    aux = stratified_split(owners, 0.3, rng)
    perfect = np.log(np.where(np.arange(3)[None, :] == owners[:, None], 0.9, 0.05))
    cfg = StylometricConfig(stack_folds=0, text_weight=0.0)
    res = stylometric_attack(texts, uploads, owners, 3, aux, rng, cfg, embedding_log_posteriors=perfect)
    assert res.accuracy == 1.0 and res.details["text_weight"] == 0.0
    with pytest.raises(ValueError, match="embedding_log_posteriors"):
        stylometric_attack(texts, uploads, owners, 3, aux, rng, embedding_log_posteriors=perfect[:10])
    with pytest.raises(ValueError, match="one text per upload"):
        stylometric_attack(texts[:5], uploads, owners, 3, aux, rng)
    with pytest.raises(ValueError, match="ngram"):
        StylometricConfig(ngram_min=3, ngram_max=2)
    with pytest.raises(ValueError, match="texts must be"):
        char_ngram_tfidf("not a list")

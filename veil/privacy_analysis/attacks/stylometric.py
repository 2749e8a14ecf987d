"""Stylometric attribution: the upload's text style combined with its embedding.

The cloud stores the text of every request next to its embedding. People write with habits (spelling,
punctuation, favourite words, casing) that survive any embedding privacy: character n-gram profiles
identify authors from short texts (Song & Raghunathan, CCS 2020, do authorship inference from a handful
of labelled samples). The attacker of :mod:`~veil.privacy_analysis.attacks.learned` (labelled auxiliary
uploads) here also fits a text model and combines the two.

Features: character n-grams (default 2- to 4-grams, on Unicode code points) hashed into a fixed number of
buckets, sublinear term frequency times smoothed inverse document frequency (computed on all texts, no
labels), rows L2-normalised. Model: multinomial logistic regression on the auxiliary part. Combination:
text and embedding are conditionally independent given the user (the embedding is a fresh sample of the
user's distribution), so under a uniform prior the joint log posterior is the sum of the two log
posteriors up to a constant. Both models are fitted on few labelled uploads and so are miscalibrated
(an embedding model fitted to noise can be confidently wrong), so the sum is weighted,
``a * log p(k | text) + b * log p(k | embedding)``, with ``a, b >= 0`` fitted by maximum likelihood on
out-of-fold predictions over the auxiliary part (stacking, Wolpert 1992).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.sparse import csr_matrix, diags
from scipy.special import logsumexp

from veil.privacy_analysis.attacks.base import AttackResult, as_features, check_aux, check_owners, make_result
from veil.privacy_analysis.attacks.learned import LearnedConfig, embedding_features, fit_softmax
from veil.privacy_analysis.attacks.registry import Attack, AttackInput, register

__all__ = ["StylometricConfig", "char_ngram_tfidf", "stylometric_attack"]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MIX = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class StylometricConfig:
    """Settings of the stylometric attack.

    Attributes
    ----------
    ngram_min, ngram_max : int
        Character n-gram lengths, inclusive (default 2 to 4).
    n_features : int
        Hash buckets (default 4096); collisions only blur the profile.
    lowercase : bool
        Fold case before counting (default off: casing is a style marker).
    l2, max_iter : float, int
        Penalty and L-BFGS iterations of the text model (default 1e-3 and 300).
    stack_folds : int
        Folds of the cross-validation on the auxiliary part that fits the combination weights (default
        3); with fewer than 2 the log posteriors are summed with weight ``text_weight`` on the text term.
    text_weight : float
        Text weight of the plain sum, used only when ``stack_folds < 2`` (default 1).
    embedding : LearnedConfig
        Settings of the embedding model, the learned attributor (defaults of :class:`LearnedConfig`).
    """

    ngram_min: int = 2
    ngram_max: int = 4
    n_features: int = 4096
    lowercase: bool = False
    l2: float = 1e-3
    max_iter: int = 300
    stack_folds: int = 3
    text_weight: float = 1.0
    embedding: LearnedConfig = field(default_factory=LearnedConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min} and {self.ngram_max}")
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if not self.l2 >= 0 or self.max_iter < 1:
            raise ValueError(f"need l2 >= 0 and max_iter >= 1, got {self.l2} and {self.max_iter}")
        if self.stack_folds < 0:
            raise ValueError(f"stack_folds must be >= 0, got {self.stack_folds}")
        if not self.text_weight >= 0:
            raise ValueError(f"text_weight must be >= 0, got {self.text_weight}")


def _hash_ngrams(codes: np.ndarray, n: int) -> np.ndarray:
    """FNV-1a over the ``n`` code points starting at every position, then a multiplicative mix."""
    m = codes.size - n + 1
    h = np.full(m, _FNV_OFFSET ^ n, dtype=np.uint64)
    for j in range(n):  # numpy uint64 arithmetic wraps modulo 2**64, as the hash wants
        h = (h ^ codes[j : j + m]) * np.uint64(_FNV_PRIME)
    h = (h ^ (h >> np.uint64(29))) * np.uint64(_MIX)
    return h ^ (h >> np.uint64(32))


def char_ngram_tfidf(texts: Sequence[str], config: StylometricConfig | None = None) -> csr_matrix:
    """Hashed character n-gram TF-IDF features, sparse ``(N, n_features)`` with L2-normalised rows.

    Term frequency is sublinear (``1 + log count``); ``idf = log((1 + N) / (1 + df)) + 1``. An empty text
    (or one shorter than ``ngram_min``) gives a zero row.

    >>> x = char_ngram_tfidf(["hello there", "hello there", "xyz"])
    >>> round(float((x[0] @ x[1].T).toarray()[0, 0]), 6), float((x[0] @ x[2].T).toarray()[0, 0])
    (1.0, 0.0)
    """
    cfg = config or StylometricConfig()
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a sequence of str")
    n_docs = len(texts)
    units = [
        np.frombuffer((t.lower() if cfg.lowercase else t).encode("utf-32-le"), dtype="<u4") for t in texts
    ]
    lengths = np.array([u.size for u in units], dtype=np.int64)
    codes = np.concatenate(units).astype(np.uint64) if n_docs else np.zeros(0, dtype=np.uint64)
    doc = np.repeat(np.arange(n_docs), lengths)
    rows, cols = [], []
    for n in range(cfg.ngram_min, cfg.ngram_max + 1):
        if codes.size < n:
            continue
        keep = doc[: codes.size - n + 1] == doc[n - 1 :]  # n-grams that do not straddle two texts
        rows.append(doc[: codes.size - n + 1][keep])
        cols.append((_hash_ngrams(codes, n)[keep] % np.uint64(cfg.n_features)).astype(np.int64))
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    counts = csr_matrix((np.ones(r.size), (r, c)), shape=(n_docs, cfg.n_features))
    counts.sum_duplicates()
    counts.data = 1.0 + np.log(counts.data)
    df = np.bincount(counts.indices, minlength=cfg.n_features)
    tfidf = counts @ diags(np.log((1.0 + n_docs) / (1.0 + df)) + 1.0)
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1))).ravel()
    return csr_matrix(diags(1.0 / np.where(norms > 0, norms, 1.0)) @ tfidf)


def _folds(owners: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index of every upload, spreading each user's uploads evenly over the folds at random."""
    fold = np.empty(owners.size, dtype=np.int64)
    for user in np.unique(owners):
        idx = np.flatnonzero(owners == user)
        fold[rng.permutation(idx)] = np.arange(idx.size) % n_folds
    return fold


def _stack_weights(text_lp: np.ndarray, emb_lp: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Non-negative ``(a, b)`` maximising the likelihood of ``softmax(a * text_lp + b * emb_lp)``."""

    def nll(ab: np.ndarray) -> tuple[float, np.ndarray]:
        z = ab[0] * text_lp + ab[1] * emb_lp
        log_p = z - logsumexp(z, axis=1, keepdims=True)
        p = np.exp(log_p)
        rows = np.arange(truth.size)
        # d/da of -log softmax(z)[y] = E_p[text_lp] - text_lp[y], likewise for b
        grad = [np.mean(np.sum(p * m, axis=1) - m[rows, truth]) for m in (text_lp, emb_lp)]
        return float(-np.mean(log_p[rows, truth])), np.array(grad)

    res = minimize(nll, np.ones(2), jac=True, method="L-BFGS-B", bounds=[(0.0, 100.0)] * 2)
    return float(res.x[0]), float(res.x[1])


def stylometric_attack(
    texts: Sequence[str],
    uploads: np.ndarray,
    owners: np.ndarray,
    k: int,
    aux: np.ndarray,
    rng: np.random.Generator,
    config: StylometricConfig | None = None,
    embedding_log_posteriors: np.ndarray | None = None,
) -> AttackResult:
    """Attribute the non-auxiliary uploads by text style and embedding together.

    Parameters
    ----------
    texts : sequence of str, length N
        The text sent with each upload.
    uploads : ndarray, shape ``(N, n_tokens, dim)`` or ``(N, dim)``
    owners : ndarray of int, shape ``(N,)``
    k : int
        Number of users.
    aux : ndarray of bool, shape ``(N,)``
        The labelled auxiliary uploads the attacker trains on; the rest are evaluated.
    rng : numpy.random.Generator
        Draws the cross-validation folds of the stacking step.
    config : StylometricConfig, optional
    embedding_log_posteriors : ndarray ``(N, K)``, optional
        A fixed embedding model's log posteriors of all uploads, e.g. the known-parameters Bayes
        attributor's; by default the learned attributor is trained on the auxiliary part.

    Returns
    -------
    AttackResult
        ``name="stylometric"``, accuracy of the combination; details ``text_accuracy``,
        ``embedding_accuracy``, ``combined_accuracy``, the fitted ``text_weight`` and ``embedding_weight``,
        and ``n_aux``.
    """
    cfg = config or StylometricConfig()
    x = as_features(uploads)
    o = check_owners(owners, x.shape[0], k)
    if len(texts) != o.size:
        raise ValueError(f"need one text per upload: {o.size} uploads, got {len(texts)} texts")
    aux = check_aux(aux, o.size)
    fixed = None
    if embedding_log_posteriors is not None:
        fixed = np.asarray(embedding_log_posteriors, dtype=np.float64)
        if fixed.shape != (o.size, k):
            raise ValueError(f"embedding_log_posteriors must have shape {(o.size, k)}, got {fixed.shape}")
    text_feats = char_ngram_tfidf(texts, cfg)
    emb_feats = embedding_features(x, cfg.embedding)

    def predict(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Text and embedding log posteriors ``(|test|, K)`` of models fitted on the ``train`` indices."""
        text_model = fit_softmax(text_feats[train], o[train], k, cfg.l2, cfg.max_iter, standardize=False)
        if fixed is not None:
            emb = fixed[test]
        else:
            e = cfg.embedding
            emb = fit_softmax(emb_feats[train], o[train], k, e.l2, e.max_iter).log_proba(emb_feats[test])
        return text_model.log_proba(text_feats[test]), emb

    aux_idx, eval_idx = np.flatnonzero(aux), np.flatnonzero(~aux)
    a, b = cfg.text_weight, 1.0
    if cfg.stack_folds >= 2:
        fold = _folds(o[aux_idx], cfg.stack_folds, rng)
        oof_text, oof_emb = np.zeros((aux_idx.size, k)), np.zeros((aux_idx.size, k))
        for f in range(cfg.stack_folds):
            held = fold == f
            if held.any() and not held.all():
                oof_text[held], oof_emb[held] = predict(aux_idx[~held], aux_idx[held])
        a, b = _stack_weights(oof_text, oof_emb, o[aux_idx])
    text_lp, emb_lp = predict(aux_idx, eval_idx)
    truth = o[eval_idx]
    combined = a * text_lp + b * emb_lp
    predictions = np.full(o.size, -1, dtype=np.int64)
    predictions[eval_idx] = combined.argmax(axis=1)
    details = {
        "n_aux": int(aux_idx.size),
        "text_accuracy": float(np.mean(text_lp.argmax(axis=1) == truth)),
        "embedding_accuracy": float(np.mean(emb_lp.argmax(axis=1) == truth)),
        "combined_accuracy": float(np.mean(predictions[eval_idx] == truth)),
        "text_weight": a,
        "embedding_weight": b,
    }
    return make_result("stylometric", o, predictions, k, details)


def _run(inp: AttackInput, config: StylometricConfig) -> AttackResult:
    inp.require("stylometric", "texts", "aux")
    return stylometric_attack(inp.texts, inp.uploads, inp.owners, inp.k, inp.aux, inp.rng, config)  # type: ignore[arg-type]


register(Attack("stylometric", StylometricConfig, _run))

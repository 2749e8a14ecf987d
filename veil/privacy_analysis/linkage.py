"""A practical linkage attack on the pooled upload stream: cluster, then name the clusters.

The cloud sees only uploaded embeddings. It clusters them into K groups (k-means++, Lloyd iterations)
hoping each group is one person. We score the attack generously, as if the attacker could name each
cluster with the best one-to-one user assignment (Hungarian matching on the true labels): the share of
uploads so attributed is an upper estimate of what this attack achieves. We also report the adjusted
Rand index of the clustering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LinkageResult", "kmeans", "linkage_attack", "adjusted_rand_index"]


@dataclass(frozen=True)
class LinkageResult:
    """Cluster-then-match attribution accuracy and adjusted Rand index, next to chance."""

    accuracy: float
    adjusted_rand_index: float
    chance: float


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    """k-means++ initialisation and Lloyd iterations; returns labels ``(N,)`` for ``x`` ``(N, D)``."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    centres = [x[rng.integers(n)]]
    d2 = np.sum((x - centres[0]) ** 2, axis=1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[rng.choice(n, p=probs)])
        d2 = np.minimum(d2, np.sum((x - centres[-1]) ** 2, axis=1))
    c = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        dist = (x * x).sum(1, keepdims=True) - 2 * x @ c.T + (c * c).sum(1)[None, :]
        new = dist.argmin(axis=1)
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return labels


def _comb2(v: np.ndarray) -> float:
    return float(np.sum(v * (v - 1) / 2.0))


def adjusted_rand_index(truth: np.ndarray, pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings.

    >>> adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
    1.0
    """
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(table, (t, p), 1)
    index = _comb2(table)
    a, b = _comb2(table.sum(1)), _comb2(table.sum(0))
    expected = a * b / _comb2(np.array([len(t)])) if len(t) > 1 else 0.0
    top = 0.5 * (a + b)
    return 1.0 if top == expected else (index - expected) / (top - expected)


def linkage_attack(uploads: np.ndarray, users: np.ndarray, rng: np.random.Generator) -> LinkageResult:
    """Cluster uploads ``(N, ...)`` into as many groups as there are users; score against ``users``."""
    from scipy.optimize import linear_sum_assignment

    x = uploads.reshape(uploads.shape[0], -1).astype(np.float64)
    _, truth = np.unique(users, return_inverse=True)
    k = int(truth.max()) + 1
    labels = kmeans(x, k, rng)
    table = np.zeros((k, k))
    np.add.at(table, (labels, truth), 1)
    rows, cols = linear_sum_assignment(-table)
    accuracy = float(table[rows, cols].sum() / x.shape[0])
    return LinkageResult(accuracy, adjusted_rand_index(truth, labels), 1.0 / k)

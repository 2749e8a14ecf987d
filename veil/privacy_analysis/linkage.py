"""Clustering primitives and scores for linkage attacks on the pooled upload stream.

The cloud sees only uploaded embeddings. It clusters them into K groups (k-means++, Lloyd iterations)
hoping each group is one person. A clustering is scored three ways:

* **matched accuracy**: the share of uploads attributed to the right user when every cluster is named
  after the user it shares most uploads with, one-to-one (Hungarian matching on the true labels). This
  is generous to the attacker, who in reality has no labels to name the clusters with.
* **adjusted Rand index** (Hubert & Arabie 1985): agreement of the two partitions, 0 at chance, 1 when equal.
* **pairwise linkage precision and recall**: of the pairs of uploads put in the same cluster, the share
  that truly share a user; of the pairs that truly share a user, the share put in the same cluster.

The full attacks (k-means and a Gaussian mixture fitted by EM, with restarts) live in
:mod:`veil.privacy_analysis.attacks.clustering`; :func:`linkage_attack` is the one-call version the
simulator uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LinkageResult",
    "adjusted_rand_index",
    "kmeans",
    "kmeans_inertia",
    "linkage_attack",
    "matched_accuracy",
    "name_clusters",
    "pairwise_precision_recall",
]


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
        # einsum, not BLAS: threaded BLAS on these small products crawls when the few cores are busy
        dist = (x * x).sum(1, keepdims=True) - 2 * np.einsum("nd,kd->nk", x, c) + (c * c).sum(1)[None, :]
        new = dist.argmin(axis=1)
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return labels


def kmeans_inertia(x: np.ndarray, labels: np.ndarray) -> float:
    """Within-cluster sum of squared distances to the cluster means (what k-means minimises)."""
    total = 0.0
    for j in np.unique(labels):
        members = x[labels == j]
        total += float(np.sum((members - members.mean(axis=0)) ** 2))
    return total


def _comb2(v: np.ndarray) -> float:
    return float(np.sum(v * (v - 1) / 2.0))


def _contingency(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(n_true_labels, n_pred_labels)`` counts of uploads per (true user, predicted cluster)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape or truth.ndim != 1:
        raise ValueError(f"labelings must be 1-D of equal length, got shapes {truth.shape} and {pred.shape}")
    if truth.size == 0:
        raise ValueError("labelings must not be empty")
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(table, (t, p), 1)
    return table


def adjusted_rand_index(truth: np.ndarray, pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings.

    >>> adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
    1.0
    """
    table = _contingency(truth, pred)
    n = table.sum()
    index = _comb2(table)
    a, b = _comb2(table.sum(1)), _comb2(table.sum(0))
    expected = a * b / _comb2(np.array([n])) if n > 1 else 0.0
    top = 0.5 * (a + b)
    return 1.0 if top == expected else float((index - expected) / (top - expected))


def pairwise_precision_recall(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Pairwise linkage precision and recall of a clustering ``pred`` against the true users ``truth``.

    Precision is the share of same-cluster pairs that truly share a user; recall is the share of
    same-user pairs put in the same cluster. With no same-cluster pairs (all singletons) precision is
    defined as 1, and with no same-user pairs recall is 1: nothing was wrongly linked, or nothing could be.

    >>> pairwise_precision_recall(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]))
    (0.3333333333333333, 0.5)
    """
    table = _contingency(truth, pred)
    both = _comb2(table)
    linked, same_user = _comb2(table.sum(0)), _comb2(table.sum(1))
    precision = both / linked if linked > 0 else 1.0
    recall = both / same_user if same_user > 0 else 1.0
    return float(precision), float(recall)


def name_clusters(truth: np.ndarray, pred: np.ndarray, unnamed: int = -1) -> np.ndarray:
    """Name every cluster after a user, one-to-one, maximising the uploads named after their owner.

    The Hungarian algorithm (scipy's ``linear_sum_assignment``) on the contingency table picks the naming;
    uploads in clusters left without a user (more clusters than users) get ``unnamed``.

    Returns
    -------
    ndarray ``(N,)``
        The user (a value of ``truth``) each upload is attributed to.

    >>> name_clusters(np.array([0, 0, 1, 1, 1]), np.array([2, 2, 0, 0, 2]))
    array([0, 0, 1, 1, 0])
    """
    # lazy: scipy.optimize loads only to match clusters to users
    from scipy.optimize import linear_sum_assignment

    table = _contingency(truth, pred)
    users, clusters = np.unique(truth), np.unique(pred, return_inverse=True)[1]
    rows, cols = linear_sum_assignment(table, maximize=True)
    naming = np.full(table.shape[1], unnamed, dtype=np.result_type(users.dtype, np.int64))
    naming[cols] = users[rows]
    return naming[clusters]


def matched_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Share of uploads whose cluster is named after their user under the best one-to-one naming.

    Clusters are matched to users by the Hungarian algorithm on the contingency table; clusters left
    without a user (more clusters than users) count as wrong.

    >>> matched_accuracy(np.array([0, 0, 1, 1, 1]), np.array([2, 2, 0, 0, 2]))
    0.8
    """
    # lazy: scipy.optimize loads only to match clusters to users
    from scipy.optimize import linear_sum_assignment

    table = _contingency(truth, pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def linkage_attack(uploads: np.ndarray, users: np.ndarray, rng: np.random.Generator) -> LinkageResult:
    """Cluster uploads ``(N, ...)`` into as many groups as there are users; score against ``users``."""
    x = uploads.reshape(uploads.shape[0], -1).astype(np.float64)
    _, truth = np.unique(users, return_inverse=True)
    k = int(truth.max()) + 1
    labels = kmeans(x, k, rng)
    return LinkageResult(matched_accuracy(truth, labels), adjusted_rand_index(truth, labels), 1.0 / k)

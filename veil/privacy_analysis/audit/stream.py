"""Auditing the pooled upload stream of a live store, where no upload carries its owner.

The store keeps no user id, so nothing here can be scored against the truth. What an auditor *can* read
off the stored embeddings is what a curious cloud would look at first:

- **exact repeats**: the share of uploads whose embedding equals another upload's bit for bit. Fresh
  samples never repeat; a static per-user embedding (the non-anonymous baseline) repeats on every upload
  and links them all.
- **cluster structure** (the parameter-free linkage attack): k-means on the (standardised) stream for a
  few K, with the mean silhouette of each clustering (Rousseeuw 1987). Near 0: no groups to find;
  near 1: tight, separated groups that a linkage attack would recover.
- **nearest-neighbour ratio**: median distance to the nearest other upload over the median distance
  between two random uploads; well below 1 when uploads come in tight per-user clumps.
- with the users' parameters as well (``veil audit --db URL --params DIR``): the expected accuracy of the
  Bayes attributor on exactly these stored uploads, ``mean_i max_k pi(k | e_i)`` (uniform prior).

Clustering and distances run on a random subsample of at most ``max_points`` uploads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis.attacks.base import prepare_features
from veil.privacy_analysis.attacks.bayes import bayes_log_posteriors
from veil.privacy_analysis.audit.policy import evaluate
from veil.privacy_analysis.linkage import kmeans

__all__ = ["StreamAuditConfig", "audit_stream", "silhouette", "stream_only_summary"]


@dataclass
class StreamAuditConfig:
    """Settings of the stream audit."""

    max_points: int = 1500
    """Most uploads the clustering and distance figures use (a random subsample above)."""
    cluster_counts: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16, 24, 32)
    """Numbers of clusters tried (those below ``n / 3`` are kept)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_points < 10:
            raise ValueError(f"max_points must be >= 10, got {self.max_points}")
        if not self.cluster_counts or min(self.cluster_counts) < 2:
            raise ValueError(f"cluster_counts must be integers >= 2, got {self.cluster_counts}")


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient of a clustering of ``x`` ``(N, D)`` (points in singleton clusters: 0).

    >>> x = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> round(silhouette(x, np.array([0, 0, 1, 1])), 3)
    0.98
    """
    d = _distances(x)
    ids = np.unique(labels)
    if ids.size < 2:
        return 0.0
    member = labels[None, :] == ids[:, None]  # (C, N)
    sums = d @ member.T  # (N, C): summed distance from each point to each cluster
    sizes = member.sum(axis=1).astype(np.float64)
    own = np.searchsorted(ids, labels)
    own_size = sizes[own]
    a = np.where(own_size > 1, sums[np.arange(len(x)), own] / np.maximum(own_size - 1, 1), 0.0)
    other = sums / sizes[None, :]
    other[np.arange(len(x)), own] = np.inf
    b = other.min(axis=1)
    s = np.where(own_size > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float(s.mean())


def _distances(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))


def audit_stream(
    embeddings: Sequence[np.ndarray],
    tasks: Sequence[str] = (),
    dists: Sequence[UserDistribution] | None = None,
    cfg: StreamAuditConfig | None = None,
) -> dict[str, Any]:
    """Measure the pooled stream of stored uploads.

    Parameters
    ----------
    embeddings : sequence of ndarray, each ``(n_tokens, dim)``
        The stored embeddings (uploads without one are left out by the caller).
    tasks : sequence of str
        Task of every stored upload (counted only).
    dists : sequence of UserDistribution, optional
        The users' distributions, for the expected Bayes accuracy on these uploads.

    Returns
    -------
    dict (JSON-ready) with ``n_uploads``, ``shape``, ``duplicate_fraction``, ``clusters``,
    ``nn_ratio`` and, with ``dists``, ``expected_bayes_accuracy``; ``findings`` lists plain-language
    observations.
    """
    cfg = cfg or StreamAuditConfig()
    out: dict[str, Any] = {"n_uploads": len(embeddings), "tasks": dict(Counter(tasks)), "findings": []}
    if len(embeddings) < 2:
        out["findings"].append("fewer than 2 stored uploads with an embedding: nothing to measure")
        return out
    shapes = {np.shape(e) for e in embeddings}
    if len(shapes) != 1:
        raise ValueError(f"stored embeddings have several shapes {sorted(shapes)}; audit one model at a time")
    x = np.stack([np.asarray(e, dtype=np.float64) for e in embeddings])  # (N, n_tokens, dim)
    out["shape"] = list(x.shape[1:])
    flat = x.reshape(len(x), -1)
    counts = Counter(row.tobytes() for row in flat.astype(np.float32))
    repeated = sum(c for c in counts.values() if c > 1)
    out["distinct_embeddings"] = len(counts)
    out["duplicate_fraction"] = repeated / len(flat)

    rng = np.random.default_rng(cfg.seed)
    idx = rng.choice(len(flat), size=min(len(flat), cfg.max_points), replace=False)
    feats = prepare_features(flat[idx], logit_unit_interval=True, standardize=True)
    d = _distances(feats)
    np.fill_diagonal(d, np.inf)
    nearest = np.median(d.min(axis=1))
    typical = np.median(d[np.triu_indices(len(feats), 1)])
    out["nn_ratio"] = float(nearest / typical) if typical > 0 else 0.0
    clusters = {}
    for k in sorted({c for c in cfg.cluster_counts if c <= len(feats) / 3}):
        clusters[str(k)] = silhouette(feats, kmeans(feats, k, rng))
    out["clusters"] = {"n_points": len(feats), "silhouette": clusters}
    if clusters:
        # Ties (within 1e-6) go to the fewest clusters: the simplest grouping that explains the stream.
        best = max(clusters, key=lambda k: (round(clusters[k], 6), -int(k)))
        out["clusters"].update(best_k=int(best), best_silhouette=clusters[best])
    if dists is not None:
        post = bayes_log_posteriors(list(dists), x)  # (N, K)
        out["expected_bayes_accuracy"] = float(np.exp(post.max(axis=1)).mean())
        out["users"] = len(dists)
    out["findings"] = _findings(out)
    return out


def stream_only_summary(stream: dict[str, Any], policy: Any) -> dict[str, Any]:
    """The ``veil audit --json`` object when only the stream is known (the per-user keys are ``None``).

    ``policy`` (a :class:`~veil.privacy_analysis.audit.policy.Policy`) is evaluated on what the stream gives,
    i.e. nothing per user: every configured limit is "not measurable" and so a violation.
    """
    violations = evaluate(policy, {})
    return {
        "users": None,
        "family": None,
        "chance": None,
        "bayes_attribution_accuracy": None,
        "bayes_ci": None,
        "upper_bound": None,
        "linked": {},
        "identifiable": None,
        "pairwise_tv": None,
        "attacks": [],
        "stream": stream,
        "policy": {
            "ok": not violations,
            "limits": policy.to_json(),
            "violations": [v.to_json() for v in violations],
        },
        "note": "no per-user distributions: only the pooled stream was measured; add --params for "
        "attribution figures",
    }


def _findings(out: dict[str, Any]) -> list[str]:
    notes = []
    if out["duplicate_fraction"] > 0:
        notes.append(
            f"{out['duplicate_fraction']:.1%} of uploads repeat another upload's embedding exactly: "
            "fresh samples never do; a static embedding links every upload of its user"
        )
    best = out["clusters"].get("best_silhouette")
    if best is not None and best > 0.5:
        notes.append(
            f"the stream falls into well-separated clusters (silhouette {best:.2f} at "
            f"K={out['clusters']['best_k']}): a linkage attack would likely group uploads by user"
        )
    elif best is not None:
        notes.append(f"no strong cluster structure (best silhouette {best:.2f})")
    if out["nn_ratio"] < 0.2:
        notes.append(f"uploads come in tight clumps (nearest-neighbour ratio {out['nn_ratio']:.2f})")
    return notes

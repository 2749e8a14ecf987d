"""What every attack returns, and the input checks and splits the attacks share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import issparse

from veil.privacy_analysis.attribution import wilson_interval

__all__ = [
    "AttackResult",
    "as_features",
    "check_aux",
    "check_owners",
    "make_result",
    "matmul",
    "prepare_features",
    "stratified_split",
]


@dataclass(frozen=True)
class AttackResult:
    """The outcome of one attack on a set of uploads.

    Attributes
    ----------
    name : str
        ``"bayes_known_parameters"``, ``"linkage_kmeans"``, ``"linkage_gmm"``, ``"learned_attributor"``
        or ``"stylometric"``.
    accuracy : float
        Share of the evaluated uploads attributed to the right user (linkage: after Hungarian matching).
    ci : tuple of float
        95% Wilson score interval of ``accuracy``.
    chance : float
        ``1 / K`` for K users: the accuracy of guessing.
    details : dict
        Attack-specific figures (JSON-serialisable scalars), e.g. ``ari``, ``pairwise_precision``,
        ``n_eval``, ``bayes_accuracy_same_uploads``.
    predictions : ndarray ``(N,)`` of int, optional
        The user each upload was attributed to, ``-1`` for uploads the attack was not evaluated on (the
        labelled auxiliary part); left out of :meth:`as_dict`, ``repr`` and comparisons.
    """

    name: str
    accuracy: float
    ci: tuple[float, float]
    chance: float
    details: dict[str, Any] = field(default_factory=dict)
    predictions: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the interval as a two-element list)."""
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "ci": [self.ci[0], self.ci[1]],
            "chance": self.chance,
            "details": dict(self.details),
        }


def matmul(a: Any, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a dense or scipy-sparse ``a`` ``(N, F)`` and a dense ``b`` ``(F, K)``.

    Dense products go through ``einsum`` rather than BLAS: the attacks multiply many small matrices, and
    multi-threaded BLAS on small operands can be much slower than a plain loop when the machine's few
    cores are busy (figures in ``benchmarks/README.md``, "Attack costs"); sparse ones use scipy's own
    kernels.
    """
    if issparse(a):
        return np.asarray(a @ b)
    return np.einsum("nf,fk->nk", a, b)


def make_result(
    name: str, owners: np.ndarray, predictions: np.ndarray, k: int, details: dict[str, Any]
) -> AttackResult:
    """Score ``predictions`` ``(N,)`` (``-1``: not evaluated) against ``owners`` ``(N,)`` among ``k`` users."""
    evaluated = predictions >= 0
    n = int(evaluated.sum())
    hits = int(np.sum(predictions[evaluated] == owners[evaluated]))
    lo, hi = wilson_interval(hits, n)
    return AttackResult(name, hits / n, (lo, hi), 1.0 / k, {"n_eval": n, **details}, predictions)


def as_features(uploads: np.ndarray) -> np.ndarray:
    """Uploads ``(N, n_tokens, dim)`` or ``(N, dim)`` as a float64 feature matrix ``(N, n_tokens * dim)``.

    Raises
    ------
    ValueError
        If ``uploads`` is not 2-D or 3-D, is empty, or holds NaN/Inf.
    """
    x = np.asarray(uploads, dtype=np.float64)
    if x.ndim not in (2, 3) or x.shape[0] == 0 or x[0].size == 0:
        raise ValueError(f"uploads must have shape (N, n_tokens, dim) or (N, dim) with N > 0, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("uploads must be finite (no NaN/Inf)")
    return x.reshape(x.shape[0], -1)


def check_aux(aux: np.ndarray, n: int) -> np.ndarray:
    """``aux`` as a boolean mask ``(n,)`` with at least one labelled and one evaluated upload, or ``ValueError``."""
    mask = np.asarray(aux)
    if mask.shape != (n,) or mask.dtype != bool or mask.all() or not mask.any():
        raise ValueError(f"aux must be a boolean mask of shape ({n},) with both parts non-empty")
    return mask


def check_owners(owners: np.ndarray, n: int, k: int) -> np.ndarray:
    """Owners as an int64 array ``(n,)`` of user indices in ``[0, k)``, or ``ValueError``."""
    o = np.asarray(owners)
    if o.shape != (n,):
        raise ValueError(f"owners must have shape ({n},) to match the uploads, got {o.shape}")
    if o.size and not np.issubdtype(o.dtype, np.integer):
        raise ValueError(f"owners must be integer user indices, got dtype {o.dtype}")
    o = o.astype(np.int64)
    if o.size and (o.min() < 0 or o.max() >= k):
        raise ValueError(f"owners must index the {k} users (0..{k - 1}), got range [{o.min()}, {o.max()}]")
    return o


def stratified_split(owners: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask ``(N,)`` of the auxiliary (labelled) uploads: ``fraction`` of each user's uploads.

    Each user with at least two uploads keeps at least one in the auxiliary part and one outside it, so
    the learned attacks can be trained and evaluated on every user; rounding is to the nearest integer.

    Raises
    ------
    ValueError
        If ``fraction`` is not in ``(0, 1)`` or no upload is left to evaluate on.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"aux_fraction must be in (0, 1), got {fraction}")
    mask = np.zeros(owners.shape[0], dtype=bool)
    for user in np.unique(owners):
        idx = np.flatnonzero(owners == user)
        if idx.size < 2:
            continue  # a lone upload is better spent on evaluation
        take = min(max(1, math.floor(fraction * idx.size + 0.5)), idx.size - 1)
        mask[rng.choice(idx, size=take, replace=False)] = True
    if mask.all() or not mask.any():
        raise ValueError(
            f"aux_fraction={fraction} leaves no auxiliary or no evaluation uploads among {owners.size}"
        )
    return mask


def prepare_features(x: np.ndarray, *, logit_unit_interval: bool, standardize: bool) -> np.ndarray:
    """The attacker's view of the embeddings ``(N, D)`` for clustering.

    When every value lies strictly inside (0, 1) (a Beta family, say) and ``logit_unit_interval`` is set,
    coordinates are mapped through the logit, which turns the skewed, bounded Beta shapes into roughly
    Gaussian ones that Euclidean clustering and Gaussian mixtures suit. ``standardize`` then scales each
    coordinate to zero mean and unit variance over the pooled stream (constant coordinates are left
    centred but unscaled). Neither step uses labels.
    """
    x = np.asarray(x, dtype=np.float64)
    if logit_unit_interval and np.all((x > 0) & (x < 1)):
        x = np.log(x) - np.log1p(-x)
    if standardize:
        scale = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return x

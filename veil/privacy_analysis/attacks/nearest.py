"""k-nearest-neighbour attribution: the labelled uploads closest to an upload vote for its owner.

The attacker of :mod:`~veil.privacy_analysis.attacks.learned` (a labelled share of the uploads) with no
model at all: an upload goes to the majority owner among its ``neighbors`` nearest labelled uploads
(Cover & Hart, IEEE Trans. Inf. Theory 13(1), 1967), Euclidean on the flattened embeddings. Choices the
rule leaves open: equidistant candidates for the last neighbour places and tied votes are both settled
uniformly at random (seeded), so a codebook that maps whole groups of users onto one vector scores the
within-group chance and not whichever user has the lowest index.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from veil.privacy_analysis.attacks.base import AttackResult, as_features, check_aux, check_owners, make_result
from veil.privacy_analysis.attacks.registry import Attack, AttackInput, register
from veil.privacy_analysis.attacks.selection import (
    argmax_random_ties,
    row_blocks,
    smallest_k_random_ties,
    unique_rows,
)

__all__ = ["KNNConfig", "knn_attack", "knn_predict"]


@dataclass(frozen=True)
class KNNConfig:
    """Settings of the k-nearest-neighbour attributor.

    Attributes
    ----------
    neighbors : int
        Labelled uploads that vote (default 5).
    block_elements : int
        Most entries of one block of the distance matrix (default 2**22, 32 MiB of float64); bounds the
        memory, not the result.
    """

    neighbors: int = 5
    block_elements: int = 2**22

    def __post_init__(self) -> None:
        if self.neighbors < 1:
            raise ValueError(f"neighbors must be >= 1, got {self.neighbors}")
        if self.block_elements < 1:
            raise ValueError(f"block_elements must be >= 1, got {self.block_elements}")


def knn_predict(
    train: np.ndarray, labels: np.ndarray, queries: np.ndarray, rng: np.random.Generator, config: KNNConfig
) -> np.ndarray:
    """Majority label ``(Q,)`` among the nearest rows of ``train`` ``(M, D)`` to every row of ``queries``.

    Raises
    ------
    ValueError
        If there are fewer training rows than ``config.neighbors``.
    """
    if config.neighbors > train.shape[0]:
        raise ValueError(f"neighbors={config.neighbors} exceeds the {train.shape[0]} labelled uploads")
    # Distances to each distinct training vector, copied to its duplicates: duplicates then tie exactly.
    distinct, copy_of = unique_rows(train)  # distinct rows come sorted, not in the order of train
    duplicates = distinct.shape[0] < train.shape[0]
    if not duplicates:
        distinct = train  # score the rows in place, skipping the copy below
    centre = distinct.mean(axis=0)  # centring keeps the expanded square accurate far from the origin
    distinct = distinct - centre
    sq_distinct = np.sum(distinct * distinct, axis=1)  # (U,)
    out = np.empty(queries.shape[0], dtype=np.int64)
    for rows in row_blocks(queries.shape[0], distinct.shape[0] + train.shape[0], config.block_elements):
        q = queries[rows] - centre
        # One large product: BLAS, unlike the einsum that base.matmul keeps for many small ones.
        d2 = np.sum(q * q, axis=1)[:, None] - 2.0 * (q @ distinct.T) + sq_distinct[None, :]  # (B, U)
        if duplicates:
            d2 = d2[:, copy_of]  # (B, M)
        near = smallest_k_random_ties(d2, config.neighbors, rng)  # (B, k) into train
        votes = labels[near]  # (B, k)
        # every tied user appears equally often among the tied places, so a random place is a random user
        support = np.sum(votes[:, :, None] == votes[:, None, :], axis=2)  # (B, k)
        out[rows] = votes[np.arange(votes.shape[0]), argmax_random_ties(support, rng)]
    return out


def knn_attack(
    uploads: np.ndarray,
    owners: np.ndarray,
    k: int,
    aux: np.ndarray,
    rng: np.random.Generator,
    config: KNNConfig | None = None,
) -> AttackResult:
    """Attribute the non-auxiliary uploads by a vote of their nearest auxiliary (labelled) uploads.

    Parameters
    ----------
    uploads : ndarray, shape ``(N, n_tokens, dim)`` or ``(N, dim)``
    owners : ndarray of int, shape ``(N,)``
    k : int
        Number of users.
    aux : ndarray of bool, shape ``(N,)``
        The labelled uploads; the others are evaluated.
    rng : numpy.random.Generator
        Breaks ties.
    config : KNNConfig, optional

    Returns
    -------
    AttackResult
        ``name="knn"``; details ``neighbors``, ``n_aux`` and ``distinct_aux_vectors``.
    """
    cfg = config or KNNConfig()
    x = as_features(uploads)
    o = check_owners(owners, x.shape[0], k)
    aux = check_aux(aux, o.size)
    predictions = np.full(o.size, -1, dtype=np.int64)
    predictions[~aux] = knn_predict(x[aux], o[aux], x[~aux], rng, cfg)
    details = {
        "neighbors": cfg.neighbors,
        "n_aux": int(aux.sum()),
        "distinct_aux_vectors": int(unique_rows(x[aux])[0].shape[0]),
    }
    return make_result("knn", o, predictions, k, details)


def _run(inp: AttackInput, config: KNNConfig) -> AttackResult:
    inp.require("knn", "aux")
    # a tiny file may hold fewer labelled uploads than voters; details say how many voted
    cfg = replace(config, neighbors=min(config.neighbors, int(inp.aux.sum())))  # type: ignore[union-attr]
    return knn_attack(inp.uploads, inp.owners, inp.k, inp.aux, inp.rng, cfg)  # type: ignore[arg-type]


register(Attack("knn", KNNConfig, _run))

"""Can the cloud decompose the pooled upload stream into its users? The Gram-matrix test.

The cloud sees i.i.d. uploads from ``Q = sum_i pi_i P_i``. Finite mixtures over a family are identifiable
iff the family is linearly independent (Yakowitz & Spragins, Ann. Math. Stat. 39(1), 1968), and the
densities ``p_1..p_n`` are linearly dependent iff their Gram matrix ``G_ij = integral p_i p_j`` is singular
(Yakowitz & Spragins 1968; IDfree-PL, arXiv:2501.06062, section 3). Closed forms (each in its family's
module under :mod:`veil.privacy_analysis.families`):

* diagonal Gaussians: ``integral N(x; m_i, S_i) N(x; m_j, S_j) dx = N(m_i; m_j, S_i + S_j)``;
* Beta, per coordinate: ``B(a_i + a_j - 1, b_i + b_j - 1) / (B(a_i, b_i) B(a_j, b_j))`` (finite iff
  ``a_i + a_j > 1`` and ``b_i + b_j > 1``);
* shared-basis mixtures ``P_i = sum_k W_ik B_k``: ``G = W G_B W^T``, so ``rank G <= rank W <= K``.

Elsewhere (mixed families, Beta pairs outside L2) the test uses the weighted Gram matrix
``E_{x ~ P_bar}[(p_i/p_bar)(p_j/p_bar)]``, an inner product that is finite for any family and singular iff
the densities are dependent, estimated by Monte Carlo (exactly singular for a dependent family, since
every sample's vector ``(p_i(x)/p_bar(x))_i`` then lies in the same subspace).

Grouping breaks clause (a): if the cloud can group uploads of one user, any mixture of m components is
identifiable from groups of ``2m - 1`` samples (Vandermeulen & Scott, arXiv:1502.06644).
:func:`grouped_identifiability_demo` shows both effects on a shared-basis population.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import special
from scipy.optimize import linear_sum_assignment

from veil.client_sdk.distributions import BasisMixtureDistribution, GaussianDistribution, UserDistribution
from veil.privacy_analysis._families import check_population, shared_basis
from veil.privacy_analysis.attribution import log_likelihood_matrix_fast
from veil.privacy_analysis.families import population_family

__all__ = [
    "IdentifiabilityResult",
    "gram_matrix",
    "grouped_identifiability_demo",
    "identifiability_test",
    "log_gram_matrix",
]


@dataclass(frozen=True)
class IdentifiabilityResult:
    """Outcome of the Gram-matrix test.

    Attributes
    ----------
    rank : int
        Numerical rank of the normalised Gram matrix (eigenvalues above ``tol`` times the largest).
    smallest_eigenvalue : float
        Smallest eigenvalue of the normalised (correlation-form) Gram matrix; ~0 means dependent.
    n : int
        Number of users.
    identifiable : bool
        ``rank == n`` (and, for shared-basis mixtures, ``rank(W) == n``): the users' densities are
        linearly independent, so the pooled stream identifies them.
    method : str
        How the Gram matrix was obtained.
    weights_rank : int or None
        ``rank(W)`` for shared-basis mixtures, else None.
    """

    rank: int
    smallest_eigenvalue: float
    n: int
    identifiable: bool
    method: str
    weights_rank: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_gram_matrix(dists: Sequence[UserDistribution]) -> tuple[np.ndarray, str] | None:
    """``(log G, method)`` in closed form, or None when no closed form applies.

    Log space because in dimension 64 the entries easily leave the float64 range.
    """
    users = check_population(dists)
    family = population_family(users)
    return None if family is None else family.log_gram(users)


def gram_matrix(dists: Sequence[UserDistribution]) -> np.ndarray:
    """``G_ij = integral p_i p_j`` in closed form (Gaussian, Beta, shared-basis mixtures), shape ``(n, n)``.

    Raises
    ------
    ValueError
        When no closed form applies (mixed families, or Beta pairs whose product is not integrable).
    """
    out = log_gram_matrix(dists)
    if out is None:
        raise ValueError(
            "no closed-form Gram matrix for this population (mixed families, different bases, or Beta "
            "parameters with a_i + a_j <= 1 or b_i + b_j <= 1); identifiability_test uses a Monte-Carlo one"
        )
    return np.exp(out[0])


def _weighted_gram(
    users: tuple[UserDistribution, ...], rng: np.random.Generator, n_samples: int
) -> np.ndarray:
    n = len(users)
    labels = np.sort(rng.integers(n, size=int(n_samples)))
    ks, counts = np.unique(labels, return_counts=True)
    x = np.concatenate([users[k].sample(rng, size=int(c)) for k, c in zip(ks, counts, strict=True)])
    ll = log_likelihood_matrix_fast(users, x)  # (N, n)
    r = np.exp(ll - special.logsumexp(ll, axis=1, keepdims=True) + np.log(n))  # p_i / p_bar
    return r.T @ r / r.shape[0]


def identifiability_test(
    dists: Sequence[UserDistribution],
    tol: float = 1e-8,
    *,
    rng: np.random.Generator | None = None,
    n_samples: int = 20000,
) -> IdentifiabilityResult:
    """Rank and smallest eigenvalue of the normalised Gram matrix ``G_ij / sqrt(G_ii G_jj)``.

    Parameters
    ----------
    dists : sequence of UserDistribution
        The n users.
    tol : float
        Relative eigenvalue threshold for the numerical rank. Users whose densities are nearly
        proportional (e.g. Gaussians whose means differ by far less than their std) give eigenvalues
        below ``tol`` too: identifiable in exact arithmetic, not in practice.
    rng, n_samples
        For the Monte-Carlo weighted Gram matrix when no closed form applies.
    """
    users = check_population(dists)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    closed = log_gram_matrix(users)
    if closed is not None:
        log_g, method = closed
        diag = np.diag(log_g)
        corr = np.exp(log_g - 0.5 * (diag[:, None] + diag[None, :]))
    else:
        g = _weighted_gram(users, rng or np.random.default_rng(0), n_samples)
        d = np.sqrt(np.maximum(np.diag(g), np.finfo(np.float64).tiny))
        corr = g / np.outer(d, d)
        method = f"weighted Gram matrix E_Pbar[(p_i/p_bar)(p_j/p_bar)], Monte Carlo ({n_samples} samples)"
    eig = np.linalg.eigvalsh(0.5 * (corr + corr.T))
    rank = int(np.sum(eig > tol * eig.max()))
    weights_rank = None
    if shared_basis(users) is not None:
        w = np.stack([d.weights for d in users])  # type: ignore[attr-defined]
        weights_rank = int(np.linalg.matrix_rank(w))
        method += "; rank(W) of the weights"
    n = len(users)
    ok = rank == n and (weights_rank is None or weights_rank == n)
    return IdentifiabilityResult(rank, float(eig.min()), n, ok, method, weights_rank)


# ---------------------------------------------------------------------------------------- grouping demo
def _em_on_groups(
    log_basis: np.ndarray, n_users: int, rng: np.random.Generator, iters: int, restarts: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """EM for groups drawn as: user i ~ pi, then every upload of the group ~ sum_k W_ik B_k (B known).

    ``log_basis``: ``(G, g, K)`` basis log densities of every upload. Returns the best restart's
    ``(W (n, K), pi (n,), mean log-likelihood per group)``.
    """
    n_groups, size, k = log_basis.shape
    top = log_basis.max(axis=-1, keepdims=True)  # per-upload scale: the same for every user, so it cancels
    b = np.exp(log_basis - top)  # (G, g, K)
    offset = float(top.sum()) / n_groups
    fits: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(restarts):
        w, pi = rng.dirichlet(np.ones(k), size=n_users), np.full(n_users, 1.0 / n_users)
        ll = -np.inf
        for _ in range(iters):
            dens = np.maximum(b @ w.T, 1e-300)  # (G, g, n): p_i(x_t), up to the per-upload scale
            with np.errstate(divide="ignore"):
                group = np.log(dens).sum(axis=1) + np.log(pi)  # (G, n)
            norm = special.logsumexp(group, axis=1, keepdims=True)
            resp = np.exp(group - norm)  # P(user | group)
            # Expected basis counts: N_ik = w_ik sum_{g,t} resp_gi B_gtk / p_i(x_gt).
            counts = w * np.einsum("gtn,gtk->nk", resp[:, None, :] / dens, b) + 1e-12
            w, pi = counts / counts.sum(axis=1, keepdims=True), resp.mean(axis=0)
            new_ll = float(norm.mean()) + offset
            if new_ll - ll < 1e-8:
                break
            ll = new_ll
        fits.append((w, pi, ll))
    return max(fits, key=lambda fit: fit[2])


def grouped_identifiability_demo(
    n_users: int,
    basis_size: int,
    group_size: int,
    rng: np.random.Generator,
    *,
    n_groups: int | None = None,
    separation: float = 6.0,
    em_iters: int = 200,
    restarts: int = 3,
) -> dict[str, Any]:
    """Pooled shared-basis users are not identifiable; groups of ``2 n_users - 1`` uploads make them so.

    Setup: a public basis of ``basis_size`` 1-D Gaussians ``N(separation * k, 1)`` and ``n_users`` users
    with weights ``W ~ Dirichlet(1)`` (the most spread-out of 64 draws).

    1. *Pooled stream*: the Gram test on the users (rank <= basis_size), and an explicit second
       population ``W'`` (user a moves weight c from basis d to e, user b from e to d) with the same
       pooled law ``Q`` but different users; the result reports ``max |q_W - q_W'|`` on a grid (~1e-16)
       and ``max |W - W'|``.
    2. *Grouped uploads*: ``n_groups`` groups, each of ``g`` uploads of one user drawn uniformly. The
       estimator is EM on the exact group likelihood ``sum_i pi_i prod_t sum_k W_ik B_k(x_t)`` with the
       basis known (it is public), best of ``restarts`` random starts. Group-level counts per basis
       element are a mixture of n multinomials, identifiable iff ``g >= 2n - 1`` (Teicher 1963; the
       general result of Vandermeulen & Scott, arXiv:1502.06644), so for ``g = 1`` EM stops wherever its
       start puts it on a flat ridge, and for ``g >= 2n - 1`` it finds the users.

    The recovery error is the mean over users of ``0.5 * |w_i - w_hat_i|_1`` (an upper bound on the TV
    between the true and recovered user), after the best one-to-one matching of recovered to true users.
    """
    n, k, g = int(n_users), int(basis_size), int(group_size)
    if n < 2 or k < 2 or g < 1 or restarts < 1:
        raise ValueError(
            f"need n_users >= 2, basis_size >= 2, group_size >= 1, restarts >= 1; got {n}, {k}, {g}"
        )
    n_groups = int(n_groups or 1000 * n)
    basis = [GaussianDistribution([[separation * j]], [[1.0]]) for j in range(k)]
    # Users that are themselves far apart (best of 64 Dirichlet draws by the smallest pairwise
    # 0.5 * L1 distance), so that what the demo shows is identifiability, not two near-twins.
    draws = rng.dirichlet(np.ones(k), size=(64, n))
    gaps = 0.5 * np.abs(draws[:, :, None, :] - draws[:, None, :, :]).sum(-1) + 2.0 * np.eye(n)
    w = draws[int(np.argmax(gaps.min(axis=(1, 2))))]
    users = [BasisMixtureDistribution(basis, row) for row in w]
    gram = identifiability_test(users)

    # Move mass c from basis d to basis e in user a, and back from e to d in user b: every user changes,
    # the average weights (hence the pooled law) do not. Pick a, b, d, e to allow the largest c.
    room = np.minimum(w[:, None, :, None], w[None, :, None, :])  # [a, b, d, e] = min(w_ad, w_be)
    room[np.arange(n), np.arange(n)] = 0.0
    room[:, :, np.arange(k), np.arange(k)] = 0.0
    a, b, d, e = np.unravel_index(int(np.argmax(room)), room.shape)
    w_alt = w.copy()
    c = 0.9 * float(room[a, b, d, e])
    w_alt[a, d] -= c
    w_alt[a, e] += c
    w_alt[b, e] -= c
    w_alt[b, d] += c
    grid = np.linspace(-4.0, separation * (k - 1) + 4.0, 2001).reshape(-1, 1, 1)

    def pooled(weights: np.ndarray) -> np.ndarray:
        return BasisMixtureDistribution(basis, weights.mean(axis=0)).log_prob(grid)

    recovery = []
    for size in dict.fromkeys([1, g]):
        labels = rng.integers(n, size=n_groups)
        x = np.concatenate([users[i].sample(rng, size=int(np.sum(labels == i)) * size) for i in range(n)])
        log_basis = np.stack([b.log_prob(x) for b in basis], axis=-1).reshape(n_groups, size, k)
        w_hat, pi_hat, ll = _em_on_groups(log_basis, n, rng, em_iters, restarts)
        cost = 0.5 * np.abs(w[:, None, :] - w_hat[None, :, :]).sum(axis=-1)
        rows, cols = linear_sum_assignment(cost)
        recovery.append(
            {"group_size": size, "error": float(cost[rows, cols].mean()), "log_likelihood_per_group": ll}
        )
    return {
        "n_users": n,
        "basis_size": k,
        "gram_rank": gram.rank,
        "gram_smallest_eigenvalue": gram.smallest_eigenvalue,
        "pooled_identifiable": gram.identifiable,
        "alternative_pooled_law_max_diff": float(np.max(np.abs(np.exp(pooled(w)) - np.exp(pooled(w_alt))))),
        "alternative_max_weight_change": float(np.max(np.abs(w_alt - w))),
        "identifiability_group_size": 2 * n - 1,
        "n_groups": n_groups,
        "recovery": recovery,
        "estimator": "EM on groups with the public basis known, best of random restarts",
    }

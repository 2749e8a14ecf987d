"""The Bayes-optimal attributor with known parameters: the ceiling of any attribution attack.

Given K users' distributions P_1..P_K and priors pi, the Bayes attributor assigns an upload e to
argmax_k pi_k p_k(e); its accuracy is Acc* = sum_k pi_k P_k(argmax_j pi_j p_j = k), i.e.
(1/K) integral max_k p_k under a uniform prior (IDfree-PL, arXiv:2501.06062, section 3; an application of
standard Bayes-decision facts to IDfree-PL, arXiv:2501.06062). Here:

* :func:`bayes_attribution`: Monte Carlo through each family's ``log_prob`` (any population);
* :func:`bayes_attribution_fast`: the same estimate, vectorised as one matrix product per chunk
  (10,000 users x 100 uploads x dim 64 in tens of seconds on 2 cores);
* :func:`linked_attribution`: the attributor that sees T uploads known to come from one user
  (product likelihood), i.e. the amplification when uploads can be linked;
* :func:`exact_bayes_attribution` (from :mod:`~veil.privacy_analysis.bounds`): numerical integration in
  one or two dimensions; :func:`attribution_upper_bound`: the closed-form bounds of section 3.2.

Monte-Carlo accuracies come with a 95% Wilson score interval (Wilson 1927).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis._families import check_population, check_priors, stack_population
from veil.privacy_analysis.bounds import (
    bound_from_pairwise_tv,
    exact_bayes_attribution,
    tv_sandwich,
    tv_to_mean_terms,
)
from veil.privacy_analysis.distances import pairwise, total_variation_estimate
from veil.privacy_analysis.families import population_family

__all__ = [
    "AttributionBounds",
    "AttributionResult",
    "attribution_bounds",
    "attribution_upper_bound",
    "bayes_attribution",
    "bayes_attribution_fast",
    "exact_bayes_attribution",
    "linked_attribution",
    "log_likelihood_matrix",
    "log_likelihood_matrix_fast",
    "wilson_interval",
]


@dataclass(frozen=True)
class AttributionResult:
    """Attribution accuracy with a 95% interval, next to chance (1/K, or the largest prior)."""

    accuracy: float
    ci_low: float
    ci_high: float
    chance: float
    n_uploads: int

    def as_dict(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "chance": self.chance,
            "n_uploads": self.n_uploads,
        }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    >>> lo, hi = wilson_interval(50, 100)
    >>> round(lo, 3), round(hi, 3)
    (0.404, 0.596)
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def log_likelihood_matrix(distributions: Sequence[UserDistribution], uploads: np.ndarray) -> np.ndarray:
    """``(N, K)`` log densities of N uploads ``(N, n_tokens, dim)`` under each of K users."""
    return np.stack([d.log_prob(uploads) for d in distributions], axis=1)


def bayes_attribution(
    distributions: Sequence[UserDistribution],
    uploads_per_user: int = 50,
    rng: np.random.Generator | None = None,
) -> AttributionResult:
    """Monte-Carlo accuracy of the Bayes-optimal attributor under a uniform prior."""
    if len(distributions) < 2:
        raise ValueError(f"attribution needs at least 2 users, got {len(distributions)}")
    if uploads_per_user < 1:
        raise ValueError(f"uploads_per_user must be >= 1, got {uploads_per_user}")
    rng = rng or np.random.default_rng(0)
    hits = 0
    for k, dist in enumerate(distributions):
        uploads = dist.sample(rng, size=uploads_per_user)
        hits += int(np.sum(log_likelihood_matrix(distributions, uploads).argmax(axis=1) == k))
    n = uploads_per_user * len(distributions)
    lo, hi = wilson_interval(hits, n)
    return AttributionResult(hits / n, lo, hi, 1.0 / len(distributions), n)


# ---------------------------------------------------------------------------------------- vectorised MC
def log_likelihood_matrix_fast(
    distributions: Sequence[UserDistribution], uploads: np.ndarray, dtype: type[np.floating] = np.float64
) -> np.ndarray:
    """``(N, K)`` log densities like :func:`log_likelihood_matrix`, as one matrix product when possible.

    Gaussian, Beta and shared-basis populations take the vectorised path (see
    :mod:`veil.privacy_analysis._stacked`); others fall back to :func:`log_likelihood_matrix`.
    """
    users = check_population(distributions)
    stack = stack_population(users)
    if stack is None:
        return log_likelihood_matrix(users, uploads)
    x = np.asarray(uploads, dtype=np.float64)
    return stack.log_likelihood(x.reshape(x.shape[0], -1), dtype)


def _score_chunks(
    users: tuple[UserDistribution, ...],
    rows: np.ndarray,
    rng: np.random.Generator,
    chunk: int,
    block: int = 1,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Fresh uploads of users ``rows`` (sorted), scored in chunks: ``(row slice, (n, K) scores)``.

    Scores are ``log p_k(x)`` up to a per-row constant. Chunks are multiples of ``block`` rows so linked
    groups are never split.
    """
    stack = stack_population(users)
    step = max(block, (chunk // block) * block)
    dtype: type[np.floating] | None = None
    for start in range(0, rows.size, step):
        part = slice(start, min(rows.size, start + step))
        lab = rows[part]
        if stack is not None:
            x = stack.sample(lab, rng)
            dtype = dtype or stack.auto_dtype(x[:256])
            yield part, stack.scores(x, dtype)
        else:  # rows are sorted, so per-user blocks of samples line up with them
            ks, counts = np.unique(lab, return_counts=True)
            x = np.concatenate([users[k].sample(rng, size=int(c)) for k, c in zip(ks, counts, strict=True)])
            yield part, log_likelihood_matrix(users, x)


def _mc_attribution(
    users: tuple[UserDistribution, ...],
    per_user: int,
    t: int,
    rng: np.random.Generator,
    priors: Sequence[float] | np.ndarray | None,
    chunk: int,
) -> AttributionResult:
    k = len(users)
    if k < 2:
        raise ValueError(f"attribution needs at least 2 users, got {k}")
    if per_user < 1 or t < 1 or chunk < 1:
        raise ValueError(f"n_uploads, T and chunk must be >= 1, got {per_user}, {t}, {chunk}")
    pi = check_priors(priors, k)
    # Uniform prior: the same number of trials per user (stratified); otherwise the true user ~ pi.
    counts = np.full(k, per_user) if priors is None else rng.multinomial(per_user * k, pi)
    groups = np.repeat(np.arange(k), counts)
    with np.errstate(divide="ignore"):
        log_pi = None if priors is None else np.maximum(np.log(pi), -1e30)
    hits = 0
    stack = stack_population(users)
    rows = np.repeat(groups, t)
    if stack is not None:
        step = max(1, chunk // t)
        dtype: type[np.floating] | None = None
        for start in range(0, groups.size, step):
            truth = groups[start : start + step]
            x = stack.sample(rows[start * t : (start + truth.size) * t], rng)
            dtype = dtype or stack.auto_dtype(x[:256])
            hits += int(np.count_nonzero(stack.best(x, dtype, t, log_pi) == truth))
    else:
        for part, scores in _score_chunks(users, rows, rng, chunk, block=t):
            s = scores.reshape(-1, t, k).sum(axis=1) if t > 1 else scores  # product likelihood over the group
            if log_pi is not None:
                s = s + log_pi
            hits += int(np.count_nonzero(s.argmax(axis=1) == groups[part.start // t : part.stop // t]))
    n = int(groups.size)
    lo, hi = wilson_interval(hits, n)
    return AttributionResult(hits / n, lo, hi, float(pi.max()), n)


def bayes_attribution_fast(
    distributions: Sequence[UserDistribution], n_uploads: int, rng: np.random.Generator, *, chunk: int = 4096
) -> AttributionResult:
    """Monte-Carlo Bayes attribution accuracy (uniform prior), vectorised for large populations.

    Draws ``n_uploads`` fresh uploads per user and scores each against all K users with one float32
    matrix product per ``chunk`` uploads (float64 when score magnitudes would make float32 rounding exceed
    ~1e-3 nats, e.g. near-point-mass users). Gaussian, Beta and shared-basis populations are vectorised;
    others fall back to :func:`log_likelihood_matrix`. The same estimator as :func:`bayes_attribution`.
    """
    users = check_population(distributions)
    return _mc_attribution(users, int(n_uploads), 1, rng, None, int(chunk))


def linked_attribution(
    distributions: Sequence[UserDistribution],
    T: int,  # noqa: N803 - the paper's symbol for the number of linked uploads
    n_uploads: int,
    rng: np.random.Generator,
    priors: Sequence[float] | np.ndarray | None = None,
    *,
    chunk: int = 4096,
) -> AttributionResult:
    """Bayes attribution accuracy when T uploads are known to come from one (unknown) user.

    The attributor picks ``argmax_k log pi_k + sum_t log p_k(e_t)``; this is the Bayes rule for
    ``P_k^{(x)T}``, so for two equal-covariance Gaussians it equals ``Phi(sqrt(T) Delta / 2)``
    (arXiv:2501.06062, section 3). ``n_uploads`` linked groups per user (uniform prior) or ``n_uploads * K`` groups
    with users drawn from ``priors``; Wilson 95% interval over groups.
    """
    users = check_population(distributions)
    if int(T) != T or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T}")
    return _mc_attribution(users, int(n_uploads), int(T), rng, priors, int(chunk))


# ---------------------------------------------------------------------------------------- upper bounds
@dataclass(frozen=True)
class AttributionBounds:
    """Upper bounds on Bayes attribution accuracy (arXiv:2501.06062, section 3), each clipped to 1.

    ``tv_to_mean``: ``pi_max + sum_k pi_k TV(P_k, P_bar)`` with the sum estimated by Monte Carlo and
    raised by ``z`` standard errors; ``pairwise``: ``pi_max + min_j sum_{k != j} pi_k TV(P_j, P_k)`` (None
    when skipped), ``pairwise_method`` says how its TVs were obtained; ``upper_bound`` is the smaller.
    """

    tv_to_mean: float
    tv_to_mean_se: float
    pairwise: float | None
    pairwise_method: str
    upper_bound: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pairwise_tv_upper(
    users: tuple[UserDistribution, ...], rng: np.random.Generator, z: float, n: int
) -> tuple[np.ndarray | None, str]:
    family = population_family(users)
    if family is not None and family.shift_distances(users) is not None:
        return pairwise(users, "tv"), "exact (equal-std Gaussians)"
    if int(np.prod(users[0].shape)) == 1 and len(users) <= 50:
        return pairwise(users, "tv"), "exact 1-D integration"
    if family is not None and family.log_bc_matrix(users) is not None:
        return tv_sandwich(pairwise(users, "bc"))[1], "sqrt(1 - BC^2) from closed-form BC"
    if len(users) > 20:
        return None, "skipped (no closed form and K > 20)"
    tv = np.zeros((len(users), len(users)))
    for i in range(len(users)):
        for j in range(i + 1, len(users)):
            est, se, _ = total_variation_estimate(users[i], users[j], rng=rng, n_samples=n)
            tv[i, j] = tv[j, i] = min(1.0, est + z * se)
    return tv, f"pairwise TV (exact where possible, else Monte Carlo + {z:g} standard errors)"


def attribution_bounds(
    distributions: Sequence[UserDistribution],
    priors: Sequence[float] | np.ndarray | None = None,
    *,
    rng: np.random.Generator | None = None,
    n_samples: int = 20_000,
    pairwise_limit: int = 500,
    z: float = 3.0,
    chunk: int = 4096,
) -> AttributionBounds:
    """Both closed-form upper bounds (arXiv:2501.06062, section 3) on the Bayes attribution accuracy.

    Parameters
    ----------
    distributions : sequence of UserDistribution
        K >= 2 users of one shape.
    priors : array_like, shape ``(K,)``, optional
        Upload shares; uniform by default.
    rng : numpy Generator, optional
        For the Monte-Carlo parts; ``default_rng(0)`` by default.
    n_samples : int
        Uploads (users drawn from the prior) for the ``TV(P_k, P_bar)`` sum; its standard error is at most
        ``0.5/sqrt(n_samples)``. Cost: ``n_samples * K`` log-likelihoods.
    pairwise_limit : int
        Skip the pairwise bound above this many users (it costs ``O(K^2 D)``).
    z : float
        Standard errors added to Monte-Carlo TV estimates so the bound holds with high probability.
    """
    users = check_population(distributions, min_users=2)
    k = len(users)
    pi = check_priors(priors, k)
    rng = rng or np.random.default_rng(0)
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    labels = np.sort(rng.choice(k, size=int(n_samples), p=pi))
    with np.errstate(divide="ignore"):
        log_pi = np.log(pi)
    terms = np.concatenate(
        [
            tv_to_mean_terms(s, labels[part], log_pi.astype(s.dtype))
            for part, s in _score_chunks(users, labels, rng, chunk)
        ]
    )
    est, se = float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(terms.size))
    b1 = float(min(1.0, pi.max() + est + z * se))
    b2: float | None = None
    method = f"skipped (K > {pairwise_limit})"
    if k <= pairwise_limit:
        tv, method = _pairwise_tv_upper(users, rng, z, 20_000)
        b2 = None if tv is None else bound_from_pairwise_tv(tv, pi)
    return AttributionBounds(b1, se, b2, method, b1 if b2 is None else min(b1, b2))


def attribution_upper_bound(
    distributions: Sequence[UserDistribution], priors: Sequence[float] | np.ndarray | None = None, **kw: Any
) -> float:
    """The smaller of the two closed-form upper bounds on Bayes attribution accuracy (see
    :func:`attribution_bounds` for the keywords and methods)."""
    return attribution_bounds(distributions, priors, **kw).upper_bound

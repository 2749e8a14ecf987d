"""The measurements behind :func:`veil.privacy_analysis.audit.run_audit`, one function per report section.

Each takes the population (and what it needs of the audit's settings) and returns a JSON-ready dict. The
heavy math lives in the sibling modules (``attribution``, ``bounds``, ``distances``, ``gdp``,
``identifiability``, ``attacks``), imported on first use so that ``veil audit --help`` stays fast.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.client_sdk.distributions.divergences import stds_equal, tv_bound
from veil.privacy_analysis import gdp
from veil.privacy_analysis.attacks import run_attacks
from veil.privacy_analysis.distances import pairwise
from veil.privacy_analysis.families import population_family
from veil.privacy_analysis.identifiability import identifiability_test

__all__ = [
    "GDP_DELTA",
    "lookup",
    "measure_attacks",
    "measure_bayes",
    "measure_gdp",
    "measure_identifiability",
    "measure_pairwise_tv",
    "measure_tv_to_prior",
]

GDP_DELTA = 1e-5
"""The delta at which the Gaussian-DP epsilon is reported."""


def lookup(*names: str) -> Any:
    """The first of ``names`` found in the attribution or bounds modules (imported on first use)."""
    for name in names:
        for module in ("veil.privacy_analysis.attribution", "veil.privacy_analysis.bounds"):
            fn = getattr(importlib.import_module(module), name, None)
            if fn is not None:
                return fn
    raise ImportError(f"none of {names} is available in veil.privacy_analysis.attribution or .bounds")


def measure_bayes(dists: list[UserDistribution], n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Bayes attribution of one upload: Monte Carlo (``n`` uploads per user), exact when ``D = 1``."""
    res = lookup("bayes_attribution_fast", "bayes_attribution")(dists, n, rng)
    out: dict[str, Any] = {
        "accuracy": res.accuracy,
        "ci": [res.ci_low, res.ci_high],
        "method": "monte_carlo",
        "n_uploads": len(dists) * n,
    }
    rows, cols = dists[0].shape
    if rows * cols == 1 and len(dists) <= 200:  # one number per upload: integrate exactly
        exact = float(lookup("exact_bayes_attribution")(dists))
        out["monte_carlo"] = {"accuracy": res.accuracy, "ci": [res.ci_low, res.ci_high]}
        out.update(accuracy=exact, ci=[exact, exact], method="exact")
    return out


def _subset(k: int, m: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(k) if k <= m else np.sort(rng.choice(k, size=m, replace=False))


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


def measure_pairwise_tv(
    dists: list[UserDistribution], m: int, rng: np.random.Generator
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Pairwise TV summary over at most ``m`` users, and the full matrix when nobody was left out."""
    idx = _subset(len(dists), m, rng)
    matrix = np.asarray(pairwise([dists[i] for i in idx], measure="tv"), dtype=np.float64)
    off = _off_diagonal(matrix)
    summary = {
        "n_users": int(idx.size),
        "sampled": bool(idx.size < len(dists)),
        "max": float(off.max()),
        "mean": float(off.mean()),
        "median": float(np.median(off)),
        "min": float(off.min()),
    }
    return summary, (matrix if idx.size == len(dists) else None)


def measure_tv_to_prior(dists: list[UserDistribution], prior: UserDistribution) -> dict[str, Any]:
    """Each user's TV bound to the prior, exactly as the device guard computes it (closed forms)."""
    values = np.array([tv_bound(d, prior) for d in dists])
    return {"max": float(values.max()), "mean": float(values.mean()), "measure": "closed-form upper bound"}


def measure_gdp(
    dists: list[UserDistribution], linked: Sequence[int], pairwise_users: int, rng: np.random.Generator
) -> dict[str, Any] | None:
    """Pairwise Gaussian-DP mu: exact over every pair when all users share one std.

    "One std" as :func:`~veil.client_sdk.distributions.divergences.gaussian_mu` and the device guard judge
    it: :func:`~veil.client_sdk.distributions.divergences.stds_equal` for every pair, whose worst pair is
    the smallest and the largest std of each coordinate. ``mu_max`` is then the largest ``gaussian_mu``
    over all pairs, by one Gram product. With different stds no finite mu holds (``gaussian_mu`` raises
    ``UnequalCovarianceError``): ``mu_max`` is ``None`` (``inf`` for the policy) and ``mu_pooled_max``
    summarises the mean separation only.
    """
    family = population_family(dists)
    if family is None or family.name != "gaussian":  # Gaussian DP is about Gaussians (prototypes included)
        return None

    stds = np.stack([d.std for d in dists])  # type: ignore[attr-defined]  # (K, n_tokens, dim)
    std = stds[0]
    if not stds_equal(stds.min(axis=0), stds.max(axis=0)):
        idx = _subset(len(dists), pairwise_users, rng)
        pooled = max(
            float(gdp.gaussian_pair_mu(dists[i], dists[j], covariance="pooled"))
            for a, i in enumerate(idx)
            for j in idx[a + 1 :]
        )
        return {
            "mu_max": None,
            "finite": False,
            "mu_pooled_max": pooled,
            "n_users": int(idx.size),
            "sampled": bool(idx.size < len(dists)),
            "note": "the users' stds differ: no finite Gaussian-DP mu holds; see the TV figures",
        }
    z = np.stack([(d.loc / std).ravel() for d in dists])  # type: ignore[attr-defined]  # (K, D)
    mu_max = _max_pairwise_distance(z)
    linked = {str(t): float(gdp.linked_mu(mu_max, t)) for t in linked}
    eps = {t: _finite(gdp.gdp_epsilon(GDP_DELTA, mu)) for t, mu in linked.items()}
    return {
        "mu_max": mu_max,
        "finite": True,
        "n_users": len(dists),
        "sampled": False,
        "linked_mu": linked,
        "delta": GDP_DELTA,
        "epsilon": eps,
    }


def _max_pairwise_distance(z: np.ndarray, chunk: int = 1024) -> float:
    """Largest Euclidean distance between rows of ``z`` ``(K, D)``, in ``(chunk, K)`` blocks."""
    sq = np.einsum("ij,ij->i", z, z)
    best = 0.0
    for start in range(0, z.shape[0], chunk):
        block = z[start : start + chunk]
        d2 = sq[start : start + chunk, None] + sq[None, :] - 2.0 * block @ z.T  # (chunk, K)
        best = max(best, float(d2.max()))
    return math.sqrt(max(best, 0.0))


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def measure_identifiability(
    dists: list[UserDistribution], m: int, rng: np.random.Generator
) -> dict[str, Any] | None:
    """Gram-matrix identifiability test of the pooled stream on at most ``m`` users."""
    idx = _subset(len(dists), m, rng)
    res = identifiability_test([dists[i] for i in idx])
    return {
        "identifiable": bool(res.identifiable),
        "rank": int(res.rank),
        "n": int(res.n),
        "smallest_eigenvalue": float(res.smallest_eigenvalue),
        "method": str(res.method),
        "sampled": bool(idx.size < len(dists)),
    }


def measure_attacks(
    dists: list[UserDistribution],
    attack_users: int,
    uploads_per_user: int,
    rng: np.random.Generator,
    texts: Sequence[str] | None,
    uploads: np.ndarray | None,
    owners: np.ndarray | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The practical attacks, on the given uploads or on fresh samples of at most ``attack_users`` users.

    The Bayes ceiling (``bayes_known_parameters``) runs on the same uploads, so each attack can be read
    against it without sampling noise between them.
    """
    if uploads is not None and owners is not None:
        results = run_attacks(dists, np.asarray(uploads), np.asarray(owners), rng, texts=texts)
        context = {"users": len(dists), "uploads": int(len(owners)), "source": "given uploads"}
    else:
        idx = _subset(len(dists), attack_users, rng)
        sub = [dists[i] for i in idx]
        n = uploads_per_user
        samples = np.concatenate([d.sample(rng, size=n) for d in sub])  # (m * n, n_tokens, dim)
        who = np.repeat(np.arange(len(sub)), n)
        results = run_attacks(sub, samples, who, rng)
        context = {
            "users": len(sub),
            "uploads": int(who.size),
            "source": "fresh samples",
            "sampled": len(sub) < len(dists),
        }
    return [r.as_dict() for r in results], context

"""Per-user diagonal Gaussian fits: the Bayes rule with the parameters estimated from labelled uploads.

The attacker of :mod:`~veil.privacy_analysis.attacks.learned` (a labelled share of the uploads) fits one
diagonal Gaussian per user, mean and variance by maximum likelihood on that user's labelled uploads, and
attributes every other upload to the user under whose fit it is most likely (the plug-in rule of
:mod:`~veil.privacy_analysis.attacks.bayes`, uniform prior). Choices left open: variances are clamped
from below at ``var_floor`` times the pooled variance of the coordinate (1 where that is 0), which keeps
the likelihood finite for users whose uploads never vary (a codebook's prototype); users whose fits are
identical tie exactly, and ties are broken uniformly at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veil.privacy_analysis.attacks.base import AttackResult, as_features, check_aux, check_owners, make_result
from veil.privacy_analysis.attacks.registry import Attack, AttackInput, register
from veil.privacy_analysis.attacks.selection import argmax_random_ties, row_blocks, unique_rows

__all__ = ["GaussianFit", "GaussianFitConfig", "fit_user_gaussians", "gaussian_fit_attack"]


@dataclass(frozen=True)
class GaussianFitConfig:
    """Settings of the per-user Gaussian attributor.

    Attributes
    ----------
    var_floor : float
        Lower bound on every fitted variance, relative to the pooled variance of that coordinate over the
        labelled uploads (default 1e-6, as :class:`~veil.privacy_analysis.attacks.clustering.GMMConfig`).
    block_elements : int
        Most entries of one block of the ``(uploads, users)`` likelihood matrix (default 2**22, 32 MiB of
        float64); bounds the memory, not the result.
    """

    var_floor: float = 1e-6
    block_elements: int = 2**22

    def __post_init__(self) -> None:
        if not self.var_floor > 0:
            raise ValueError(f"var_floor must be > 0, got {self.var_floor}")
        if self.block_elements < 1:
            raise ValueError(f"block_elements must be >= 1, got {self.block_elements}")


@dataclass(frozen=True, eq=False)
class GaussianFit:
    """One diagonal Gaussian per user.

    Attributes
    ----------
    means, variances : ndarray ``(K, D)``
        Variances already floored.
    floored : float
        Share of the variances raised to the floor.
    """

    means: np.ndarray
    variances: np.ndarray
    floored: float

    def log_likelihoods(self, x: np.ndarray) -> np.ndarray:
        """``(N, K)`` log densities of ``x`` ``(N, D)`` under every user's fit.

        Users with identical fits get bit-identical columns: each distinct fit is scored once.
        """
        params, fit_of = unique_rows(np.concatenate([self.means, self.variances], axis=1))
        d = self.means.shape[1]
        mu, var = params[:, :d], params[:, d:]  # (F, D) each, F distinct fits
        centre = mu.mean(axis=0)  # centring keeps the expanded square accurate far from the origin
        mu = mu - centre
        inv = 1.0 / var
        const = np.sum(mu * mu * inv, axis=1) + np.sum(np.log(var), axis=1) + d * np.log(2.0 * np.pi)  # (F,)
        z = x - centre
        quad = (z * z) @ inv.T - 2.0 * (z @ (mu * inv).T)  # (N, F); BLAS: few large products
        return -0.5 * (quad + const[None, :])[:, fit_of]


def fit_user_gaussians(x: np.ndarray, owners: np.ndarray, k: int, var_floor: float = 1e-6) -> GaussianFit:
    """Maximum-likelihood diagonal Gaussian of every user's rows of ``x`` ``(N, D)``, variances floored.

    Raises
    ------
    ValueError
        If a user in ``[0, k)`` has no row.
    """
    counts = np.bincount(owners, minlength=k)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0)
        raise ValueError(f"every user needs a labelled upload; {missing.size} have none, e.g. {missing[:5]}")
    order = np.argsort(owners, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (K,) first sorted row of every user
    # Moments about each user's first upload: a user whose uploads never vary gets that upload back as
    # its mean bit for bit and a variance of exactly 0, so users sharing a prototype get identical fits.
    first = x[order[starts]]  # (K, D)
    z = x[order] - np.repeat(first, counts, axis=0)
    shift = np.add.reduceat(z, starts, axis=0) / counts[:, None]  # (K, D)
    variances = np.maximum(np.add.reduceat(z * z, starts, axis=0) / counts[:, None] - shift**2, 0.0)
    pooled = np.var(x - x[0], axis=0)  # about a sample, so that a constant coordinate gets exactly 0
    floor = var_floor * np.where(pooled > 0, pooled, 1.0)  # (D,)
    floored = variances < floor[None, :]
    return GaussianFit(first + shift, np.where(floored, floor[None, :], variances), float(floored.mean()))


def gaussian_fit_attack(
    uploads: np.ndarray,
    owners: np.ndarray,
    k: int,
    aux: np.ndarray,
    rng: np.random.Generator,
    config: GaussianFitConfig | None = None,
) -> AttackResult:
    """Fit every user's Gaussian on the auxiliary uploads, attribute the rest by maximum likelihood.

    Parameters
    ----------
    uploads : ndarray, shape ``(N, n_tokens, dim)`` or ``(N, dim)``
    owners : ndarray of int, shape ``(N,)``
    k : int
        Number of users; each needs at least one auxiliary upload.
    aux : ndarray of bool, shape ``(N,)``
        The labelled uploads; the others are evaluated.
    rng : numpy.random.Generator
        Breaks ties.
    config : GaussianFitConfig, optional

    Returns
    -------
    AttackResult
        ``name="gaussian_fit"``; details ``n_aux``, ``floored_variance_share`` and ``var_floor``.
    """
    cfg = config or GaussianFitConfig()
    x = as_features(uploads)
    o = check_owners(owners, x.shape[0], k)
    aux = check_aux(aux, o.size)
    fit = fit_user_gaussians(x[aux], o[aux], k, cfg.var_floor)
    predictions = np.full(o.size, -1, dtype=np.int64)
    evaluated = np.flatnonzero(~aux)
    for rows in row_blocks(evaluated.size, k, cfg.block_elements):
        predictions[evaluated[rows]] = argmax_random_ties(fit.log_likelihoods(x[evaluated[rows]]), rng)
    details = {"n_aux": int(aux.sum()), "floored_variance_share": fit.floored, "var_floor": cfg.var_floor}
    return make_result("gaussian_fit", o, predictions, k, details)


def _run(inp: AttackInput, config: GaussianFitConfig) -> AttackResult:
    inp.require("gaussian_fit", "aux")
    return gaussian_fit_attack(inp.uploads, inp.owners, inp.k, inp.aux, inp.rng, config)  # type: ignore[arg-type]


register(Attack("gaussian_fit", GaussianFitConfig, _run))

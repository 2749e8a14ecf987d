"""Diagonal Gaussians in the privacy analysis: marginals, the stacked population, closed forms, the spec.

* marginals: quantiles ``m + s Phi^{-1}(u)``, interval masses from ``Phi`` (through the survival function
  in the upper tail, so far tails keep their relative precision);
* stacked log-likelihood: linear in ``(y^2, y)`` with ``y = x - centre``, in ``y`` alone when every user
  shares one std (:mod:`veil.privacy_analysis._stacked`);
* closed forms: the Bhattacharyya coefficient and ``TV = 2 Phi(Delta/2) - 1`` for equal stds (the phone's
  :mod:`veil.client_sdk.distributions.divergences`), and the L2 Gram matrix
  ``integral N(x; m_i, S_i) N(x; m_j, S_j) dx = N(m_i; m_j, S_i + S_j)`` (Yakowitz & Spragins 1968; used by
  :mod:`veil.privacy_analysis.identifiability`).

Subclasses with a family name of their own (a codebook's prototypes) are analysed as Gaussians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from scipy import special

from veil.client_sdk.distributions import GaussianDistribution, UserDistribution
from veil.client_sdk.distributions.divergences import gaussian_mu, gaussian_shift_tv, log_bc_gaussian
from veil.client_sdk.distributions.noise import gaussian_sample_from_noise
from veil.privacy_analysis._stacked import LinearStack
from veil.privacy_analysis.families.base import GeneratorSettings, ProductFamily, row_blocks

__all__ = ["GaussianFamily", "GaussianStack"]


class GaussianStack(LinearStack):
    """K diagonal Gaussians: ``log p_k(x) = -1/2 y^2 . (1/s_k^2) + y . (m_k/s_k^2) + c_k``, ``y = x - centre``.

    Parameters
    ----------
    loc, std : ndarray, shape ``(K, D)``
        Every user's flattened means and standard deviations.
    """

    def __init__(self, loc: np.ndarray, std: np.ndarray) -> None:
        self.loc, self.std = loc, std
        self.centre = loc.mean(axis=0)
        m = loc - self.centre
        prec = 1.0 / (std * std)
        self.equal_std = bool(np.all(std == std[0]))
        log_norm = np.log(std).sum(axis=1) + 0.5 * math.log(2.0 * math.pi) * std.shape[1]
        bias = -0.5 * np.sum(m * m * prec, axis=1) - log_norm
        if self.equal_std:  # the -1/2 y^2 / s^2 term is the same for every user: row_term carries it
            super().__init__((m * prec).T, bias)
        else:
            super().__init__(np.concatenate([-0.5 * prec, m * prec], axis=1).T, bias)

    def features(self, x: np.ndarray) -> np.ndarray:
        y = x - self.centre
        return y if self.equal_std else np.concatenate([y * y, y], axis=1)

    def row_term(self, x: np.ndarray) -> np.ndarray:
        if self.equal_std:
            y = (x - self.centre) / self.std[0]
            return -0.5 * np.einsum("nd,nd->n", y, y)
        return np.zeros(x.shape[0])

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The phone's sampler (:func:`gaussian_sample_from_noise`), one row per label."""
        normal = rng.standard_normal((labels.size, self.loc.shape[1]))
        return gaussian_sample_from_noise(self.loc[labels], np.log(self.std[labels]), normal)


class GaussianFamily(ProductFamily):
    """Diagonal Gaussians ``N(loc, diag std^2)``; flat parameters ``(loc, std)``."""

    name: ClassVar[str] = "gaussian"
    spec_params: ClassVar[tuple[str, ...]] = ("mean", "std")
    spec_positive: ClassVar[tuple[str, ...]] = ("std",)

    def flat_params(self, d: UserDistribution) -> tuple[np.ndarray, np.ndarray]:
        return d.loc.ravel(), d.std.ravel()  # type: ignore[attr-defined]

    def build(self, a: np.ndarray, b: np.ndarray) -> UserDistribution:
        return GaussianDistribution(a, b)

    def coordinate_quantiles(self, d: UserDistribution, levels: np.ndarray) -> np.ndarray:
        a, b = self.flat_params(d)
        return a[:, None] + b[:, None] * special.ndtri(levels)[None, :]

    def interval_mass(self, d: UserDistribution, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        a, b = self.flat_params(d)
        a, b = a[axis], b[axis]
        zl, zh = (lo - a) / b, (hi - a) / b
        # Upper-tail intervals through the survival function, so far tails keep their relative precision.
        upper = zl > 0
        out = np.where(upper, special.ndtr(-zl) - special.ndtr(-zh), special.ndtr(zh) - special.ndtr(zl))
        return np.maximum(out, 0.0)

    def stack(self, dists: Sequence[UserDistribution]) -> GaussianStack:
        return GaussianStack(*self.stacked_params(dists))

    def log_bc_matrix(self, dists: Sequence[UserDistribution]) -> np.ndarray:
        return self.pairwise_blocks(log_bc_gaussian, dists)

    def shift_distances(self, dists: Sequence[UserDistribution]) -> np.ndarray | None:
        std = dists[0].std.ravel()  # type: ignore[attr-defined]
        if not all(np.array_equal(d.std.ravel(), std) for d in dists):  # type: ignore[attr-defined]
            return None
        z = np.stack([d.loc.ravel() for d in dists]) / std  # type: ignore[attr-defined]
        sq = np.sum(z * z, axis=1)
        return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0))

    def closed_form_tv(self, p: UserDistribution, q: UserDistribution) -> float | None:
        if not np.array_equal(self.flat_params(p)[1], self.flat_params(q)[1]):
            return None
        return float(gaussian_shift_tv(gaussian_mu(p, q)))  # type: ignore[arg-type]

    def log_gram(self, dists: Sequence[UserDistribution]) -> tuple[np.ndarray, str]:
        loc, std = self.stacked_params(dists)
        out = np.empty((loc.shape[0], loc.shape[0]))
        var = std * std
        for blk in row_blocks(*loc.shape):
            v = var[blk, None, :] + var[None]
            diff = loc[blk, None, :] - loc[None]
            out[blk] = np.sum(-0.5 * np.log(2.0 * np.pi * v) - diff * diff / (2.0 * v), axis=-1)
        return out, "L2 Gram matrix, closed form"

    def generate(
        self, rng: np.random.Generator, settings: GeneratorSettings
    ) -> tuple[list[UserDistribution], UserDistribution]:
        """``mean_i ~ N(0, spread^2 I)``, ``std_i = std``; prior ``N(0, std^2 I)``."""
        means = settings.spread * rng.standard_normal((settings.users, *settings.shape))
        std = np.full(settings.shape, float(settings.std))
        dists: list[UserDistribution] = [GaussianDistribution(m, std) for m in means]
        return dists, GaussianDistribution(np.zeros(settings.shape), std)

    def average(self, dists: Sequence[UserDistribution]) -> UserDistribution:
        """Mean of the means, root-mean-square std."""
        loc = np.mean([d.loc for d in dists], axis=0)  # type: ignore[attr-defined]
        std = np.sqrt(np.mean([d.std**2 for d in dists], axis=0))  # type: ignore[attr-defined]
        return GaussianDistribution(loc, std)

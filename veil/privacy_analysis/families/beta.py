"""Independent Betas per coordinate in the privacy analysis: marginals, the stacked population, closed forms.

* marginals: quantiles and interval masses from the regularised incomplete Beta function (its complement
  above the mean, so upper-tail masses keep their relative precision);
* stacked log-likelihood: ``log x . (a_k - 1) + log(1 - x) . (b_k - 1) - sum log B(a_k, b_k)``
  (:mod:`veil.privacy_analysis._stacked`);
* closed forms: the Bhattacharyya coefficient (the phone's
  :mod:`veil.client_sdk.distributions.divergences`) and the L2 Gram matrix
  ``B(a_i + a_j - 1, b_i + b_j - 1) / (B(a_i, b_i) B(a_j, b_j))`` per coordinate, finite iff
  ``a_i + a_j > 1`` and ``b_i + b_j > 1`` (used by :mod:`veil.privacy_analysis.identifiability`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import ClassVar

import numpy as np
from scipy import special

from veil.client_sdk.distributions import BetaDistribution, UserDistribution
from veil.client_sdk.distributions.divergences import log_bc_beta
from veil.client_sdk.distributions.noise import BetaConstruction, beta_sample_from_noise
from veil.privacy_analysis._stacked import LinearStack
from veil.privacy_analysis.families.base import GeneratorSettings, ProductFamily, row_blocks

__all__ = ["BetaFamily", "BetaStack"]

# scipy's betaln: faster than math.lgamma on large batches
_LOG_BC = partial(log_bc_beta, betaln=special.betaln)


class BetaStack(LinearStack):
    """K products of Betas: ``log p_k(x) = log x . (a_k - 1) + log(1 - x) . (b_k - 1) - sum log B(a_k, b_k)``.

    Parameters
    ----------
    alpha, beta : ndarray, shape ``(K, D)``
        Every user's flattened parameters.
    """

    def __init__(self, alpha: np.ndarray, beta: np.ndarray) -> None:
        self.alpha, self.beta = alpha, beta
        bias = -special.betaln(alpha, beta).sum(axis=1)
        super().__init__(np.concatenate([alpha - 1.0, beta - 1.0], axis=1).T, bias)

    def features(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.concatenate([np.log(x), np.log1p(-x)], axis=1)

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The phone's construction (:func:`beta_sample_from_noise`), every coordinate of every row
        independent, so the ``(N, D)`` rows are drawn as one ``(n_tokens, dim)`` event."""
        a, b = self.alpha[labels], self.beta[labels]
        cfg = BetaConstruction()
        normal = rng.standard_normal(cfg.normal_shape(1, *a.shape))
        uniform = rng.random(cfg.uniform_shape(1, *a.shape))
        return beta_sample_from_noise(np.log(a) - np.log(b), np.log(a + b), normal, uniform, cfg)[0]


class BetaFamily(ProductFamily):
    """Products of ``Beta(alpha, beta)``; flat parameters ``(alpha, beta)``."""

    name: ClassVar[str] = "beta"
    spec_params: ClassVar[tuple[str, ...]] = ("alpha", "beta")
    spec_positive: ClassVar[tuple[str, ...]] = ("alpha", "beta")

    def flat_params(self, d: UserDistribution) -> tuple[np.ndarray, np.ndarray]:
        return d.alpha.ravel(), d.beta.ravel()  # type: ignore[attr-defined]

    def build(self, a: np.ndarray, b: np.ndarray) -> UserDistribution:
        return BetaDistribution(a, b)

    def coordinate_quantiles(self, d: UserDistribution, levels: np.ndarray) -> np.ndarray:
        a, b = self.flat_params(d)
        return special.betaincinv(a[:, None], b[:, None], levels[None, :])

    def interval_mass(self, d: UserDistribution, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        a, b = self.flat_params(d)
        a, b = a[axis], b[axis]
        lo_c, hi_c = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
        upper = lo_c > a / (a + b)
        out = np.where(
            upper,
            special.betaincc(a, b, lo_c) - special.betaincc(a, b, hi_c),
            special.betainc(a, b, hi_c) - special.betainc(a, b, lo_c),
        )
        return np.maximum(out, 0.0)

    def stack(self, dists: Sequence[UserDistribution]) -> BetaStack:
        return BetaStack(*self.stacked_params(dists))

    def log_bc_matrix(self, dists: Sequence[UserDistribution]) -> np.ndarray:
        return self.pairwise_blocks(_LOG_BC, dists)

    def log_gram(self, dists: Sequence[UserDistribution]) -> tuple[np.ndarray, str] | None:
        a, b = self.stacked_params(dists)
        out = np.empty((a.shape[0], a.shape[0]))
        norm = special.betaln(a, b)
        for blk in row_blocks(*a.shape):
            sa, sb = a[blk, None, :] + a[None] - 1.0, b[blk, None, :] + b[None] - 1.0
            if np.any(sa <= 0) or np.any(sb <= 0):
                return None  # some p_i p_j is not integrable: no L2 Gram matrix
            out[blk] = np.sum(special.betaln(sa, sb) - norm[blk, None, :] - norm[None], axis=-1)
        return out, "L2 Gram matrix, closed form"

    def generate(
        self, rng: np.random.Generator, settings: GeneratorSettings
    ) -> tuple[list[UserDistribution], UserDistribution]:
        """``logit(mean_i) ~ N(0, spread^2 I)`` at concentration ``concentration``; prior mean 1/2."""
        logits = settings.spread * rng.standard_normal((settings.users, *settings.shape))
        means = 1.0 / (1.0 + np.exp(-logits))
        dists: list[UserDistribution] = [
            BetaDistribution.from_mean_concentration(m, settings.concentration) for m in means
        ]
        prior = BetaDistribution.from_mean_concentration(np.full(settings.shape, 0.5), settings.concentration)
        return dists, prior

    def average(self, dists: Sequence[UserDistribution]) -> UserDistribution:
        """Mean of the means and of the concentrations."""
        mean = np.mean([d.mean() for d in dists], axis=0)
        conc = np.mean([d.alpha + d.beta for d in dists], axis=0)  # type: ignore[attr-defined]
        return BetaDistribution.from_mean_concentration(mean, conc)

"""Shared-basis mixtures in the privacy analysis: each user ``P_i = sum_k W_ik B_k`` over public components.

The family is a wrapper around its basis's: atoms are the weighted components, the stacked
log-likelihood is ``log p_i(x) = M(x) + log(exp(L_B(x) - M(x)) @ w_i)`` over the basis's stacked
log-likelihoods ``L_B`` (``M`` their row maximum), and the L2 Gram matrix is ``G = W G_B W^T``, so
``rank G <= rank W <= K``: with more users than components the pooled stream is not identifiable
(Yakowitz & Spragins 1968). Mixtures over one basis have ``TV <= 0.5 ||w_i - w_j||_1`` (joint convexity),
which clips Monte-Carlo estimates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from veil.client_sdk.distributions import BasisMixtureDistribution, GaussianDistribution, UserDistribution
from veil.client_sdk.distributions.divergences import mixture_tv_bound, same_basis
from veil.client_sdk.distributions.noise import categorical_from_noise
from veil.privacy_analysis._stacked import NEVER, StackedPopulation
from veil.privacy_analysis.families.base import GeneratorSettings, PrivacyFamily
from veil.privacy_analysis.families.registry import population_family, same_params
from veil.privacy_analysis.families.spec_fields import SpecError, only_keys, read_vector

__all__ = ["BasisMixtureFamily", "MixtureStack"]

_SIMPLEX_TOL = 1e-6


class MixtureStack(StackedPopulation):
    """K mixtures over one stacked basis.

    Parameters
    ----------
    weights : ndarray, shape ``(K, n_basis)``
        Every user's mixture weights.
    basis : StackedPopulation
        The basis components, stacked (``n_basis`` "users").
    """

    def __init__(self, weights: np.ndarray, basis: StackedPopulation) -> None:
        self.weights, self.basis = weights, basis
        self.k = int(weights.shape[0])
        self._bias = np.zeros(self.k)

    def scores(
        self, x: np.ndarray, dtype: type[np.floating] = np.float64, log_prior: np.ndarray | None = None
    ) -> np.ndarray:
        bias = self._bias if log_prior is None else self._bias + np.maximum(log_prior, NEVER)
        lb = self.basis.log_likelihood(x)  # (N, n_basis), float64
        top = lb.max(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            out = np.log(np.exp(lb - top) @ self.weights.T) + top + bias
        return np.maximum(out, NEVER).astype(dtype, copy=False)

    def best(
        self,
        x: np.ndarray,
        dtype: type[np.floating] = np.float32,
        group: int = 1,
        log_prior: np.ndarray | None = None,
    ) -> np.ndarray:
        # Always float64: the log-sum-exp over the basis is not one matrix product of bounded terms.
        s = self.scores(x, np.float64, None).reshape(x.shape[0] // group, group, self.k).sum(axis=1)
        if log_prior is not None:
            s += np.maximum(log_prior, NEVER)
        return s.argmax(axis=1)

    def log_likelihood(self, x: np.ndarray, dtype: type[np.floating] = np.float64) -> np.ndarray:
        return self.scores(x, dtype)

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logits = np.log(np.maximum(self.weights[labels], np.finfo(np.float64).tiny))  # (N, n_basis)
        comp = categorical_from_noise(logits, rng.random(logits.shape))  # the phone's Gumbel-max choice
        return self.basis.sample(comp, rng)


class BasisMixtureFamily(PrivacyFamily):
    """Per-user weights over a public basis of product laws (:class:`BasisMixtureDistribution`)."""

    name: ClassVar[str] = "basis_mixture"
    takes_basis: ClassVar[bool] = True
    spec_params: ClassVar[tuple[str, ...]] = ("weights",)

    def same_params(self, p: UserDistribution, q: UserDistribution) -> bool:
        if len(p.basis) != len(q.basis):  # type: ignore[attr-defined]
            return False
        return bool(np.array_equal(p.weights, q.weights)) and all(  # type: ignore[attr-defined]
            same_params(a, b)
            for a, b in zip(p.basis, q.basis, strict=True)  # type: ignore[attr-defined]
        )

    def atoms(self, d: UserDistribution) -> list[tuple[float, UserDistribution]]:
        return [(float(w), c) for w, c in zip(d.weights, d.basis, strict=True) if w > 0]  # type: ignore[attr-defined]

    def shared_basis(self, dists: Sequence[UserDistribution]) -> tuple[UserDistribution, ...] | None:
        first = dists[0].basis  # type: ignore[attr-defined]
        for d in dists[1:]:
            basis = d.basis  # type: ignore[attr-defined]
            if basis is first:
                continue
            if len(basis) != len(first) or not all(
                a is b or same_params(a, b) for a, b in zip(basis, first, strict=True)
            ):
                return None
        return first

    def stack(self, dists: Sequence[UserDistribution]) -> MixtureStack | None:
        basis = self.shared_basis(dists)
        family = None if basis is None else population_family(basis)
        inner = None if family is None else family.stack(basis)  # type: ignore[arg-type]
        if inner is None:
            return None
        return MixtureStack(np.stack([d.weights for d in dists]), inner)  # type: ignore[attr-defined]

    def tv_upper_bound(self, p: UserDistribution, q: UserDistribution) -> float | None:
        if not same_basis(p, q):  # type: ignore[arg-type]
            return None
        return mixture_tv_bound(p, q)  # type: ignore[arg-type]

    def log_gram(self, dists: Sequence[UserDistribution]) -> tuple[np.ndarray, str] | None:
        basis = self.shared_basis(dists)
        family = None if basis is None else population_family(basis)
        inner = None if family is None else family.log_gram(basis)  # type: ignore[arg-type]
        if inner is None:
            return None
        log_gb = inner[0]
        w = np.stack([d.weights for d in dists])  # type: ignore[attr-defined]  # (n, K)
        top = float(log_gb.max())
        with np.errstate(divide="ignore"):
            log_g = np.log(np.maximum(w @ np.exp(log_gb - top) @ w.T, 0.0)) + top
        return log_g, "L2 Gram matrix W G_B W^T, closed form"

    def read_member(
        self, entry: Mapping[str, Any], where: str, basis: Sequence[UserDistribution] | None
    ) -> UserDistribution:
        only_keys(entry, {"weights"}, where)
        if basis is None:
            raise SpecError("basis: the basis_mixture family needs a top-level 'basis' list of components")
        weights = read_vector(entry, "weights", where)
        if weights.size != len(basis):
            raise SpecError(
                f"{where}.weights: needs {len(basis)} entries (one per basis element), got {weights.size}"
            )
        if np.any(weights < 0):
            raise SpecError(
                f"{where}.weights: must be >= 0 (a probability vector), got min {weights.min():g}"
            )
        if abs(float(weights.sum()) - 1.0) > _SIMPLEX_TOL:
            raise SpecError(
                f"{where}.weights: must sum to 1 (a probability vector), got sum {weights.sum():g}"
            )
        return BasisMixtureDistribution(basis, weights)

    def generate(
        self, rng: np.random.Generator, settings: GeneratorSettings
    ) -> tuple[list[UserDistribution], UserDistribution]:
        """A basis of ``basis_size`` Gaussians ``N(b_k, I)`` with ``b_k ~ N(0, I)``; weights
        ``softmax(spread * z_i)`` with ``z_i ~ N(0, I_K)``; prior: uniform weights."""
        shape, size = settings.shape, settings.basis_size
        basis = [GaussianDistribution(rng.standard_normal(shape), np.ones(shape)) for _ in range(size)]
        z = settings.spread * rng.standard_normal((settings.users, size))
        weights = np.exp(z - z.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        dists: list[UserDistribution] = [BasisMixtureDistribution(basis, w) for w in weights]
        return dists, BasisMixtureDistribution(basis, np.full(size, 1.0 / size))

    def average(self, dists: Sequence[UserDistribution]) -> UserDistribution:
        """The average weights over the first user's basis: exactly the pooled law."""
        weights = np.mean([d.weights for d in dists], axis=0)  # type: ignore[attr-defined]
        return BasisMixtureDistribution(dists[0].basis, weights)  # type: ignore[attr-defined]

"""Independent Beta distributions per coordinate: the family of IDfree-PL's released code.

IDfree-PL (arXiv:2501.06062, section 2.2) gives every user ``alpha, beta`` of shape ``(n_tokens, d_model)``
and samples ``Beta(alpha, beta).rsample()``. The phone samples by the noise-driven construction its ONNX
graph also runs (:mod:`veil.client_sdk.distributions.noise`: Gamma variates by boosted Marsaglia-Tsang
rejection with a fixed number of rounds) and differentiates through the accepted proposal; a sample whose
noise is unknown gets the implicit-reparameterisation gradient (Figurnov, Mohamed & Mnih 2018,
arXiv:1805.08498). The optimiser works on ``logit(mean)`` and ``log(concentration)``, which keep
``alpha, beta > 0`` without clipping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from veil.client_sdk.distributions._special import beta_implicit_grad, log_beta, sigmoid
from veil.client_sdk.distributions.base import UserDistribution, as_param, check_sample_shape
from veil.client_sdk.distributions.noise import BetaConstruction, beta_sample_from_noise, beta_vjp_from_noise

__all__ = ["BetaDistribution"]


def _construction_of(normal: np.ndarray, uniform: np.ndarray) -> BetaConstruction:
    """The construction constants noise of these shapes was drawn for (rounds and boost)."""
    rounds = int(np.shape(normal)[2])
    return BetaConstruction(rounds=rounds, boost=int(np.shape(uniform)[2]) - rounds)


class BetaDistribution(UserDistribution):
    """``x[i, j] ~ Beta(alpha[i, j], beta[i, j])`` independently.

    Parameters
    ----------
    alpha, beta : array_like, shape ``(n_tokens, dim)``
        Positive, finite shape parameters.

    Notes
    -----
    Unconstrained parameters: ``logit_mean = log(alpha) - log(beta)`` and
    ``log_concentration = log(alpha + beta)``.
    """

    family: ClassVar[str] = "beta"
    capabilities: ClassVar[frozenset[str]] = frozenset({"learn", "policy", "torch"})

    def __init__(self, alpha: Any, beta: Any) -> None:
        self._alpha = as_param("alpha", alpha)
        self._beta = as_param("beta", beta, shape=self._alpha.shape)
        for name, arr in (("alpha", self._alpha), ("beta", self._beta)):
            if np.any(arr <= 0):
                raise ValueError(f"{name} must be > 0 everywhere, got min {arr.min()}")
        self._log_norm_sum = float(np.sum(log_beta(self._alpha, self._beta)))

    @classmethod
    def from_mean_concentration(cls, mean: Any, concentration: Any) -> BetaDistribution:
        """Build from ``mean = alpha / (alpha + beta)`` in ``(0, 1)`` and ``concentration = alpha + beta > 0``.

        ``concentration`` may be a scalar or any array broadcastable to ``mean``'s shape ``(n_tokens, dim)``.
        """
        m = as_param("mean", mean)
        if np.any((m <= 0) | (m >= 1)):
            raise ValueError(f"mean must lie in the open interval (0, 1), got range [{m.min()}, {m.max()}]")
        k = as_param("concentration", np.broadcast_to(np.asarray(concentration, dtype=np.float64), m.shape))
        if np.any(k <= 0):
            raise ValueError(f"concentration must be > 0, got min {k.min()}")
        return cls(k * m, k * (1.0 - m))

    # ------------------------------------------------------------------ parameters and moments
    @property
    def alpha(self) -> np.ndarray:
        """Read-only ``alpha``, shape ``(n_tokens, dim)``."""
        return self._alpha

    @property
    def beta(self) -> np.ndarray:
        """Read-only ``beta``, shape ``(n_tokens, dim)``."""
        return self._beta

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self._alpha.shape[0]), int(self._alpha.shape[1]))

    def mean(self) -> np.ndarray:
        return self._alpha / (self._alpha + self._beta)

    def variance(self) -> np.ndarray:
        total = self._alpha + self._beta
        return self._alpha * self._beta / (total * total * (total + 1.0))

    # ------------------------------------------------------------------ sampling and density
    def noise_shapes(
        self, size: int, construction: BetaConstruction | None = None, **options: Any
    ) -> dict[str, tuple[int, ...]]:
        """Normal and uniform noise of the rejection construction (``construction``, default
        :class:`~veil.client_sdk.distributions.noise.BetaConstruction`)."""
        cfg = construction or BetaConstruction()
        n, d = self.shape
        return {"normal": cfg.normal_shape(int(size), n, d), "uniform": cfg.uniform_shape(int(size), n, d)}

    def sample_from_noise(self, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        """Beta samples by the boosted Marsaglia-Tsang construction of
        :mod:`~veil.client_sdk.distributions.noise` (within ``3e-8`` TV of an exact draw with the default
        constants; values in ``[2**-126, 1 - 2**-24]``). Its rounds and boost are read off the noise shapes.
        """
        p = self.unconstrained()
        normal, uniform = noise["normal"], noise["uniform"]
        return beta_sample_from_noise(
            p["logit_mean"], p["log_concentration"], normal, uniform, _construction_of(normal, uniform)
        )

    def onnx_sample_feeds(self, noise: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**self.unconstrained(), "normal": noise["normal"], "uniform": noise["uniform"]}

    def onnx_update_feeds(self, x: np.ndarray, noise: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"normal": noise["normal"], "uniform": noise["uniform"]}

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Total log density, shape ``x.shape[:-2]``; ``-inf`` outside ``[0, 1]``."""
        x = check_sample_shape("x", x, self.shape)
        lead = x.shape[:-2]
        flat = x.reshape(-1, self._alpha.size)  # (N, n_tokens * dim)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.log(flat) @ (self._alpha.ravel() - 1.0) + np.log1p(-flat) @ (self._beta.ravel() - 1.0)
        out -= self._log_norm_sum
        bad = np.isnan(out)
        if bad.any():  # boundary points (0 * log 0) or points outside the support: take the careful path
            out[bad] = self._log_prob_careful(flat[bad])
        return out.reshape(lead)

    def _log_prob_careful(self, flat: np.ndarray) -> np.ndarray:
        a1, b1 = self._alpha.ravel() - 1.0, self._beta.ravel() - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            # xlogy semantics: an exponent of 0 times log(0) contributes 0 at the boundary.
            dens = np.where(a1 == 0.0, 0.0, a1 * np.log(flat)) + np.where(
                b1 == 0.0, 0.0, b1 * np.log1p(-flat)
            )
        dens = np.where((flat < 0.0) | (flat > 1.0), -np.inf, dens)
        return dens.sum(axis=-1) - self._log_norm_sum

    # ------------------------------------------------------------------ learning
    def unconstrained(self) -> dict[str, np.ndarray]:
        return {
            "logit_mean": np.log(self._alpha) - np.log(self._beta),
            "log_concentration": np.log(self._alpha + self._beta),
        }

    def with_unconstrained(self, params: Mapping[str, np.ndarray]) -> Self:
        current = self.unconstrained()
        unknown = set(params) - set(current)
        if unknown:
            raise ValueError(f"unknown Beta parameters {sorted(unknown)}; expected {sorted(current)}")
        logit = as_param("logit_mean", params.get("logit_mean", current["logit_mean"]), shape=self.shape)
        log_k = as_param(
            "log_concentration",
            params.get("log_concentration", current["log_concentration"]),
            shape=self.shape,
        )
        k = np.exp(log_k)
        return type(self)(k * sigmoid(logit), k * sigmoid(-logit))

    def sample_vjp(
        self, x: np.ndarray, grad_x: np.ndarray, noise: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The gradient of a Beta sample with respect to the unconstrained parameters.

        With ``noise`` (what made ``x``): the construction's own derivative, through the accepted proposal
        (:func:`~veil.client_sdk.distributions.noise.beta_vjp_from_noise`), which is what the phone's
        update graph computes. Without it (a sample whose noise is not known): implicit
        reparameterisation, ``dx/dalpha = -(dF/dalpha)(x) / p(x)`` (and likewise for ``beta``), with the CDF derivatives computed
        by quadrature in :func:`~veil.client_sdk.distributions._special.beta_implicit_grad`; then the chain
        rule through ``alpha = k m``, ``beta = k (1 - m)``, ``m = sigmoid(logit_mean)``,
        ``k = exp(log_concentration)``.

        Parameters
        ----------
        x : ndarray, shape ``(n_tokens, dim)`` or ``(B, n_tokens, dim)``, values in ``[0, 1]``
        grad_x : ndarray, same shape as ``x``

        Returns
        -------
        dict with ``logit_mean`` and ``log_concentration``, each of shape ``(n_tokens, dim)``.
        """
        x = check_sample_shape("x", x, self.shape)
        g = check_sample_shape("grad_x", grad_x, self.shape)
        if g.shape != x.shape:
            raise ValueError(f"grad_x must have the shape of x {x.shape}, got {g.shape}")
        if np.any(~np.isfinite(x)) or np.any((x < 0.0) | (x > 1.0)):
            raise ValueError("x must be a Beta sample with values in [0, 1]; got values outside or NaN/Inf")
        if noise is not None:
            p = self.unconstrained()
            normal, uniform = noise["normal"], noise["uniform"]
            batch = g.reshape(-1, *self.shape)
            if normal.shape[0] != batch.shape[0]:
                raise ValueError(f"noise is for {normal.shape[0]} samples, the gradient for {batch.shape[0]}")
            return beta_vjp_from_noise(
                p["logit_mean"], p["log_concentration"], normal, uniform, batch,
                _construction_of(normal, uniform),
            )  # fmt: skip
        dx_da, dx_db = beta_implicit_grad(x, self._alpha, self._beta)
        lead = tuple(range(x.ndim - 2))
        grad_a = np.sum(g * dx_da, axis=lead)
        grad_b = np.sum(g * dx_db, axis=lead)
        total = self._alpha + self._beta
        m = self._alpha / total
        # d alpha / d logit = k m (1-m) = -d beta / d logit;  d alpha / d log k = alpha, d beta / d log k = beta
        return {
            "logit_mean": (grad_a - grad_b) * total * m * (1.0 - m),
            "log_concentration": grad_a * self._alpha + grad_b * self._beta,
        }

    # ------------------------------------------------------------------ persistence
    def _arrays(self) -> dict[str, np.ndarray]:
        return {"alpha": self._alpha, "beta": self._beta}

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls(arrays["alpha"], arrays["beta"])

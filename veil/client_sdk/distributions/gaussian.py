"""Diagonal Gaussian user distributions: IDfree-PL's Gaussian variant (arXiv:2501.06062, section 2.2).

The released code learns a mean and (in the generation scripts) a scale; here both are learnable, the
scale through ``log_std`` so it stays positive. Samples are reparameterised exactly:
``x = mean + std * eps`` with ``eps ~ N(0, I)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from veil.client_sdk.distributions.base import UserDistribution, as_param, check_sample_shape
from veil.client_sdk.distributions.noise import gaussian_sample_from_noise

__all__ = ["GaussianDistribution"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class GaussianDistribution(UserDistribution):
    """``x[i, j] ~ N(mean[i, j], std[i, j]^2)`` independently.

    Parameters
    ----------
    mean : array_like, shape ``(n_tokens, dim)``
        Finite means.
    std : array_like, shape ``(n_tokens, dim)``
        Positive, finite standard deviations.

    Notes
    -----
    Unconstrained parameters: ``mean`` and ``log_std``. The constructor's ``mean`` is exposed as the
    property :attr:`loc` because :meth:`mean` is the moment method shared by all families.
    """

    family: ClassVar[str] = "gaussian"
    capabilities: ClassVar[frozenset[str]] = frozenset({"learn", "policy", "policy_graph", "gdp", "torch"})

    def __init__(self, mean: Any, std: Any) -> None:
        self._loc = as_param("mean", mean)
        self._std = as_param("std", std, shape=self._loc.shape)
        if np.any(self._std <= 0):
            raise ValueError(f"std must be > 0 everywhere, got min {self._std.min()}")
        self._log_std = np.log(self._std)
        self._log_norm = float(np.sum(self._log_std)) + _HALF_LOG_2PI * self._std.size

    @property
    def loc(self) -> np.ndarray:
        """Read-only mean parameter, shape ``(n_tokens, dim)``."""
        return self._loc

    @property
    def std(self) -> np.ndarray:
        """Read-only standard deviation, shape ``(n_tokens, dim)``."""
        return self._std

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self._loc.shape[0]), int(self._loc.shape[1]))

    def mean(self) -> np.ndarray:
        return self._loc.copy()

    def variance(self) -> np.ndarray:
        return self._std * self._std

    def noise_shapes(self, size: int, **options: Any) -> dict[str, tuple[int, ...]]:
        return {"normal": (int(size), *self.shape)}

    def sample_from_noise(self, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        """``mean + std * normal`` (:func:`~veil.client_sdk.distributions.noise.gaussian_sample_from_noise`)."""
        return gaussian_sample_from_noise(self._loc, self._log_std, noise["normal"])

    def onnx_sample_feeds(self, noise: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**self.unconstrained(), "normal": noise["normal"]}

    def onnx_update_feeds(self, x: np.ndarray, noise: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"sample": np.asarray(x, np.float64).reshape(-1, *self.shape)}

    def onnx_policy_feeds(self, prior: UserDistribution) -> dict[str, np.ndarray]:
        p, q = self.unconstrained(), prior.unconstrained()
        return {
            "mean": p["mean"],
            "log_std": p["log_std"],
            "prior_mean": q["mean"],
            "prior_log_std": q["log_std"],
        }

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Total log density, shape ``x.shape[:-2]``."""
        x = check_sample_shape("x", x, self.shape)
        z = (x - self._loc) / self._std
        return -0.5 * np.einsum("...ij,...ij->...", z, z) - self._log_norm

    def unconstrained(self) -> dict[str, np.ndarray]:
        return {"mean": self._loc.copy(), "log_std": self._log_std.copy()}

    def with_unconstrained(self, params: Mapping[str, np.ndarray]) -> Self:
        unknown = set(params) - {"mean", "log_std"}
        if unknown:
            raise ValueError(f"unknown Gaussian parameters {sorted(unknown)}; expected ['log_std', 'mean']")
        loc = as_param("mean", params.get("mean", self._loc), shape=self.shape)
        log_std = as_param("log_std", params.get("log_std", self._log_std), shape=self.shape)
        return type(self)(loc, np.exp(log_std))

    def sample_vjp(
        self, x: np.ndarray, grad_x: np.ndarray, noise: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Exact reparameterisation gradient (``noise`` is not needed: it is ``(x - mean) / std``).

        With ``x = mean + std * eps`` and ``eps = (x - mean) / std`` recovered from the sample:
        ``dL/dmean = sum_batch g`` and ``dL/dlog_std = sum_batch g * std * eps = sum_batch g * (x - mean)``.

        Parameters
        ----------
        x : ndarray, shape ``(n_tokens, dim)`` or ``(B, n_tokens, dim)``
        grad_x : ndarray, same shape as ``x``

        Returns
        -------
        dict with ``mean`` and ``log_std``, each of shape ``(n_tokens, dim)``.
        """
        x = check_sample_shape("x", x, self.shape)
        g = check_sample_shape("grad_x", grad_x, self.shape)
        if g.shape != x.shape:
            raise ValueError(f"grad_x must have the shape of x {x.shape}, got {g.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x must be finite, got NaN/Inf")
        lead = tuple(range(x.ndim - 2))
        return {"mean": np.sum(g, axis=lead), "log_std": np.sum(g * (x - self._loc), axis=lead)}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self._loc, "std": self._std}

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls(arrays["mean"], arrays["std"])

"""A population of K users of one family, stacked into arrays for vectorised sampling and log-likelihoods.

Per-user ``log_prob`` calls cost ``O(N K D)`` Python-level work; for 10,000 users this is far too slow.
Every family here has a log density that is *linear in fixed features of x* (up to a per-point term that is
the same for every user), so the ``(N, K)`` log-likelihood matrix is one matrix product:

* diagonal Gaussian: ``log p_k(x) = -1/2 y^2 . (1/s_k^2) + y . (m_k/s_k^2) + c_k`` with ``y = x - centre``
  and ``m_k = mu_k - centre`` (the common x^2 term drops when all users share one std);
* Beta: ``log p_k(x) = log x . (a_k - 1) + log(1 - x) . (b_k - 1) - sum log B(a_k, b_k)``;
* shared-basis mixture: ``log p_i(x) = M(x) + log(exp(L_B(x) - M(x)) @ w_i)`` with the basis log-likelihoods
  ``L_B`` from the same trick and ``M`` their row maximum.

This is the same density math as :mod:`veil.client_sdk.distributions`, only rearranged for a matrix
product; ``tests/privacy_analysis/test_attribution.py`` pins it to ``log_prob``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special

from veil.client_sdk.distributions import BetaDistribution, GaussianDistribution, UserDistribution
from veil.privacy_analysis._families import flat_params, shared_basis

__all__ = ["StackedPopulation"]

_TINY = np.finfo(np.float64).tiny
_ONE_MINUS = 1.0 - np.finfo(np.float64).epsneg
# float32 matmul error is about 6e-8 relative to the sum of |terms|; above this magnitude (error ~1e-3 nats)
# we compute in float64 instead.
_FLOAT32_MAX_MAGNITUDE = 1e4
_NEVER = -1e30  # log prior of a user with prior 0: finite, so float32 arithmetic stays NaN-free
# Users per column tile in :meth:`StackedPopulation.best`: a (4096, 1024) float32 tile is 16 MB, and
# scoring tile by tile with a running maximum measured ~1.5x faster than one (4096, 10000) product
# followed by a separate bias pass and argmax over 160 MB.
_USER_TILE = 1024


class StackedPopulation:
    """Stacked parameters of K users of one family (all Gaussian, all Beta, or one shared basis).

    Use :meth:`build`, which returns ``None`` for populations without a vectorised path.
    """

    def __init__(self, kind: str, params: dict[str, np.ndarray], basis: StackedPopulation | None = None):
        self.kind = kind
        self.params = params
        self.basis = basis
        self.k = int(next(iter(params.values())).shape[0])
        self._weights, self._bias = self._linear_form()
        self._tiles: dict[tuple[type, bytes], list[np.ndarray]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, dists: Sequence[UserDistribution]) -> StackedPopulation | None:
        """Stack ``dists``; ``None`` when they mix families or are mixtures over different bases."""
        if all(isinstance(d, GaussianDistribution) for d in dists):
            loc, std = (np.stack(a) for a in zip(*(flat_params(d) for d in dists), strict=True))
            return cls("gaussian", {"loc": loc, "std": std})
        if all(isinstance(d, BetaDistribution) for d in dists):
            a, b = (np.stack(a) for a in zip(*(flat_params(d) for d in dists), strict=True))
            return cls("beta", {"alpha": a, "beta": b})
        basis = shared_basis(dists)
        if basis is not None:
            inner = cls.build(basis)
            if inner is None:
                return None
            weights = np.stack([d.weights for d in dists])  # type: ignore[attr-defined]  # (K, n_basis)
            return cls("mixture", {"weights": weights}, basis=inner)
        return None

    def _linear_form(self) -> tuple[np.ndarray, np.ndarray]:
        """``(F, K)`` feature weights and ``(K,)`` bias (the per-point term is :meth:`row_term`)."""
        if self.kind == "gaussian":
            loc, std = self.params["loc"], self.params["std"]
            self.centre = loc.mean(axis=0)
            m = loc - self.centre
            prec = 1.0 / (std * std)
            self.equal_std = bool(np.all(std == std[0]))
            log_norm = np.log(std).sum(axis=1) + 0.5 * math.log(2.0 * math.pi) * std.shape[1]
            bias = -0.5 * np.sum(m * m * prec, axis=1) - log_norm
            if self.equal_std:
                return (m * prec).T, bias
            return np.concatenate([-0.5 * prec, m * prec], axis=1).T, bias
        if self.kind == "beta":
            a, b = self.params["alpha"], self.params["beta"]
            bias = -special.betaln(a, b).sum(axis=1)
            return np.concatenate([a - 1.0, b - 1.0], axis=1).T, bias
        return self.params["weights"].T, np.zeros(self.k)

    # ------------------------------------------------------------------ features and scores
    def features(self, x: np.ndarray) -> np.ndarray:
        """Features ``(N, F)`` of flattened points ``x`` ``(N, D)`` (Gaussian/Beta only)."""
        if self.kind == "gaussian":
            y = x - self.centre
            return y if self.equal_std else np.concatenate([y * y, y], axis=1)
        with np.errstate(divide="ignore"):
            return np.concatenate([np.log(x), np.log1p(-x)], axis=1)

    def row_term(self, x: np.ndarray) -> np.ndarray:
        """The per-point term that :meth:`scores` leaves out: ``log p_k(x) = scores + row_term``."""
        if self.kind == "gaussian" and self.equal_std:
            y = (x - self.centre) / self.params["std"][0]
            return -0.5 * np.einsum("nd,nd->n", y, y)
        return np.zeros(x.shape[0])

    def auto_dtype(self, x_probe: np.ndarray) -> type[np.floating]:
        """float32 when the score magnitudes keep float32 rounding below ~1e-3 nats, else float64."""
        if self.kind == "mixture":
            return np.float64
        f = np.abs(self.features(x_probe))
        f[~np.isfinite(f)] = 1e300
        magnitude = f @ np.abs(self._weights) + np.abs(self._bias)
        return np.float32 if float(np.max(magnitude)) < _FLOAT32_MAX_MAGNITUDE else np.float64

    def scores(
        self, x: np.ndarray, dtype: type[np.floating] = np.float64, log_prior: np.ndarray | None = None
    ) -> np.ndarray:
        """``log pi_k + log p_k(x)`` up to a per-point constant, shape ``(N, K)``, in ``dtype``.

        Parameters
        ----------
        x : ndarray, shape ``(N, D)``
            Flattened uploads.
        dtype : numpy float type
            Arithmetic precision of the matrix product (see :meth:`auto_dtype`).
        log_prior : ndarray, shape ``(K,)``, optional
            Added to every row; ``-inf`` entries are mapped to a large finite negative number.
        """
        bias = self._bias if log_prior is None else self._bias + np.maximum(log_prior, _NEVER)
        if self.kind == "mixture":
            lb = self.basis.log_likelihood(x)  # (N, n_basis), float64
            top = lb.max(axis=1, keepdims=True)
            with np.errstate(divide="ignore"):
                out = np.log(np.exp(lb - top) @ self._weights) + top + bias
            return np.maximum(out, _NEVER).astype(dtype, copy=False)
        f = self.features(x).astype(dtype, copy=False)
        out = f @ self._weights.astype(dtype, copy=False)
        out += bias.astype(dtype, copy=False)
        return out

    def _weight_tiles(self, dtype: type[np.floating], bias: np.ndarray) -> list[np.ndarray]:
        """``(F + 1, tile)`` contiguous blocks of the weights with the bias as the last row."""
        key = (dtype, bias.tobytes())
        if key not in self._tiles:
            self._tiles.clear()  # one prior at a time; keeps memory at one copy of the weights
            full = np.concatenate([self._weights, bias[None, :]], axis=0).astype(dtype)
            self._tiles[key] = [
                np.ascontiguousarray(full[:, i : i + _USER_TILE]) for i in range(0, self.k, _USER_TILE)
            ]
        return self._tiles[key]

    def best(
        self,
        x: np.ndarray,
        dtype: type[np.floating] = np.float32,
        group: int = 1,
        log_prior: np.ndarray | None = None,
    ) -> np.ndarray:
        """Bayes decision ``argmax_k log pi_k + sum_{t in group} log p_k(x_t)`` for consecutive groups.

        Parameters
        ----------
        x : ndarray, shape ``(G * group, D)``
            Flattened uploads; rows ``g*group .. (g+1)*group - 1`` are one linked group.
        dtype, log_prior
            As in :meth:`scores`.
        group : int
            Uploads per linked group (1: every upload on its own).

        Returns
        -------
        ndarray of int, shape ``(G,)``: the first maximiser, as :func:`numpy.argmax` breaks ties.
        """
        n_groups = x.shape[0] // group
        if self.kind == "mixture":
            s = self.scores(x, np.float64, None).reshape(n_groups, group, self.k).sum(axis=1)
            if log_prior is not None:
                s += np.maximum(log_prior, _NEVER)
            return s.argmax(axis=1)
        bias = self._bias if log_prior is None else self._bias + np.maximum(log_prior, _NEVER) / group
        f = self.features(x)
        f1 = np.empty((f.shape[0], f.shape[1] + 1), dtype=dtype)
        f1[:, :-1] = f
        f1[:, -1] = 1.0  # the bias rides in the product instead of a separate pass over the scores
        top = np.full(n_groups, -np.inf, dtype=dtype)
        arg = np.zeros(n_groups, dtype=np.int64)
        buf = np.empty((f1.shape[0], _USER_TILE), dtype=dtype)
        for j, w in enumerate(self._weight_tiles(dtype, bias)):
            out = buf[:, : w.shape[1]]
            np.matmul(f1, w, out=out)
            s = out.reshape(n_groups, group, w.shape[1]).sum(axis=1) if group > 1 else out
            a = s.argmax(axis=1)
            m = s[np.arange(n_groups), a]
            better = m > top  # strict, so ties keep the earlier (smaller) user index
            top = np.where(better, m, top)
            arg = np.where(better, a + j * _USER_TILE, arg)
        return arg

    def log_likelihood(self, x: np.ndarray, dtype: type[np.floating] = np.float64) -> np.ndarray:
        """True log densities ``(N, K)`` of flattened points ``x`` ``(N, D)``."""
        s = self.scores(x, dtype)
        if self.kind == "mixture":
            return s
        return s + self.row_term(x)[:, None].astype(dtype, copy=False)

    # ------------------------------------------------------------------ sampling
    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One fresh sample from user ``labels[n]`` for every n: float64 ``(N, D)``."""
        if self.kind == "gaussian":
            loc, std = self.params["loc"], self.params["std"]
            return loc[labels] + std[labels] * rng.standard_normal((labels.size, loc.shape[1]))
        if self.kind == "beta":
            x = rng.beta(self.params["alpha"][labels], self.params["beta"][labels])
            return np.clip(x, _TINY, _ONE_MINUS)  # as BetaDistribution.sample: keep densities finite
        cum = np.cumsum(self.params["weights"], axis=1)[labels]  # (N, n_basis)
        comp = np.minimum((rng.random(labels.size)[:, None] >= cum).sum(axis=1), cum.shape[1] - 1)
        return self.basis.sample(comp, rng)

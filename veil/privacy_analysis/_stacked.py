"""A population of K users of one family, stacked into arrays for vectorised sampling and log-likelihoods.

Per-user ``log_prob`` calls cost ``O(N K D)`` Python-level work; for 10,000 users this is far too slow.
Every product family here has a log density that is *linear in fixed features of x* (up to a per-point
term that is the same for every user), so the ``(N, K)`` log-likelihood matrix is one matrix product
(:class:`LinearStack`; each family's features and weights are in its module under
:mod:`veil.privacy_analysis.families`):

* diagonal Gaussian: ``log p_k(x) = -1/2 y^2 . (1/s_k^2) + y . (m_k/s_k^2) + c_k`` with ``y = x - centre``
  and ``m_k = mu_k - centre`` (the common x^2 term drops when all users share one std);
* Beta: ``log p_k(x) = log x . (a_k - 1) + log(1 - x) . (b_k - 1) - sum log B(a_k, b_k)``;
* shared-basis mixture: ``log p_i(x) = M(x) + log(exp(L_B(x) - M(x)) @ w_i)`` with the basis log-likelihoods
  ``L_B`` from the same trick and ``M`` their row maximum (a wrapper around the basis's stack).

This is the same density math as :mod:`veil.client_sdk.distributions`, only rearranged for a matrix
product; ``tests/privacy_analysis/test_attribution.py`` pins it to ``log_prob``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["NEVER", "LinearStack", "StackedPopulation"]

# float32 matmul error is about 6e-8 relative to the sum of |terms|; above this magnitude (error ~1e-3 nats)
# we compute in float64 instead.
_FLOAT32_MAX_MAGNITUDE = 1e4
NEVER = -1e30
"""Log prior of a user with prior 0: finite, so float32 arithmetic stays NaN-free."""
# Users per column tile in :meth:`LinearStack.best`: a (4096, 1024) float32 tile is 16 MB, and scoring
# tile by tile with a running maximum measured ~1.5x faster than one (4096, 10000) product followed by a
# separate bias pass and argmax over 160 MB.
_USER_TILE = 1024


class StackedPopulation(ABC):
    """Stacked parameters of K users of one family; a family's ``stack`` builds one (or says it has none).

    Attributes
    ----------
    k : int
        Number of users.
    """

    k: int

    @abstractmethod
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

    @abstractmethod
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

    @abstractmethod
    def log_likelihood(self, x: np.ndarray, dtype: type[np.floating] = np.float64) -> np.ndarray:
        """True log densities ``(N, K)`` of flattened points ``x`` ``(N, D)``."""

    @abstractmethod
    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One fresh sample from user ``labels[n]`` for every n: float64 ``(N, D)``."""

    def auto_dtype(self, x_probe: np.ndarray) -> type[np.floating]:
        """The precision :meth:`scores` can use on points like ``x_probe`` ``(n, D)``: float64 by default."""
        return np.float64


class LinearStack(StackedPopulation):
    """Users whose log densities are ``features(x) @ weights + bias + row_term(x)``.

    Parameters
    ----------
    weights : ndarray, shape ``(F, K)``
        Feature weights of every user.
    bias : ndarray, shape ``(K,)``
        Per-user constant.

    Subclasses give :meth:`features` (``(N, F)`` for flattened points ``(N, D)``), :meth:`sample`, and
    :meth:`row_term` when the per-point term the scores leave out is not zero.
    """

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        self._weights, self._bias = weights, bias
        self.k = int(bias.shape[0])
        self._tiles: dict[tuple[type, bytes], list[np.ndarray]] = {}

    @abstractmethod
    def features(self, x: np.ndarray) -> np.ndarray:
        """Features ``(N, F)`` of flattened points ``x`` ``(N, D)``."""

    def row_term(self, x: np.ndarray) -> np.ndarray:
        """The per-point term that :meth:`scores` leaves out: ``log p_k(x) = scores + row_term``."""
        return np.zeros(x.shape[0])

    def auto_dtype(self, x_probe: np.ndarray) -> type[np.floating]:
        """float32 when the score magnitudes keep float32 rounding below ~1e-3 nats, else float64."""
        f = np.abs(self.features(x_probe))
        f[~np.isfinite(f)] = 1e300
        magnitude = f @ np.abs(self._weights) + np.abs(self._bias)
        return np.float32 if float(np.max(magnitude)) < _FLOAT32_MAX_MAGNITUDE else np.float64

    def scores(
        self, x: np.ndarray, dtype: type[np.floating] = np.float64, log_prior: np.ndarray | None = None
    ) -> np.ndarray:
        bias = self._bias if log_prior is None else self._bias + np.maximum(log_prior, NEVER)
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
        n_groups = x.shape[0] // group
        bias = self._bias if log_prior is None else self._bias + np.maximum(log_prior, NEVER) / group
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
        return self.scores(x, dtype) + self.row_term(x)[:, None].astype(dtype, copy=False)

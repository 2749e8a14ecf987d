"""Shared-basis mixtures: per-user weights over K public basis distributions.

``P_user = sum_k w_k B_k`` with a basis ``B_1..B_K`` that every user shares and only the weights private.
With more users than basis elements the family is linearly dependent, so the pooled upload stream
``sum_i pi_i P_i`` does not identify individual users (Yakowitz & Spragins 1968; the design option in
IDfree-PL, arXiv:2501.06062, section 3.1), and ``TV(P_i, P_j) <= 0.5 * ||w_i - w_j||_1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from veil.client_sdk.distributions._special import logsumexp, softmax
from veil.client_sdk.distributions.base import FAMILIES, UserDistribution, as_param, check_sample_shape
from veil.client_sdk.distributions.noise import categorical_from_noise

__all__ = ["BasisMixtureDistribution"]

_SIMPLEX_TOL = 1e-6


class BasisMixtureDistribution(UserDistribution):
    """Mixture ``sum_k weights[k] * basis[k]`` over a public basis.

    Parameters
    ----------
    basis : sequence of UserDistribution, length K >= 1
        Public components (Beta or Gaussian families, not mixtures), all with the same shape
        ``(n_tokens, dim)``.
    weights : array_like, shape ``(K,)``
        Non-negative weights summing to 1 within ``1e-6`` (renormalised exactly on construction).

    Notes
    -----
    Unconstrained parameters: ``logits``, with ``weights = softmax(logits)``. A zero weight maps to the
    logit ``log(tiny)``, i.e. a weight of about ``1e-308`` once updated.
    """

    family: ClassVar[str] = "basis_mixture"
    capabilities: ClassVar[frozenset[str]] = frozenset({"learn", "policy", "policy_graph", "torch"})

    def __init__(self, basis: Sequence[UserDistribution], weights: Any) -> None:
        components = tuple(basis)
        if not components:
            raise ValueError("basis must hold at least one component, got an empty sequence")
        for k, comp in enumerate(components):
            if not isinstance(comp, UserDistribution) or comp.family == self.family:
                raise ValueError(
                    f"basis[{k}] must be a non-mixture UserDistribution, got {type(comp).__name__}"
                )
        shapes = {comp.shape for comp in components}
        if len(shapes) != 1:
            raise ValueError(f"basis components must share one shape (n_tokens, dim), got {sorted(shapes)}")
        w = as_param("weights", weights, shape=(len(components),))
        if np.any(w < 0):
            raise ValueError(f"weights must be >= 0 (on the simplex), got min {w.min()}")
        if abs(float(w.sum()) - 1.0) > _SIMPLEX_TOL:
            raise ValueError(f"weights must sum to 1 within {_SIMPLEX_TOL}, got sum {float(w.sum())}")
        w = w / w.sum()
        w.flags.writeable = False
        self._basis = components
        self._weights = w
        means = np.stack([comp.mean() for comp in components])  # (K, n_tokens, dim)
        means.flags.writeable = False
        self._basis_means = means

    @property
    def basis(self) -> tuple[UserDistribution, ...]:
        """The public components, length K."""
        return self._basis

    @property
    def weights(self) -> np.ndarray:
        """Read-only mixture weights, shape ``(K,)``."""
        return self._weights

    @property
    def shape(self) -> tuple[int, int]:
        return self._basis[0].shape

    def basis_means(self) -> np.ndarray:
        """Means of the components, shape ``(K, n_tokens, dim)`` (read-only)."""
        return self._basis_means

    def mean(self) -> np.ndarray:
        return np.tensordot(self._weights, self._basis_means, axes=1)

    def variance(self) -> np.ndarray:
        # Law of total variance: E[Var(x|k)] + Var(E[x|k]).
        second = sum(
            w * (c.variance() + m * m)
            for w, c, m in zip(self._weights, self._basis, self._basis_means, strict=True)
        )
        mu = self.mean()
        return np.maximum(second - mu * mu, 0.0)

    def noise_shapes(self, size: int, **options: Any) -> dict[str, tuple[int, ...]]:
        """``choice_uniform`` ``(size, K)`` for the component, then each basis family's noise under
        ``<family>_<name>`` (one tensor per family, shared by its components: row ``i`` feeds whichever
        component sample ``i`` drew)."""
        shapes: dict[str, tuple[int, ...]] = {"choice_uniform": (int(size), len(self._basis))}
        for comp in self._basis:
            for name, shape in comp.noise_shapes(size, **options).items():
                key = f"{comp.family}_{name}"
                if shapes.setdefault(key, shape) != shape:
                    raise ValueError(f"basis components need noise {key} of shapes {shapes[key]} and {shape}")
        return shapes

    def sample_from_noise(self, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        """Exact mixture samples: ``k`` by Gumbel-max on ``choice_uniform``, then ``x`` from ``basis[k]``
        with that row of its family's noise (the ``basis_mixture_sample`` graph's function for a Gaussian
        basis)."""
        choice = categorical_from_noise(self.unconstrained()["logits"], noise["choice_uniform"])
        out = np.empty((choice.size, *self.shape))
        for k in np.unique(choice):
            comp, rows = self._basis[k], np.flatnonzero(choice == k)
            prefix = f"{comp.family}_"
            part = {name[len(prefix) :]: arr[rows] for name, arr in noise.items() if name.startswith(prefix)}
            out[rows] = comp.sample_from_noise(part)
        return out

    def toward(self, other: UserDistribution, t: float) -> Self:
        """Linear in the weights (the simplex is convex), over this distribution's basis."""
        w = other.weights  # type: ignore[attr-defined]
        return type(self)(self._basis, (1.0 - t) * self._weights + t * w)

    def _gaussian_basis(self) -> tuple[np.ndarray, np.ndarray]:
        if any(comp.family != "gaussian" for comp in self._basis):
            raise ValueError("the basis-mixture graphs need a Gaussian basis")
        params = [comp.unconstrained() for comp in self._basis]
        return np.stack([p["mean"] for p in params]), np.stack([p["log_std"] for p in params])

    def onnx_sample_feeds(self, noise: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        mean, log_std = self._gaussian_basis()
        return {
            **self.unconstrained(), "basis_mean": mean, "basis_log_std": log_std,
            "uniform": noise["choice_uniform"], "normal": noise["gaussian_normal"],
        }  # fmt: skip

    def onnx_update_feeds(self, x: np.ndarray, noise: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"basis_mean": self._basis_means}

    def onnx_policy_feeds(self, prior: UserDistribution) -> dict[str, np.ndarray]:
        return {"logits": self.unconstrained()["logits"], "prior_weights": prior.weights}  # type: ignore[attr-defined]

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """``logsumexp_k(log w_k + log p_k(x))``, shape ``x.shape[:-2]``."""
        x = check_sample_shape("x", x, self.shape)
        with np.errstate(divide="ignore"):
            log_w = np.log(self._weights)
        terms = np.stack(
            [
                lw + comp.log_prob(x) if lw > -np.inf else np.full(x.shape[:-2], -np.inf)
                for lw, comp in zip(log_w, self._basis, strict=True)
            ]
        )
        return logsumexp(terms, axis=0)

    def unconstrained(self) -> dict[str, np.ndarray]:
        return {"logits": np.log(np.maximum(self._weights, np.finfo(np.float64).tiny))}

    def with_unconstrained(self, params: Mapping[str, np.ndarray]) -> Self:
        unknown = set(params) - {"logits"}
        if unknown:
            raise ValueError(f"unknown basis-mixture parameters {sorted(unknown)}; expected ['logits']")
        if "logits" not in params:
            return type(self)(self._basis, self._weights)
        logits = as_param("logits", params["logits"], shape=(len(self._basis),))
        return type(self)(self._basis, softmax(logits))

    def sample_vjp(
        self, x: np.ndarray, grad_x: np.ndarray, noise: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Straight-through-mean gradient for the mixture weights (a biased linearisation).

        The component index ``k`` is discrete, so a mixture sample has no exact reparameterisation: the
        sample does not move continuously with the weights. We treat the sample as
        ``x = b_k + m(w) - stopgrad(m(w))`` with ``m(w) = sum_k w_k mean(B_k)``: the forward value is the
        exact mixture sample, and the backward pass is the gradient of the mixture *mean*, giving
        ``dL/dlogits = J_m(logits)^T sum_batch g`` with ``dm/dlogit_j = w_j (mean(B_j) - m)``. This is
        exact for losses linear in ``x`` and a first-order approximation otherwise; it ignores how the
        choice of ``k`` correlates with ``g``. It is what lets a phone update its weights from ``dL/dx``
        alone, without evaluating the loss at every component.

        Parameters
        ----------
        x : ndarray, shape ``(n_tokens, dim)`` or ``(B, n_tokens, dim)``
            Samples of this distribution (only their shape is used).
        grad_x : ndarray, same shape as ``x``

        Returns
        -------
        dict with ``logits``, shape ``(K,)``.
        """
        x = check_sample_shape("x", x, self.shape)
        g = check_sample_shape("grad_x", grad_x, self.shape)
        if g.shape != x.shape:
            raise ValueError(f"grad_x must have the shape of x {x.shape}, got {g.shape}")
        g_sum = g.reshape(-1, *self.shape).sum(axis=0)  # (n_tokens, dim)
        centred = self._basis_means - self.mean()  # (K, n_tokens, dim)
        return {"logits": self._weights * np.einsum("kij,ij->k", centred, g_sum)}

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {"weights": self._weights, "n_basis": np.array(len(self._basis))}
        for k, comp in enumerate(self._basis):
            arrays[f"basis{k}.family"] = np.array(comp.family)
            arrays.update({f"basis{k}.{name}": value for name, value in comp._arrays().items()})
        return arrays

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        basis = []
        for k in range(int(arrays["n_basis"])):
            family = str(arrays[f"basis{k}.family"])
            if family not in FAMILIES or FAMILIES[family] is cls:
                raise ValueError(f"basis{k} has unsupported family {family!r}")
            prefix = f"basis{k}."
            part = {
                key[len(prefix) :]: v
                for key, v in arrays.items()
                if key.startswith(prefix) and key != f"{prefix}family"
            }
            basis.append(FAMILIES[family]._from_arrays(part))
        return cls(basis, arrays["weights"])

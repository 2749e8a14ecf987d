"""Torch twins of the numpy user distributions, for training in the simulator.

Each twin is an ``nn.Module`` whose parameters live in the same unconstrained space, under the same
names, as :meth:`veil.client_sdk.distributions.UserDistribution.unconstrained`, so a phone's numpy
distribution and its simulated twin can be swapped with :meth:`to_numpy` / :meth:`from_numpy`. The numpy
code is the reference; tests pin these log densities and gradients to it. Freeze a subset with
``param.requires_grad_(False)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from veil.client_sdk.distributions import (
    FAMILIES,
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    UserDistribution,
)

__all__ = ["TorchBasisMixture", "TorchBeta", "TorchGaussian", "torch_twin"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _beta_log_prob(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """Summed Beta log density: ``x`` ``(..., n, d)``, parameters ``(n, d)`` -> ``(...)``; ``-inf`` off ``[0, 1]``."""
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    inside = (x >= 0.0) & (x <= 1.0)
    # Evaluate at a safe point outside the support so neither value nor gradient becomes NaN.
    x_safe = torch.where(inside, x, torch.full_like(x, 0.5))
    dens = torch.xlogy(alpha - 1.0, x_safe) + torch.xlogy(beta - 1.0, 1.0 - x_safe) - log_norm
    dens = torch.where(inside, dens, torch.full_like(dens, -torch.inf))
    return dens.sum(dim=(-2, -1))


def _gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Summed diagonal-Gaussian log density: ``x`` ``(..., n, d)`` -> ``(...)``."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - _HALF_LOG_2PI).sum(dim=(-2, -1))


def _as_tensor(value: np.ndarray, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.array(value, dtype=np.float64), dtype=dtype)


class TorchBeta(nn.Module):
    """Independent Betas with parameters ``logit_mean`` and ``log_concentration``, each ``(n_tokens, dim)``."""

    def __init__(self, logit_mean: Tensor, log_concentration: Tensor) -> None:
        super().__init__()
        if logit_mean.ndim != 2 or logit_mean.shape != log_concentration.shape:
            raise ValueError(
                f"parameters must share a 2-D shape (n_tokens, dim), got {tuple(logit_mean.shape)} "
                f"and {tuple(log_concentration.shape)}"
            )
        self.logit_mean = nn.Parameter(logit_mean.clone())
        self.log_concentration = nn.Parameter(log_concentration.clone())

    @property
    def alpha(self) -> Tensor:
        return torch.exp(self.log_concentration) * torch.sigmoid(self.logit_mean)

    @property
    def beta(self) -> Tensor:
        return torch.exp(self.log_concentration) * torch.sigmoid(-self.logit_mean)

    def rsample(self, n: int) -> Tensor:
        """Reparameterised samples (implicit gradients in torch), shape ``(n, n_tokens, dim)``."""
        return torch.distributions.Beta(self.alpha, self.beta, validate_args=False).rsample((n,))

    def log_prob(self, x: Tensor) -> Tensor:
        """Total log density, ``(..., n_tokens, dim)`` -> ``(...)``."""
        return _beta_log_prob(x, self.alpha, self.beta)

    def to_numpy(self) -> BetaDistribution:
        with torch.no_grad():
            return BetaDistribution(self.alpha.double().cpu().numpy(), self.beta.double().cpu().numpy())

    @classmethod
    def from_numpy(cls, dist: BetaDistribution, dtype: torch.dtype = torch.float64) -> TorchBeta:
        params = dist.unconstrained()
        return cls(_as_tensor(params["logit_mean"], dtype), _as_tensor(params["log_concentration"], dtype))


class TorchGaussian(nn.Module):
    """Diagonal Gaussian with parameters ``mean`` and ``log_std``, each ``(n_tokens, dim)``."""

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        super().__init__()
        if mean.ndim != 2 or mean.shape != log_std.shape:
            raise ValueError(
                f"parameters must share a 2-D shape (n_tokens, dim), got {tuple(mean.shape)} and {tuple(log_std.shape)}"
            )
        self.mean = nn.Parameter(mean.clone())
        self.log_std = nn.Parameter(log_std.clone())

    def rsample(self, n: int) -> Tensor:
        """``mean + exp(log_std) * eps``, shape ``(n, n_tokens, dim)``."""
        eps = torch.randn((n, *self.mean.shape), dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + torch.exp(self.log_std) * eps

    def log_prob(self, x: Tensor) -> Tensor:
        """Total log density, ``(..., n_tokens, dim)`` -> ``(...)``."""
        return _gaussian_log_prob(x, self.mean, self.log_std)

    def to_numpy(self) -> GaussianDistribution:
        with torch.no_grad():
            return GaussianDistribution(
                self.mean.double().cpu().numpy(), torch.exp(self.log_std).double().cpu().numpy()
            )

    @classmethod
    def from_numpy(cls, dist: GaussianDistribution, dtype: torch.dtype = torch.float64) -> TorchGaussian:
        params = dist.unconstrained()
        return cls(_as_tensor(params["mean"], dtype), _as_tensor(params["log_std"], dtype))


_BASIS_PARAMS = {"beta": {"alpha": "alpha", "beta": "beta"}, "gaussian": {"mean": "loc", "std": "std"}}
"""A basis component's buffers by family (``basis{k}_<buffer>``), each with the attribute of the numpy
family it holds; in the order of the family's constructor arguments."""


class TorchBasisMixture(nn.Module):
    """Mixture over a public basis: trainable ``logits`` ``(K,)``; the basis is stored in buffers.

    Buffers: ``basis{k}_alpha``/``basis{k}_beta`` for Beta components, ``basis{k}_mean``/``basis{k}_std``
    for Gaussian ones, and ``basis_means`` ``(K, n_tokens, dim)``.
    """

    def __init__(
        self, basis: list[UserDistribution], logits: Tensor, dtype: torch.dtype = torch.float64
    ) -> None:
        super().__init__()
        if logits.shape != (len(basis),):
            raise ValueError(f"logits must have shape ({len(basis)},), got {tuple(logits.shape)}")
        self.families: list[str] = []
        for k, comp in enumerate(basis):
            if comp.family not in _BASIS_PARAMS:
                raise ValueError(
                    f"basis[{k}] must be a Beta or Gaussian distribution, got {type(comp).__name__}"
                )
            for buffer, attribute in _BASIS_PARAMS[comp.family].items():
                self.register_buffer(f"basis{k}_{buffer}", _as_tensor(getattr(comp, attribute), dtype))
            self.families.append(comp.family)
        self.register_buffer("basis_means", _as_tensor(np.stack([c.mean() for c in basis]), dtype))
        self.logits = nn.Parameter(logits.to(dtype).clone())

    def _component(self, k: int) -> tuple[Tensor, Tensor]:
        first, second = _BASIS_PARAMS[self.families[k]]
        return getattr(self, f"basis{k}_{first}"), getattr(self, f"basis{k}_{second}")

    def _component_sample(self, k: int, n: int) -> Tensor:
        p, q = self._component(k)
        if self.families[k] == "beta":
            return torch.distributions.Beta(p, q, validate_args=False).sample((n,))
        return p + q * torch.randn((n, *p.shape), dtype=p.dtype, device=p.device)

    def _component_log_prob(self, k: int, x: Tensor) -> Tensor:
        p, q = self._component(k)
        return (
            _beta_log_prob(x, p, q) if self.families[k] == "beta" else _gaussian_log_prob(x, p, torch.log(q))
        )

    def rsample(self, n: int) -> Tensor:
        """Straight-through-mean samples ``b_k + m(w) - stopgrad(m(w))``, shape ``(n, n_tokens, dim)``.

        The forward value is an exact mixture sample; the gradient to ``logits`` is that of the mixture mean
        ``m(w) = sum_k w_k mean(B_k)`` (a biased linearisation, as in the numpy ``sample_vjp``).
        """
        weights = torch.softmax(self.logits, dim=0)
        choice = torch.multinomial(weights.detach(), n, replacement=True)  # (n,)
        out = torch.empty(
            (n, *self.basis_means.shape[1:]), dtype=self.basis_means.dtype, device=self.basis_means.device
        )
        for k in torch.unique(choice).tolist():
            idx = torch.nonzero(choice == k).squeeze(-1)
            out[idx] = self._component_sample(k, idx.numel())
        m = torch.einsum("k,kij->ij", weights, self.basis_means)
        return out + (m - m.detach())

    def log_prob(self, x: Tensor) -> Tensor:
        """``logsumexp_k(log w_k + log p_k(x))``, ``(..., n_tokens, dim)`` -> ``(...)``."""
        log_w = torch.log_softmax(self.logits, dim=0)
        terms = torch.stack([self._component_log_prob(k, x) for k in range(len(self.families))], dim=-1)
        return torch.logsumexp(terms + log_w, dim=-1)

    def basis_numpy(self) -> list[UserDistribution]:
        """The basis as numpy distributions."""
        out: list[UserDistribution] = []
        for k, family in enumerate(self.families):
            p, q = (t.double().cpu().numpy() for t in self._component(k))
            out.append(FAMILIES[family](p, q))  # type: ignore[call-arg]
        return out

    def to_numpy(self) -> BasisMixtureDistribution:
        with torch.no_grad():
            weights = torch.softmax(self.logits.double(), dim=0).cpu().numpy()
        return BasisMixtureDistribution(self.basis_numpy(), weights)

    @classmethod
    def from_numpy(
        cls, dist: BasisMixtureDistribution, dtype: torch.dtype = torch.float64
    ) -> TorchBasisMixture:
        return cls(list(dist.basis), _as_tensor(dist.unconstrained()["logits"], dtype), dtype=dtype)


TORCH_TWINS: dict[str, Callable[[Any, torch.dtype], nn.Module]] = {
    "beta": TorchBeta.from_numpy,
    "gaussian": TorchGaussian.from_numpy,
    "basis_mixture": TorchBasisMixture.from_numpy,
}
"""``family name -> from_numpy`` of its torch twin: the one place a family joins this layer."""


def torch_twin(dist: UserDistribution, dtype: torch.dtype = torch.float64) -> nn.Module:
    """The torch twin of a numpy distribution (``TorchBeta``, ``TorchGaussian`` or ``TorchBasisMixture``)."""
    make = TORCH_TWINS.get(getattr(dist, "family", ""))
    if make is None:
        raise ValueError(f"no torch twin for {type(dist).__name__}; known: {', '.join(TORCH_TWINS)}")
    return make(dist, dtype)

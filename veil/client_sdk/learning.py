"""On-device learning of a user distribution from embedding gradients (numpy only).

This is the *gradient-return* mode: the phone uploads an anonymous example with a fresh sample ``e`` of
its distribution, the cloud runs the (frozen) language model and returns ``dL/de`` through
``/v1/embedding-gradients``, and the phone pulls that gradient back to its private parameters with the
family's reparameterisation (:meth:`UserDistribution.sample_vjp`) and takes an Adam step. The device never
runs the LM, and the parameters never leave it. (IDfree-PL, arXiv:2501.06062, trains the same parameters
with AdamW on device with the LM in memory; section 2.3.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from veil.client_sdk.distributions.base import UserDistribution
from veil.client_sdk.policy_guard import PolicyGuard

__all__ = ["Adam", "OnDeviceLearner"]


class Adam:
    """Adam (Kingma & Ba 2014, arXiv:1412.6980) over a dict of numpy arrays; minimises.

    Parameters
    ----------
    lr : float
        Step size, > 0.
    betas : tuple of float
        Decay rates of the first and second moment estimates, each in ``[0, 1)``.
    eps : float
        Denominator guard, > 0.
    """

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(
        self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One update; returns new arrays and leaves ``params`` untouched.

        Parameters
        ----------
        params : mapping name -> ndarray
        grads : mapping name -> ndarray of the same shape; keys must be a subset of ``params``.
            Parameters without a gradient are returned unchanged.
        """
        unknown = set(grads) - set(params)
        if unknown:
            raise ValueError(
                f"gradients for unknown parameters {sorted(unknown)}; params has {sorted(params)}"
            )
        self.t += 1
        b1, b2 = self.betas
        out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
        for key, grad in grads.items():
            g = np.asarray(grad, dtype=np.float64)
            if g.shape != out[key].shape:
                raise ValueError(f"gradient for {key!r} must have shape {out[key].shape}, got {g.shape}")
            if not np.all(np.isfinite(g)):
                raise ValueError(f"gradient for {key!r} must be finite, got NaN/Inf")
            m = b1 * self.m.get(key, np.zeros_like(g)) + (1.0 - b1) * g
            v = b2 * self.v.get(key, np.zeros_like(g)) + (1.0 - b2) * g * g
            self.m[key], self.v[key] = m, v
            m_hat = m / (1.0 - b1**self.t)
            v_hat = v / (1.0 - b2**self.t)
            out[key] = out[key] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Copy of the optimiser state (step count and moment estimates)."""
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "t": self.t,
            "m": {k: v.copy() for k, v in self.m.items()},
            "v": {k: v.copy() for k, v in self.v.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        self.lr = float(state["lr"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.eps = float(state["eps"])
        self.t = int(state["t"])
        self.m = {k: np.array(v, dtype=np.float64) for k, v in state["m"].items()}
        self.v = {k: np.array(v, dtype=np.float64) for k, v in state["v"].items()}


class OnDeviceLearner:
    """Updates a private distribution from ``dL/dx`` returned by the cloud (gradient-return mode).

    Parameters
    ----------
    distribution : UserDistribution
        The starting distribution.
    lr : float
        Adam step size in the unconstrained space.
    trainable : iterable of str, optional
        Names of unconstrained parameters to update (default: all). E.g. ``["mean"]`` reproduces the
        released code's fixed-scale Gaussian variant.
    max_grad_norm : float, optional
        If given, rescale the gradient so its global L2 norm is at most this value.
    prior_weight : float
        Weight ``lambda`` of a pull toward the starting (population prior) parameters: the loss gains
        ``lambda/2 * sum((theta - theta_0)**2)`` over the trainable unconstrained parameters. For a
        Gaussian mean with fixed std ``s`` this is ``lambda * s**2 * KL(P || P_0)``: it keeps users close
        to each other, the paper's second way to prevent attribution. ``0`` (default) is the paper's
        training, whose KL regulariser is defined but not called.
    guard : PolicyGuard, optional
        Device-side privacy policy (:mod:`veil.client_sdk.policy_guard`): after every step the new
        parameters are projected back inside the policy before they are used. ``None`` (default): no guard.
    """

    def __init__(
        self,
        distribution: UserDistribution,
        lr: float = 0.05,
        trainable: Iterable[str] | None = None,
        max_grad_norm: float | None = None,
        prior_weight: float = 0.0,
        guard: PolicyGuard | None = None,
    ) -> None:
        if not isinstance(distribution, UserDistribution):
            raise ValueError(f"distribution must be a UserDistribution, got {type(distribution).__name__}")
        names = set(distribution.unconstrained())
        chosen = names if trainable is None else set(trainable)
        if not chosen or not chosen <= names:
            raise ValueError(f"trainable must be a non-empty subset of {sorted(names)}, got {sorted(chosen)}")
        if max_grad_norm is not None and not (np.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a finite number > 0 or None, got {max_grad_norm}")
        if not (np.isfinite(prior_weight) and prior_weight >= 0):
            raise ValueError(f"prior_weight must be a finite number >= 0, got {prior_weight}")
        if guard is not None and not isinstance(guard, PolicyGuard):
            raise ValueError(f"guard must be a PolicyGuard or None, got {type(guard).__name__}")
        self.guard = guard
        self._distribution = distribution
        self.prior_weight = float(prior_weight)
        self._anchor = {k: v.copy() for k, v in distribution.unconstrained().items() if k in chosen}
        self.trainable = frozenset(chosen)
        self.max_grad_norm = max_grad_norm
        self.optimizer = Adam(lr=lr)

    @property
    def distribution(self) -> UserDistribution:
        """The current distribution."""
        return self._distribution

    def step(
        self, x: np.ndarray, grad_x: np.ndarray, noise: Mapping[str, np.ndarray] | None = None
    ) -> UserDistribution:
        """Apply one Adam step from a sample and the returned gradient.

        Parameters
        ----------
        x : ndarray, shape ``(n_tokens, dim)`` or ``(B, n_tokens, dim)``
            Sample(s) the current distribution produced and the device uploaded.
        grad_x : ndarray, same shape as ``x``
            ``dL/dx`` returned by the cloud.
        noise : mapping, optional
            The noise that made ``x`` (:meth:`UserDistribution.draw_noise`), for families that
            differentiate through it (:meth:`UserDistribution.sample_vjp`).

        Returns
        -------
        UserDistribution
            The updated distribution (also stored in :attr:`distribution`).
        """
        grads = {
            k: v for k, v in self._distribution.sample_vjp(x, grad_x, noise).items() if k in self.trainable
        }
        if self.max_grad_norm is not None:
            norm = float(np.sqrt(sum(float(np.sum(g * g)) for g in grads.values())))
            if norm > self.max_grad_norm:
                grads = {k: g * (self.max_grad_norm / norm) for k, g in grads.items()}
        params = {k: v for k, v in self._distribution.unconstrained().items() if k in self.trainable}
        if self.prior_weight:
            grads = {k: g + self.prior_weight * (params[k] - self._anchor[k]) for k, g in grads.items()}
        new_params = self.optimizer.step(params, grads)
        updated = self._distribution.with_unconstrained(new_params)
        self._distribution = updated if self.guard is None else self.guard.project(updated)
        return self._distribution

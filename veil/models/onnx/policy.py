"""Privacy-policy check graphs: the measures of :class:`veil.client_sdk.policy_guard.PolicyGuard.check`.

Gaussian (``gaussian_policy``), mirroring the guard's measures, which are
:func:`~veil.client_sdk.distributions.divergences.gaussian_mu` and
:func:`~veil.client_sdk.distributions.divergences.tv_bound`:

- equal stds (``max |log_std - prior_log_std| <= 2**-20``; the numpy guard uses ``rtol 1e-9``, which
  float32 cannot resolve, and stds the app resets to the prior's are bit-identical):
  ``gdp_mu = Delta = ||(mean - prior_mean) / prior_std||_2`` and ``tv = 2 Phi(Delta / 2) - 1
  = erf(Delta / (2 sqrt 2))`` exactly;
- different stds: ``gdp_mu = +inf`` (no finite mu exists: ``gaussian_mu`` raises
  ``UnequalCovarianceError``, which the guard reads as ``inf``) and ``tv = sqrt(1 - BC^2)`` with
  ``log BC = sum(-0.5 log cosh(r) - (m - m0)^2 / (4 (s^2 + s0^2)))``, ``r = log s - log s0``
  (``2 s s0 / (s^2 + s0^2) = 1 / cosh(r)``), evaluated with ``log1p``/``expm1`` forms that keep float32
  relative accuracy for nearly equal distributions;
- ``ok = tv <= max_tv and gdp_mu <= max_gdp_mu``; pass ``+inf`` for a limit the policy does not set.

Basis mixture (``basis_mixture_policy``): ``tv = min(1, 0.5 ||softmax(logits) - prior_weights||_1)`` and
``ok = tv <= max_tv``. The Beta family has no graph: its Bhattacharyya bound is a difference of
log-Beta functions that float32 cannot evaluate accurately near the prior.
"""

from __future__ import annotations

import math

import onnx

from veil.models.onnx._builder import GraphBuilder, Var, maximum, minimum, where

__all__ = ["SAME_LOG_STD_TOL", "basis_mixture_policy", "gaussian_policy"]

Dim = int | str
SAME_LOG_STD_TOL = 2.0**-20
"""Largest ``|log_std - prior_log_std|`` that the float32 graph treats as equal stds."""
_EXPM1_SERIES_RADIUS = 0.1


def _log1p(x: Var) -> Var:
    """``log(1 + x)`` for ``x >= 0`` to float32 relative accuracy (Goldberg's correction)."""
    u = 1.0 + x
    exact_one = x.b.op("Equal", u, x.b.const(1.0))
    return where(exact_one, x, u.log() * x / (u - 1.0))


def _expm1(z: Var) -> Var:
    """``exp(z) - 1`` to float32 relative accuracy: Taylor series up to ``z^7`` for ``|z| < 0.1``."""
    b = z.b
    poly = b.const(1.0 / 5040.0)
    for j in (720.0, 120.0, 24.0, 6.0, 2.0, 1.0):
        poly = poly * z + 1.0 / j
    return where(z.abs().lt(_EXPM1_SERIES_RADIUS), z * poly, z.exp() - 1.0)


def gaussian_policy(n_tokens: Dim, dim: Dim, opset: int) -> onnx.ModelProto:
    """Gaussian policy check; inputs ``mean, log_std, prior_mean, prior_log_std (n, d)``, scalar limits."""
    b = GraphBuilder("gaussian_policy", "Gaussian privacy-policy check: TV and Gaussian-DP mu to the prior.")
    shape = (n_tokens, dim)
    mean = b.input("mean", shape)
    log_std = b.input("log_std", shape)
    prior_mean = b.input("prior_mean", shape)
    prior_log_std = b.input("prior_log_std", shape)
    max_tv = b.input("max_tv", ())
    max_mu = b.input("max_gdp_mu", ())

    r = log_std - prior_log_std
    same = b.op("ReduceMax", r.abs(), keepdims=0).le(SAME_LOG_STD_TOL)
    diff = mean - prior_mean
    delta = (diff / prior_log_std.exp()).square().sum().sqrt()
    mu = where(same, delta, math.inf)
    tv_equal = (delta / (2.0 * math.sqrt(2.0))).erf()
    # Hellinger bound for different stds: log cosh(r) = log1p(2 sinh(r/2)^2) has no cancellation.
    log_cosh = _log1p(2.0 * (0.5 * r).sinh().square())
    var_sum = (2.0 * log_std).exp() + (2.0 * prior_log_std).exp()
    log_bc = (-0.5 * log_cosh - diff.square() / (4.0 * var_sum)).sum()
    tv_hellinger = maximum(-_expm1(2.0 * log_bc), 0.0).sqrt()
    tv = where(same, tv_equal, tv_hellinger)
    ok = tv.le(max_tv).logical_and(mu.le(max_mu))
    b.output(tv, "tv", ())
    b.output(mu, "gdp_mu", ())
    b.output(ok, "ok", (), dtype="bool")
    return b.model(opset)


def basis_mixture_policy(n_basis: Dim, opset: int) -> onnx.ModelProto:
    """Basis-mixture policy check; inputs ``logits (K,)``, ``prior_weights (K,)``, scalar ``max_tv``."""
    b = GraphBuilder(
        "basis_mixture_policy", "Basis-mixture privacy-policy check: TV bound to the prior weights."
    )
    logits = b.input("logits", (n_basis,))
    prior_weights = b.input("prior_weights", (n_basis,))
    max_tv = b.input("max_tv", ())
    weights = b.op("Softmax", logits, axis=0)
    tv = minimum(0.5 * (weights - prior_weights).abs().sum(), 1.0)
    b.output(tv, "tv", ())
    b.output(tv.le(max_tv), "ok", (), dtype="bool")
    return b.model(opset)

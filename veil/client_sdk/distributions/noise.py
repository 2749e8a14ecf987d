"""The phone's samplers, written against given noise: one algorithm per family, numpy and ONNX alike.

Every family of :mod:`veil.client_sdk.distributions` samples through these functions
(``UserDistribution.sample`` draws the noise, then calls them), and every sampler graph that
``veil export-onnx`` writes computes the same function of the same noise tensors, so the numpy and ONNX
backends differ only in the runtime. Gaussian, prototype and mixture sampling are exact; the Beta family
uses a construction that standard ONNX operators can express, described below.

Noise conventions (the app fills these from the platform's secure random generator)
-----------------------------------------------------------------------------------
- ``normal``: i.i.d. standard normal draws.
- ``uniform``: i.i.d. uniform draws on ``(0, 1)``; the graphs (and these references) clamp them into
  ``[2**-126, 1 - 2**-24]`` so that logarithms stay finite.

Beta by boosted Marsaglia-Tsang rejection with a fixed number of rounds
------------------------------------------------------------------------
``Beta(a, b) = X / (X + Y)`` with independent ``X ~ Gamma(a)`` and ``Y ~ Gamma(b)``. Each Gamma uses
shape augmentation (Marsaglia & Tsang 2000): ``Gamma(a) = Gamma(a + A) * prod_{i<A} U_i^(1/(a+i))``
exactly, and ``Gamma(s)`` for ``s = a + A >= A`` comes from Marsaglia-Tsang rejection: with
``d = s - 1/3``, ``c = 1/sqrt(9 d)``, a proposal ``z ~ N(0, 1)`` gives ``d (1 + c z)^3`` and is accepted
when ``1 + c z > 0`` and ``log u < 3 d k(c z)``, ``k(y) = log1p(y) - y + y^2/2 - y^3/3`` (the usual test
``0.5 z^2 + d - d v + d log v`` rearranged so that float32 does not cancel). A graph cannot loop until
acceptance, so it draws ``R`` proposals and keeps the first accepted one (the first if none is).
Conditioned on at least one acceptance the kept proposal is an exact draw, so the output differs from an
exact Beta draw with probability at most ``1 - (1 - r(a + A)^R)(1 - r(b + A)^R)``, where ``r(s)`` is the
rejection rate (:func:`beta_construction_tv_bound`, computed by quadrature). With the defaults ``A = 3``,
``R = 4`` that bound is below ``3e-8`` for every ``(a, b)`` (``1.7e-9`` at the paper's ``(2, 5)``); what
remains is float32 rounding (the Kolmogorov-Smirnov distances of the exported float32 graph to the
exact Beta CDF are in ``benchmarks/README.md``, "The ONNX Beta sampler"). float32 cannot hold values within ``2**-24`` of 1, so such draws come out as ``1 - 2**-24``; that
matters only for tiny shapes (``Beta(0.05, 0.05)`` puts about 0.2 of its mass there) and limits any
float32 sampler alike.

Gradient (the "reparameterisation through the accepted proposal" of Naesseth et al. 2017,
arXiv:1610.05683): the accepted ``z`` and the boost uniforms are held fixed and ``x`` is differentiated
through ``log X = log d + 3 log(1 + c z) + sum_i log(U_i) / (a + i)``. This drops their correction term
(the score of the acceptance step), which shape augmentation shrinks: the larger ``A``, the smaller the
bias of ``E[dx/dlogit_mean]`` against the exact ``m (1 - m)``, at the price of ``A`` more uniforms and
powers per Gamma draw (``BetaConstruction(boost=...)``; the measured bias for ``A = 3, 5, 8`` is in
``benchmarks/README.md``, "The ONNX Beta sampler").
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from veil.client_sdk.distributions._special import sigmoid

__all__ = [
    "UNIFORM_HIGH",
    "UNIFORM_LOW",
    "BetaConstruction",
    "beta_construction_tv_bound",
    "beta_sample_from_noise",
    "beta_vjp_from_noise",
    "categorical_from_noise",
    "clamp_uniform",
    "gaussian_sample_from_noise",
    "marsaglia_tsang_rejection",
    "mixture_sample_from_noise",
    "prototype_sample_from_noise",
]

UNIFORM_LOW = 2.0**-126
"""Smallest normal float32: uniform noise is clamped up to this."""
UNIFORM_HIGH = 1.0 - 2.0**-24
"""Largest float32 below 1: uniform noise is clamped down to this."""


@dataclass(frozen=True)
class BetaConstruction:
    """Constants of the Beta sampler construction (module docstring).

    The defaults keep the distance to an exact Beta draw below ``3e-8`` (TV) for every ``(a, b)`` and the
    dropped gradient-correction term below Monte Carlo resolution; each proposal round costs one normal
    and one uniform per coordinate and Gamma, each boost one uniform.
    """

    rounds: int = 4
    """``R``: Marsaglia-Tsang proposals per coordinate and Gamma variate."""
    boost: int = 3
    """``A``: shape augmentation; proposals are made for shape ``a + A``."""

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or not 1 <= self.rounds <= 16:
            raise ValueError(f"rounds must be an int in [1, 16], got {self.rounds!r}")
        if not isinstance(self.boost, int) or not 1 <= self.boost <= 16:
            raise ValueError(
                f"boost must be an int in [1, 16] (Marsaglia-Tsang needs shape >= 1), got {self.boost!r}"
            )

    def normal_shape(self, batch: int, n_tokens: int, dim: int) -> tuple[int, ...]:
        """Shape of the ``normal`` noise: ``(batch, 2, rounds, n_tokens, dim)``; axis 1 is (X, Y)."""
        return (batch, 2, self.rounds, n_tokens, dim)

    def uniform_shape(self, batch: int, n_tokens: int, dim: int) -> tuple[int, ...]:
        """Shape of the ``uniform`` noise: ``(batch, 2, rounds + boost, n_tokens, dim)``.

        Along axis 2 the first ``rounds`` entries are the acceptance uniforms, the last ``boost`` the
        shape-augmentation uniforms ``U_0 .. U_{A-1}``.
        """
        return (batch, 2, self.rounds + self.boost, n_tokens, dim)


def clamp_uniform(u: np.ndarray) -> np.ndarray:
    """Clamp uniform noise into ``[UNIFORM_LOW, UNIFORM_HIGH]`` as the graphs do (float64 result)."""
    return np.clip(np.asarray(u, dtype=np.float64), UNIFORM_LOW, UNIFORM_HIGH)


# ---------------------------------------------------------------------------------------------- Gaussian
def gaussian_sample_from_noise(mean: np.ndarray, log_std: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """``mean + exp(log_std) * normal``: ``(n, d), (n, d), (B, n, d) -> (B, n, d)`` (or per-row ``(B, n, d)``
    parameters)."""
    return np.asarray(mean, np.float64) + np.exp(np.asarray(log_std, np.float64)) * np.asarray(normal)


# ---------------------------------------------------------------------------------------------- prototype
def prototype_sample_from_noise(
    prototypes: np.ndarray, index: int, noise_std: float, normal: np.ndarray
) -> np.ndarray:
    """``prototypes[index] + noise_std * normal``: ``(K, n, d), (), (), (B, n, d) -> (B, n, d)``.

    :class:`~veil.client_sdk.distributions.PrototypeDistribution`'s sampler written against given noise
    (a Gaussian with the chosen prototype as mean and ``noise_std`` as every coordinate's std).
    """
    mean = np.asarray(prototypes, np.float64)[int(index)]
    return mean + float(noise_std) * np.asarray(normal, np.float64)


# ---------------------------------------------------------------------------------------------- mixture
def mixture_sample_from_noise(
    logits: np.ndarray,
    basis_mean: np.ndarray,
    basis_log_std: np.ndarray,
    uniform: np.ndarray,
    normal: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mixture sample over a Gaussian basis by the Gumbel-max trick.

    Parameters
    ----------
    logits : ndarray, shape ``(K,)``
    basis_mean, basis_log_std : ndarray, shape ``(K, n, d)``
    uniform : ndarray, shape ``(B, K)``
        Uniforms turned into Gumbel noise ``-log(-log u)``; ``k = argmax(logits + gumbel)``.
    normal : ndarray, shape ``(B, n, d)``

    Returns
    -------
    sample : ndarray, shape ``(B, n, d)``
    component : ndarray of int64, shape ``(B,)``
    """
    k = categorical_from_noise(logits, uniform)
    mean, log_std = np.asarray(basis_mean, np.float64)[k], np.asarray(basis_log_std, np.float64)[k]
    return gaussian_sample_from_noise(mean, log_std, normal), k


def categorical_from_noise(logits: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Exact draws from ``softmax(logits)`` by the Gumbel-max trick: ``(K,), (B, K) -> (B,)`` int64.

    ``k = argmax(logits + g)`` with Gumbel noise ``g = -log(-log u)``; a zero weight (``logits`` of
    ``-inf`` or ``log(tiny)``) is never drawn for clamped ``u``.
    """
    gumbel = -np.log(-np.log(clamp_uniform(uniform)))
    return np.argmax(np.asarray(logits, np.float64) + gumbel, axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------- Beta
def _k_poly(y: np.ndarray) -> np.ndarray:
    """``log1p(y) - y + y^2/2 - y^3/3`` for ``y > -1`` (``<= 0``; ``~ -y^4/4`` near 0)."""
    return np.log1p(y) - y + y * y / 2.0 - y**3 / 3.0


def _log_gamma_variates(
    shape: np.ndarray, normal: np.ndarray, uniform: np.ndarray, cfg: BetaConstruction
) -> tuple[np.ndarray, np.ndarray]:
    """``log X`` and ``d log X / d shape`` for the two Gamma variates, from noise.

    ``shape``: ``(2, n, d)`` (alpha, beta); ``normal``: ``(B, 2, R, n, d)``; ``uniform``:
    ``(B, 2, R + A, n, d)``. Returns two arrays of shape ``(B, 2, n, d)``.
    """
    d = shape + (cfg.boost - 1.0 / 3.0)  # (2, n, d)
    c = 1.0 / np.sqrt(9.0 * d)
    y = c[:, None] * normal  # (B, 2, R, n, d)
    u_acc = clamp_uniform(uniform[:, :, : cfg.rounds])
    valid = y > -1.0
    safe_y = np.where(valid, y, 0.0)
    accepted = valid & (np.log(u_acc) < 3.0 * d[:, None] * _k_poly(safe_y))
    # The first accepted round wins; argmax gives round 0 when none is accepted (any fixed rule keeps the
    # TV bound, since that event has probability r^R).
    first = np.argmax(accepted, axis=2)[:, :, None]  # (B, 2, 1, n, d)
    y_star = np.take_along_axis(y, first, axis=2)[:, :, 0]  # (B, 2, n, d)
    w = np.maximum(1.0 + y_star, UNIFORM_LOW)
    log_x = np.log(d) + 3.0 * np.log(w)
    dlog_x = (1.0 - 1.5 * y_star / w) / d
    log_u = np.log(clamp_uniform(uniform[:, :, cfg.rounds :]))  # (B, 2, A, n, d)
    shifted = shape[:, None] + np.arange(cfg.boost, dtype=np.float64)[:, None, None]  # (2, A, n, d)
    log_x = log_x + np.sum(log_u / shifted, axis=2)
    dlog_x = dlog_x - np.sum(log_u / shifted**2, axis=2)
    return log_x, dlog_x


def _beta_parts(
    logit_mean: np.ndarray,
    log_concentration: np.ndarray,
    normal: np.ndarray,
    uniform: np.ndarray,
    cfg: BetaConstruction,
) -> tuple[np.ndarray, ...]:
    logit = np.asarray(logit_mean, np.float64)
    k = np.exp(np.asarray(log_concentration, np.float64))
    a, b = k * sigmoid(logit), k * sigmoid(-logit)
    log_v, dlog_v = _log_gamma_variates(
        np.stack([a, b]), np.asarray(normal, np.float64), np.asarray(uniform, np.float64), cfg
    )
    lx, ly = log_v[:, 0], log_v[:, 1]
    top = np.maximum(lx, ly)
    lse = top + np.log(np.exp(lx - top) + np.exp(ly - top))
    p, q = np.exp(lx - lse), np.exp(ly - lse)  # x and 1 - x, each accurate
    return a, b, k, p, q, dlog_v[:, 0], dlog_v[:, 1]


def beta_sample_from_noise(
    logit_mean: np.ndarray,
    log_concentration: np.ndarray,
    normal: np.ndarray,
    uniform: np.ndarray,
    construction: BetaConstruction | None = None,
) -> np.ndarray:
    """Beta samples by the construction of the module docstring.

    Parameters
    ----------
    logit_mean, log_concentration : ndarray, shape ``(n, d)``
        :meth:`BetaDistribution.unconstrained` parameters.
    normal : ndarray, shape ``(B, 2, R, n, d)``
    uniform : ndarray, shape ``(B, 2, R + A, n, d)``
    construction : BetaConstruction, optional

    Returns
    -------
    ndarray, shape ``(B, n, d)``, values clipped into ``[2**-126, 1 - 2**-24]`` (float32-representable).
    """
    cfg = construction or BetaConstruction()
    _, _, _, p, _, _, _ = _beta_parts(logit_mean, log_concentration, normal, uniform, cfg)
    return np.clip(p, UNIFORM_LOW, UNIFORM_HIGH)


def beta_vjp_from_noise(
    logit_mean: np.ndarray,
    log_concentration: np.ndarray,
    normal: np.ndarray,
    uniform: np.ndarray,
    grad: np.ndarray,
    construction: BetaConstruction | None = None,
) -> dict[str, np.ndarray]:
    """Pull ``dL/dx`` back to the unconstrained parameters through the construction.

    ``dx/da = x (1 - x) dlogX/da``, ``dx/db = -x (1 - x) dlogY/db``, then ``a = k sigmoid(l)``,
    ``b = k sigmoid(-l)``: ``dL/dl = (g_a - g_b) a b / k`` and ``dL/dlog k = g_a a + g_b b``.

    Parameters
    ----------
    grad : ndarray, shape ``(B, n, d)``
        ``dL/dx`` for the samples :func:`beta_sample_from_noise` made from the same noise.

    Returns
    -------
    dict with ``logit_mean`` and ``log_concentration``, each ``(n, d)``, summed over the batch.
    """
    cfg = construction or BetaConstruction()
    a, b, k, p, q, dlx, dly = _beta_parts(logit_mean, log_concentration, normal, uniform, cfg)
    g = np.asarray(grad, np.float64) * p * q
    grad_a = np.sum(g * dlx, axis=0)
    grad_b = -np.sum(g * dly, axis=0)
    return {"logit_mean": (grad_a - grad_b) * a * b / k, "log_concentration": grad_a * a + grad_b * b}


@functools.lru_cache(maxsize=256)
def marsaglia_tsang_rejection(shape: float, n_points: int = 200_001) -> float:
    """Rejection probability of one Marsaglia-Tsang proposal for ``Gamma(shape)``, ``shape >= 1``.

    ``1 - int_{-1/c}^{inf} phi(z) exp(3 d k(c z)) dz`` by the trapezoid rule (the integrand is smooth and
    decays like ``phi``; the grid is fine enough for about eight significant digits).
    """
    if not shape >= 1.0:
        raise ValueError(f"Marsaglia-Tsang needs shape >= 1, got {shape}")
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = np.linspace(-1.0 / c, 12.0, n_points)[1:]
    y = c * z
    f = np.exp(-0.5 * z * z + 3.0 * d * _k_poly(y)) / math.sqrt(2.0 * math.pi)
    return float(1.0 - np.trapezoid(f, z))


def beta_construction_tv_bound(
    alpha: float, beta: float, construction: BetaConstruction | None = None
) -> float:
    """Upper bound on ``TV(construction, Beta(alpha, beta))``: the chance that a Gamma runs out of rounds."""
    cfg = construction or BetaConstruction()
    fail_x = marsaglia_tsang_rejection(alpha + cfg.boost) ** cfg.rounds
    fail_y = marsaglia_tsang_rejection(beta + cfg.boost) ** cfg.rounds
    return 1.0 - (1.0 - fail_x) * (1.0 - fail_y)

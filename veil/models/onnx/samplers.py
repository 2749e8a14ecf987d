"""Sampler graphs, one per distribution family, randomness passed in as input tensors.

Each graph is the ONNX form of the family's own numpy sampler in
:mod:`veil.client_sdk.distributions.noise` (noise conventions and the Beta construction are documented
there). Every sampler takes the family's
*unconstrained* parameters (:meth:`UserDistribution.unconstrained`), the same tensors the update graph
returns, and a leading symbolic ``batch`` dimension on the noise: one call draws ``batch`` independent
samples.
"""

from __future__ import annotations

import onnx

from veil.client_sdk.distributions.noise import UNIFORM_HIGH, UNIFORM_LOW, BetaConstruction
from veil.models.onnx._builder import GraphBuilder, Var, maximum, where

__all__ = ["basis_mixture_sampler", "beta_parts", "beta_sampler", "gaussian_sampler", "prototype_sampler"]

Dim = int | str
# Horner coefficients of k(y) / y^4 = sum_{j>=4} (-1)^(j+1) y^(j-4) / j, truncated at j = 17: relative
# error below 1e-8 for |y| <= 0.25, where the closed form would cancel in float32.
_K_SERIES = tuple((-1.0) ** (j + 1) / j for j in range(4, 18))
_K_SERIES_RADIUS = 0.25


def _uniform(u: Var) -> Var:
    return u.clip(UNIFORM_LOW, UNIFORM_HIGH)


def _k_poly(y: Var) -> Var:
    """``log1p(y) - y + y^2/2 - y^3/3`` (``y > -1``), series near 0 and closed form elsewhere."""
    poly = y.b.const(_K_SERIES[-1])
    for coef in reversed(_K_SERIES[:-1]):
        poly = poly * y + coef
    y2 = y.square()
    series = y2 * y2 * poly
    closed = (1.0 + y).log() - y + 0.5 * y2 - y2 * y / 3.0
    return where(y.abs().le(_K_SERIES_RADIUS), series, closed)


def _log_gamma_variates(shape: Var, normal: Var, uniform: Var, cfg: BetaConstruction) -> tuple[Var, Var]:
    """``log X`` and ``d log X / d shape`` of both Gammas at once, as the numpy reference.

    ``shape`` ``(2, n, d)``; noise ``(B, 2, R, n, d)`` and ``(B, 2, R + A, n, d)``; results ``(B, 2, n, d)``.
    All rounds and both Gammas go through one chain of nodes on the whole noise tensors, not one chain per
    round: onnxruntime's per-node overhead dominates graphs this small.
    """
    b = shape.b
    d = shape + (cfg.boost - 1.0 / 3.0)  # (2, n, d)
    d_rounds = b.op("Unsqueeze", d, b.const_int([1]))  # (2, 1, n, d)
    c = 1.0 / (9.0 * d_rounds).sqrt()
    y = c * normal  # (B, 2, R, n, d)
    u_acc = b.op("Slice", uniform, b.const_int([0]), b.const_int([cfg.rounds]), b.const_int([2]))
    valid = y.gt(-1.0)
    safe_y = where(valid, y, 0.0)
    accepted = valid.logical_and(_uniform(u_acc).log().lt(3.0 * d_rounds * _k_poly(safe_y)))
    # first accepted round (ArgMax returns the first maximum; round 0 when none is accepted)
    first = b.op("ArgMax", accepted.cast("float32"), axis=2, keepdims=1)  # (B, 2, 1, n, d)
    y_star = b.op("Squeeze", b.op("GatherElements", y, first, axis=2), b.const_int([2]))  # (B, 2, n, d)
    w = maximum(1.0 + y_star, UNIFORM_LOW)
    log_x = d.log() + 3.0 * w.log()
    dlog_x = (1.0 - 1.5 * y_star / w) / d
    end = cfg.rounds + cfg.boost
    u_boost = b.op("Slice", uniform, b.const_int([cfg.rounds]), b.const_int([end]), b.const_int([2]))
    offsets = b.const([[[float(i)]] for i in range(cfg.boost)])  # (A, 1, 1)
    shifted = b.op("Unsqueeze", shape, b.const_int([1])) + offsets  # (2, A, n, d)
    log_u = _uniform(u_boost).log()  # (B, 2, A, n, d)
    log_x = log_x + (log_u / shifted).sum([2])
    dlog_x = dlog_x - (log_u / shifted.square()).sum([2])
    return log_x, dlog_x


def beta_parts(
    logit_mean: Var, log_concentration: Var, normal: Var, uniform: Var, cfg: BetaConstruction
) -> dict[str, Var]:
    """Shared forward pass of the Beta construction.

    Returns ``a``, ``b``, ``k`` (each ``(n, d)``), ``x`` and ``one_minus_x`` (``(B, n, d)``, each computed
    without cancellation) and ``dlog_x``, ``dlog_y`` (``(B, n, d)``), as the numpy reference.
    """
    g = logit_mean.b
    k = log_concentration.exp()
    a = k / (1.0 + (-logit_mean).exp())  # k sigmoid(l) without ORT's clamped Sigmoid kernel
    b = k / (1.0 + logit_mean.exp())
    zero = g.const_int([0])
    shapes = g.op("Concat", g.op("Unsqueeze", a, zero), g.op("Unsqueeze", b, zero), axis=0)  # (2, n, d)
    log_v, dlog_v = _log_gamma_variates(shapes, normal, uniform, cfg)
    lx, ly = log_v.take(0, axis=1), log_v.take(1, axis=1)  # (B, n, d)
    top = maximum(lx, ly)
    lse = top + ((lx - top).exp() + (ly - top).exp()).log()
    return {
        "a": a,
        "b": b,
        "k": k,
        "x": (lx - lse).exp(),
        "one_minus_x": (ly - lse).exp(),
        "dlog_x": dlog_v.take(0, axis=1),
        "dlog_y": dlog_v.take(1, axis=1),
    }


def gaussian_sampler(n_tokens: Dim, dim: Dim, opset: int) -> onnx.ModelProto:
    """``sample = mean + exp(log_std) * normal``; inputs ``(n, d), (n, d), (batch, n, d)``."""
    b = GraphBuilder("gaussian_sample", "Diagonal Gaussian sampler: sample = mean + exp(log_std) * normal.")
    mean = b.input("mean", (n_tokens, dim))
    log_std = b.input("log_std", (n_tokens, dim))
    normal = b.input("normal", ("batch", n_tokens, dim))
    b.output(mean + log_std.exp() * normal, "sample", ("batch", n_tokens, dim))
    return b.model(opset)


def beta_sampler(n_tokens: Dim, dim: Dim, opset: int, cfg: BetaConstruction) -> onnx.ModelProto:
    """Beta sampler by boosted Marsaglia-Tsang with ``cfg.rounds`` rounds (see the reference module)."""
    b = GraphBuilder(
        "beta_sample",
        f"Beta sampler: X/(X+Y), Gammas by Marsaglia-Tsang with boost {cfg.boost} and {cfg.rounds} rounds.",
    )
    logit = b.input("logit_mean", (n_tokens, dim))
    log_k = b.input("log_concentration", (n_tokens, dim))
    normal = b.input("normal", ("batch", 2, cfg.rounds, n_tokens, dim))
    uniform = b.input("uniform", ("batch", 2, cfg.rounds + cfg.boost, n_tokens, dim))
    x = beta_parts(logit, log_k, normal, uniform, cfg)["x"]
    b.output(x.clip(UNIFORM_LOW, UNIFORM_HIGH), "sample", ("batch", n_tokens, dim))
    return b.model(opset)


def basis_mixture_sampler(n_basis: Dim, n_tokens: Dim, dim: Dim, opset: int) -> onnx.ModelProto:
    """Mixture over a Gaussian basis: Gumbel-max component choice, then a Gaussian sample.

    Inputs ``logits (K,)``, ``basis_mean (K, n, d)``, ``basis_log_std (K, n, d)``, ``uniform (batch, K)``,
    ``normal (batch, n, d)``; outputs ``sample (batch, n, d)`` and ``component (batch,)`` (int64).
    """
    b = GraphBuilder(
        "basis_mixture_sample", "Basis-mixture sampler: k = argmax(logits + Gumbel), x ~ basis[k]."
    )
    logits = b.input("logits", (n_basis,))
    basis_mean = b.input("basis_mean", (n_basis, n_tokens, dim))
    basis_log_std = b.input("basis_log_std", (n_basis, n_tokens, dim))
    uniform = b.input("uniform", ("batch", n_basis))
    normal = b.input("normal", ("batch", n_tokens, dim))
    gumbel = -(-(_uniform(uniform).log())).log()
    component = b.op("ArgMax", logits + gumbel, axis=1, keepdims=0)  # (batch,)
    mean = basis_mean.take(component, axis=0)  # (batch, n, d)
    std = basis_log_std.take(component, axis=0).exp()
    b.output(mean + std * normal, "sample", ("batch", n_tokens, dim))
    b.output(component, "component", ("batch",), dtype="int64")
    return b.model(opset)


def prototype_sampler(n_prototypes: Dim, n_tokens: Dim, dim: Dim, opset: int) -> onnx.ModelProto:
    """A gather of the chosen prototype plus Gaussian noise: ``prototypes[index] + noise_std * normal``.

    The public codebook is an input (``prototypes (K, n, d)``, as ``GET /v1/codebook`` serves it) and the
    private choice another (``index ()`` int64), so the app keeps one graph whatever the codebook; the
    Gaussian sampler with the prototype as mean would do the same arithmetic, with the row picked by app
    code instead. Inputs ``noise_std ()`` and ``normal (batch, n, d)``; output ``sample (batch, n, d)``.
    """
    b = GraphBuilder(
        "prototype_sample", "Prototype sampler: sample = prototypes[index] + noise_std * normal."
    )
    prototypes = b.input("prototypes", (n_prototypes, n_tokens, dim))
    index = b.input("index", (), dtype="int64")
    noise_std = b.input("noise_std", ())
    normal = b.input("normal", ("batch", n_tokens, dim))
    chosen = prototypes.take(index, axis=0)  # scalar index: (n, d)
    b.output(chosen + noise_std * normal, "sample", ("batch", n_tokens, dim))
    return b.model(opset)

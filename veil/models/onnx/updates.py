"""Parameter-update graphs for the gradient-return mode: ``dL/de`` in, new parameters and Adam state out.

Each graph is one :meth:`veil.client_sdk.learning.OnDeviceLearner.step` (reference:
:func:`veil.client_sdk.runtime.reference.learner_update`): pull ``dL/de`` back to the unconstrained
parameters, keep the trainable ones, clip their global L2 norm, add the pull toward the anchor (prior)
parameters, and take one Adam step. The optimiser state travels in and out as tensors, so the graph itself
is stateless.

Common inputs, after the family's own (``P`` parameters, listed in order in the manifest's
``extra["params"]``):

- ``anchor_<p>``: anchor parameters (the learner's starting point) for the prior pull;
- ``adam_m_<p>``, ``adam_v_<p>``: Adam moments (zeros before the first step), ``adam_t``: int64 step count;
- scalars ``lr``, ``beta1``, ``beta2``, ``eps``, ``max_grad_norm`` (``+inf`` = no clipping),
  ``prior_weight`` (``0`` = no pull);
- ``trainable``: bool ``(P,)``; untrained parameters and their moments come back unchanged.

Outputs: ``new_<p>``, ``new_adam_m_<p>``, ``new_adam_v_<p>``, ``new_adam_t``.

The hyperparameters are float32: ``0.999`` becomes ``0.99900001``, which moves ``1 - beta2`` by 1.3e-5
relative, so a float64 reference agrees to 1e-5 only when it uses the same rounded values.
"""

from __future__ import annotations

import onnx

from veil.client_sdk.distributions.noise import BetaConstruction
from veil.models.onnx._builder import GraphBuilder, Var, where
from veil.models.onnx.samplers import beta_parts

__all__ = ["basis_mixture_update", "beta_update", "gaussian_update"]

Dim = int | str


def _learner_step(
    b: GraphBuilder, params: dict[str, Var], grads: dict[str, Var], shape: tuple[Dim, ...]
) -> None:
    """Declare the common inputs and outputs and wire clip -> prior pull -> Adam (module docstring)."""
    names = list(params)
    anchor = {p: b.input(f"anchor_{p}", shape) for p in names}
    m = {p: b.input(f"adam_m_{p}", shape) for p in names}
    v = {p: b.input(f"adam_v_{p}", shape) for p in names}
    t = b.input("adam_t", (), dtype="int64")
    lr, beta1, beta2, eps, max_norm, prior_weight = (
        b.input(s, ()) for s in ("lr", "beta1", "beta2", "eps", "max_grad_norm", "prior_weight")
    )
    trainable = b.input("trainable", (len(names),), dtype="bool")
    flags = {p: trainable.take(i, axis=0) for i, p in enumerate(names)}

    g = {p: where(flags[p], grads[p], 0.0) for p in names}
    norm_sq = g[names[0]].square().sum()
    for p in names[1:]:
        norm_sq = norm_sq + g[p].square().sum()
    norm = norm_sq.sqrt()
    scale = where(norm.gt(max_norm), max_norm / norm, 1.0)  # max_grad_norm = inf never clips
    t_new = b.op("Add", t, b.const_int(1))
    step = t_new.cast("float32")
    bias1 = 1.0 - b.op("Pow", beta1, step)
    bias2 = 1.0 - b.op("Pow", beta2, step)
    for p in names:
        grad = g[p] * scale + prior_weight * (params[p] - anchor[p])
        m_new = beta1 * m[p] + (1.0 - beta1) * grad
        v_new = beta2 * v[p] + (1.0 - beta2) * grad.square()
        p_new = params[p] - lr * (m_new / bias1) / ((v_new / bias2).sqrt() + eps)
        b.output(where(flags[p], p_new, params[p]), f"new_{p}", shape)
        b.output(where(flags[p], m_new, m[p]), f"new_adam_m_{p}", shape)
        b.output(where(flags[p], v_new, v[p]), f"new_adam_v_{p}", shape)
    b.output(t_new, "new_adam_t", (), dtype="int64")


def gaussian_update(n_tokens: Dim, dim: Dim, opset: int) -> onnx.ModelProto:
    """Gaussian: ``dL/dmean = sum_B g``, ``dL/dlog_std = sum_B g (sample - mean)`` (exact)."""
    b = GraphBuilder("gaussian_update", "Gaussian on-device update: exact reparameterisation VJP + Adam.")
    shape = (n_tokens, dim)
    mean = b.input("mean", shape)
    log_std = b.input("log_std", shape)
    sample = b.input("sample", ("batch", n_tokens, dim))
    grad = b.input("grad", ("batch", n_tokens, dim))
    grads = {"mean": grad.sum([0]), "log_std": (grad * (sample - mean)).sum([0])}
    _learner_step(b, {"mean": mean, "log_std": log_std}, grads, shape)
    return b.model(opset)


def beta_update(n_tokens: Dim, dim: Dim, opset: int, cfg: BetaConstruction) -> onnx.ModelProto:
    """Beta: VJP through the sampler construction, recomputed from the noise that made the samples."""
    b = GraphBuilder(
        "beta_update", "Beta on-device update: VJP through the boosted Marsaglia-Tsang construction + Adam."
    )
    shape = (n_tokens, dim)
    logit = b.input("logit_mean", shape)
    log_k = b.input("log_concentration", shape)
    normal = b.input("normal", ("batch", 2, cfg.rounds, n_tokens, dim))
    uniform = b.input("uniform", ("batch", 2, cfg.rounds + cfg.boost, n_tokens, dim))
    grad = b.input("grad", ("batch", n_tokens, dim))
    parts = beta_parts(logit, log_k, normal, uniform, cfg)
    g = grad * parts["x"] * parts["one_minus_x"]  # dL/dlogX = g x (1 - x)
    grad_a = (g * parts["dlog_x"]).sum([0])
    grad_b = -((g * parts["dlog_y"]).sum([0]))
    a, bb, k = parts["a"], parts["b"], parts["k"]
    grads = {"logit_mean": (grad_a - grad_b) * a * bb / k, "log_concentration": grad_a * a + grad_b * bb}
    _learner_step(b, {"logit_mean": logit, "log_concentration": log_k}, grads, shape)
    return b.model(opset)


def basis_mixture_update(n_basis: Dim, n_tokens: Dim, dim: Dim, opset: int) -> onnx.ModelProto:
    """Mixture: straight-through-mean VJP ``dL/dlogit_j = w_j <mean_j - m, sum_B g>`` + Adam.

    The incoming logits are first normalised to ``log softmax`` (what the numpy learner stores as
    ``log(weights)``), so the prior pull and Adam see the same numbers for any additive shift.
    """
    b = GraphBuilder(
        "basis_mixture_update", "Basis-mixture on-device update: straight-through-mean VJP + Adam."
    )
    raw_logits = b.input("logits", (n_basis,))
    basis_mean = b.input("basis_mean", (n_basis, n_tokens, dim))
    grad = b.input("grad", ("batch", n_tokens, dim))
    logits = b.op("LogSoftmax", raw_logits, axis=0)
    w = logits.exp()  # (K,)
    w3 = b.op("Unsqueeze", w, b.const_int([1, 2]))  # (K, 1, 1)
    mixture_mean = (w3 * basis_mean).sum([0])  # (n, d)
    centred = basis_mean - mixture_mean  # (K, n, d)
    g_logits = w * (centred * grad.sum([0])).sum([1, 2])
    _learner_step(b, {"logits": logits}, {"logits": g_logits}, (n_basis,))
    return b.model(opset)

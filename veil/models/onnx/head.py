"""The private-head graph: :func:`veil.client_sdk.private_head.head_math` in ONNX.

``prototype_head`` scores the candidates the cloud returned for N requests, each asked for m public
prototypes (private mixing, FedEM-style, arXiv:2108.10252), and gives the exact gradients the phone's
Adam step needs. Inputs: ``logp (N, C, m)`` float32 (``log p_j(c)``, floored), ``first (N, C)`` bool,
``bias (N, C)`` float32 (the private bias of each candidate), ``hit (N, C)`` bool (the target; all False
at inference) and ``logits (m,)`` float32. Outputs: ``score (N, C)`` (a large negative number where not
``first``, instead of numpy's ``-inf``), ``best (N,)`` int64 (the argmax position), ``loss ()``,
``g_logits (m,)`` and ``g_score (N, C)``. Which token a candidate is, and the bias table, stay in the
app (a lookup table is not a tensor computation).
"""

from __future__ import annotations

import onnx

from veil.models.onnx._builder import GraphBuilder, Var, maximum, where

__all__ = ["NOT_A_CANDIDATE", "private_head"]

Dim = int | str
NOT_A_CANDIDATE = -1e30
"""The score of a repeated candidate: finite, so that ``0 * score`` stays 0 in float32."""


def _reduce_max(x: Var, axis: int, opset: int) -> Var:
    """``ReduceMax`` over one axis, kept (its axes became an input in opset 18)."""
    b = x.b
    if opset >= 18:
        return b.op("ReduceMax", x, b.const_int([axis]), keepdims=1)
    return b.op("ReduceMax", x, axes=[axis], keepdims=1)


def _logsumexp(x: Var, axis: int, opset: int) -> Var:
    """``log sum exp`` over ``axis``, kept, shifted by the maximum."""
    top = _reduce_max(x, axis, opset)
    return (x - top).exp().sum([axis], keepdims=True).log() + top


def private_head(m: Dim, opset: int) -> onnx.ModelProto:
    """Scores, loss and gradients of the private head; see the module docstring."""
    b = GraphBuilder("prototype_head", "Private mixing head: per-candidate scores, loss and exact gradients.")
    logp = b.input("logp", ("requests", "candidates", m))
    first = b.input("first", ("requests", "candidates"), dtype="bool")
    bias = b.input("bias", ("requests", "candidates"))
    hit = b.input("hit", ("requests", "candidates"), dtype="bool")
    logits = b.input("logits", (m,))

    log_w = b.op("LogSoftmax", logits, axis=0)  # (m,)
    joint = logp + log_w  # (N, C, m)
    mix = b.op("Squeeze", _logsumexp(joint, 2, opset), b.const_int([2]))  # (N, C)
    score = where(first, mix + bias, NOT_A_CANDIDATE)
    h = hit.cast("float32")
    rows = _reduce_max(h, 1, opset)  # (N, 1): 1 where the row has a hit
    count = maximum(rows.sum(), 1.0)
    lse = _logsumexp(score, 1, opset)  # (N, 1)
    picked = (h * score).sum([1], keepdims=True)
    loss = (rows * (lse - picked)).sum() / count
    prob = b.op("Softmax", score, axis=1)  # zero where not first
    g_score = rows * (prob - h) / count
    resp = b.op("Softmax", joint, axis=2)  # responsibilities r_cj
    weights = log_w.exp()
    g_logits = (b.op("Unsqueeze", g_score, b.const_int([2])) * (resp - weights)).sum([0, 1])

    b.output(score, "score", ("requests", "candidates"))
    b.output(b.op("ArgMax", score, axis=1, keepdims=0), "best", ("requests",), dtype="int64")
    b.output(loss, "loss", ())
    b.output(g_logits, "g_logits", (m,))
    b.output(g_score, "g_score", ("requests", "candidates"))
    return b.model(opset)

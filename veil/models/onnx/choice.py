"""The prototype-choice graph: :func:`veil.client_sdk.distributions.choose_prototype` in ONNX.

``prototype_choice`` takes the phone's losses under every prototype, ``losses (examples, K)`` float32,
and the codebook's usable mask ``active (K,)`` bool, and returns ``mean_loss (K,)`` (the mean over
examples, unmasked) and ``index ()`` int64, the usable prototype with the lowest mean loss. ``ArgMin``
keeps the first minimum, so ties go to the lowest index as in numpy. The graph runner refuses NaN
inputs, so the app fills the columns of unusable prototypes (which it never requests) with any finite
value, 0 say: they are masked to ``+inf`` before the argmin. A codebook always has a usable prototype.
"""

from __future__ import annotations

import math

import onnx

from veil.models.onnx._builder import GraphBuilder, where

__all__ = ["prototype_choice"]

Dim = int | str


def prototype_choice(n_prototypes: Dim, opset: int) -> onnx.ModelProto:
    """Masked mean-loss argmin; inputs ``losses (examples, K)``, ``active (K,)``."""
    b = GraphBuilder("prototype_choice", "Prototype choice: argmin over usable prototypes of the mean loss.")
    losses = b.input("losses", ("examples", n_prototypes))
    active = b.input("active", (n_prototypes,), dtype="bool")
    count = b.op("Shape", losses).take(0, axis=0).cast("float32")  # number of examples, a scalar
    mean = losses.sum([0]) / count  # (K,)
    index = b.op("ArgMin", where(active, mean, math.inf), axis=0, keepdims=0)  # () int64
    b.output(mean, "mean_loss", (n_prototypes,))
    b.output(index, "index", (), dtype="int64")
    return b.model(opset)

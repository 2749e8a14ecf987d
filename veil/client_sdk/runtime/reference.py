"""Numpy references of the math inside the exported ONNX graphs, noise given explicitly.

Every graph that ``veil export-onnx`` writes takes its randomness as input tensors, so each has a
deterministic reference that the parity tests pin it to. The samplers' references are the families' own
functions (:mod:`veil.client_sdk.distributions.noise`, with the Beta construction and its error bound);
this module holds :func:`learner_update`, one :meth:`OnDeviceLearner.step` with the Adam state passed
in and out as the update graphs do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from veil.client_sdk.learning import Adam

__all__ = ["learner_update"]


def learner_update(
    params: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    *,
    anchor: Mapping[str, np.ndarray],
    adam_m: Mapping[str, np.ndarray],
    adam_v: Mapping[str, np.ndarray],
    adam_t: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    max_grad_norm: float | None = None,
    prior_weight: float = 0.0,
    trainable: Iterable[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """One :meth:`OnDeviceLearner.step` given the pulled-back gradients, with the state passed in and out.

    Order as in the learner: keep trainable gradients, clip their global L2 norm to ``max_grad_norm``,
    add ``prior_weight * (params - anchor)``, take one :class:`~veil.client_sdk.learning.Adam` step.
    Non-trainable parameters and their moments come back unchanged.

    Returns
    -------
    (new_params, new_m, new_v, new_t)
    """
    chosen = set(params) if trainable is None else set(trainable)
    g = {k: np.asarray(v, np.float64) for k, v in grads.items() if k in chosen}
    if max_grad_norm is not None:
        norm = float(np.sqrt(sum(float(np.sum(x * x)) for x in g.values())))
        if norm > max_grad_norm:
            g = {k: x * (max_grad_norm / norm) for k, x in g.items()}
    p = {k: np.asarray(params[k], np.float64) for k in g}
    if prior_weight:
        g = {k: x + prior_weight * (p[k] - np.asarray(anchor[k], np.float64)) for k, x in g.items()}
    opt = Adam(lr=lr, betas=betas, eps=eps)
    opt.load_state_dict(
        {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "t": adam_t,
            "m": {k: adam_m[k] for k in g},
            "v": {k: adam_v[k] for k in g},
        }
    )
    stepped = opt.step(p, g)
    new_params = {k: np.asarray(params[k], np.float64).copy() for k in params}
    new_m = {k: np.asarray(adam_m[k], np.float64).copy() for k in params}
    new_v = {k: np.asarray(adam_v[k], np.float64).copy() for k in params}
    for k in g:
        new_params[k], new_m[k], new_v[k] = stepped[k], opt.m[k], opt.v[k]
    return new_params, new_m, new_v, opt.t

"""Stage 3 with a k-anonymous prototype codebook: train the model and the prototype vectors together.

Every stored upload carries the public prototype its phone chose, plus a little noise. The cloud maps
each one back to its prototype (:meth:`~veil.client_sdk.distributions.Codebook.decode`, the nearest
usable one) and trains the model and the K prototype vectors by the same optimiser: each row's soft
tokens are the *trainable* prototype row it decoded to (:func:`veil.models.training.fit` with the
prototypes as its ``extra`` module: :func:`veil.models.dp_codebook.fit_codebook_stage3`, with DP-SGD or
without), as :mod:`veil.simulation.codebook` does in the simulator (IFCA,
arXiv:2006.04088, on IDfree-PL's soft tokens, arXiv:2501.06062). Retired prototypes receive no gradient and keep their
values. The trained codebook is a new version: phones must choose again against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields

import numpy as np

from veil.client_sdk.codebook_wire import float32_codebook
from veil.client_sdk.distributions import Codebook
from veil.models.dp_codebook import CodebookStage3Config, fit_codebook_stage3
from veil.models.personalization import PersonalizedLM
from veil.models.tasks import TokenizedTask
from veil.models.training import TrainConfig

__all__ = ["CHECKPOINT_CODEBOOK", "fit_codebook"]

CHECKPOINT_CODEBOOK = "codebook.npz"
"""The trained codebook is saved under this name inside the job's checkpoint folder."""


def fit_codebook(
    model: PersonalizedLM,
    data: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    cfg: TrainConfig,
    uploads: np.ndarray,
    book: Codebook,
    on_step: Callable[[float], None] | None = None,
) -> tuple[list[float], Codebook, np.ndarray]:
    """Train ``model`` and the prototypes of ``book`` on ``data[indices]``.

    Parameters
    ----------
    uploads : ndarray, shape ``(len(data), n_tokens, dim)``
        The embedding stored with each example.

    Returns
    -------
    losses : list of float
        Mean loss of every step.
    trained : Codebook
        The prototypes after training (float32 values, same usable set and ``k_min``).
    decoded : ndarray of int64, shape ``(len(data),)``
        The prototype each upload was mapped to.
    """
    if uploads.shape != (len(data), *book.shape):
        raise ValueError(f"uploads must have shape {(len(data), *book.shape)}, got {uploads.shape}")
    decoded = book.decode(uploads)  # (N,)
    s3 = CodebookStage3Config(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})
    run = fit_codebook_stage3(model, data, indices, decoded, book.prototypes, s3, on_step)
    return run.train.losses, float32_codebook(book.with_prototypes(run.prototypes)), decoded

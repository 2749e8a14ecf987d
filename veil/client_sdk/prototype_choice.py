"""The phone's side of the prototype codebook: score every usable prototype by loss requests.

A phone chooses its prototype privately (``PROTOCOL.md`` 5.5): for each of its own examples and each
usable prototype of the public codebook it sends one ``POST /v1/embedding-gradients`` whose embedding is
the prototype itself, keeps the returned losses, and takes the prototype with the lowest mean loss
(:func:`~veil.client_sdk.distributions.choose_prototype`). Every phone sends the same set of prototypes,
so the requests say nothing about which one it picks; the texts are what any upload would carry anyway.
The prototype is sent without noise: it is public, and the loss of the exact prototype is what the choice
compares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from veil.client_sdk.distributions import Codebook

__all__ = ["Example", "PrototypeChoice", "prototype_losses"]

Example = tuple[str, str, str]
"""One of the phone's own examples: ``(task, text, label)``."""

LossFn = Callable[[str, str, str, np.ndarray], Awaitable[float]]
"""``loss(task, text, label, embedding)``: one loss request."""


@dataclass(frozen=True)
class PrototypeChoice:
    """The outcome of a choice: kept on the phone, never sent."""

    index: int
    """The chosen prototype."""
    version: str
    """Version of the codebook the choice was made against."""
    mean_losses: np.ndarray
    """``(K,)`` mean loss under each prototype (NaN for unusable ones, which are not requested)."""
    requests: int
    """Loss requests sent."""


async def prototype_losses(
    loss: LossFn, book: Codebook, examples: Sequence[Example], max_in_flight: int = 8
) -> np.ndarray:
    """Losses of every example under every usable prototype: ``(examples, K)``, NaN where unusable.

    At most ``max_in_flight`` requests are outstanding at once.
    """
    if not examples:
        raise ValueError("choosing a prototype needs at least one example")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    usable = np.flatnonzero(book.active)
    out = np.full((len(examples), book.size), np.nan)
    slots = asyncio.Semaphore(max_in_flight)

    async def one(i: int, k: int) -> None:
        task, text, label = examples[i]
        async with slots:
            out[i, k] = await loss(task, text, label, book.prototypes[k])

    await asyncio.gather(*[one(i, int(k)) for i in range(len(examples)) for k in usable])
    return out

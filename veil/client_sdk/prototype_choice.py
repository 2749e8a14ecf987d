"""The phone's side of the prototype codebook: score every usable prototype by loss requests.

A phone chooses its prototype privately (``PROTOCOL.md`` 5.5): for each of its own examples it sends one
``POST /v1/codebook/losses`` naming the codebook version, gets the example's loss under every usable
prototype (the cloud holds the public prototypes, so nothing else is sent), and takes the prototype with
the lowest mean loss (:func:`~veil.client_sdk.distributions.choose_prototype`). Every phone asks for every
usable prototype, so the requests say nothing about which one it picks; the texts are what any upload
would carry anyway.
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

AskFn = Callable[[str, str, str, Codebook], Awaitable[np.ndarray]]
"""``ask(task, text, label, codebook)``: one example's losses under every usable prototype ``(K,)``."""


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
    """Loss requests sent (one per example)."""


async def prototype_losses(
    ask: AskFn, book: Codebook, examples: Sequence[Example], max_in_flight: int = 8
) -> np.ndarray:
    """Losses of every example under every usable prototype: ``(examples, K)``, NaN where unusable.

    One request per example (``ask``: ``POST /v1/codebook/losses``), at most ``max_in_flight`` at once.
    """
    if not examples:
        raise ValueError("choosing a prototype needs at least one example")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    slots = asyncio.Semaphore(max_in_flight)

    async def one(task: str, text: str, label: str) -> np.ndarray:
        async with slots:
            return await ask(task, text, label, book)

    return np.stack(await asyncio.gather(*[one(*e) for e in examples]))

"""What every compressor shares, on the phone and on the cloud: the prompt after prefill and the
record of what was kept.

A method looks at the prompt once, after the prefill call, and returns for every layer a boolean
``keep`` mask ``(B, n)`` over the prompt positions; :func:`~veil.client_sdk.runtime.compression.cache.
compact` then copies the kept keys and values into smaller arrays. Whatever its scores say, a row keeps
only real tokens (left padding is never kept) and every protected position (its soft tokens: pruning
them would silently de-personalise the answer), as on the cloud. Both classes hold no maths of their
own, so the cloud's ``veil.models.compression`` uses them too, :class:`Prefill` with torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["KVKept", "Prefill"]

A = TypeVar("A")
"""The array type: ``np.ndarray`` on the phone, ``torch.Tensor`` on the cloud."""


@dataclass(frozen=True)
class Prefill(Generic[A]):
    """The prompt as the cache holds it right after the prefill call.

    Attributes
    ----------
    keys: per layer, the un-repeated post-RoPE keys ``(B, H_kv, n, d)``.
    queries: per layer, the post-RoPE queries of the last ``w`` prompt positions ``(B, H, w, d)`` (``w``
        is the most any method of the batch scores with, its config's ``query_window``).
    valid: ``(B, n)`` bool, False on left padding.
    protected: ``(B, n)`` bool, positions that are always kept (soft tokens).
    scaling: the attention's softmax scale (``head_dim ** -0.5`` for Llama-like models).
    """

    keys: Sequence[A]
    queries: Sequence[A]
    valid: A
    protected: A
    scaling: float

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    def rows(self, index: A) -> Prefill[A]:
        """The same prompt restricted to the batch rows ``index`` ``(b,)``."""
        return Prefill(
            [k[index] for k in self.keys],
            [q[index] for q in self.queries],
            self.valid[index],
            self.protected[index],
            self.scaling,
        )


@dataclass(frozen=True)
class KVKept:
    """How much of one row's prompt cache was kept.

    Attributes
    ----------
    per_layer: kept prompt tokens / prompt tokens (padding excluded), one per layer.
    """

    per_layer: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Kept fraction of the whole prompt cache (every layer holds the same ``n`` tokens before)."""
        return sum(self.per_layer) / len(self.per_layer)

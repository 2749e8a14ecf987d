"""The decoding fields that the phone's ONNX generation and the server's generation share.

Both decode one row with temperature and nucleus (top-p) sampling (Holtzman et al., arXiv:1904.09751,
section 3.1), under the same limits. Each side subclasses :class:`DecodingParams` for what is genuinely
its own: the phone's stop ids default to the model's EOS, while the server's default to none (the
engine adds the tokenizer's EOS itself) and the server alone returns log-probabilities and seeds a
torch generator (whose seed range it checks).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DecodingParams"]


@dataclass(frozen=True)
class DecodingParams:
    """How one row is decoded: the fields common to every generator.

    Attributes
    ----------
    max_new_tokens: upper bound on generated tokens (the row finishes with reason ``"length"``).
    temperature: 0 means greedy; otherwise logits are divided by it before sampling; in ``[0, 2]``.
    top_p: nucleus sampling mass in (0, 1]; 1 keeps the whole distribution.
    seed: seeds this row's own generator; ``None`` draws fresh randomness.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

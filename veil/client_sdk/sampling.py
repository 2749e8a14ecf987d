"""The decoding fields that the phone's ONNX generation and the server's generation share.

Both decode one row with temperature and nucleus (top-p) sampling (Holtzman et al., arXiv:1904.09751,
section 3.1), under the same limits. Each side subclasses :class:`DecodingParams` for what is genuinely
its own: the phone's stop ids default to the model's EOS, while the server's default to none (the
engine adds the tokenizer's EOS itself) and the server alone returns log-probabilities and seeds a
torch generator (whose seed range it checks).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

__all__ = ["DecodingParams", "decode_step"]


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


def decode_step(
    draw: Callable[[int], int],
    stops: Sequence[Collection[int]],
    limits: Sequence[int],
    tokens: list[list[int]],
    reasons: list[str | None],
    on_step: Callable[[list[int | None]], set[int] | None] | None = None,
) -> list[int | None] | None:
    """One decoding step's bookkeeping for a batch, the same on the phone and on the server.

    For every unfinished row ``r``: ``draw(r)`` samples its next token; a stop token finishes the row
    (reason ``"stop"``, the token is not kept), otherwise the token is appended to ``tokens[r]`` and the row
    finishes with ``"length"`` once it holds ``limits[r]`` tokens. ``on_step`` (the caller's, e.g. stop
    strings) sees the step's new tokens and may name rows to stop. ``tokens`` and ``reasons`` are updated
    in place.

    Returns
    -------
    list or None
        The step's new token per row (``None`` for finished rows), to feed to the model; ``None`` once
        every row has finished.
    """
    step: list[int | None] = [None] * len(reasons)
    for r, reason in enumerate(reasons):
        if reason is not None:
            continue
        tok = draw(r)
        if tok in stops[r]:
            reasons[r] = "stop"
            continue
        tokens[r].append(tok)
        step[r] = tok
        if len(tokens[r]) >= limits[r]:
            reasons[r] = "length"
    if on_step is not None:
        for r in on_step(step) or ():
            if reasons[r] is None or reasons[r] == "length":
                reasons[r] = "stop"
    return None if all(reason is not None for reason in reasons) else step

"""Config fields shared by the fixed-budget baselines (each method's config inherits from these).

Every compression config is defined once, here in the phone's SDK (pure Python, no torch), and the
cloud's ``veil.models.compression`` re-exports it, so a spec means the same on the phone and in a chat
request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BudgetConfig", "ObservationWindowConfig", "Pooling"]

Pooling = Literal["avgpool", "maxpool"]


@dataclass(frozen=True)
class BudgetConfig:
    """A fixed cache budget per layer.

    Attributes
    ----------
    budget: a float in ``(0, 1]`` is the fraction of each row's prompt tokens kept per layer (rounded,
        at least 1); an int ``>= 1`` is a number of tokens, which must not exceed any row's prompt.
        Protected (soft) tokens count against the budget and are kept even when they alone exceed it.
    """

    budget: float | int = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
            raise ValueError(f"budget must be a float fraction or an int token count, got {self.budget!r}")
        if isinstance(self.budget, float) and not 0.0 < self.budget <= 1.0:
            raise ValueError(f"a fractional budget must be in (0, 1], got {self.budget}")
        if isinstance(self.budget, int) and self.budget < 1:
            raise ValueError(f"a token budget must be >= 1, got {self.budget}")


@dataclass(frozen=True)
class ObservationWindowConfig(BudgetConfig):
    """SnapKV-style selection (arXiv:2404.14469): the last ``window_size`` prompt queries vote.

    Attributes
    ----------
    window_size: prompt queries in the observation window; their own keys are always kept (counted
        in the budget; a budget below the window keeps just the last ``budget`` tokens).
    kernel_size: width of the 1-D pooling of the votes along positions (SnapKV's clustering).
    pooling: ``"avgpool"`` or ``"maxpool"``.

    The paper leaves these open; the defaults are the released SnapKV code's pooling choice with a
    32-query window, small enough for short prompts.
    """

    window_size: int = 32
    kernel_size: int = 5
    pooling: Pooling = "avgpool"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd number >= 1, got {self.kernel_size}")
        if self.pooling not in ("avgpool", "maxpool"):
            raise ValueError(f"pooling must be 'avgpool' or 'maxpool', got {self.pooling!r}")

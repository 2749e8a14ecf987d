"""LongDPO's critique-augmented refinement of weak steps (arXiv:2502.02095, §3.3).

A step whose value is below ``threshold`` (paper: 6.0) is refined: extra candidates are sampled
(temperature 1.0, top-p 0.8), and for every principle on which an extra candidate beats the chosen step
the judge compares the two and writes a suggestion with a confidence in 1-5. The top ``max_suggestions``
(paper: 1-3) by confidence are appended to the instruction ("Here are some suggestions for you to
improve your writing quality: ...") and the step is regenerated; the best regenerated step replaces the
chosen one when its value is higher. The pair keeps the original instruction as its prompt.

Our choices: ``regenerations`` steps are sampled with the suggestions (at the search's temperature); a
principle's comparison uses the extra candidate that beats the chosen step by most on it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CritiqueConfig", "SUGGESTION_HEADER", "with_suggestions"]

SUGGESTION_HEADER = "Here are some suggestions for you to improve your writing quality:"


@dataclass(frozen=True)
class CritiqueConfig:
    """threshold: steps valued below it are refined (paper: 6.0, on quality 1-5 plus S_l / 10).
    extra_samples, temperature, top_p, top_k: the extra candidates (paper: 1.0, 0.8 and 50; 0: no top-k).
    max_suggestions: suggestions appended (paper: the top 1-3).
    regenerations: steps sampled with the suggestions."""

    threshold: float = 6.0
    extra_samples: int = 4
    temperature: float = 1.0
    top_p: float = 0.8
    top_k: int = 50
    max_suggestions: int = 3
    regenerations: int = 2

    def __post_init__(self) -> None:
        if self.extra_samples < 1 or self.max_suggestions < 1 or self.regenerations < 1:
            raise ValueError("extra_samples, max_suggestions and regenerations must be >= 1")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0.0 < self.temperature <= 2.0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"temperature must be in (0, 2] and top_p in (0, 1], got {self.temperature}, {self.top_p}"
            )


def with_suggestions(instruction: str, suggestions: list[str]) -> str:
    """The instruction with the suggestions appended (the paper's wording).

    >>> with_suggestions("Write about X.", ["Mention Y.", "Be brief."])
    'Write about X.\\n\\nHere are some suggestions for you to improve your writing quality: 1. Mention Y. 2. Be brief.'
    """
    listed = " ".join(f"{i}. {s}" for i, s in enumerate(suggestions, 1))
    return f"{instruction}\n\n{SUGGESTION_HEADER} {listed}"

"""A scripted participant: a chat callable whose accuracy on PunchBench is set in advance.

It recognises which item the last user message asks (by its rendered question text), and answers it
correctly exactly on a pre-drawn subset of items whose size is ``round(accuracy * n)``. It knows nothing
of scoring, so the harness's scores and statistics can be checked against the plan (``planned``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from veil.models.evaluation.punchbench.questions import Question, render
from veil.models.evaluation.punchbench.schema import Item

__all__ = ["ScriptedParticipant"]


@dataclass
class ScriptedParticipant:
    """Answers ``items`` (rendered with ``seed``) right on a fixed subset of size ``round(accuracy * n)``."""

    items: Sequence[Item]
    accuracy: float
    seed: int = 0
    """Seed the questions were rendered with (must match the harness's)."""
    draw_seed: int = 0
    """Seed for which items are answered correctly."""
    calls: int = field(default=0, init=False)
    planned: dict[str, bool] = field(default_factory=dict, init=False)
    _questions: list[tuple[Question, Item]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0:
            raise ValueError(f"accuracy must be in [0, 1], got {self.accuracy}")
        ids = [it.item_id for it in self.items]
        right = set(random.Random(self.draw_seed).sample(ids, round(self.accuracy * len(ids))))
        self.planned = {i: i in right for i in ids}
        # longest text first, so a question that contains another is matched before it
        qs = [(render(it, self.seed), it) for it in self.items]
        self._questions = sorted(qs, key=lambda qi: -len(qi[0].text))

    def __call__(self, messages: Sequence[dict[str, str]]) -> str:
        self.calls += 1
        text = messages[-1]["content"]
        q, item = next(((q, it) for q, it in self._questions if q.text in text), (None, None))
        if q is None or item is None:
            return "I am not sure."
        right = self.planned[item.item_id]
        if item.format == "generation":
            return item.gold if right else "I cannot tell why this would be funny."
        if item.format == "yes-no":
            answer = item.gold if right else ("no" if item.gold == "yes" else "yes")
            return f"Answer: {answer}"
        wrong = next(o for o in q.options if o != item.gold)
        return f"Answer: {q.letter_of(item.gold if right else wrong)}"

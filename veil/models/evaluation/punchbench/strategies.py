"""Prompting strategies compared in PunchBench (arXiv:2412.11906, Sec. 4): zero-shot, few-shot (3-shot
in-context learning), chain-of-thought, and SC-CoQ (Simple-to-Complex Chain-of-Question, Sec. 4.2).

A strategy turns one target item into chat calls and returns the reply to score plus a transcript. A
chat is any callable ``chat(messages) -> str`` over OpenAI-style messages, so the same strategies drive a
local model, a remote endpoint or a scripted participant.

SC-CoQ asks easier questions about the same pair first and puts the model's *own* earlier answers (never
the gold) in the history of the next question; only the target is scored. Chains (Sec. 4.2):

- intra-task: same level, easy to hard: yes-no -> matching -> target (multiple-choice or generation);
- inter-task: both levels at each difficulty step: perception yes-no -> reasoning yes-no -> perception
  matching -> reasoning matching -> target.

Only questions of the same pair *and caption variant* join a chain, and a step is skipped when the pair
has no such item (a caption without a punchline has no reasoning items). The paper does not state the
order of the two levels at a step; perception first is our choice. The dialogue itself (who sees what)
is :func:`veil.models.evaluation.punchbench.chain.chain_dialogue`, shared with the chat API.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from veil.models.evaluation.punchbench.chain import ask_chain
from veil.models.evaluation.punchbench.questions import Question, render
from veil.models.evaluation.punchbench.schema import Item

__all__ = [
    "DIFFICULTY",
    "STRATEGIES",
    "ChainOfThought",
    "FewShot",
    "SCCoQ",
    "Strategy",
    "Trial",
    "UnknownStrategyError",
    "ZeroShot",
    "make_strategy",
]

Message = dict[str, str]
Chat = Callable[[Sequence[Message]], str]
DIFFICULTY = {"yes-no": 0, "matching": 1, "multiple-choice": 2, "generation": 2}
SYSTEM = "You judge whether image-caption pairs are funny or sarcastic. Answer briefly."


class UnknownStrategyError(ValueError):
    """A strategy name that is not registered."""


@dataclass
class Trial:
    """The outcome of one strategy on one target item: the reply to score and every turn asked."""

    question: Question
    reply: str
    transcript: list[dict[str, str]] = field(default_factory=list)


class Strategy(ABC):
    """Base class: ``run(target, bank, chat)`` asks the model and returns a :class:`Trial`."""

    name: str = ""

    @abstractmethod
    def run(self, target: Item, bank: Sequence[Item], chat: Chat, seed: int = 0) -> Trial:
        """Ask ``chat`` about ``target`` (``bank``: other items, for examples and chains)."""


def _ask(chat: Chat, history: list[Message], text: str) -> str:
    reply = chat([{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": text}])
    if not isinstance(reply, str):
        raise TypeError(f"chat must return a string, got {type(reply).__name__}")
    return reply


@dataclass
class ZeroShot(Strategy):
    """The question alone."""

    name: str = "zero-shot"

    def run(self, target: Item, bank: Sequence[Item], chat: Chat, seed: int = 0) -> Trial:
        q = render(target, seed)
        reply = _ask(chat, [], q.text)
        return Trial(q, reply, [{"item_id": target.item_id, "question": q.text, "answer": reply}])


@dataclass
class FewShot(Strategy):
    """``shots`` solved examples of the same level and format from *other* pairs, then the question.

    Demonstrations show gold answers of other pairs (ordinary in-context learning; the target's own pair
    never appears). Sampled per target from ``(seed, item_id)``.
    """

    shots: int = 3
    """Number of demonstrations (the paper's ICL setting is 3-shot)."""
    name: str = "few-shot"

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")

    def run(self, target: Item, bank: Sequence[Item], chat: Chat, seed: int = 0) -> Trial:
        pool = [
            it
            for it in bank
            if it.pair_id != target.pair_id and it.level == target.level and it.format == target.format
        ]
        rng = random.Random(f"few-shot:{seed}:{target.item_id}")
        demos = rng.sample(pool, min(self.shots, len(pool)))
        history: list[Message] = []
        for demo in demos:
            dq = render(demo, seed)
            answer = demo.gold if demo.format in ("yes-no", "generation") else dq.letter_of(demo.gold)
            history += [{"role": "user", "content": dq.text}, {"role": "assistant", "content": answer}]
        q = render(target, seed)
        reply = _ask(chat, history, q.text)
        return Trial(q, reply, [{"item_id": target.item_id, "question": q.text, "answer": reply}])


@dataclass
class ChainOfThought(Strategy):
    """The question followed by a request to reason step by step and end with an ``Answer:`` line."""

    instruction: str = (
        "Think step by step, then give your final answer on a last line starting with 'Answer:'."
    )
    """Appended to the question; the paper's CoT wording is not published, this one is ours."""
    name: str = "cot"

    def run(self, target: Item, bank: Sequence[Item], chat: Chat, seed: int = 0) -> Trial:
        q = render(target, seed)
        reply = _ask(chat, [], f"{q.text}\n{self.instruction}")
        return Trial(q, reply, [{"item_id": target.item_id, "question": q.text, "answer": reply}])


@dataclass
class SCCoQ(Strategy):
    """Simple-to-complex chain of questions on the target's pair, fed with the model's own answers."""

    chain: Literal["intra", "inter"] = "intra"
    """intra-task (one level) or inter-task (both levels at each step)."""
    name: str = "sc-coq"

    def __post_init__(self) -> None:
        if self.chain not in ("intra", "inter"):
            raise ValueError(f"chain must be 'intra' or 'inter', got {self.chain!r}")

    def chain_for(self, target: Item, bank: Sequence[Item]) -> list[Item]:
        """The chain's items, easy to hard, ending with ``target``."""
        same = [
            it
            for it in bank
            if it.pair_id == target.pair_id and it.variant == target.variant and it.item_id != target.item_id
        ]
        levels = ("perception", "reasoning") if self.chain == "inter" else (target.level,)
        earlier = [
            it for it in same if it.level in levels and DIFFICULTY[it.format] < DIFFICULTY[target.format]
        ]
        order = {lv: i for i, lv in enumerate(("perception", "reasoning"))}
        earlier.sort(key=lambda it: (DIFFICULTY[it.format], order[it.level], it.item_id))
        return [*earlier, target]

    def run(self, target: Item, bank: Sequence[Item], chat: Chat, seed: int = 0) -> Trial:
        items = self.chain_for(target, bank)
        questions = [render(it, seed) for it in items]
        turns = ask_chain(chat, [q.text for q in questions], [{"role": "system", "content": SYSTEM}])
        transcript = [
            {"item_id": it.item_id, "question": t.question, "answer": t.answer}
            for it, t in zip(items, turns, strict=True)
        ]
        return Trial(questions[-1], turns[-1].answer, transcript)


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "zero-shot": ZeroShot,
    "few-shot": FewShot,
    "cot": ChainOfThought,
    "sc-coq": SCCoQ,
    "sc-coq-inter": lambda: SCCoQ(chain="inter", name="sc-coq-inter"),
}


def make_strategy(name: str) -> Strategy:
    """The strategy registered under ``name``; raises :class:`UnknownStrategyError` otherwise."""
    if name not in STRATEGIES:
        raise UnknownStrategyError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name]()

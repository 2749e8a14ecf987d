"""Answer parsing, judging and accuracy for PunchBench (arXiv:2412.11906, Sec. 4.1).

Discrete formats are scored by accuracy after parsing the reply. Generation is judged against the
reference explanation: the paper uses gpt-3.5-turbo-0125 as a binary judge; here a judge is any object
with ``judge(item, answer) -> bool``, with a rule-based judge (content-word recall) and an LM judge
(any chat callable) as the two implementations.

Parsing (a choice the paper leaves open): if the reply has a line starting with ``Answer:``, only the
last such line is read (chain-of-thought replies reason first); otherwise the whole reply. Yes-no takes
the first standalone "yes"/"no"; option formats take the first standalone letter in range, else the
first option whose full text appears in the reply. An unparsable reply is scored wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from veil.models.evaluation.punchbench.questions import LETTERS, Question
from veil.models.evaluation.punchbench.schema import Item

__all__ = ["Judge", "LMJudge", "RuleJudge", "extract_answer", "parse_choice", "score"]

Message = dict[str, str]
Chat = Callable[[Sequence[Message]], str]
_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*[:\-]\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "and",
        "or",
        "but",
        "as",
        "by",
        "so",
        "because",
        "than",
        "then",
        "there",
        "their",
        "they",
        "he",
        "she",
        "we",
        "you",
        "i",
        "not",
        "no",
        "yes",
        "very",
        "too",
        "do",
        "does",
    ]
)


def extract_answer(reply: str) -> str:
    """The part of ``reply`` that holds the answer: the last ``Answer:`` line if any, else the reply."""
    found = _ANSWER_LINE.findall(reply)
    return found[-1] if found else reply


def parse_choice(item: Item, question: Question, reply: str) -> str | None:
    """The option text the reply picks (``"yes"``/``"no"`` for yes-no), or ``None`` if unparsable."""
    text = extract_answer(reply).strip()
    if item.format == "yes-no":
        m = re.search(r"\b(yes|no)\b", text, re.IGNORECASE)
        return m.group(1).lower() if m else None
    letters = LETTERS[: len(question.options)]
    m = re.search(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text)
    if m:
        return question.options[letters.index(m.group(1))]
    lowered = text.lower()
    for option in question.options:
        if option.lower() in lowered:
            return option
    return None


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


class Judge(Protocol):
    """Decides whether a generated explanation matches the item's reference (binary, as in Sec. 4.1)."""

    def judge(self, item: Item, answer: str) -> bool: ...


@dataclass(frozen=True)
class RuleJudge:
    """Correct when the answer contains at least ``min_recall`` of the reference's content words.

    A stand-in for the paper's LLM judge where no strong judge model runs; our choice, not the paper's.
    """

    min_recall: float = 0.5
    """Fraction of the reference's content words (stop words removed) that must appear in the answer."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_recall <= 1.0:
            raise ValueError(f"min_recall must be in (0, 1], got {self.min_recall}")

    def judge(self, item: Item, answer: str) -> bool:
        reference = _content_words(item.gold)
        if not reference:
            return False
        return len(reference & _content_words(extract_answer(answer))) / len(reference) >= self.min_recall


@dataclass
class LMJudge:
    """Asks a model (any chat callable) whether the answer matches the reference, as the paper does.

    The paper's judge prompt is not published; this one asks for a one-word yes/no verdict.
    """

    chat: Chat
    prompt: str = field(
        default=(
            'Reference explanation: "{reference}"\nCandidate explanation: "{answer}"\n'
            "Does the candidate give the same reason as the reference? Answer yes or no."
        )
    )

    def judge(self, item: Item, answer: str) -> bool:
        verdict = self.chat(
            [{"role": "user", "content": self.prompt.format(reference=item.gold, answer=answer)}]
        )
        m = re.search(r"\b(yes|no)\b", verdict, re.IGNORECASE)
        return bool(m) and m.group(1).lower() == "yes"


def score(item: Item, question: Question, reply: str, judge: Judge) -> tuple[bool, str | None]:
    """``(correct, parsed)``: whether ``reply`` answers ``item`` correctly, and what was parsed from it."""
    if item.format == "generation":
        return judge.judge(item, reply), extract_answer(reply).strip()
    parsed = parse_choice(item, question, reply)
    return parsed == item.gold, parsed

"""Judges of long-form text: quality on LongDPO's seven principles, facts, contradictions, critiques.

LongDPO (arXiv:2502.02095, §3.1) asks an LLM judge to score a step on seven principles (accuracy,
meeting the user's needs, harmlessness, formatting and logic, non-repetition, reading experience,
insight); each score is the expectation of the judge's soft weights over the answers 1-5, the quality is
their mean, and an answer that cannot be parsed scores 2.5. The same judge extracts facts for the memory
pool, checks a chunk against a fact, and writes critiques (§3.3).

* :class:`RuleJudge` computes every principle from the text (for tests and CPU runs): repetition,
  keyword coverage, stated facts against the topic's and against each other, sentence shape, lexical
  variety. It has no toxicity model: ``non-toxic`` is always 5 (a constant cannot change a ranking).
* :class:`LMJudge` is the paper's judge over any local LM: one prompt per principle whose next-token
  probabilities over ``1``..``5`` are the soft weights (renormalised); when the most likely next token
  is not one of them the answer is unparsable, scored 2.5 and counted in :attr:`Quality.unparsable`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from veil.models.longform.data import LongformPrompt
from veil.models.longform.facts import Fact, contradictions, extract_facts, fact_sentence

__all__ = [
    "PRINCIPLES",
    "ChoiceScorer",
    "HFChoiceScorer",
    "Judge",
    "LMJudge",
    "Quality",
    "RuleJudge",
    "Suggestion",
    "UNPARSABLE_SCORE",
]

PRINCIPLES: dict[str, str] = {
    "accuracy": "the content is correct and consistent with known facts",
    "meets needs": "the response does what the instruction asks and stays on its topic",
    "non-toxic": "the response is free of harmful, offensive or unsafe content",
    "formatting and logic": "the response is well organised and never contradicts itself",
    "non-repetitive": "the response does not repeat words, phrases or ideas",
    "reading experience": "sentences are complete, fluent and pleasant to read",
    "insight": "the response is informative and offers varied, substantive content",
}
"""LongDPO's seven principles (arXiv:2502.02095, §3.1) with the description the LM judge is given."""

UNPARSABLE_SCORE = 2.5
"""What an unparsable judge answer scores (arXiv:2502.02095's released judge)."""


@dataclass(frozen=True)
class Quality:
    """Per-principle scores in [1, 5] and how many of them fell back to :data:`UNPARSABLE_SCORE`."""

    scores: dict[str, float]
    unparsable: int = 0

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


@dataclass(frozen=True)
class Suggestion:
    """A critique: which principle, what to do, and the judge's confidence in 1-5."""

    principle: str
    text: str
    confidence: float


class Judge(Protocol):
    def quality(self, task: LongformPrompt, text: str) -> Quality: ...

    def facts(self, text: str) -> list[Fact]: ...

    def contradicts(self, fact: Fact, chunk: str) -> bool: ...

    def suggest(self, task: LongformPrompt, principle: str, chosen: str, better: str) -> Suggestion | None:
        """Compare the chosen step with one that scored higher on ``principle``; ``None``: no advice."""
        ...


def repetition(text: str, n: int = 3) -> float:
    """The share of word n-grams that already occurred earlier in ``text`` (0: none repeated).

    >>> repetition("a b c a b c"), repetition("a b c d")
    (0.25, 0.0)
    """
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s.strip()]


class RuleJudge:
    """The seven principles from the text alone (see the module docstring).

    ``sees_facts=False`` scores ``accuracy`` 3 and ``formatting and logic`` 5 whatever facts the text
    states: a value blind to contradictions, against which the memory pool's own effect can be measured
    (with facts seen, a self-contradicting candidate already loses 4/7 of a point of quality)."""

    def __init__(self, sees_facts: bool = True) -> None:
        self.sees_facts = sees_facts

    def quality(self, task: LongformPrompt, text: str) -> Quality:
        words = re.findall(r"[A-Za-z]+", text.lower())
        stated = extract_facts(text)
        known = {f.key(): f.value.lower() for f in (task.topic.facts if task.topic else ())}
        checked = [f for f in stated if f.key() in known]
        right = sum(known[f.key()] == f.value.lower() for f in checked)
        sentences = _sentences(text)
        shaped = sum(4 <= len(s.split()) <= 40 and s.rstrip()[-1:] in ".!?" for s in sentences)
        wanted = [k.lower() for k in (*task.keywords, *(task.topic.name.split() if task.topic else ()))]
        content = [w for w in words if len(w) >= 4]
        scores = {
            "accuracy": 1 + 4 * right / len(checked) if checked and self.sees_facts else 3.0,
            "meets needs": 1 + 4 * sum(k in words for k in wanted) / len(wanted) if wanted else 3.0,
            "non-toxic": 5.0,
            "formatting and logic": 1.0 if self.sees_facts and contradictions(stated) else 5.0,
            "non-repetitive": 1 + 4 * (1 - repetition(text)),
            "reading experience": 1 + 4 * shaped / len(sentences) if sentences else 1.0,
            "insight": 1 + 4 * min(1.0, 2 * len(set(content)) / len(words)) if words else 1.0,
        }
        return Quality(scores)

    def facts(self, text: str) -> list[Fact]:
        return extract_facts(text)

    def contradicts(self, fact: Fact, chunk: str) -> bool:
        return bool(contradictions(extract_facts(chunk), known=[fact]))

    def suggest(self, task: LongformPrompt, principle: str, chosen: str, better: str) -> Suggestion | None:
        gap = self.quality(task, better).scores[principle] - self.quality(task, chosen).scores[principle]
        if gap <= 0:
            return None
        confidence = min(5.0, 1.0 + gap)
        if principle == "meets needs":
            missing = [k for k in task.keywords if k.lower() not in chosen.lower()]
            return (
                Suggestion(principle, f"Mention {', '.join(missing[:3])}.", confidence) if missing else None
            )
        if principle in ("accuracy", "formatting and logic") and task.topic and task.topic.facts:
            return Suggestion(
                principle, f"Keep to the facts: {fact_sentence(task.topic.facts[0])}", confidence
            )
        if principle == "non-repetitive":
            return Suggestion(principle, "Do not repeat earlier sentences.", confidence)
        return Suggestion(principle, f"Write like this: {better.strip()[:200]}", confidence)


class ChoiceScorer(Protocol):
    """Next-token probabilities of an LM."""

    def choice_probs(self, prompt: str, options: Sequence[str]) -> tuple[list[float], bool]:
        """Each option's next-token probability after ``prompt`` (its first token's), and whether the
        most likely next token is one of the options (``False``: the answer is unparsable)."""
        ...


class TextGenerator(Protocol):
    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str: ...

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list: ...


_SCORE_PROMPT = (
    "You are an expert judge of long-form writing. Rate the response on one principle, "
    "{name}: {description}. Use a scale from 1 (poor) to 5 (excellent).\n\n"
    "Instruction: {instruction}\n\nResponse: {response}\n\nAnswer with one digit."
)
_CONTRADICTION_PROMPT = (
    "Fact: {fact}\n\nPassage: {chunk}\n\nDoes the passage contradict the fact? Answer Yes or No."
)
_FACTS_PROMPT = (
    "List the facts stated in the text, one per line, as: subject | attribute | value.\n\nText: {text}"
)
_CRITIQUE_PROMPT = (
    "Two continuations of a response to the instruction below differ on {name}: {description}.\n\n"
    "Instruction: {instruction}\n\nContinuation A: {chosen}\n\nContinuation B: {better}\n\n"
    "Explain why B is better on this principle, then give one Writing Suggestion for A and a confidence "
    "from 1 to 5, as:\nWriting Suggestion: ...\nConfidence: ..."
)
_DIGITS = ("1", "2", "3", "4", "5")


class LMJudge:
    """The paper's LLM judge over a local LM (see the module docstring).

    Parameters
    ----------
    scorer: next-token probabilities (the soft weights and the yes/no contradiction check).
    generator: writes fact lists and critiques.
    principles: the principles scored (default: all seven).
    """

    def __init__(
        self, scorer: ChoiceScorer, generator: TextGenerator, principles: Sequence[str] = tuple(PRINCIPLES)
    ) -> None:
        if unknown := [p for p in principles if p not in PRINCIPLES]:
            raise ValueError(f"unknown principle(s) {unknown}; known: {', '.join(PRINCIPLES)}")
        self.scorer, self.generator, self.principles = scorer, generator, tuple(principles)

    def _user(self, text: str) -> str:
        return self.generator.chat_prompt(text)

    def quality(self, task: LongformPrompt, text: str) -> Quality:
        scores, bad = {}, 0
        for name in self.principles:
            prompt = _SCORE_PROMPT.format(
                name=name, description=PRINCIPLES[name], instruction=task.prompt, response=text
            )
            probs, parsed = self.scorer.choice_probs(self._user(prompt), _DIGITS)
            total = sum(probs)
            if not parsed or total <= 0:
                scores[name], bad = UNPARSABLE_SCORE, bad + 1
            else:
                scores[name] = sum((i + 1) * p for i, p in enumerate(probs)) / total
        return Quality(scores, bad)

    def facts(self, text: str) -> list[Fact]:
        out = self.generator.complete([self._user(_FACTS_PROMPT.format(text=text))], [], 128)[0].text
        rows = [[c.strip() for c in line.split("|")] for line in out.splitlines()]
        return [Fact(*r) for r in rows if len(r) == 3 and all(r)]

    def contradicts(self, fact: Fact, chunk: str) -> bool:
        prompt = _CONTRADICTION_PROMPT.format(fact=fact_sentence(fact), chunk=chunk)
        (yes, no), _ = self.scorer.choice_probs(self._user(prompt), ("Yes", "No"))
        return yes > no

    def suggest(self, task: LongformPrompt, principle: str, chosen: str, better: str) -> Suggestion | None:
        prompt = _CRITIQUE_PROMPT.format(
            name=principle, description=PRINCIPLES[principle], instruction=task.prompt,
            chosen=chosen, better=better,
        )  # fmt: skip
        out = self.generator.complete([self._user(prompt)], [], 160)[0].text
        advice = re.search(r"Writing Suggestion:\s*(.+)", out)
        conf = re.search(r"Confidence:\s*([1-5](?:\.\d+)?)", out)
        if not advice:
            return None
        return Suggestion(principle, advice.group(1).strip(), float(conf.group(1)) if conf else 1.0)


class HFChoiceScorer:
    """:class:`ChoiceScorer` over a transformers causal LM: one forward pass per prompt."""

    def __init__(self, model: object, tokenizer: object) -> None:
        self.model, self.tokenizer = model, tokenizer

    def choice_probs(self, prompt: str, options: Sequence[str]) -> tuple[list[float], bool]:
        import torch

        tok = self.tokenizer
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        first = [tok(o, add_special_tokens=False)["input_ids"][0] for o in options]
        with torch.inference_mode():
            probs = torch.softmax(self.model(ids).logits[0, -1].float(), dim=-1)  # (vocab,)
        return [float(probs[t]) for t in first], int(probs.argmax()) in first

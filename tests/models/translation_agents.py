"""Scripted DRT agents, shared by the long-thought tests: a translator with a literal lexicon, an advisor
with an idiom table and an evaluator that scores chrF against an idiomatic reference (the stand-ins the
loop can be tested with before a trained model exists)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from veil.models.rag.lm import Completion
from veil.models.translation.long_thought import (
    ADVICE_HEADER,
    DRAFT_HEADER,
    KEYWORDS_HEADER,
    REVISE_HEADER,
    SCORE_HEADER,
)
from veil.models.translation.metrics import sentence_chrf


@dataclass(frozen=True)
class Simile:
    source: str
    literal: str
    """The word-for-word translation (the translator's draft)."""
    idiomatic: str
    """The reference a native reader expects (the evaluator's)."""
    phrase: str = ""
    """The English simile; empty when the sentence has none."""
    literal_phrase: str = ""
    idiom: str = ""


SIMILES = (
    Simile(
        "He eats like a horse.",
        "他吃得像一匹马。",
        "他食量很大。",
        "eats like a horse",
        "吃得像一匹马",
        "食量很大",
    ),
    Simile(
        "The news spread like wildfire.",
        "这个消息像野火一样传开了。",
        "这个消息迅速传开了。",
        "spread like wildfire",
        "像野火一样传开了",
        "迅速传开了",
    ),
    Simile(
        "She was as busy as a bee all week.",
        "她整个星期都像蜜蜂一样忙。",
        "她整个星期都忙得团团转。",
        "as busy as a bee",
        "像蜜蜂一样忙",
        "忙得团团转",
    ),
)
PLAIN = Simile("The room was quiet.", "房间里很安静。", "房间里很安静。")


def _field(user: str, name: str) -> str:
    return re.search(rf"^{name}: (.*)$", user, re.M).group(1)  # type: ignore[union-attr]


class ScriptedAgents:
    """A :class:`~veil.models.rag.lm.TextLM` playing translator, advisor and evaluator.

    ``helpful=False`` makes the advisor say nothing useful, so the translator repeats itself.
    """

    def __init__(self, items: Sequence[Simile] = (*SIMILES, PLAIN), helpful: bool = True) -> None:
        self.by_source = {s.source: s for s in items}
        self.helpful = helpful
        self.calls: list[tuple[str, int]] = []  # (role, batch size)

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return f"<user>{user}</user><assistant>{assistant_prefix}"

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        out = [self._one(p) for p in prompts]
        self.calls.append((out[0][0] if out else "", len(prompts)))
        return [Completion(text, stop[0] if stop else None) for _, text in out]

    def _one(self, prompt: str) -> tuple[str, str]:
        user, _ = re.fullmatch(r"<user>(.*)</user><assistant>(.*)", prompt, re.S).groups()  # type: ignore[union-attr]
        if user.startswith(KEYWORDS_HEADER):
            item = self.by_source[_field(user, "Text")]
            return "keywords", f"1. {item.phrase} = {item.literal_phrase}\n" if item.phrase else "None.\n"
        if user.startswith(DRAFT_HEADER):
            return "draft", f"Translation: {self.by_source[_field(user, 'Text')].literal}"
        if user.startswith(ADVICE_HEADER):
            item, translation = self.by_source[_field(user, "Source")], _field(user, "Translation")
            if self.helpful and item.literal_phrase and item.literal_phrase in translation:
                return "advice", f"'{item.literal_phrase}' is word for word; render it as '{item.idiom}'."
            return "advice", "It reads well."
        if user.startswith(REVISE_HEADER):
            translation, advice = _field(user, "Translation"), _field(user, "Advice")
            m = re.search(r"'(.+?)' is word for word; render it as '(.+?)'", advice)
            return "revise", translation.replace(m.group(1), m.group(2)) if m else translation
        if user.startswith(SCORE_HEADER):
            item, translation = self.by_source[_field(user, "Source")], _field(user, "Translation")
            return "score", f" {sentence_chrf(translation, item.idiomatic):.1f}"
        raise AssertionError(f"unexpected prompt: {user[:80]!r}")

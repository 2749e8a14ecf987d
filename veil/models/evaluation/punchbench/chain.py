"""SC-CoQ's chain of questions (Simple-to-Complex Chain-of-Question, arXiv:2412.11906, Sec. 4.2) as one
dialogue, written once for both of its users: the :class:`~veil.models.evaluation.punchbench.strategies.SCCoQ`
strategy of the benchmark and the chat API's ``strategy: "sc-coq"``.

The questions are asked in order, easy to hard, the last one being the target. Each call sees the
preamble (a system prompt, or the conversation before the target), every earlier question with the
model's *own* answer to it (never a gold answer), then the next question; only the last answer is the
target's.

The dialogue is a generator, so a blocking chat (the benchmark) and an awaited one (the server's engine)
drive the same steps: it yields the messages of each call and takes the model's reply back through
``send``. :func:`ask_chain` is the blocking driver.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

__all__ = ["ChainTurn", "ask_chain", "chain_dialogue"]

Message = dict[str, str]


@dataclass(frozen=True)
class ChainTurn:
    """One question of a chain and the model's answer to it."""

    question: str
    answer: str


def chain_dialogue(
    questions: Sequence[str], preamble: Sequence[Message] = ()
) -> Generator[list[Message], str, list[ChainTurn]]:
    """The calls of one chain: yields each call's messages; ``send`` the model's reply; returns the turns.

    Parameters
    ----------
    questions:
        The chain, easy to hard, ending with the target question (at least one).
    preamble:
        Messages every call starts with (a system prompt, earlier conversation).

    Examples
    --------
    >>> talk = chain_dialogue(["Is it raining?", "Why is 'perfect beach day' funny?"])
    >>> next(talk)
    [{'role': 'user', 'content': 'Is it raining?'}]
    >>> talk.send("yes")  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'user', 'content': 'Is it raining?'}, {'role': 'assistant', 'content': 'yes'},
     {'role': 'user', 'content': "Why is 'perfect beach day' funny?"}]
    >>> try:
    ...     talk.send("rain spoils the beach")
    ... except StopIteration as done:
    ...     [t.answer for t in done.value]
    ['yes', 'rain spoils the beach']
    """
    if not questions:
        raise ValueError("a chain needs at least one question (its target), got none")
    history = list(preamble)
    turns: list[ChainTurn] = []
    for question in questions:
        reply = yield [*history, {"role": "user", "content": question}]
        if not isinstance(reply, str):
            raise TypeError(f"the model's reply must be a string, got {type(reply).__name__}")
        turns.append(ChainTurn(question, reply))
        # the model's own reply goes forward, never a gold answer
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return turns


def ask_chain(
    chat: Callable[[Sequence[Message]], str], questions: Sequence[str], preamble: Sequence[Message] = ()
) -> list[ChainTurn]:
    """Runs :func:`chain_dialogue` with a blocking ``chat(messages) -> str``; the last turn is the target's.

    >>> echo = lambda messages: f"{len(messages)} messages"
    >>> [t.answer for t in ask_chain(echo, ["easy?", "hard?"], [{"role": "system", "content": "Be brief."}])]
    ['2 messages', '4 messages']
    """
    talk = chain_dialogue(questions, preamble)
    messages = next(talk)
    while True:
        try:
            messages = talk.send(chat(messages))
        except StopIteration as done:
            return done.value

"""DeepRAG's step protocol as text: rendering, parsing, loss masks and answer scoring.

DeepRAG (Guan et al., arXiv:2502.01142, §3) writes a reasoning trace as follow-up subqueries, each
answered either from memory or after a search whose passages are spliced into the text::

    Follow up: Who directed The Bunam?
    Intermediate answer: Rerzo Pumbra
    Follow up: Where was Rerzo Pumbra born?
    Let's search the question in Wikipedia.
    Context:
    [1] Rerzo Pumbra Rerzo Pumbra is a person. Rerzo Pumbra was born in Voskloham.
    [2] Rerzo Pumbri Rerzo Pumbri is a person. Rerzo Pumbri was born in Tumoria.
    Intermediate answer: Voskloham
    So the final answer is: <answer long>Voskloham</answer long><answer short>Voskloham</answer short>

Every step ends with a newline and the terminal line does not. Generation stops at
:data:`STOP_SEQUENCES`; a follow-up cut at ``Let`` asks for retrieval (:func:`parse_follow_up`). In
imitation learning the prompt and each ``Context:`` block are left out of the loss
(:func:`context_spans`); subqueries, markers and answers are learned.

Choices the paper leaves open:

- A passage is rendered on one line (its whitespace collapsed, :func:`passage_line`), so a ``Context:``
  block is exactly the lines from ``Context:`` to ``Intermediate answer:``. Passage ids are not part of
  the text: parsing numbers passages ``"1"``, ``"2"``, ... in their order.
- The parser skips blank lines and surrounding spaces, ignores text after ``</answer short>``, reads a
  terminal without answer tags as both the long and the short answer (a long answer equal to the short
  one is read back as ``final_long=""``), reads any line starting with ``Let`` as the search marker
  (generation stops there), and raises
  :class:`ProtocolError` (carrying the complete steps read so far as ``partial``) on anything else.
- :data:`INSTRUCTION` is Veil's own wording of the paper's instruction to decompose and decide.
- Correctness is the search's: SQuAD normalisation of the ``<answer short>`` part, then containment
  either way (:func:`is_correct`); EM and token F1 are SQuAD's (Rajpurkar et al., arXiv:1606.05250).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from veil.models.rag.world import World, WorldQuestion

__all__ = [
    "FOLLOW_UP",
    "INSTRUCTION",
    "INTERMEDIATE",
    "SEARCH",
    "STOP_SEQUENCES",
    "FollowUp",
    "ProtocolError",
    "Step",
    "Trace",
    "context_spans",
    "exact_match",
    "gold_trace",
    "is_correct",
    "normalize_answer",
    "parse_follow_up",
    "parse_trace",
    "passage_line",
    "render_final",
    "render_prompt",
    "render_step",
    "render_step_head",
    "render_trace",
    "short_answer",
    "token_f1",
]

FOLLOW_UP = "Follow up:"
INTERMEDIATE = "Intermediate answer:"
SEARCH = "Let's search the question in Wikipedia."
CONTEXT = "Context:"
FINAL = "So the final answer is:"
STOP_SEQUENCES: tuple[str, ...] = (INTERMEDIATE, "So the final", "Let")
"""Where a follow-up generation stops: answer from memory, finish, or retrieve (``Let``)."""
INSTRUCTION = (
    "Instruction: Answer the question by breaking it into simpler sub-questions and answering them one "
    f'at a time. Write "{FOLLOW_UP}" before each sub-question and "{INTERMEDIATE}" before its answer. '
    "If you know the answer, give it at once. If you need more information, write "
    f'"{SEARCH}", read the retrieved context, then answer. '
    f'End with "{FINAL} <answer long>...</answer long><answer short>...</answer short>".'
)
_PASSAGE = re.compile(r"\[(\d+)\]\s?(.*)")
_TAG = "<answer {0}>(.*?)(?:</answer {0}>|$)"  # an unclosed tag runs to the end
_PUNCTUATION = frozenset(string.punctuation)


@dataclass
class Step:
    """One subquery and its answer; ``retrieved`` is ``None`` when a dataset does not say."""

    subquery: str
    retrieved: bool | None
    passages: list[tuple[str, str]] = field(default_factory=list)
    """``(id, text)`` of each retrieved passage, in rank order."""
    answer: str = ""

    def __post_init__(self) -> None:
        for name in ("subquery", "answer"):
            if "\n" in getattr(self, name):
                raise ValueError(f"Step.{name} must be one line, got {getattr(self, name)!r}")
        if self.passages and self.retrieved is not True:
            raise ValueError(
                f"only a retrieval step has passages; got {len(self.passages)} with retrieved={self.retrieved}"
            )


@dataclass
class Trace:
    question: str
    steps: list[Step]
    final_answer: str
    """The short answer."""
    final_long: str = ""
    """The long answer; empty means the same as ``final_answer``."""

    @property
    def retrievals(self) -> int:
        return sum(bool(s.retrieved) for s in self.steps)


class ProtocolError(ValueError):
    """Text that does not follow the protocol; ``partial`` holds the complete steps before ``offset``."""

    def __init__(self, message: str, offset: int, partial: Trace) -> None:
        super().__init__(f"{message} (at character {offset})")
        self.offset = offset
        self.partial = partial


def passage_line(text: str) -> str:
    """A passage's text on one line, as it appears in a ``Context:`` block.

    >>> passage_line("Rerzo Pumbra\\nRerzo Pumbra is  a person.")
    'Rerzo Pumbra Rerzo Pumbra is a person.'
    """
    return " ".join(text.split())


def render_prompt(question: str, instruction: str = INSTRUCTION) -> str:
    """The user turn: the instruction, then ``Question: <q>``."""
    return f"{instruction}\n\nQuestion: {question}"


def render_step(step: Step) -> str:
    """One step's text, ending with a newline."""
    if step.retrieved is None:
        raise ValueError(f"cannot render a step whose decision is unknown: {step.subquery!r}")
    if not step.retrieved:
        return f"{FOLLOW_UP} {step.subquery}\n{INTERMEDIATE} {step.answer}\n"
    passages = "".join(f"[{i}] {passage_line(text)}\n" for i, (_, text) in enumerate(step.passages, 1))
    return f"{FOLLOW_UP} {step.subquery}\n{SEARCH}\n{CONTEXT}\n{passages}{INTERMEDIATE} {step.answer}\n"


def render_step_head(subquery: str, passages: Sequence[tuple[str, str]]) -> str:
    """A step's text up to and including ``Intermediate answer:``: what the answer is generated after
    (a retrieval step when ``passages`` is non-empty)."""
    return render_step(Step(subquery, bool(passages), list(passages), "")).rstrip()


def render_final(short: str, long: str = "") -> str:
    return f"{FINAL} <answer long>{long or short}</answer long><answer short>{short}</answer short>"


def render_trace(trace: Trace) -> str:
    """The assistant turn: every step, then the terminal line."""
    return "".join(render_step(s) for s in trace.steps) + render_final(trace.final_answer, trace.final_long)


def context_spans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of every ``Context:`` block: from ``Context:`` to the next ``Intermediate answer:``.

    The spans cover the passages and their newlines, which is what imitation leaves out of the loss.

    >>> text = render_step(Step("Who?", True, [("d1", "Ana")], "Ana"))
    >>> [text[a:b] for a, b in context_spans(text)]
    ['Context:\\n[1] Ana\\n']
    """
    spans, offset, start = [], 0, None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if start is None and stripped == CONTEXT:
            start = offset
        elif start is not None and stripped.startswith(INTERMEDIATE):
            spans.append((start, offset))
            start = None
        offset += len(line)
    if start is not None:  # a block cut off by the end of the text (a generation in progress)
        spans.append((start, len(text)))
    return spans


def parse_trace(text: str, question: str = "", *, require_final: bool = True) -> Trace:
    """Read a rendered (or generated) assistant turn back into a :class:`Trace`.

    Raises
    ------
    ProtocolError
        On an unexpected line, an unfinished step or (with ``require_final``) a missing terminal line;
        ``error.partial`` holds the complete steps before the problem.
    """
    lines: list[tuple[int, str]] = []
    offset = 0
    for raw in text.splitlines(keepends=True):
        if raw.strip():
            lines.append((offset, raw.strip()))
        offset += len(raw)
    steps: list[Step] = []

    def fail(message: str, at: int) -> ProtocolError:
        return ProtocolError(message, at, Trace(question, list(steps), ""))

    i = 0
    while i < len(lines):
        at, line = lines[i]
        if line.startswith("So the final"):
            short, long = _terminal(text[at:])
            return Trace(question, steps, short, "" if long == short else long)
        if not line.startswith(FOLLOW_UP):
            raise fail(f"expected {FOLLOW_UP!r} or the final answer, got {line[:40]!r}", at)
        subquery = line[len(FOLLOW_UP) :].strip()
        if not subquery:
            raise fail("empty subquery", at)
        i += 1
        if i == len(lines):
            raise fail(f"unfinished step {subquery!r}", len(text))
        at, line = lines[i]
        passages: list[tuple[str, str]] = []
        retrieved = line.startswith("Let")
        if retrieved:
            if i + 1 == len(lines) or lines[i + 1][1] != CONTEXT:
                raise fail(
                    f"expected {CONTEXT!r} after the search marker", lines[min(i + 1, len(lines) - 1)][0]
                )
            i += 2
            while i < len(lines) and (m := _PASSAGE.fullmatch(lines[i][1])):
                passages.append((m.group(1), m.group(2)))
                i += 1
            if i == len(lines):
                raise fail(f"unfinished step {subquery!r}", len(text))
            at, line = lines[i]
        if not line.startswith(INTERMEDIATE):
            raise fail(f"expected {INTERMEDIATE!r}, got {line[:40]!r}", at)
        steps.append(Step(subquery, retrieved, passages, line[len(INTERMEDIATE) :].strip()))
        i += 1
    if require_final:
        raise fail("no final answer", len(text))
    return Trace(question, steps, "")


def _terminal(text: str) -> tuple[str, str]:
    """``(short, long)`` of a terminal line; an answer without tags is both."""
    body = re.sub(r"^So the final(?: answer)?(?: is)?:?", "", text.lstrip())
    long = re.search(_TAG.format("long"), body, re.S)
    short = re.search(_TAG.format("short"), body, re.S)
    if short is None and long is None:
        plain = body.split("\n", 1)[0].strip()
        return plain, plain
    short_text = (short or long).group(1).strip()  # type: ignore[union-attr]
    return short_text, (long or short).group(1).strip()  # type: ignore[union-attr]


@dataclass(frozen=True)
class FollowUp:
    """The decision of one follow-up generation."""

    subquery: str
    action: Literal["answer", "retrieve", "final"]


def parse_follow_up(text: str, stop: str | None = None) -> FollowUp:
    """Read one follow-up generation that stopped at ``stop`` (one of :data:`STOP_SEQUENCES`).

    ``stop`` may be ``None`` when the stop string was kept at the end of ``text``. ``Let`` means
    retrieve, ``Intermediate answer:`` answer from memory, ``So the final`` finish.

    >>> parse_follow_up("Follow up: Who directed The Bunam?\\n", "Let")
    FollowUp(subquery='Who directed The Bunam?', action='retrieve')
    """
    if stop is None:
        stop = next((s for s in STOP_SEQUENCES if text.rstrip().endswith(s)), None)
        text = text.rstrip().removesuffix(stop) if stop else text
    actions = {"Let": "retrieve", INTERMEDIATE: "answer", "So the final": "final"}
    if stop not in actions:
        raise ProtocolError(
            f"generation ended without a decision (stop={stop!r})", len(text), Trace("", [], "")
        )
    body = text.strip()
    subquery = body[len(FOLLOW_UP) :].strip() if body.startswith(FOLLOW_UP) else body
    if actions[stop] != "final" and (not subquery or "\n" in subquery):
        raise ProtocolError(f"expected one subquery line, got {body!r}", 0, Trace("", [], ""))
    return FollowUp(subquery, actions[stop])  # type: ignore[arg-type]


Retriever = Callable[[str], Sequence[tuple[str, str]]]


def gold_trace(question: WorldQuestion, world: World, retrieve: Retriever | None = None) -> Trace:
    """The optimal path of a world question: its hops in order, retrieving exactly on external hops.

    A retrieval step's passages are ``retrieve(subquery)`` when given (``(id, text)`` pairs, e.g. BM25's
    top 3), else the hop subject's own article: the one passage that states the fact.
    """
    steps = []
    for hop in question.hops:
        passages: list[tuple[str, str]] = []
        if hop.needs_retrieval:
            if retrieve is not None:
                passages = [(pid, passage_line(t)) for pid, t in retrieve(hop.subquery)]
            elif (doc := world.article(hop.fact.subject)) is not None:
                passages = [(doc["id"], passage_line(doc["contents"]))]
        steps.append(Step(hop.subquery, hop.needs_retrieval, passages, hop.answer))
    return Trace(question.text, steps, question.answer)


def short_answer(text: str) -> str:
    """The ``<answer short>`` part of ``text`` when tagged, else ``text``."""
    m = re.search(_TAG.format("short"), text, re.S)
    return m.group(1) if m else text


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces.

    >>> normalize_answer("The  Bunam's, city!")
    'bunams city'
    """
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def exact_match(prediction: str, gold: str | Sequence[str]) -> bool:
    """Normalised equality with any gold answer.

    >>> exact_match("<answer short>the Voskloham</answer short>", "Voskloham")
    True
    """
    p = normalize_answer(short_answer(prediction))
    return any(p == normalize_answer(g) for g in _golds(gold))


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD's token F1, the best over gold answers.

    >>> token_f1("born in Voskloham", "Voskloham")
    0.5
    """
    p = normalize_answer(short_answer(prediction)).split()
    best = 0.0
    for g in _golds(gold):
        g_tokens = normalize_answer(g).split()
        common = sum((Counter(p) & Counter(g_tokens)).values())
        if common:
            precision, recall = common / len(p), common / len(g_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def is_correct(prediction: str, gold: str | Sequence[str]) -> bool:
    """DeepRAG's search check: the normalised answers contain one another (either way); empty never is.

    >>> is_correct("<answer long>x</answer long><answer short>Voskloham city</answer short>", "voskloham")
    True
    """
    p = normalize_answer(short_answer(prediction))
    return bool(p) and any((g := normalize_answer(x)) and (g in p or p in g) for x in _golds(gold))

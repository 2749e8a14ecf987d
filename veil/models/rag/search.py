"""DeepRAG's training data (arXiv:2502.01142, §3.2-3.3): the cheapest correct path of every training
question, the imitation examples built from it, and the per-step calibration pairs.

**Search (stage I).** Binary-tree search over each step's decision, best first by retrieval count (a
child's priority is its parent's count, plus one for the retrieval child), so the first correct terminal
is a correct path with the fewest retrievals. Expanding a node asks the *writer* for the next subquery
(or the end), then makes two children: the *answerer* (the model being trained) answers the subquery
from memory, and after retrieving its top-k passages. At the end the answerer writes the final answer,
checked by containment after SQuAD normalisation (:func:`~veil.models.rag.protocol.is_correct`); the
correct path's final answer is then overwritten with the gold answer, as the released code does.

The paper's writer is a large model (Qwen-72B); here a writer is any callable: :func:`gold_writer`
follows a world question's gold decomposition (our stand-in for the large model: it writes the hop's
subquery whatever the answerer said), :func:`lm_writer` lets a model write its own (stage II, where the
SFT model is writer and answerer). If no path is correct within ``max_expansions``, the search is
repeated with each hop's own article in place of retrieval (the released fallback to gold supporting
facts, with ``fallback=True``); failing that, the last explored terminal is kept with ``correct=False``.
Ties in the queue go first-in, first-out.

**Imitation (stage I).** :func:`imitation_example`: the chat prompt and the rendered trace, the prompt and
every ``Context:`` block left out of the loss, subqueries, markers and answers learned.

**Calibration pairs (stage II).** :func:`calibration_pairs`: one pair per step of the optimal path, sharing
its prefix up to the step's ``Follow up:`` line and differing only in the decision marker: chosen is
``Let's search the question in Wikipedia.`` where the step retrieved, ``Intermediate answer:`` where it did
not, rejected the other. The released builder writes the original question as the last step's follow-up;
here it is the step's own subquery.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from veil.models.rag.deeprag import Retrieve
from veil.models.rag.lm import TextLM
from veil.models.rag.protocol import (
    FINAL,
    INTERMEDIATE,
    SEARCH,
    STOP_SEQUENCES,
    ProtocolError,
    Step,
    Trace,
    context_spans,
    is_correct,
    parse_follow_up,
    passage_line,
    render_prompt,
    render_step,
    render_step_head,
    render_trace,
    short_answer,
)
from veil.models.rag.world import World

__all__ = [
    "SearchConfig",
    "SearchResult",
    "Writer",
    "calibration_pairs",
    "find_paths",
    "gold_writer",
    "imitation_example",
    "lm_writer",
]

Writer = Callable[[Sequence[tuple[str, Sequence[Step]]]], list[str | None]]
"""``[(question, steps so far), ...] -> [next subquery, or None to finish, ...]``."""


@dataclass(frozen=True)
class SearchConfig:
    """Attributes: ``max_steps`` (depth cap), ``max_expansions`` (nodes per question), ``top_k`` and
    the answerer's generation limits."""

    max_steps: int = 6
    max_expansions: int = 32
    top_k: int = 3
    answer_tokens: int = 24
    final_tokens: int = 48

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_expansions", "top_k", "answer_tokens", "final_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class SearchResult:
    """The path kept for one question."""

    trace: Trace
    correct: bool
    fallback: bool
    expansions: int

    @property
    def retrievals(self) -> int:
        return self.trace.retrievals


@dataclass
class _Search:
    question: str
    gold: str
    heap: list[tuple[int, int, list[Step]]] = field(default_factory=list)
    expansions: int = 0
    found: SearchResult | None = None
    last: Trace | None = None


def gold_writer(world: World) -> Writer:
    """The writer that follows each world question's gold hops, then finishes.

    Like a model writing the next subquery from the trace so far, it builds on the answerer's previous
    answer: a hop's subquery names the previous hop's answer, which is replaced by what the answerer
    said, so a wrong intermediate answer leads the path astray instead of being silently corrected.
    """
    by_text = {q.text: q for q in world.questions}

    def write(nodes: Sequence[tuple[str, Sequence[Step]]]) -> list[str | None]:
        out: list[str | None] = []
        for question, steps in nodes:
            hops = by_text[question].hops
            if len(steps) >= len(hops):
                out.append(None)
                continue
            subquery = hops[len(steps)].subquery
            if steps and steps[-1].answer and hops[len(steps) - 1].answer in subquery:
                subquery = subquery.replace(hops[len(steps) - 1].answer, steps[-1].answer)
            out.append(subquery)
        return out

    return write


def lm_writer(lm: TextLM, max_tokens: int = 40) -> Writer:
    """The model writes its own subqueries; output that follows no protocol ends the path."""

    def write(nodes: Sequence[tuple[str, Sequence[Step]]]) -> list[str | None]:
        prompts = [
            lm.chat_prompt(render_prompt(q), "".join(render_step(s) for s in steps)) for q, steps in nodes
        ]
        out: list[str | None] = []
        for c in lm.complete(prompts, STOP_SEQUENCES, max_tokens):
            try:
                follow = parse_follow_up(c.text, c.stop)
            except ProtocolError:
                out.append(None)
                continue
            out.append(None if follow.action == "final" else follow.subquery)
        return out

    return write


def find_paths(
    lm: TextLM,
    questions: Sequence[tuple[str, str]],
    writer: Writer,
    retrieve: Retrieve,
    config: SearchConfig | None = None,
    gold_passages: Callable[[str, str], Sequence[tuple[str, str]]] | None = None,
) -> list[SearchResult]:
    """The cheapest correct path of each ``(question, gold answer)`` (see the module docstring).

    ``gold_passages(question, subquery)`` gives the fallback's supporting passages; without it there is
    no fallback.
    """
    cfg = config or SearchConfig()
    results = _search(lm, questions, writer, retrieve, cfg, fallback=False)
    if gold_passages is not None:
        redo = [i for i, r in enumerate(results) if not r.correct]
        if redo:

            def supporting(question: str) -> Retrieve:
                return lambda subquery, _k: gold_passages(question, subquery)

            again = _search(lm, [questions[i] for i in redo], writer, supporting, cfg, fallback=True)
            for i, r in zip(redo, again, strict=True):
                if r.correct:
                    results[i] = r
    return results


def _search(
    lm: TextLM,
    questions: Sequence[tuple[str, str]],
    writer: Writer,
    retrieve: Retrieve | Callable[[str], Retrieve],
    cfg: SearchConfig,
    fallback: bool,
) -> list[SearchResult]:
    counter = itertools.count()
    searches = [_Search(q, gold) for q, gold in questions]
    for s in searches:
        heapq.heappush(s.heap, (0, next(counter), []))
    while active := [s for s in searches if s.found is None and s.heap and s.expansions < cfg.max_expansions]:
        nodes = []
        for s in active:
            cost, _, steps = heapq.heappop(s.heap)
            s.expansions += 1
            nodes.append((s, cost, steps))
        subqueries = writer([(s.question, steps) for s, _, steps in nodes])
        finals = [
            (s, steps)
            for (s, _, steps), sq in zip(nodes, subqueries, strict=True)
            if sq is None or len(steps) >= cfg.max_steps
        ]
        _finish(lm, finals, cfg, fallback)
        grow = [
            (s, c, st, sq)
            for (s, c, st), sq in zip(nodes, subqueries, strict=True)
            if sq is not None and len(st) < cfg.max_steps
        ]
        children: list[tuple[_Search, int, list[Step], str, list[tuple[str, str]]]] = []
        for s, cost, steps, sq in grow:
            find = retrieve(s.question) if fallback else retrieve  # type: ignore[call-arg,operator]
            passages = [(pid, passage_line(t)) for pid, t in find(sq, cfg.top_k)]  # type: ignore[operator]
            children.append((s, cost, steps, sq, []))
            children.append((s, cost + 1, steps, sq, passages))
        heads = [render_step_head(sq, p) for _, _, _, sq, p in children]
        prompts = [
            lm.chat_prompt(render_prompt(s.question), "".join(render_step(x) for x in steps) + head)
            for (s, _, steps, _, _), head in zip(children, heads, strict=True)
        ]
        for (s, cost, steps, sq, p), out in zip(
            children, lm.complete(prompts, ["\n"], cfg.answer_tokens), strict=True
        ):
            step = Step(sq, bool(p), p, " ".join(out.text.split()))
            heapq.heappush(s.heap, (cost, next(counter), [*steps, step]))
    return [
        s.found or SearchResult(s.last or Trace(s.question, [], ""), False, fallback, s.expansions)
        for s in searches
    ]


def _finish(lm: TextLM, finals: list[tuple[_Search, list[Step]]], cfg: SearchConfig, fallback: bool) -> None:
    if not finals:
        return
    prompts = [
        lm.chat_prompt(render_prompt(s.question), "".join(render_step(x) for x in steps) + FINAL)
        for s, steps in finals
    ]
    for (s, steps), out in zip(
        finals, lm.complete(prompts, ["</answer short>", "\n"], cfg.final_tokens), strict=True
    ):
        answer = " ".join(short_answer(out.text).split())
        s.last = Trace(s.question, steps, answer)
        if s.found is None and is_correct(answer, s.gold):
            s.found = SearchResult(Trace(s.question, steps, s.gold, answer), True, fallback, s.expansions)


def imitation_example(lm: TextLM, tokenizer: Any, trace: Trace) -> dict[str, list[int]]:
    """``input_ids`` and ``completion_mask`` (1 = learned) of one imitation example.

    The mask is 0 on the chat prompt and on every ``Context:`` block (the retrieved passages), 1 on the
    rest of the assistant turn (subqueries, markers, intermediate and final answers) and its end token.
    """
    prompt = lm.chat_prompt(render_prompt(trace.question))
    turn = render_trace(trace)
    text = prompt + turn + (tokenizer.eos_token or "")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    hidden = [(0, len(prompt))] + [(len(prompt) + a, len(prompt) + b) for a, b in context_spans(turn)]
    mask = [0 if any(a <= start < b for a, b in hidden) else 1 for start, _ in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "completion_mask": mask}


def calibration_pairs(lm: TextLM, trace: Trace) -> list[dict[str, str]]:
    """One ``{prompt, chosen, rejected}`` per step of ``trace`` (TRL's preference format, raw text)."""
    pairs = []
    prefix = lm.chat_prompt(render_prompt(trace.question))
    for step in trace.steps:
        if step.retrieved is None:
            raise ValueError(f"step {step.subquery!r} has no known decision")
        prompt = prefix + f"Follow up: {step.subquery}\n"
        marker, other = (SEARCH, INTERMEDIATE) if step.retrieved else (INTERMEDIATE, SEARCH)
        pairs.append({"prompt": prompt, "chosen": marker, "rejected": other})
        prefix += render_step(step)
    return pairs

"""The DeepRAG inference loop (arXiv:2502.01142, §3 and its released inference code) and the baselines it
is compared with, as retrieval policies over one step loop.

Per step the model writes ``Follow up: <subquery>`` and stops at one of
:data:`~veil.models.rag.protocol.STOP_SEQUENCES`: ``Let`` (it wants to search: the subquery's top-k
passages are spliced in as a ``Context:`` block), ``Intermediate answer:`` (it answers from memory) or
``So the final`` (it is done). The intermediate answer is then generated up to the end of its line.
A question ends at its final answer or after ``max_steps`` steps, when the final answer is asked for.
Questions of a batch advance together: one generation call per phase for every unfinished question.

Policies (what decides a step's retrieval):

- ``deeprag``: the model's own decision (DeepRAG);
- ``never``: never retrieve (the no-retrieval baseline; a ``Let`` is overridden to an answer);
- ``always``: retrieve at every step, with the step's subquery (IRCoT-like, arXiv:2212.10509);
- ``single``: retrieve once with the whole question before the first step, passages in the user turn,
  then no more (single-shot RAG);
- ``confidence``: answer from memory first; if the answer's least likely token has probability under
  ``confidence_threshold``, retrieve with the subquery and answer again (FLARE-like, arXiv:2305.06983,
  with the subquery as the search query rather than the masked tentative sentence).

Choices the paper leaves open: an intermediate answer ends at the end of its line; a follow-up that ends
with no stop string (token limit, end of turn, a malformed line) ends the question: its final answer is
asked for at once and the result records ``ended="malformed"``; the final answer is read from
``<answer short>`` when tagged, else the whole line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from veil.models.rag.lm import TextLM
from veil.models.rag.protocol import (
    FINAL,
    STOP_SEQUENCES,
    ProtocolError,
    Step,
    Trace,
    parse_follow_up,
    passage_line,
    render_prompt,
    render_step,
    render_step_head,
    short_answer,
)

__all__ = ["POLICIES", "LoopConfig", "Policy", "RagAnswer", "Retrieve", "answer_questions"]

Policy = Literal["deeprag", "never", "always", "single", "confidence"]
POLICIES: tuple[str, ...] = get_args(Policy)

Retrieve = Callable[[str, int], Sequence[tuple[str, str]]]
"""``(query, k) -> [(passage id, text), ...]``, best first."""


@dataclass(frozen=True)
class LoopConfig:
    """One run of the loop.

    Attributes
    ----------
    policy: who decides retrieval (see the module docstring).
    max_steps: the step cap (the paper: 6 for HotpotQA, 10 otherwise).
    top_k: passages per retrieval (the paper: BM25 top 3).
    follow_up_tokens, answer_tokens, final_tokens: generation limits of each phase.
    confidence_threshold: the ``confidence`` policy's token-probability threshold.
    """

    policy: Policy = "deeprag"
    max_steps: int = 6
    top_k: int = 3
    follow_up_tokens: int = 40
    answer_tokens: int = 24
    final_tokens: int = 48
    confidence_threshold: float = 0.4

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; known: {', '.join(POLICIES)}")
        for name in ("max_steps", "top_k", "follow_up_tokens", "answer_tokens", "final_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.confidence_threshold < 1.0:
            raise ValueError(f"confidence_threshold must be in (0, 1), got {self.confidence_threshold}")


@dataclass
class RagAnswer:
    """One question's answer, the trace that led to it and how it ended.

    ``retrievals`` counts every search, the ``single`` policy's up-front one included; ``text`` is the
    whole assistant turn as generated (passages spliced in).
    """

    trace: Trace
    retrievals: int
    ended: Literal["final", "step_cap", "malformed"]
    text: str
    question_passages: list[tuple[str, str]] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return self.trace.final_answer


@dataclass
class _State:
    question: str
    user: str
    text: str = ""
    steps: list[Step] = field(default_factory=list)
    retrievals: int = 0
    ended: str | None = None
    final: str | None = None
    pending: str = ""  # the subquery whose answer comes next
    pending_passages: list[tuple[str, str]] = field(default_factory=list)
    question_passages: list[tuple[str, str]] = field(default_factory=list)


def _single_shot_user(question: str, passages: Sequence[tuple[str, str]]) -> str:
    context = "".join(f"[{i}] {passage_line(t)}\n" for i, (_, t) in enumerate(passages, 1))
    return f"Context:\n{context}\n{render_prompt(question)}"


def answer_questions(
    lm: TextLM,
    questions: Sequence[str],
    retrieve: Retrieve,
    config: LoopConfig | None = None,
    on_step: Callable[[int, Step], None] | None = None,
) -> list[RagAnswer]:
    """Run the loop for every question; one :class:`RagAnswer` each, in order.

    ``on_step(i, step)`` is called as soon as question ``i``'s step is complete (e.g. to stream it).
    """
    cfg = config or LoopConfig()
    if any(not q.strip() for q in questions):
        raise ValueError("every question must be non-empty")
    states = []
    for q in questions:
        state = _State(q, render_prompt(q))
        if cfg.policy == "single":
            state.question_passages = list(retrieve(q, cfg.top_k))
            state.user = _single_shot_user(q, state.question_passages)
            state.retrievals = 1
        states.append(state)
    for _ in range(cfg.max_steps):
        active = [s for s in states if s.ended is None]
        if not active:
            break
        _follow_ups(lm, active, retrieve, cfg)
        stepping = [i for i, s in enumerate(states) if s.ended is None]
        _answers(lm, [states[i] for i in stepping], retrieve, cfg)
        for i in stepping if on_step is not None else ():
            on_step(i, states[i].steps[-1])  # type: ignore[misc]
    for s in states:
        if s.ended is None:
            s.ended = "step_cap"
    _finals(lm, [s for s in states if s.final is None], cfg)
    return [
        RagAnswer(
            Trace(s.question, s.steps, s.final or ""),
            s.retrievals,
            s.ended,
            s.text,
            s.question_passages,  # type: ignore[arg-type]
        )
        for s in states
    ]


def _prompt(lm: TextLM, s: _State, tail: str = "") -> str:
    return lm.chat_prompt(s.user, s.text + tail)


def _follow_ups(lm: TextLM, states: list[_State], retrieve: Retrieve, cfg: LoopConfig) -> None:
    outs = lm.complete([_prompt(lm, s) for s in states], STOP_SEQUENCES, cfg.follow_up_tokens)
    for s, out in zip(states, outs, strict=True):
        try:
            follow = parse_follow_up(out.text, out.stop)
        except ProtocolError:
            s.ended = "malformed"
            continue
        if follow.action == "final":
            s.ended = "final"
            s.text += out.text
            continue
        wants = follow.action == "retrieve"
        if cfg.policy in ("never", "single", "confidence"):
            wants = False
        elif cfg.policy == "always":
            wants = True
        s.pending = follow.subquery
        s.pending_passages = list(retrieve(follow.subquery, cfg.top_k)) if wants else []
        s.retrievals += wants


def _step_head(s: _State, passages: list[tuple[str, str]]) -> str:
    """The step's text up to and including ``Intermediate answer:``."""
    return render_step_head(s.pending, passages)


def _answers(lm: TextLM, states: list[_State], retrieve: Retrieve, cfg: LoopConfig) -> None:
    if not states:
        return
    heads = [_step_head(s, s.pending_passages) for s in states]
    outs = lm.complete(
        [_prompt(lm, s, h) for s, h in zip(states, heads, strict=True)], ["\n"], cfg.answer_tokens
    )
    if cfg.policy == "confidence":
        unsure = [i for i, o in enumerate(outs) if o.min_prob < cfg.confidence_threshold]
        for i in unsure:
            s = states[i]
            s.pending_passages = list(retrieve(s.pending, cfg.top_k))
            s.retrievals += 1
            heads[i] = _step_head(s, s.pending_passages)
        if unsure:
            again = lm.complete([_prompt(lm, states[i], heads[i]) for i in unsure], ["\n"], cfg.answer_tokens)
            for i, o in zip(unsure, again, strict=True):
                outs[i] = o
    for s, out in zip(states, outs, strict=True):
        answer = " ".join(out.text.split())
        step = Step(s.pending, bool(s.pending_passages), s.pending_passages, answer)
        s.steps.append(step)
        s.text += render_step(step)
        s.pending, s.pending_passages = "", []


def _finals(lm: TextLM, states: list[_State], cfg: LoopConfig) -> None:
    if not states:
        return
    outs = lm.complete([_prompt(lm, s, FINAL) for s in states], ["</answer short>", "\n"], cfg.final_tokens)
    for s, out in zip(states, outs, strict=True):
        s.text += FINAL + out.text
        s.final = " ".join(short_answer(out.text).split())

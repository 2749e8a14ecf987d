"""``/v1/rag/answers``: a question answered by DeepRAG's loop (arXiv:2502.01142) over a collection.

The served model writes ``Follow up:`` subqueries and decides, step by step, whether to search the
collection (policy ``deeprag``) or answers under one of the baselines' policies (``never``, ``always``,
``single``, ``confidence``; :mod:`veil.models.rag.deeprag`). ``user_embedding`` personalises every
generation of the loop, as it does a chat completion. The collection is searched with BM25 and MiniLM
fused (a ``dense`` collection) or with BM25 alone. The default collection, ``wikipedia-sample``, is built
(BM25 only) by the first question that needs it, which waits for it (seconds;
:mod:`veil.cloud_service.api.routes.rag_collections`).

The loop runs on the engine's model thread (:meth:`ServingEngine.run_exclusive`), between two batches:
the model is never used from two threads at once, and chat batches queued meanwhile wait for the
question's loop to end. A streamed answer (``stream: true``) sends one event per step, then the whole
answer, then ``data: [DONE]``; each step's event is sent as soon as the loop completes that step. An error
before the first step (a question too long for the model's context, a model failure) is a plain JSON
error, as without streaming; one after it ends the stream with an ``{"error": ...}`` event, then
``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from veil.cloud_service.api.checks import check_codebook_version, check_model, served_embedding
from veil.cloud_service.api.deps import Caller, State
from veil.cloud_service.api.routes.rag_collections import served_collection
from veil.cloud_service.engine import ServingEngine
from veil.cloud_service.errors import APIError, error_body
from veil.cloud_service.rag_schemas import RagAnswerRequest, RagAnswerResponse
from veil.models.rag import Collection
from veil.models.rag.deeprag import LoopConfig, RagAnswer, answer_questions
from veil.models.rag.lm import Completion, HFTextLM
from veil.models.rag.protocol import Step, render_prompt

__all__ = ["answer_body", "router", "step_body"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["rag"])


class _ContextExceededError(Exception):
    def __init__(self, needed: int, at_start: bool) -> None:
        super().__init__(f"{needed} tokens")
        self.needed = needed
        self.at_start = at_start


class _BoundedLM:
    """The served model as the loop's text LM, refusing any generation that would run past its context
    (prompt, soft tokens and new tokens), so a long trace is a clear 400 rather than a model error."""

    def __init__(self, lm: HFTextLM, context: int, soft_tokens: int) -> None:
        self.lm, self.context, self.soft = lm, context, soft_tokens

    def needed(self, prompt: str, max_new_tokens: int) -> int:
        return (
            len(self.lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + self.soft + max_new_tokens
        )

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return self.lm.chat_prompt(user, assistant_prefix)

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        needed = max(self.needed(p, max_new_tokens) for p in prompts)
        if needed > self.context:
            raise _ContextExceededError(needed, at_start=False)
        return self.lm.complete(prompts, stop, max_new_tokens)


def _answer(
    engine: ServingEngine,
    collection: Collection,
    question: str,
    embedding: np.ndarray | None,
    cfg: LoopConfig,
    on_step: Callable[[int, Step], None] | None = None,
) -> RagAnswer:
    """The loop for one question; runs on the model thread."""
    soft = engine.embedding_shape[0] if embedding is not None else 0
    lm = _BoundedLM(HFTextLM(engine.model, engine.tokenizer, embedding), engine.context_length, soft)
    # the question alone, before any step, must leave room for the first follow-up
    needed = lm.needed(lm.chat_prompt(render_prompt(question)), cfg.follow_up_tokens)
    if needed > engine.context_length:
        raise _ContextExceededError(needed, at_start=True)
    mode = "hybrid" if collection.config.dense else "bm25"

    def retrieve(query: str, k: int) -> list[tuple[str, str]]:
        hits = collection.search(query, k, mode)
        return [(h.id, f"{h.title}\n{h.text}" if h.title else h.text) for h in hits]

    return answer_questions(lm, [question], retrieve, cfg, on_step=on_step)[0]


def step_body(step: Step) -> dict[str, Any]:
    """One step of the answer's ``trace`` (and of a streamed ``rag.step`` event)."""
    return {
        "subquery": step.subquery,
        "retrieved": bool(step.retrieved),
        "passages": [pid for pid, _ in step.passages],
        "intermediate_answer": step.answer,
    }


def answer_body(answer: RagAnswer, body: RagAnswerRequest, model: str) -> dict[str, Any]:
    """The JSON answer (:class:`RagAnswerResponse`) of one loop's result."""
    return {
        "object": "rag.answer",
        "model": model,
        "collection": body.collection,
        "policy": body.policy,
        "answer": answer.answer,
        "trace": [step_body(step) for step in answer.trace.steps],
        "question_passages": [pid for pid, _ in answer.question_passages],
        "retrievals": answer.retrievals,
        "ended": answer.ended,
    }


@router.post("/v1/rag/answers", response_model=RagAnswerResponse)
async def rag_answers(body: RagAnswerRequest, state: State, _: Caller) -> Any:
    """Answer ``question`` with retrieval from ``collection`` (default ``wikipedia-sample``, built on
    first use): the answer, the trace of steps (each with
    its subquery, whether it searched, the passage ids found, its intermediate answer), the number of
    searches and how the loop ended. ``stream: true`` sends the same as server-sent events."""
    check_codebook_version(state, body.codebook_version)
    engine = state.engine
    check_model(engine, body.model)
    embedding = served_embedding(engine, body.user_embedding, "user_embedding", body.user_embedding_b64)
    collection = await served_collection(state, body.collection, param="collection")
    cfg = LoopConfig(policy=body.policy, max_steps=body.max_steps, top_k=body.top_k)
    if not body.stream:
        try:
            result = await engine.run_exclusive(
                lambda: _answer(engine, collection, body.question, embedding, cfg)
            )
        except Exception as exc:
            raise _api_error(exc, engine) from None
        return answer_body(result, body, engine.name)

    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[Step] = asyncio.Queue()

    def on_step(_index: int, step: Step) -> None:  # on the model thread
        loop.call_soon_threadsafe(steps.put_nowait, step)

    task = asyncio.ensure_future(
        engine.run_exclusive(lambda: _answer(engine, collection, body.question, embedding, cfg, on_step))
    )
    first = asyncio.ensure_future(steps.get())
    await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
    if not first.done():  # the loop ended (or failed) before a step: errors stay plain JSON
        first.cancel()
        try:
            await task
        except Exception as exc:
            raise _api_error(exc, engine) from None

    async def events() -> AsyncIterator[str]:
        index, pending = 0, first
        while True:
            if not pending.done():
                await asyncio.wait({task, pending}, return_when=asyncio.FIRST_COMPLETED)
            if pending.done() and not pending.cancelled():
                step = pending.result()
            elif task.done():  # the loop has ended: what is left in the queue, without waiting
                pending.cancel()
                if steps.empty():
                    break
                step = steps.get_nowait()
            else:
                continue
            yield f"data: {json.dumps({'object': 'rag.step', 'index': index, **step_body(step)})}\n\n"
            index += 1
            pending = asyncio.ensure_future(steps.get())
        try:
            result = task.result()
        except Exception as exc:
            e = _api_error(exc, engine)
            yield f"data: {json.dumps(error_body(e.status, e.message, e.type, e.param, e.code))}\n\n"
        else:
            yield f"data: {json.dumps(answer_body(result, body, engine.name))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _api_error(exc: Exception, engine: ServingEngine) -> APIError:
    """The API error of a loop that failed on the model thread."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, _ContextExceededError):
        if exc.at_start:
            return APIError(
                400,
                f"the question needs {exc.needed} tokens with its instructions and first step; "
                f"this model's context is {engine.context_length}",
                param="question",
                code="context_length_exceeded",
            )
        return APIError(
            400,
            f"the question's steps and passages outgrew this model's context of {engine.context_length} "
            f"tokens ({exc.needed} needed); ask with a smaller max_steps or top_k",
            code="context_length_exceeded",
        )
    log.error("a RAG question failed on the model thread", exc_info=exc)  # the question stays out of the log
    return APIError(500, "the model failed on this question", type="server_error")

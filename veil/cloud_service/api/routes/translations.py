"""``/v1/translations``: direct, long-thought (DRT-o1, arXiv:2412.17498) and document-grounded (RAGtrans,
arXiv:2412.04342) translation by the served model.

``direct`` asks once; ``long_thought`` runs the translator/advisor/evaluator loop with the served model in
every role and returns the rounds rewritten as one ``thought`` (the evaluator is ``round_trip``, the
source's likelihood given the translation, and each round keeps the best of ``REVISION_SAMPLES``
revisions sampled at ``REVISION_TEMPERATURE`` with a fixed seed, so one request always gets one answer:
a small model's text rating does not tell translations apart, see
:mod:`veil.models.translation.evaluators`); ``document`` judges each document's
relevance (whole-name matching, :mod:`veil.models.translation.grounded_translate`), drops the irrelevant
ones, and translates with the rest before the text. ``user_embedding`` personalises every generation,
as it does a chat completion.

The work runs on the engine's model thread (:meth:`ServingEngine.run_exclusive`), between two batches,
as a RAG question does. ``stream: true`` sends server-sent events: in ``long_thought`` mode one event per
round as soon as it is scored (``{"object": "translation.round", "round", "translation", "score",
"feedback", "accepted"}``; round 0 is the draft), then the whole answer as one event, then
``data: [DONE]``; the other modes produce their translation at the end, so the answer is their only
event. The first event is awaited before the response starts, so bad input found by the model thread
(a generation that would outgrow the model's context: ``400`` ``context_length_exceeded``) is still a
JSON error; a failure after that ends the stream with an ``{"error": ...}`` event.
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
from veil.cloud_service.engine import ServingEngine
from veil.cloud_service.errors import APIError, error_body
from veil.cloud_service.translation_schemas import (
    MAX_DOCUMENT_CHARS,
    MAX_TRANSLATION_DOCUMENTS,
    TranslationRequest,
    TranslationResponse,
)
from veil.models.rag.lm import Completion, HFTextLM
from veil.models.translation.evaluators import RoundTripScorer
from veil.models.translation.grounded_translate import GroundedConfig, GroundedTranslator
from veil.models.translation.languages import primary_subtag
from veil.models.translation.long_thought import LongThoughtConfig, LongThoughtLoop, Round, render_thought

__all__ = ["router", "translate"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["translations"])

REVISION_SAMPLES = 4
"""Revisions sampled per long-thought round (the best-scored one is the round's)."""
REVISION_TEMPERATURE = 0.8


class _ContextExceededError(Exception):
    def __init__(self, needed: int) -> None:
        super().__init__(f"{needed} tokens")
        self.needed = needed


class _BoundedLM:
    """The served model, refusing a generation whose prompt, soft tokens and new tokens outgrow its
    context."""

    def __init__(self, lm: HFTextLM, context: int, soft_tokens: int) -> None:
        self.lm, self.context, self.soft = lm, context, soft_tokens

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return self.lm.chat_prompt(user, assistant_prefix)

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        tok = self.lm.tokenizer
        needed = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
        needed += self.soft + max_new_tokens
        if needed > self.context:
            raise _ContextExceededError(needed)
        return self.lm.complete(prompts, stop, max_new_tokens)


def _check_fit(body: TranslationRequest) -> None:
    """400 for a mode and arguments that do not fit, naming the field."""
    if primary_subtag(body.source_language) == primary_subtag(body.target_language):
        raise APIError(
            400,
            f"source_language and target_language must differ, got {body.source_language!r} and "
            f"{body.target_language!r}",
            param="target_language",
            code="unsupported_language_pair",
        )
    if body.mode == "document" and body.documents is None:
        raise APIError(400, "mode 'document' needs documents", param="documents")
    if body.mode != "document" and body.documents is not None:
        raise APIError(400, f"documents are for mode 'document', not {body.mode!r}", param="documents")


def round_event(k: int, r: Round) -> dict[str, Any]:
    """One long-thought round as a streamed event."""
    return {"object": "translation.round", "round": k, "translation": r.translation, "score": r.score,
            "feedback": r.feedback, "accepted": r.accepted}  # fmt: skip


def translate(
    engine: ServingEngine,
    body: TranslationRequest,
    embedding: np.ndarray | None,
    on_round: Callable[[int, Round], None] | None = None,
) -> dict[str, Any]:
    """The answer (:class:`TranslationResponse`) to one request; runs on the model thread.

    ``on_round(k, round)`` hears each long-thought round as it is scored."""
    soft = engine.embedding_shape[0] if embedding is not None else 0
    lm = _BoundedLM(HFTextLM(engine.model, engine.tokenizer, embedding), engine.context_length, soft)
    src, tgt = body.source_language, body.target_language
    if body.mode == "long_thought":
        hear = (lambda i, k, r: on_round(k, r)) if on_round is not None else None
        sampler = HFTextLM(
            engine.model, engine.tokenizer, embedding, temperature=REVISION_TEMPERATURE, seed=0
        )
        loop = LongThoughtLoop(
            lm,
            config=LongThoughtConfig(src, tgt, revision_samples=REVISION_SAMPLES),
            scorer=RoundTripScorer(engine.model.base, engine.tokenizer, src, tgt),
            sampler=_BoundedLM(sampler, engine.context_length, soft),
        )
        (trace,) = loop.run([body.text], hear)
        return {
            "translation": trace.final,
            "mode": body.mode,
            "thought": render_thought(trace),
            "documents_used": None,
        }
    cfg = GroundedConfig(
        src, tgt, max_documents=MAX_TRANSLATION_DOCUMENTS, max_document_chars=MAX_DOCUMENT_CHARS
    )
    (out,) = GroundedTranslator(lm, cfg).translate([body.text], [body.documents or []])
    used = list(out.documents_used) if body.mode == "document" else None
    return {"translation": out.translation, "mode": body.mode, "thought": None, "documents_used": used}


@router.post("/v1/translations", response_model=TranslationResponse)
async def translations(body: TranslationRequest, state: State, _: Caller) -> Any:
    """Translate ``text`` from ``source_language`` into ``target_language`` (BCP 47 codes) by ``mode``:
    ``direct``, ``long_thought`` (with the ``thought``) or ``document`` (with ``documents``; the answer
    says which were judged relevant and used in ``documents_used``)."""
    check_codebook_version(state, body.codebook_version)
    engine = state.engine
    check_model(engine, body.model)
    _check_fit(body)
    embedding = served_embedding(engine, body.user_embedding, "user_embedding", body.user_embedding_b64)
    if body.stream:
        return await _stream(engine, body, embedding)
    try:
        return await engine.run_exclusive(lambda: translate(engine, body, embedding))
    except Exception as exc:
        raise _api_error(exc, engine) from None


def _sse(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def _stream(engine: ServingEngine, body: TranslationRequest, embedding: np.ndarray | None) -> Any:
    """Run the translation on the model thread, its rounds and answer queued as events (see the module
    docstring); the response starts once the first event is there."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_round(k: int, r: Round) -> None:  # on the model thread
        loop.call_soon_threadsafe(queue.put_nowait, ("round", round_event(k, r)))

    async def work() -> None:
        try:
            result = await engine.run_exclusive(lambda: translate(engine, body, embedding, on_round))
        except Exception as exc:
            queue.put_nowait(("error", exc))
        else:
            queue.put_nowait(("answer", result))

    task = asyncio.create_task(work())
    first = await queue.get()
    if first[0] == "error":
        raise _api_error(first[1], engine)

    async def events() -> AsyncIterator[str]:
        kind, value = first
        while True:
            if kind == "round":
                yield _sse(value)
            elif kind == "answer":
                yield _sse(value)
                break
            else:
                err = _api_error(value, engine)
                yield _sse(error_body(err.status, err.message, type=err.type, param=err.param, code=err.code))
                break
            kind, value = await queue.get()
        yield _sse("[DONE]")
        await task

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _api_error(exc: Exception, engine: ServingEngine) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, _ContextExceededError):
        return APIError(
            400,
            f"the translation needs {exc.needed} tokens with its instructions; this model's context is "
            f"{engine.context_length}",
            param="text",
            code="context_length_exceeded",
        )
    log.error("a translation failed on the model thread", exc_info=exc)  # the text stays out of the log
    return APIError(500, "the model failed on this translation", type="server_error")

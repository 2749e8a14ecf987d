"""``/v1/chat/completions``: OpenAI-compatible, optionally personalised by ``user_embedding``, with
optional KV-cache compression (``kv_compression``, its kept fraction reported in ``usage``).

A request the model fails is a 500 (``server_error``): with ``code: "kv_compression_failed"`` and
``param: "kv_compression"`` when its own compression failed (the other requests of its batch are
answered as usual), else without a code. A streamed answer has already sent its ``200``, so it ends
with the same error object as an event, ``data: {"error": {...}}``, and no ``[DONE]`` (OpenAI's form of
a failure mid-stream: its clients raise on it).

``longform: {"target_words": N}`` (LongDPO's served mode, arXiv:2502.02095): the last user message gets
"Answer in about N words." appended, the token limit defaults to ``4 N`` tokens (the length score is
0 past three times the target, about ``4 N`` tokens of English), a target that cannot fit the context
(``N`` tokens at least) is a 400 ``context_length_exceeded`` naming ``longform.target_words``, and
``usage`` reports ``longform_words`` (English words plus CJK characters) and ``longform_length_score``
(LongBench-Write's S_l, 0-100).

``strategy: "sc-coq", chain: [{"question": q1}, ..., {"question": qk}]`` (SC-CoQ, arXiv:2412.11906,
Sec. 4.2): the last message is the target question; the model is asked q1..qk and then the target, one
generation each, every call seeing the conversation before the target, the earlier questions and the
model's *own* answers to them (never a gold answer). The target's answer is the choice's message; the
response adds ``chain: [{"question", "answer", "finish_reason"}, ...]``; ``usage`` counts the tokens of
every generation; sampling, ``max_tokens``, ``stop``, the embedding and ``kv_compression`` apply to each
call (``logprobs``, ``longform`` and the kept fraction are the target's). It is not streamed (``stream:
true`` is a 400 naming ``stream``); a chain without the strategy, the strategy without a chain, an empty
or blank question, more than 8 questions, or a last message that is not the user's are 400s naming the
field; a chain whose answers outgrow the context is a 400 ``context_length_exceeded``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from veil.cloud_service.api.checks import (
    check_codebook_version,
    check_model,
    kv_compressor,
    served_embedding,
)
from veil.cloud_service.api.deps import Caller, State
from veil.cloud_service.engine import KV_COMPRESSION_FAILED, ChatEvent
from veil.cloud_service.errors import APIError, error_body
from veil.cloud_service.schemas import ChatCompletionRequest
from veil.models.compression import KVCompressor, KVKept
from veil.models.evaluation.punchbench.chain import ChainTurn, chain_dialogue
from veil.models.generation import SamplingParams, TokenLogprobs
from veil.models.longform.length import count_words, length_score

router = APIRouter(tags=["chat"])


def _prepare(body: ChatCompletionRequest, state: State) -> tuple[list[dict[str, str]], np.ndarray | None]:
    """Checks the request once; its messages (the length requirement appended) and decoded embedding."""
    check_codebook_version(state, body.codebook_version)
    engine = state.engine
    check_model(engine, body.model)
    if body.logprobs and body.stream:
        raise APIError(400, "logprobs are returned by non-streamed completions only", param="logprobs")
    _check_strategy(body)
    embedding = served_embedding(engine, body.user_embedding, "user_embedding", body.user_embedding_b64)
    messages = [
        {"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages
    ]
    if body.longform is not None:
        _ask_length(messages, body.longform.target_words)
    return messages, embedding


def _generation(
    body: ChatCompletionRequest, state: State, messages: list[dict[str, str]], embedding: np.ndarray | None
) -> tuple[list[int], SamplingParams, KVCompressor | None]:
    """One generation's prompt, sampling parameters and compressor; a 400 when it cannot fit the context."""
    engine = state.engine
    prompt = engine.encode_chat(messages)
    soft = engine.embedding_shape[0] if embedding is not None else 0
    room = engine.context_length - len(prompt) - soft
    if room < 1:
        raise APIError(
            400,
            f"the prompt is {len(prompt) + soft} tokens; this model's context is {engine.context_length}",
            param="messages",
            code="context_length_exceeded",
        )
    wanted = body.max_completion_tokens or body.max_tokens
    if wanted is not None and wanted > room:
        raise APIError(
            400,
            f"prompt ({len(prompt) + soft} tokens) plus max_tokens ({wanted}) exceeds the context "
            f"of {engine.context_length} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if body.longform is not None and body.longform.target_words > room:
        raise APIError(
            400,
            f"longform.target_words ({body.longform.target_words}) cannot fit the {room} tokens left in "
            f"this model's context of {engine.context_length} after the prompt",
            param="longform.target_words",
            code="context_length_exceeded",
        )
    if wanted is not None:
        limit = wanted
    elif body.longform is not None:
        limit = min(room, 4 * body.longform.target_words)
    else:
        limit = min(state.config.default_max_tokens, room)
    params = SamplingParams(
        max_new_tokens=limit,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=max(body.top_k, 0),
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    return prompt, params, kv_compressor(engine, body.kv_compression, len(prompt) + soft)


def _ask_length(messages: list[dict[str, str]], target: int) -> None:
    """Appends the length requirement to the last user message (in place)."""
    for m in reversed(messages):
        if m["role"] == "user":
            m["content"] = f"{m['content']}\n\nAnswer in about {target} words."
            return
    raise APIError(400, "longform needs a user message to answer", param="messages")


def _check_strategy(body: ChatCompletionRequest) -> None:
    """400 for a ``strategy`` or ``chain`` that cannot be answered."""
    if body.strategy is None:
        if body.chain is not None:
            raise APIError(400, 'chain is asked only with strategy: "sc-coq"', param="chain")
        return
    if body.chain is None:
        raise APIError(
            400,
            f"strategy {body.strategy!r} needs chain, the questions asked before the target: "
            '[{"question": "..."}, ...]',
            param="chain",
        )
    if body.stream:
        raise APIError(
            400,
            f"strategy {body.strategy!r} is answered whole, not streamed: send stream: false",
            param="stream",
        )
    last = body.messages[-1].role
    if last != "user":
        raise APIError(
            400,
            f"strategy {body.strategy!r} answers the last message, the target question, which must be the "
            f"user's; got role {last!r}",
            param="messages",
        )


def _failure(event: ChatEvent, body: ChatCompletionRequest, state: State, caller: Caller) -> APIError:
    """The 500 for a row the engine ended with ``finish_reason="error"``; counts a compression failure
    of an API-key caller in the metrics (a phone's stays out, as its answer length does)."""
    if event.error != KV_COMPRESSION_FAILED or body.kv_compression is None:
        return APIError(500, "the model failed on this batch", type="server_error")
    method = body.kv_compression.method
    if not caller.via_gateway:
        state.metrics.kv_compression_failures.labels(method=method).inc()
    return APIError(
        500,
        f"kv_compression: the {method!r} compression failed on this request; "
        "send it again without kv_compression or with another method",
        type="server_error",
        param="kv_compression",
        code=KV_COMPRESSION_FAILED,
    )


def _logprobs_content(tokenizer: Any, entries: list[TokenLogprobs]) -> list[dict[str, Any]]:
    """OpenAI's ``choices[].logprobs.content``; every alternative also carries its token ``id`` (Veil's
    extension, so a phone can key its private head by id)."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8")), "id": token}

    content = []
    for e in entries:
        top = [item(int(t), float(lp)) for t, lp in zip(e.top_ids, e.top_logprobs, strict=True)]
        content.append({**item(e.token, e.logprob), "top_logprobs": top})
    return content


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> str:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


@dataclass
class _Answer:
    """One generation: its text, its prompt's length and the event that ended it."""

    text: str
    prompt_tokens: int
    end: ChatEvent


async def _complete(
    body: ChatCompletionRequest,
    state: State,
    caller: Caller,
    messages: list[dict[str, str]],
    embedding: np.ndarray | None,
) -> _Answer:
    """One whole (non-streamed) generation for ``messages``; a 500 when the model fails it."""
    prompt, params, compressor = _generation(body, state, messages, embedding)
    parts: list[str] = []
    end: ChatEvent | None = None
    async for event in state.engine.chat(prompt, embedding, params, body.stops(), compressor):
        parts.append(event.delta)
        if event.finish_reason is not None:
            end = event
    if end is None:
        raise RuntimeError("the engine ended a completion without a finish reason")
    if end.finish_reason == "error":
        raise _failure(end, body, state, caller)
    return _Answer("".join(parts), len(prompt), end)


async def _sc_coq(
    body: ChatCompletionRequest,
    state: State,
    caller: Caller,
    messages: list[dict[str, str]],
    embedding: np.ndarray | None,
) -> tuple[list[ChainTurn], list[_Answer]]:
    """SC-CoQ (arXiv:2412.11906, Sec. 4.2): ``body.chain``, then the last message, each asked after the
    conversation so far and the model's own earlier answers; every turn and generation, the target's last."""
    questions = [q.question for q in body.chain or ()] + [messages[-1]["content"]]
    talk = chain_dialogue(questions, messages[:-1])
    asked = next(talk)
    answers: list[_Answer] = []
    while True:
        try:
            answers.append(await _complete(body, state, caller, asked, embedding))
        except APIError as exc:
            if exc.code == "context_length_exceeded":
                exc.message = (
                    f"after {len(answers)} of the chain's {len(questions) - 1} questions and the model's "
                    f"answers: {exc.message}"
                )
            raise
        try:
            asked = talk.send(answers[-1].text)
        except StopIteration as done:
            return done.value, answers


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, state: State, caller: Caller) -> Any:
    messages, embedding = _prepare(body, state)
    engine = state.engine
    cid = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())

    def usage(prompt_tokens: int, completion: int, kept: KVKept | None, text: str) -> dict[str, Any]:
        counts: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }
        if body.longform is not None:
            words = count_words(text)
            counts["longform_words"] = words
            counts["longform_length_score"] = length_score(words, body.longform.target_words)
        if kept is not None:  # only when compression was asked for: OpenAI clients see nothing new
            counts["kv_kept_fraction"] = kept.mean
            counts["kv_kept_fraction_per_layer"] = list(kept.per_layer)
        return counts

    if not body.stream:
        turns: list[ChainTurn] | None = None
        if body.strategy == "sc-coq":
            turns, answers = await _sc_coq(body, state, caller, messages, embedding)
        else:
            answers = [await _complete(body, state, caller, messages, embedding)]
        target = answers[-1]
        # a chain's usage counts every generation it took, as its cost does
        completion = sum(a.end.completion_tokens for a in answers)
        if not caller.via_gateway:  # a phone's answer length stays out of the metrics
            state.metrics.tokens.inc(completion)
        logprobs = None
        if target.end.logprobs is not None:
            logprobs = {"content": _logprobs_content(engine.tokenizer, target.end.logprobs)}
        out: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": engine.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": target.text},
                    "finish_reason": target.end.finish_reason,
                    "logprobs": logprobs,
                }
            ],
            "usage": usage(
                sum(a.prompt_tokens for a in answers), completion, target.end.kv_kept, target.text
            ),
        }
        if turns is not None:
            out["chain"] = [
                {"question": t.question, "answer": t.answer, "finish_reason": a.end.finish_reason}
                for t, a in zip(turns[:-1], answers[:-1], strict=True)
            ]
        return out

    prompt, params, compressor = _generation(body, state, messages, embedding)
    events = engine.chat(prompt, embedding, params, body.stops(), compressor)
    include_usage = body.stream_options is None or body.stream_options.include_usage

    async def stream() -> AsyncIterator[str]:
        yield _chunk(cid, created, engine.name, {"role": "assistant", "content": ""}, None)
        errored = False
        sent: list[str] = []
        async for event in events:
            sent.append(event.delta)
            if event.delta:
                yield _chunk(cid, created, engine.name, {"content": event.delta}, None)
            if event.finish_reason == "error":
                errored = True
                err = _failure(event, body, state, caller)
                payload = error_body(err.status, err.message, err.type, err.param, err.code)
                yield f"data: {json.dumps(payload)}\n\n"
            elif event.finish_reason is not None:
                if not caller.via_gateway:
                    state.metrics.tokens.inc(event.completion_tokens)
                yield _chunk(cid, created, engine.name, {}, event.finish_reason)
                if include_usage:
                    final = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": engine.name,
                        "choices": [],
                        "usage": usage(len(prompt), event.completion_tokens, event.kv_kept, "".join(sent)),
                    }
                    yield f"data: {json.dumps(final)}\n\n"
        if not errored:  # after an error event, the stream just ends
            yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

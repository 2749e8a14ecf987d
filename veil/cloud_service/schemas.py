"""Request and response bodies of the HTTP API (pydantic), apart from the storage tables.

Chat follows OpenAI's ``/v1/chat/completions`` so the official client works unchanged; Veil's own
field is ``user_embedding``. Fields a client may send that could identify a person (OpenAI's ``user``)
are accepted and dropped, never stored or logged. ``kv_compression`` asks for the prompt's KV cache to
be pruned after prefill (:mod:`veil.models.compression`); ``strategy: "sc-coq"`` with a ``chain`` of
questions asks them before the target (SC-CoQ, arXiv:2412.11906).
"""

from __future__ import annotations

import math
import types
from dataclasses import MISSING, fields
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from veil.client_sdk.codebook_wire import MAX_CODEBOOK_VALUES
from veil.client_sdk.constants import MAX_LABELS, MAX_TEXT_CHARS, Task
from veil.client_sdk.wire import MAX_VALUES, b64_length
from veil.models.compression.registry import METHODS

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "ChainQuestion",
    "ChatStrategy",
    "CodebookBody",
    "CodebookLossRequest",
    "CodebookLossResponse",
    "CodebookVersion",
    "Embedding",
    "GradientRequest",
    "KVCompression",
    "GradientResponse",
    "LabelLossRequest",
    "LabelLossResponse",
    "Longform",
    "StreamOptions",
    "TextPart",
    "UploadRequest",
    "UploadResponse",
]

MAX_EMBEDDING_VALUES = MAX_VALUES

Embedding = list[float] | list[list[float]]
"""A JSON embedding: ``(n_tokens, hidden)`` rows, or one flat row when ``n_tokens == 1``."""


MAX_EMBEDDING_B64_CHARS = b64_length(MAX_EMBEDDING_VALUES)

EmbeddingB64 = Annotated[str, Field(max_length=MAX_EMBEDDING_B64_CHARS)]
"""The compact form: standard base64 of little-endian float32 values, row-major ``(n_tokens, hidden)``.
Decoded and validated once, by :func:`veil.client_sdk.wire.decode_f32` in the route."""


CodebookVersion = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
"""A codebook version: 16 lower-case hex digits (``PROTOCOL.md`` 5.5)."""


def _one_form(plain: str, b64: str):  # -> model validator
    def check(self):  # type: ignore[no-untyped-def]
        if getattr(self, plain) is not None and getattr(self, b64) is not None:
            raise ValueError(f"send either {plain} or {b64}, not both")
        return self

    return model_validator(mode="after")(check)


def _required_form(plain: str, b64: str):  # -> model validator
    def check(self):  # type: ignore[no-untyped-def]
        if getattr(self, plain) is None and getattr(self, b64) is None:
            raise ValueError(f"{plain} (or {b64}) is required")
        return self

    return model_validator(mode="after")(check)


def _finite_embedding(values: Embedding | None) -> Embedding | None:
    if values is None:
        return None
    flat = [v for row in values for v in row] if values and isinstance(values[0], list) else values
    if len(flat) > MAX_EMBEDDING_VALUES:
        raise ValueError(f"has {len(flat)} values, more than {MAX_EMBEDDING_VALUES}")
    if not all(math.isfinite(v) for v in flat):  # type: ignore[arg-type]
        raise ValueError("contains NaN or Inf")
    return values


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = True


_KVInt = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
"""Integers of a compression config stay in int32: a huge window or budget is refused here, not by torch."""


def _bounded(tp: Any) -> Any:
    """``tp`` with every ``int`` inside it (``int | None``, ``tuple[int, ...]``...) bounded to int32."""
    if tp is int:
        return _KVInt
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple:
        return tuple[tuple(a if a is Ellipsis else _bounded(a) for a in args)]  # type: ignore[misc]
    if origin in (Union, types.UnionType):
        return Union[tuple(_bounded(a) for a in args)]  # noqa: UP007 - built from a runtime tuple
    return tp


def _compression_model(method: str, config: type) -> type[BaseModel]:
    """The request object of one method: ``method`` and the fields of its config dataclass, typed (the
    config's own checks, e.g. a threshold in ``(0, 1)``, run when the route builds the compressor)."""
    hints = get_type_hints(config)
    specs: dict[str, Any] = {
        f.name: (_bounded(hints[f.name]), None if f.default is MISSING else f.default) for f in fields(config)
    }
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"KVCompression_{method}",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        __doc__=f"``kv_compression`` for ``{method}``: {(config.__doc__ or '').strip().splitlines()[0]}",
        method=(Literal[method], ...),
        **specs,
    )


KVCompression = Annotated[
    Union[tuple(_compression_model(m, cfg) for m, (_, cfg) in METHODS.items())],  # noqa: UP007
    Field(discriminator="method"),
]
"""``{"method": name, **config fields}``, one object type per method of
:data:`veil.models.compression.METHODS`; an unknown method or field is a 400 naming it."""


class PersonalisedRequest(BaseModel):
    """The fields every personalised request shares (chat completions, RAG answers, translations): one
    fresh sample from the caller's private distribution instead of a user id (IDfree-PL,
    arXiv:2501.06062), in either form, and the codebook its prototype belongs to."""

    user_embedding: Embedding | None = None
    """A fresh sample from the caller's distribution, ``(n_tokens, hidden)`` (flat if ``n_tokens == 1``)."""
    user_embedding_b64: EmbeddingB64 | None = None
    """The same sample in the compact form (base64 of little-endian float32)."""
    codebook_version: CodebookVersion | None = None
    """The codebook the sample's prototype belongs to (``409`` unless it is the published one)."""

    _check_embedding = field_validator("user_embedding")(_finite_embedding)
    _one_embedding = _one_form("user_embedding", "user_embedding_b64")


class Longform(BaseModel):
    """Veil's long-form mode (LongDPO, arXiv:2502.02095): the answer's required length in words, as
    LongBench-Write counts them; ``usage`` then reports the answer's words and its length score."""

    model_config = ConfigDict(extra="forbid")

    target_words: Annotated[int, Field(ge=1, le=100_000)]


ChatStrategy = Literal["sc-coq"]
"""Served prompting strategies of ``/v1/chat/completions`` (``strategy``)."""
MAX_CHAIN_QUESTIONS = 8
"""Questions a ``chain`` may hold: each costs one generation (the paper's longest chain has four)."""


class ChainQuestion(BaseModel):
    """One question of an SC-CoQ chain (arXiv:2412.11906, Sec. 4.2), asked before the target."""

    model_config = ConfigDict(extra="forbid")

    question: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is blank; a chain question needs text")
        return value


class ChatCompletionRequest(PersonalisedRequest):
    """OpenAI chat completion request, plus ``user_embedding``."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = -1
    """vLLM's extra field: sample among the ``k`` most likely tokens only; -1 or 0 keeps them all."""
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] = 1.0
    """vLLM's extra field: CTRL's penalty on every token already in the prompt or the answer; 1 is none."""
    seed: Annotated[int | None, Field(ge=-(2**63), le=2**63 - 1)] = None
    """A signed 64-bit integer, as in OpenAI's API (a torch generator takes no larger seed)."""
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    logprobs: bool = False
    """Return each generated token's log-probability (``log_softmax`` of the logits, before temperature)."""
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    """With ``logprobs``: the most likely alternatives per position, 0..20 (OpenAI's limits)."""
    kv_compression: KVCompression | None = None
    """Prune the prompt's KV cache once after prefill, e.g. ``{"method": "dbudgetkv", "threshold": 0.01}``
    or ``{"method": "snapkv", "budget": 0.5}``; ``usage`` then reports the kept fraction."""
    longform: Longform | None = None
    """``{"target_words": N}``: ask for about N words (see :mod:`veil.cloud_service.api.routes.chat`)."""
    strategy: ChatStrategy | None = None
    """``"sc-coq"``: ask ``chain`` first, easy to hard, feeding the model its own answers, then the last
    user message (see :mod:`veil.cloud_service.api.routes.chat`)."""
    chain: Annotated[list[ChainQuestion], Field(min_length=1, max_length=MAX_CHAIN_QUESTIONS)] | None = None
    """With ``strategy: "sc-coq"``: the questions asked before the target, e.g. ``[{"question": ...}]``."""

    @model_validator(mode="after")
    def _logprobs_requested(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError(f"top_logprobs ({self.top_logprobs}) needs logprobs: true")
        return self

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return tuple(s for s in stops if s)

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class _Example(BaseModel):
    """What every phone request about one anonymous example carries: the task, the text, a fresh sample
    (in one form or the other) and the codebook that sample's prototype belongs to."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    embedding: Embedding | None = None
    embedding_b64: EmbeddingB64 | None = None
    model: str | None = None
    codebook_version: CodebookVersion | None = None
    """The codebook version of the phone's prototype choice: ``409`` unless it is the published one, and
    then nothing is stored or computed (``PROTOCOL.md`` 5.5, using)."""

    _check_embedding = field_validator("embedding")(_finite_embedding)
    _one_embedding = _one_form("embedding", "embedding_b64")


class UploadRequest(_Example):
    """One anonymous training example: the text, a fresh embedding sample, the task, an optional label.

    The idempotency key travels in the ``Idempotency-Key`` header.
    """

    label: Annotated[str | None, Field(max_length=256)] = None


class UploadResponse(BaseModel):
    id: int
    object: Literal["upload"] = "upload"
    status: Literal["created", "duplicate"]


class GradientRequest(_Example):
    """One anonymous example and an embedding sample; the answer is dL/de for it."""

    label: Annotated[str, Field(min_length=1, max_length=256)]
    encoding: Literal["json", "base64", "none"] = "json"
    """How the gradient comes back: ``"json"`` (``gradient``, numbers), ``"base64"`` (``gradient_b64``,
    little-endian float32, the form of ``embedding_b64``) or ``"none"`` (the loss alone: one forward
    pass, no backward; for a phone's validation loss)."""

    _needs_embedding = _required_form("embedding", "embedding_b64")


class LabelLossRequest(_Example):
    """One anonymous example, one embedding sample and candidate labels; the answer is each label's loss
    under that sample (a phone's prediction in one request)."""

    labels: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]], Field(min_length=1, max_length=MAX_LABELS)
    ]
    """1 to 32 distinct candidates, each a ``label`` as ``/v1/embedding-gradients`` takes it."""

    _needs_embedding = _required_form("embedding", "embedding_b64")

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"labels must be distinct; {repeated} appear more than once")
        return labels


class LabelLossResponse(BaseModel):
    object: Literal["label_losses"] = "label_losses"
    model: str
    losses: list[float]
    """The loss of each requested label, in the order of the request."""


class CodebookBody(BaseModel):
    """The prototype codebook (``PROTOCOL.md`` 5.5): what ``GET /v1/codebook`` answers and an operator's
    ``PUT /v1/codebook`` sends. Types are strict, as on the phone; that the prototypes fill
    ``size * n_tokens * dim`` values and hash to ``version`` is checked once, by
    :func:`veil.client_sdk.codebook_wire.codebook_from_json`, in the route."""

    model_config = ConfigDict(extra="forbid", strict=True)

    object: Literal["codebook"] = "codebook"
    version: CodebookVersion
    k_min: Annotated[int, Field(ge=1)]
    size: Annotated[int, Field(ge=1)]
    active: list[bool]
    """``size`` flags: which prototypes phones may choose (at least one)."""
    n_tokens: Annotated[int, Field(ge=1)]
    dim: Annotated[int, Field(ge=1)]
    prototypes_b64: Annotated[str, Field(max_length=b64_length(MAX_CODEBOOK_VALUES))]
    """Standard base64 of ``size * n_tokens * dim`` little-endian float32 values, row-major."""
    model: str | None = None
    """The served model's id; a ``PUT`` that names another model is refused."""


class CodebookLossRequest(BaseModel):
    """One anonymous example; the answer is its loss under every usable prototype of the codebook."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    label: Annotated[str, Field(min_length=1, max_length=256)]
    version: CodebookVersion
    """The codebook version the phone scores against (``409`` when the published one differs)."""
    model: str | None = None


class CodebookLossResponse(BaseModel):
    object: Literal["codebook_losses"] = "codebook_losses"
    model: str
    version: str
    losses: list[float | None]
    """Loss under each prototype ``k`` in index order; ``null`` for unusable prototypes."""


class GradientResponse(BaseModel):
    object: Literal["embedding_gradient"] = "embedding_gradient"
    model: str
    loss: float
    gradient: list[list[float]] | None = None
    """dL/de ``(n_tokens, hidden)`` as numbers (request ``encoding: "json"``, the default)."""
    gradient_b64: str | None = None
    """dL/de as base64 of little-endian float32 (request ``encoding: "base64"``)."""

"""What a phone asks the Veil cloud, over any transport that speaks the inner HTTP requests.

:class:`PhoneAPI` builds the JSON bodies of the phone routes and reads the answers; the transport is
injected (an :class:`~veil.client_sdk.ohttp.client.AsyncOHTTPClient` through a relay in production and
in the demo). Every upload carries a fresh random ``Idempotency-Key``, reused on retries, so a retried
upload is stored once. Each call makes one request and raises on failure: retries belong to one layer
(:class:`~veil.client_sdk.client.VeilClient`, or the transport's own ``retries`` without it). Nothing
here identifies the phone: no user id, no device id, no stable key.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from veil.client_sdk.codebook_wire import codebook_from_json
from veil.client_sdk.distributions.prototype import Codebook
from veil.client_sdk.private_head import HeadAnswers
from veil.client_sdk.wire import WireFormatError, decode_f32, encode_field

__all__ = [
    "MAX_TOP_K",
    "AsyncTransport",
    "PhoneAPI",
    "VeilAPIError",
    "embedding_field",
    "new_idempotency_key",
]

MAX_TOP_K = 20
"""The most candidates per prototype a chat answer carries (OpenAI's ``top_logprobs`` limit)."""


class VeilAPIError(Exception):
    """The service answered with an error (``status`` 4xx/5xx and the JSON error's fields)."""

    def __init__(
        self,
        status: int,
        type: str,  # noqa: A002 - the OpenAI field name
        message: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.code = code


class _Response(Protocol):
    status: int
    content: bytes


class AsyncTransport(Protocol):
    async def request(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> _Response: ...


def new_idempotency_key() -> str:
    """32 random URL-safe characters: unique per upload, unrelated to the phone."""
    return secrets.token_urlsafe(24)


def _decode(resp: _Response) -> dict[str, Any]:
    try:
        body = json.loads(resp.content or b"{}")
    except ValueError as exc:
        raise VeilAPIError(resp.status, "invalid_response", "the service did not answer JSON") from exc
    if resp.status >= 400:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        raise VeilAPIError(
            resp.status,
            str(err.get("type", "error")),
            str(err.get("message", "")),
            err.get("param"),
            err.get("code"),
        )
    return body


def _finite_numbers(raw: Any, n: int) -> np.ndarray | None:
    """``raw`` as ``(n,)`` float64 when it is a JSON list of ``n`` finite numbers; ``None`` otherwise.

    >>> _finite_numbers([1, 2.5], 2), _finite_numbers([1, True], 2), _finite_numbers([1e400], 1)
    (array([1. , 2.5]), None, None)
    """
    if not isinstance(raw, list) or len(raw) != n or not all(type(v) in (int, float) for v in raw):
        return None  # bool is an int to Python, not a number to JSON
    try:
        values = np.array([float(v) for v in raw], dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        return None
    return values if np.isfinite(values).all() else None


def embedding_field(name: str, embedding: np.ndarray, encoding: str = "base64") -> dict[str, Any]:
    """The body field for a sample: ``{name_b64: "..."}`` (base64 of little-endian float32, row-major;
    smaller and cheaper to encode) or ``{name: [[...]]}`` (JSON numbers); see
    :func:`veil.client_sdk.wire.encode_field`."""
    return encode_field(name, embedding, encoding)


def _versioned(codebook_version: str | None) -> dict[str, str]:
    """The ``codebook_version`` field when there is one: the cloud then refuses the request (``409
    codebook_version_mismatch``) unless that codebook is the published one (``PROTOCOL.md`` 5.5)."""
    return {} if codebook_version is None else {"codebook_version": codebook_version}


class PhoneAPI:
    """The phone routes of the Veil API.

    Parameters
    ----------
    transport: sends one inner HTTP request (method, path, JSON body, headers) and returns the answer.
    model: the served model id (``/v1/models``).
    embedding_encoding: ``"base64"`` (default: ``embedding_b64``, float32) or ``"json"`` (lists of numbers).
    retries: must be 0 (kept so existing callers still construct it): this class never retries; wrap it in
        :class:`~veil.client_sdk.client.VeilClient` (:class:`~veil.client_sdk.retry.RetryPolicy`) or give
        the transport ``retries``, so that exactly one layer retries.
    """

    def __init__(
        self, transport: AsyncTransport, model: str, retries: int = 0, embedding_encoding: str = "base64"
    ) -> None:
        if retries != 0:
            raise ValueError(
                f"PhoneAPI never retries (one layer does: VeilClient), so retries must be 0, got {retries}"
            )
        self.transport = transport
        self.model = model
        if embedding_encoding not in ("base64", "json"):
            raise ValueError(f"embedding_encoding must be 'base64' or 'json', got {embedding_encoding!r}")
        self.embedding_encoding = embedding_encoding

    async def models(self) -> list[dict[str, Any]]:
        return _decode(await self.transport.request("GET", "/v1/models"))["data"]

    async def codebook(self) -> Codebook:
        """The published prototype codebook (``GET /v1/codebook``), its version verified.

        Raises :class:`VeilAPIError` (404, ``codebook_not_found``) when none is published and
        :class:`~veil.client_sdk.codebook_wire.CodebookFormatError` for a malformed body.
        """
        return codebook_from_json(_decode(await self.transport.request("GET", "/v1/codebook")))

    async def codebook_losses(self, task: str, text: str, label: str, book: Codebook) -> np.ndarray:
        """The example's loss under every usable prototype of ``book`` in one request
        (``POST /v1/codebook/losses``): ``(K,)``, NaN for unusable prototypes.

        Raises :class:`VeilAPIError` (409, ``codebook_version_mismatch``) when the cloud publishes
        another version, and ``invalid_response`` for an answer that does not fit ``book``.
        """
        body = {"model": self.model, "task": task, "text": text, "label": label, "version": book.version}
        out = _decode(await self.transport.request("POST", "/v1/codebook/losses", json=body))
        raw = out.get("losses")
        if out.get("version") != book.version or not isinstance(raw, list) or len(raw) != book.size:
            raise VeilAPIError(200, "invalid_response", f"codebook losses do not fit codebook {book.version}")
        losses = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
        if not np.isfinite(losses[book.active]).all() or not np.isnan(losses[~book.active]).all():
            raise VeilAPIError(200, "invalid_response", "codebook losses must be finite exactly where usable")
        return losses

    async def loss(
        self, task: str, text: str, label: str, embedding: np.ndarray, *, codebook_version: str | None = None
    ) -> float:
        """The loss alone for one example and one sample (``/v1/embedding-gradients`` with
        ``encoding: "none"``: a forward pass on the cloud, no gradient in the answer)."""
        body = {
            "model": self.model, "task": task, "text": text, "label": label, "encoding": "none",
            **embedding_field("embedding", embedding, self.embedding_encoding),
            **_versioned(codebook_version),
        }  # fmt: skip
        return float(
            _decode(await self.transport.request("POST", "/v1/embedding-gradients", json=body))["loss"]
        )

    async def label_losses(
        self,
        task: str,
        text: str,
        labels: Sequence[str],
        embedding: np.ndarray,
        *,
        codebook_version: str | None = None,
    ) -> np.ndarray:
        """The loss of each candidate label under one sample, in one request (``POST /v1/label-losses``:
        forward passes on the cloud, no gradient): ``(len(labels),)`` in the order of ``labels``.

        Raises :class:`VeilAPIError` (``invalid_response``) for an answer that is not one finite loss
        per label.
        """
        body = {
            "model": self.model, "task": task, "text": text, "labels": list(labels),
            **embedding_field("embedding", embedding, self.embedding_encoding),
            **_versioned(codebook_version),
        }  # fmt: skip
        raw = _decode(await self.transport.request("POST", "/v1/label-losses", json=body)).get("losses")
        losses = _finite_numbers(raw, len(labels))
        if losses is None:
            got = repr(raw)[:200]
            raise VeilAPIError(
                200, "invalid_response", f"label losses must be {len(labels)} finite numbers, got {got}"
            )
        return losses

    async def embedding_gradient(
        self, task: str, text: str, label: str, embedding: np.ndarray, *, codebook_version: str | None = None
    ) -> tuple[float, np.ndarray]:
        """Loss and dL/de ``(n_tokens, hidden)`` for one example and one fresh sample."""
        body = {
            "model": self.model,
            "task": task,
            "text": text,
            "label": label,
            **embedding_field("embedding", embedding, self.embedding_encoding),
            **_versioned(codebook_version),
        }
        if self.embedding_encoding == "base64":
            body["encoding"] = "base64"  # the gradient comes back compact too (gradient_b64)
        out = _decode(await self.transport.request("POST", "/v1/embedding-gradients", json=body))
        if "gradient_b64" in out:
            try:
                grad = decode_f32(out["gradient_b64"], np.shape(embedding), "gradient_b64")
            except WireFormatError as exc:
                raise VeilAPIError(200, "invalid_response", str(exc), exc.field) from exc
            return float(out["loss"]), grad.astype(np.float64)
        return float(out["loss"]), np.asarray(out["gradient"], dtype=np.float64)

    async def upload(
        self,
        task: str,
        text: str,
        label: str | None,
        embedding: np.ndarray | None,
        idempotency_key: str | None = None,
        *,
        codebook_version: str | None = None,
    ) -> dict[str, Any]:
        """Store one anonymous example; returns ``{"id", "status"}`` (``duplicate`` on a replayed key)."""
        key = idempotency_key or new_idempotency_key()
        body: dict[str, Any] = {"model": self.model, "task": task, "text": text, "label": label}
        if embedding is not None:
            body.update(embedding_field("embedding", embedding, self.embedding_encoding))
        body.update(_versioned(codebook_version))
        headers = {"idempotency-key": key}
        return _decode(await self.transport.request("POST", "/v1/uploads", json=body, headers=headers))

    async def chat(
        self,
        messages: Sequence[dict[str, str]],
        embedding: np.ndarray | None = None,
        *,
        codebook_version: str | None = None,
        **params: Any,
    ) -> str:
        """A non-streamed completion (``max_tokens``, ``temperature``, ``seed``, ``stop`` pass through)."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), **params}
        if embedding is not None:
            body.update(embedding_field("user_embedding", embedding, self.embedding_encoding))
        body.update(_versioned(codebook_version))
        out = _decode(await self.transport.request("POST", "/v1/chat/completions", json=body))
        return str(out["choices"][0]["message"]["content"])

    async def translate(
        self,
        text: str,
        source_language: str,
        target_language: str,
        *,
        mode: str = "direct",
        documents: Sequence[str] | None = None,
        embedding: np.ndarray | None = None,
        codebook_version: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/translations`` (not streamed): ``{"translation", "mode", "thought",
        "documents_used"}``. ``mode`` is ``direct``, ``long_thought`` (DRT-o1, arXiv:2412.17498) or
        ``document`` (RAGtrans, arXiv:2412.04342, which needs ``documents``); languages are BCP 47 codes.
        The service checks every field (a :class:`VeilAPIError` names the one it refuses)."""
        body: dict[str, Any] = {
            "model": self.model,
            "text": text,
            "source_language": source_language,
            "target_language": target_language,
            "mode": mode,
        }
        if documents is not None:
            body["documents"] = list(documents)
        if embedding is not None:
            body.update(embedding_field("user_embedding", embedding, self.embedding_encoding))
        body.update(_versioned(codebook_version))
        return _decode(await self.transport.request("POST", "/v1/translations", json=body))

    async def prototype_answers(
        self,
        messages: Sequence[dict[str, str]],
        prototypes: np.ndarray,
        top_k: int,
        *,
        codebook_version: str | None = None,
    ) -> HeadAnswers:
        """The cloud half of private mixing: the top ``top_k`` next tokens under each public prototype.

        One chat request per prototype (``max_tokens=1, logprobs=true, top_logprobs=top_k``, the
        prototype as ``user_embedding``); the ids come from the ``id`` Veil adds to every alternative.

        Parameters
        ----------
        messages : the chat so far.
        prototypes : ``(m, n_tokens, hidden)`` public prototypes of the codebook.
        top_k : alternatives per prototype, 1..20.
        codebook_version : the version of the codebook the prototypes come from; when given, the cloud
            refuses each request (``409``) unless it is the published one.

        Returns
        -------
        HeadAnswers of shape ``(1, m, top_k)``.
        """
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in [1, {MAX_TOP_K}], got {top_k}")
        protos = np.asarray(prototypes, dtype=np.float64)
        if protos.ndim != 3 or protos.shape[0] < 1:
            raise ValueError(f"prototypes must have shape (m, n_tokens, hidden), got {protos.shape}")
        tokens = np.zeros((1, protos.shape[0], top_k), dtype=np.int64)
        logprobs = np.zeros((1, protos.shape[0], top_k))
        for j, proto in enumerate(protos):
            body: dict[str, Any] = {
                "model": self.model,
                "messages": list(messages),
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": top_k,
                **embedding_field("user_embedding", proto, self.embedding_encoding),
                **_versioned(codebook_version),
            }
            out = _decode(await self.transport.request("POST", "/v1/chat/completions", json=body))
            content = (out["choices"][0]["logprobs"] or {}).get("content") or []
            if not content:  # the model stopped at once: the stop token is the answer, never emitted
                raise ValueError("the answer carries no logprobs (the model stopped before a first token)")
            top = content[0]["top_logprobs"]
            if len(top) != top_k:
                raise ValueError(f"asked for {top_k} top_logprobs, got {len(top)}")
            tokens[0, j] = [int(t["id"]) for t in top]
            logprobs[0, j] = [float(t["logprob"]) for t in top]
        return HeadAnswers(tokens, logprobs)

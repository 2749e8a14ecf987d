"""The Oblivious HTTP gateway (RFC 9458): opens requests, dispatches them, seals the answers.

The gateway sees request content but never the sender: requests arrive through a relay that strips
every client header. It keeps no per-client state; the only memory of past requests is the digest of
each HPKE ``enc`` it accepted, kept until that key retires, to refuse replays
(:mod:`veil.cloud_service.replay`).

* The keys are a :class:`~veil.cloud_service.keyring.Keyring` (re-exported here).
* :class:`Gateway` opens an encapsulated request, hands the inner binary HTTP request to ``dispatch``
  and encapsulates the answer. Errors before decryption raise typed :class:`OHTTPError` (the caller sends
  their status in the clear); errors after it (a malformed inner message, an exception in ``dispatch``)
  become an *encapsulated* error response, as RFC 9458 section 5.2 requires.
* ``dispatch`` is the caller's: the API serves inner requests with its own app in process
  (``veil.cloud_service.api.routes.ohttp``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence

from veil.client_sdk.ohttp.bhttp import BinaryHTTPError, BinaryRequest, BinaryResponse
from veil.client_sdk.ohttp.errors import ReplayedRequestError, RequestTooLargeError, UnknownKeyIdError
from veil.client_sdk.ohttp.ohttp import decapsulate_request
from veil.client_sdk.ohttp.padding import (
    DEFAULT_PADDING_BUCKETS,
    check_buckets,
    pad_to_bucket,
    response_overhead,
)
from veil.cloud_service.keyring import (
    KEM_NAMES,
    DirectoryKeyStorage,
    Keyring,
    KeyringError,
    KeyStorage,
    MemoryKeyStorage,
    WrongKeyEncryptionKeyError,
)
from veil.cloud_service.replay import (
    GroupCommit,
    MemoryReplayStore,
    ReplayStore,
    ReplayVerdict,
    SeenRequest,
    enc_digest,
)

__all__ = [
    "KEM_NAMES",
    "DirectoryKeyStorage",
    "Dispatch",
    "Gateway",
    "KeyStorage",
    "Keyring",
    "KeyringError",
    "MemoryKeyStorage",
    "WrongKeyEncryptionKeyError",
    "HOP_BY_HOP",
]

log = logging.getLogger(__name__)

Dispatch = Callable[[BinaryRequest], Awaitable[BinaryResponse]]


def _error_response(status: int, error_type: str, message: str) -> BinaryResponse:
    error = {"type": error_type, "message": message, "param": None, "code": None}
    body = json.dumps({"error": error}).encode()
    return BinaryResponse(status, [("content-type", "application/json")], body)


class Gateway:
    """Opens encapsulated requests, dispatches them, and encapsulates the responses.

    Parameters
    ----------
    keyring : Keyring
        The gateway keys.
    max_request_bytes : int
        Largest encapsulated request accepted (default 1 MiB).
    replays : ReplayStore or None
        Digests of accepted ``enc`` values, kept for each key's whole life (see
        :mod:`veil.cloud_service.replay`); ``None`` keeps them in this process's memory (tests, demos).
    padding_buckets : sequence of int
        Sizes (bytes) every encapsulated response is padded to with zero bytes (RFC 9292 section 3.8):
        the smallest that fits, past the largest a multiple of it; empty turns padding off.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        max_request_bytes: int = 1 << 20,
        replays: ReplayStore | None = None,
        padding_buckets: Sequence[int] = DEFAULT_PADDING_BUCKETS,
    ) -> None:
        if max_request_bytes <= 0:
            raise ValueError(f"max_request_bytes must be > 0, got {max_request_bytes}")
        self.keyring = keyring
        self.max_request_bytes = max_request_bytes
        self.padding_buckets = check_buckets(padding_buckets)
        self.replays = replays if replays is not None else MemoryReplayStore()
        self._group_commit = GroupCommit(self.replays)

    def key_config_bytes(self) -> bytes:
        """The ``application/ohttp-keys`` body for ``/.well-known/ohttp-gateway``."""
        return self.keyring.key_config_bytes()

    async def handle(self, body: bytes, dispatch: Dispatch) -> bytes:
        """Serve one encapsulated request; returns the encapsulated response (``message/ohttp-res``).

        Raises
        ------
        RequestTooLargeError, MalformedMessageError, UnknownKeyIdError, UnsupportedSuiteError,
        DecryptionFailedError, ReplayedRequestError
            Before decryption: answer with ``err.status`` and ``err.to_dict()``, unencapsulated.
        """
        if len(body) > self.max_request_bytes:
            raise RequestTooLargeError(f"encapsulated request exceeds {self.max_request_bytes} bytes")
        plaintext, context = decapsulate_request(self.keyring.private_keys_by_id(), body)
        await self._check_replay(body[0], context.enc)
        response = await self._serve(plaintext, dispatch)
        padded = pad_to_bucket(response.encode(), response_overhead(context.suite), self.padding_buckets)
        return context.encapsulate_response(padded)

    async def _check_replay(self, key_id: int, enc: bytes) -> None:
        # Only after decryption, so garbage cannot fill the store; the key id is the request's first
        # byte (RFC 9458 section 4.3), and decryption just proved it names a live key.
        epoch = self.keyring.epoch_of(key_id)
        if epoch is None:  # retired between decryption and now
            raise UnknownKeyIdError(f"key id {key_id} was retired; fetch the key configuration again")
        verdict = await self._group_commit.check(SeenRequest(enc_digest(enc), key_id, epoch))
        if verdict is ReplayVerdict.REPLAY:
            raise ReplayedRequestError("this encapsulated request was already received")
        if verdict is ReplayVerdict.KEY_RETIRED:
            raise UnknownKeyIdError(f"key id {key_id} was retired; fetch the key configuration again")

    async def _serve(self, plaintext: bytes, dispatch: Dispatch) -> BinaryResponse:
        try:
            request = BinaryRequest.decode(plaintext)
        except BinaryHTTPError as exc:
            return _error_response(400, "invalid_request", f"malformed binary HTTP request: {exc}")
        if (request.header("expect") or "").lower() == "100-continue":
            return _error_response(417, "invalid_request", "100-continue cannot be used over OHTTP")
        try:
            return await dispatch(request)
        except Exception as exc:  # the response must still be encapsulated, never sent in the clear
            log.error("OHTTP dispatch failed: %s", type(exc).__name__)
            return _error_response(500, "internal_error", "the request could not be served")


HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te"})
"""Connection-level fields, never carried from an inner request to the target or back."""

"""The Oblivious HTTP gateway (RFC 9458): opens requests, dispatches them, seals the answers.

The gateway sees request content but never the sender: requests arrive through a relay that strips
every client header. It keeps no per-client state; the only memory of past requests is a bounded,
time-limited set of digests of HPKE ``enc`` values, to reject replays.

* The keys are a :class:`~veil.cloud_service.keyring.Keyring` (re-exported here).
* :class:`Gateway` opens an encapsulated request, hands the inner binary HTTP request to ``dispatch``
  and encapsulates the answer. Errors before decryption raise typed :class:`OHTTPError` (the caller sends
  their status in the clear); errors after it (a malformed inner message, an exception in ``dispatch``)
  become an *encapsulated* error response, as RFC 9458 section 5.2 requires.
* ``dispatch`` is the caller's: the API serves inner requests with its own app in process
  (``veil.cloud_service.api.routes.ohttp``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from veil.client_sdk.ohttp.bhttp import BinaryHTTPError, BinaryRequest, BinaryResponse
from veil.client_sdk.ohttp.errors import ReplayedRequestError, RequestTooLargeError
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


class _ReplayCache:
    """Digests of recently seen ``enc`` values, each kept ``window_s``; at most ``max_entries``."""

    def __init__(self, window_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.window_s, self.max_entries, self._clock = window_s, max_entries, clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def check_and_add(self, enc: bytes) -> None:
        now = self._clock()
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)  # insertion order is expiry order
        digest = hashlib.sha256(enc).digest()[:16]
        if digest in self._seen:
            raise ReplayedRequestError("this encapsulated request was already received")
        self._seen[digest] = now + self.window_s
        if len(self._seen) > self.max_entries:
            # Memory stays bounded; under a flood the oldest entries go first.
            self._seen.popitem(last=False)


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
    replay_window_s : float
        How long an ``enc`` value is remembered to reject replays; 0 disables the check.
    replay_cache_size : int
        Most ``enc`` digests remembered at once.
    clock : callable
        Monotonic seconds (injectable for tests).
    padding_buckets : sequence of int
        Sizes (bytes) every encapsulated response is padded to with zero bytes (RFC 9292 section 3.8):
        the smallest that fits, past the largest a multiple of it; empty turns padding off.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        max_request_bytes: int = 1 << 20,
        replay_window_s: float = 300.0,
        replay_cache_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        padding_buckets: Sequence[int] = DEFAULT_PADDING_BUCKETS,
    ) -> None:
        if max_request_bytes <= 0 or replay_window_s < 0 or replay_cache_size <= 0:
            raise ValueError(
                "need max_request_bytes > 0, replay_window_s >= 0, replay_cache_size > 0; got "
                f"{max_request_bytes}, {replay_window_s}, {replay_cache_size}"
            )
        self.keyring = keyring
        self.max_request_bytes = max_request_bytes
        self.padding_buckets = check_buckets(padding_buckets)
        self.replay_window_s = replay_window_s
        self._replays = _ReplayCache(replay_window_s, replay_cache_size, clock)

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
        if self.replay_window_s > 0:
            # Checked only after decryption, so garbage cannot fill the cache; no await in between.
            self._replays.check_and_add(context.enc)
        response = await self._serve(plaintext, dispatch)
        padded = pad_to_bucket(response.encode(), response_overhead(context.suite), self.padding_buckets)
        return context.encapsulate_response(padded)

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

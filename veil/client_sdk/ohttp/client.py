"""Oblivious HTTP clients (sync and async, on httpx) for phones talking to Veil through a relay.

Each call builds a binary HTTP request for the target, seals it to the gateway's key with a fresh HPKE
context (a new encapsulation on every try, so retries cannot be linked either), POSTs it to the relay as
``message/ohttp-req`` and opens the encapsulated response. The outer request carries only
``content-type``, ``accept`` and a fixed generic ``user-agent``: requests are built directly rather than
through the httpx client's defaults, so no cookies, client auth or per-install headers can leak, and
response cookies are never sent back. The inner request carries only what the caller passes (plus
``content-type`` for JSON); ``cookie`` and ``expect`` headers are refused. The inner request is padded
with zero bytes so the encapsulated request is one of a few bucket sizes (see
:mod:`~veil.client_sdk.ohttp.padding`).
"""

from __future__ import annotations

import asyncio
import functools
import json as jsonlib
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from veil.client_sdk.ohttp.bhttp import BinaryHTTPError, BinaryRequest, BinaryResponse
from veil.client_sdk.ohttp.errors import OHTTP_KEY_PROBLEM, UnsupportedSuiteError
from veil.client_sdk.ohttp.keypin import GatewayKeyPin
from veil.client_sdk.ohttp.keys import KeyConfig
from veil.client_sdk.ohttp.ohttp import (
    KEYS_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
    ClientResponseContext,
    encapsulate_request,
)
from veil.client_sdk.ohttp.padding import (
    DEFAULT_PADDING_BUCKETS,
    check_buckets,
    pad_to_bucket,
    request_overhead,
)
from veil.client_sdk.retry import RetryPolicy, parse_retry_after

__all__ = ["USER_AGENT", "AsyncOHTTPClient", "InnerResponse", "OHTTPClient", "RelayError"]

# The same for every install and version, so it says nothing about the phone.
USER_AGENT = "ohttp-client"
# Idle connections are dropped well before a server's usual 5 s keep-alive, so a request is never sent
# on a connection the server is closing (that race surfaces as a ReadError that cannot be retried
# blindly, because the relay may already have forwarded the request).
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One default TLS context (system CAs) for every client this process makes: building one reads the
    CA store, about 17 ms each on the 2-core VM, which an app making many clients should pay once."""
    return ssl.create_default_context()


_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_REFUSED_HEADERS = frozenset({"cookie", "expect", "host"})
_KEY_ERROR_TYPES = frozenset({"unknown_key_id", "unsupported_ohttp_suite"})


class RelayError(Exception):
    """The relay or gateway answered without an encapsulated response, or could not be reached.

    Attributes
    ----------
    status_code : int or None
        HTTP status from the relay; ``None`` when it could not be reached.
    error_type : str
        The ``error.type`` of a JSON error body, or a generic type.
    retry_after : float or None
        The relay's ``retry-after`` in seconds (RFC 9110 section 10.2.3), when it sent one.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        error_type: str = "relay_error",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.retry_after = retry_after

    @property
    def is_key_problem(self) -> bool:
        """Whether the gateway refused our key configuration (outdated key id or suite)."""
        return self.error_type in _KEY_ERROR_TYPES


@dataclass(frozen=True)
class InnerResponse:
    """The target's response, as opened from the encapsulated response."""

    status: int
    headers: tuple[tuple[str, str], ...]
    content: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        return next((v for n, v in self.headers if n == name.lower()), None)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")

    def json(self) -> Any:
        """The content parsed as JSON."""
        return jsonlib.loads(self.content)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _relay_error(response: httpx.Response) -> RelayError:
    error_type, message = "relay_error", f"relay answered {response.status_code}"
    try:
        error = response.json()["error"]
        error_type = str(error.get("type", error_type))
        message = str(error.get("message", message))
        if error.get("problem_type") == OHTTP_KEY_PROBLEM:
            error_type = error_type if error_type in _KEY_ERROR_TYPES else "unknown_key_id"
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return RelayError(message, response.status_code, error_type, retry_after)


class _ClientCore:
    """Configuration, message building and response handling shared by both clients."""

    key_pin: GatewayKeyPin  # the trust anchor for fetched key configurations

    def __init__(
        self,
        relay_url: str,
        *,
        key_config: KeyConfig | None,
        key_config_url: str | None,
        target_authority: str,
        scheme: str,
        timeout: float,
        retries: int,
        retry_backoff_s: float,
        padding_buckets: Sequence[int] = DEFAULT_PADDING_BUCKETS,
        gateway_public_key: bytes | str | Sequence[bytes | str] | None = None,
        pin_path: str | os.PathLike[str] | None = None,
        owns_http: bool = True,
    ) -> None:
        if (key_config is None) == (key_config_url is None):
            raise ValueError("give exactly one of key_config and key_config_url")
        if retries < 0 or retry_backoff_s < 0 or timeout <= 0:
            raise ValueError(
                f"need retries >= 0, retry_backoff_s >= 0 and timeout > 0, got {retries}, {retry_backoff_s}, {timeout}"
            )
        if key_config is not None and not key_config.supported_algorithms():
            raise UnsupportedSuiteError(
                f"key {key_config.key_id} offers no (KDF, AEAD) pair this client implements"
            )
        self.relay_url = relay_url
        self.key_config_url = key_config_url
        self.target_authority = target_authority
        self.scheme = scheme
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._retry = RetryPolicy(retries, retry_backoff_s)
        self.padding_buckets = check_buckets(padding_buckets)
        self._key_config = key_config
        self.key_pin = GatewayKeyPin(gateway_public_key, path=pin_path)
        self._owns_http = owns_http

    def _after(
        self,
        request: httpx.Request,
        outcome: httpx.Response | httpx.TransportError,
        attempt: int,
        waited: float,
    ) -> float | None:
        """What to do after one exchange: ``None`` to return ``outcome`` (a response), else the seconds to
        wait before the next attempt. Raises :class:`RelayError` for a transport failure not retried."""
        if isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout):
            pause = self._pause(attempt, waited, None)
            if pause is None:
                raise RelayError(
                    f"cannot reach {request.url}: {outcome}", None, "relay_unreachable"
                ) from outcome
            return pause
        if isinstance(outcome, httpx.TransportError):
            # Not retried: the relay may already have forwarded the request.
            raise RelayError(
                f"exchange with {request.url} failed: {outcome!r}", None, "relay_error"
            ) from outcome
        if outcome.status_code not in _RETRY_STATUSES:
            return None
        return self._pause(attempt, waited, outcome)

    def _inner(
        self, method: str, path: str, json: Any, content: bytes | None, headers: Mapping[str, str] | None
    ) -> bytes:
        if json is not None and content is not None:
            raise ValueError("give json or content, not both")
        fields: list[tuple[str, str]] = []
        if json is not None:
            content = jsonlib.dumps(json, separators=(",", ":")).encode("utf-8")
            fields.append(("content-type", "application/json"))
        for name, value in (headers or {}).items():
            if name.lower() in _REFUSED_HEADERS:
                raise ValueError(f"header {name!r} may not be sent through the oblivious channel")
            fields.append((name, value))
        request = BinaryRequest(
            method.upper(), self.scheme, self.target_authority, path, fields, content or b""
        )
        return request.encode()

    def _outer(self, body: bytes) -> httpx.Request:
        headers = {
            "content-type": REQUEST_MEDIA_TYPE,
            "accept": RESPONSE_MEDIA_TYPE,
            "user-agent": USER_AGENT,
        }
        return httpx.Request("POST", self.relay_url, headers=headers, content=body)

    def _key_request(self) -> httpx.Request:
        headers = {"accept": KEYS_MEDIA_TYPE, "user-agent": USER_AGENT}
        return httpx.Request("GET", str(self.key_config_url), headers=headers)

    def _parse_key_configs(self, response: httpx.Response) -> KeyConfig:
        if (
            response.status_code != 200
            or _media_type(response.headers.get("content-type")) != KEYS_MEDIA_TYPE
        ):
            raise _relay_error(response)
        # Refused unless signed by the pinned gateway key (RFC 9458 section 6.1): never sealed to a
        # key a relay made up.
        verified = self.key_pin.verify(response.status_code, response.headers.multi_items(), response.content)
        for config in verified.configs:
            if config.supported_algorithms():
                self._key_config = config
                return config
        raise UnsupportedSuiteError("the gateway offers no key configuration this client implements")

    def _open(self, response: httpx.Response, context: ClientResponseContext) -> InnerResponse:
        if (
            response.status_code != 200
            or _media_type(response.headers.get("content-type")) != RESPONSE_MEDIA_TYPE
        ):
            raise _relay_error(response)
        try:
            inner = BinaryResponse.decode(context.decapsulate_response(response.content))
        except BinaryHTTPError as exc:
            raise RelayError(
                f"the gateway sent an invalid binary response: {exc}", 200, "invalid_response"
            ) from exc
        return InnerResponse(inner.status, tuple(inner.headers), inner.content)

    def _pause(self, attempt: int, waited: float, response: httpx.Response | None) -> float | None:
        """The wait before try ``attempt + 1`` (:class:`~veil.client_sdk.retry.RetryPolicy`: full
        jitter, or the relay's ``retry-after`` when longer), or ``None`` when no try is left."""
        retry_after = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
        return self._retry.next_pause(attempt, waited, retry_after)

    def _encapsulator(self, config: KeyConfig, inner: bytes) -> tuple[Callable[[], httpx.Request], list]:
        """A request factory that seals ``inner`` afresh on every call, and the list of its contexts."""
        contexts: list[ClientResponseContext] = []
        # Zero padding (RFC 9292 section 3.8): the sealed request is exactly one bucket long.
        padded = pad_to_bucket(inner, request_overhead(config), self.padding_buckets)

        def build() -> httpx.Request:
            # A fresh encapsulation per try: a retried request is unlinkable to the first.
            body, context = encapsulate_request(config, padded)
            contexts.append(context)
            return self._outer(body)

        return build, contexts


class OHTTPClient(_ClientCore):
    """Synchronous OHTTP client.

    Parameters
    ----------
    relay_url : str
        The relay resource that accepts ``message/ohttp-req`` (e.g. ``http://relay:8080/ohttp``).
    key_config : KeyConfig, optional
        The gateway's key configuration, if known in advance.
    key_config_url : str, optional
        Where to GET ``application/ohttp-keys`` instead (fetched once, refreshed once when the gateway
        reports an unknown key); exactly one of ``key_config`` and ``key_config_url``. A fetched list is
        used only when its signature verifies (:mod:`~veil.client_sdk.ohttp.keysig`): otherwise
        ``KeyConfigSignatureError`` (or a subclass) is raised and nothing is sent.
    gateway_public_key : bytes, str or a sequence of them, optional
        The gateway's Ed25519 signing key shipped with the app (raw 32 bytes or base64), or the current
        and the next key: fetched lists must be signed by one of them. ``None``: trust on first use (:class:`~veil.client_sdk.ohttp.keypin.GatewayKeyPin`).
    pin_path : path-like, optional
        With no ``gateway_public_key``, the file that keeps the key pinned on first use across runs
        (default: pinned in memory for this client's lifetime).
    target_authority : str
        The ``:authority`` of the inner requests (the target the gateway serves).
    scheme : str
        The inner ``:scheme``.
    http_client : httpx.Client, optional
        Client to send with (its default headers, cookies and auth are never used); by default one is made.
    transport : httpx.BaseTransport, optional
        Transport for the client made here.
    timeout : float
        Seconds per HTTP exchange.
    retries : int
        Extra tries after connection errors or a 429/502/503/504 from the relay, for callers that use
        this client on its own (or under :class:`~veil.client_sdk.api.PhoneAPI`, which never retries).
        Under :class:`~veil.client_sdk.client.VeilClient` it must be 0: that client is the one layer
        that retries, and refuses a transport that retries too, so attempts never multiply.
    retry_backoff_s : float
        Try ``k`` (from 0) is followed by a uniform wait in ``[0, retry_backoff_s * 2**k]`` (or the
        relay's ``retry-after`` when longer, up to 30 s): :class:`~veil.client_sdk.retry.RetryPolicy`.
    padding_buckets : sequence of int
        Sizes (bytes) an encapsulated request is padded to: the smallest that fits, past the largest a
        multiple of it (``veil.client_sdk.ohttp.padding``); empty turns padding off.
    """

    def __init__(
        self,
        relay_url: str,
        *,
        key_config: KeyConfig | None = None,
        key_config_url: str | None = None,
        target_authority: str = "veil.invalid",
        scheme: str = "https",
        http_client: httpx.Client | None = None,
        gateway_public_key: bytes | str | Sequence[bytes | str] | None = None,
        pin_path: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        retry_backoff_s: float = 0.1,
        padding_buckets: Sequence[int] = DEFAULT_PADDING_BUCKETS,
    ) -> None:
        super().__init__(
            relay_url,
            key_config=key_config,
            key_config_url=key_config_url,
            target_authority=target_authority,
            scheme=scheme,
            timeout=timeout,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            padding_buckets=padding_buckets,
            gateway_public_key=gateway_public_key,
            pin_path=pin_path,
            owns_http=http_client is None,
        )
        self._http = http_client or httpx.Client(
            transport=transport, timeout=timeout, trust_env=False, limits=_LIMITS, verify=_tls()
        )
        self._key_lock = threading.Lock()

    def _send(self, build: Callable[[], httpx.Request]) -> httpx.Response:
        attempt, waited = 0, 0.0
        while True:
            request = build()
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.send(request, auth=None, follow_redirects=False)
            except httpx.TransportError as exc:
                outcome = exc
            pause = self._after(request, outcome, attempt, waited)
            if pause is None:
                return outcome  # type: ignore[return-value]  # _after returns None only for a response
            time.sleep(pause)
            attempt, waited = attempt + 1, waited + pause

    def key_config(self, *, refresh: bool = False) -> KeyConfig:
        """The gateway key configuration in use (fetched from ``key_config_url`` if needed)."""
        stale = self._key_config
        with self._key_lock:  # one fetch even when many threads start at once
            if self._key_config is None or (refresh and self.key_config_url and self._key_config is stale):
                return self._parse_key_configs(self._send(self._key_request))
            return self._key_config

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> InnerResponse:
        """Send one request to the target through the relay; returns the target's response.

        Raises
        ------
        RelayError
            No encapsulated response: relay or gateway error status, or the relay is unreachable.
        DecryptionFailedError, MalformedMessageError
            The encapsulated response did not open (tampered in transit).
        """
        inner = self._inner(method, path, json, content, headers)
        for refreshed in (False, True):
            build, contexts = self._encapsulator(self.key_config(refresh=refreshed), inner)
            response = self._send(build)
            try:
                return self._open(response, contexts[-1])
            except RelayError as exc:
                if refreshed or not (exc.is_key_problem and self.key_config_url):
                    raise
        raise AssertionError("unreachable: the second pass returns or raises")

    def close(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> OHTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncOHTTPClient(_ClientCore):
    """Asynchronous OHTTP client; same parameters as :class:`OHTTPClient` with httpx's async types."""

    def __init__(
        self,
        relay_url: str,
        *,
        key_config: KeyConfig | None = None,
        key_config_url: str | None = None,
        target_authority: str = "veil.invalid",
        scheme: str = "https",
        http_client: httpx.AsyncClient | None = None,
        gateway_public_key: bytes | str | Sequence[bytes | str] | None = None,
        pin_path: str | os.PathLike[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        retry_backoff_s: float = 0.1,
        padding_buckets: Sequence[int] = DEFAULT_PADDING_BUCKETS,
    ) -> None:
        super().__init__(
            relay_url,
            key_config=key_config,
            key_config_url=key_config_url,
            target_authority=target_authority,
            scheme=scheme,
            timeout=timeout,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            padding_buckets=padding_buckets,
            gateway_public_key=gateway_public_key,
            pin_path=pin_path,
            owns_http=http_client is None,
        )
        self._http = http_client or httpx.AsyncClient(
            transport=transport, timeout=timeout, trust_env=False, limits=_LIMITS, verify=_tls()
        )
        self._key_lock: asyncio.Lock | None = None

    async def _send(self, build: Callable[[], httpx.Request]) -> httpx.Response:
        attempt, waited = 0, 0.0
        while True:
            request = build()
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.send(request, auth=None, follow_redirects=False)
            except httpx.TransportError as exc:
                outcome = exc
            pause = self._after(request, outcome, attempt, waited)
            if pause is None:
                return outcome  # type: ignore[return-value]  # _after returns None only for a response
            await asyncio.sleep(pause)
            attempt, waited = attempt + 1, waited + pause

    async def key_config(self, *, refresh: bool = False) -> KeyConfig:
        """The gateway key configuration in use (fetched from ``key_config_url`` if needed)."""
        stale = self._key_config
        if self._key_lock is None:  # made here so it belongs to the running loop
            self._key_lock = asyncio.Lock()
        async with self._key_lock:  # one fetch even when many requests start at once
            if self._key_config is None or (refresh and self.key_config_url and self._key_config is stale):
                return self._parse_key_configs(await self._send(self._key_request))
            return self._key_config

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> InnerResponse:
        """Send one request to the target through the relay; returns the target's response.

        Raises
        ------
        RelayError
            No encapsulated response: relay or gateway error status, or the relay is unreachable.
        DecryptionFailedError, MalformedMessageError
            The encapsulated response did not open (tampered in transit).
        """
        inner = self._inner(method, path, json, content, headers)
        for refreshed in (False, True):
            build, contexts = self._encapsulator(await self.key_config(refresh=refreshed), inner)
            response = await self._send(build)
            try:
                return self._open(response, contexts[-1])
            except RelayError as exc:
                if refreshed or not (exc.is_key_problem and self.key_config_url):
                    raise
        raise AssertionError("unreachable: the second pass returns or raises")

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncOHTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

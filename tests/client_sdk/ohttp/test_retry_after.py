"""The OHTTP client waits as long as the relay's ``retry-after`` asks (429, 503), then re-encapsulates."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from veil.client_sdk.ohttp import (
    RESPONSE_MEDIA_TYPE,
    AsyncOHTTPClient,
    BinaryResponse,
    GatewayKeyPair,
    OHTTPClient,
    decapsulate_request,
)
from veil.client_sdk.ohttp import client as client_module

KEY = GatewayKeyPair.generate(7)


def _relay(refusals: list[tuple[int, str | None]], seen: list[bytes]):
    """Answers each refusal in turn (status, retry-after), then serves the request."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        if refusals:
            status, retry_after = refusals.pop(0)
            headers = {} if retry_after is None else {"retry-after": retry_after}
            return httpx.Response(status, json={"error": {"type": "x", "message": "wait"}}, headers=headers)
        _, context = decapsulate_request({KEY.key_id: KEY}, request.content)
        sealed = context.encapsulate_response(BinaryResponse(200, [], b"ok").encode())
        return httpx.Response(200, content=sealed, headers={"content-type": RESPONSE_MEDIA_TYPE})

    return httpx.MockTransport(handler)


def test_sync_client_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", pauses.append)
    seen: list[bytes] = []
    refusals = [(429, "2"), (503, "1"), (503, "600")]
    transport = _relay(refusals, seen)
    with OHTTPClient("http://relay/ohttp", key_config=KEY.config, transport=transport, retries=3) as c:
        assert c.request("GET", "/v1/models").content == b"ok"
    assert pauses == [2.0, 1.0, 30.0]  # retry-after when longer than the backoff, capped at 30 s
    assert len(set(seen)) == 4  # every try freshly encapsulated


def test_async_client_honours_retry_after_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", sleep)

    async def main() -> int:
        transport = _relay([(429, "3"), (429, "junk"), (429, "3")], [])
        async with AsyncOHTTPClient(
            "http://relay/ohttp", key_config=KEY.config, transport=transport, retries=2
        ) as c:
            with pytest.raises(client_module.RelayError) as refused:
                await c.request("GET", "/v1/models")
        return refused.value.status_code

    assert asyncio.run(main()) == 429
    # An unparsable retry-after falls back to the backoff, with full jitter: uniform in [0, 0.1 * 2**1].
    assert pauses[0] == 3.0 and len(pauses) == 2 and 0.0 <= pauses[1] <= 0.2

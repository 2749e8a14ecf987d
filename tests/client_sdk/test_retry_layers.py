"""Exactly one layer retries: a failing relay sees ``1 + retries`` attempts in total, not a product."""

from __future__ import annotations

import asyncio

import pytest

from veil.client_sdk.api import PhoneAPI
from veil.client_sdk.client import RetryPolicy, VeilClient
from veil.client_sdk.ohttp import AsyncOHTTPClient, GatewayKeyPair
from veil.client_sdk.ohttp.client import RelayError
from veil.client_sdk.param_store import MemoryParamStore
from veil.client_sdk.retry import MAX_RETRY_AFTER_S, parse_retry_after

KEY = GatewayKeyPair.generate(4)


def _failing_relay(status: int, retry_after: str | None = None):
    """A relay app that answers every ``POST /ohttp`` with ``status`` and counts the requests."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    seen: list[bytes] = []

    async def ohttp(request: Request) -> JSONResponse:
        seen.append(await request.body())
        headers = {} if retry_after is None else {"retry-after": retry_after}
        error = {"error": {"type": "service_unavailable", "message": "busy", "param": None, "code": None}}
        return JSONResponse(error, status_code=status, headers=headers)

    return Starlette(routes=[Route("/ohttp", ohttp, methods=["POST"])]), seen


@pytest.mark.integration
@pytest.mark.parametrize("status", [503, 429])
def test_a_failing_relay_sees_one_plus_retries_attempts_through_veil_client(status: int) -> None:
    from veil.cloud_service.background import BackgroundServer

    app, seen = _failing_relay(status)
    with BackgroundServer(app) as relay:

        async def go() -> None:
            async with AsyncOHTTPClient(relay.url + "/ohttp", key_config=KEY.config, retries=0) as transport:
                client = VeilClient(
                    transport, MemoryParamStore(), model="m", retry=RetryPolicy(retries=3, backoff_s=0.001)
                )
                await client.upload("next_word", "a cup of", "tea", with_embedding=False)

        with pytest.raises(RelayError) as err:
            asyncio.run(go())
    assert err.value.status_code == status
    assert len(seen) == 4  # 1 + RetryPolicy.retries: the transport and PhoneAPI add none
    assert len(set(seen)) == 4  # every attempt freshly encapsulated


@pytest.mark.integration
def test_phone_api_never_retries_so_the_transport_alone_decides() -> None:
    from veil.cloud_service.background import BackgroundServer

    app, seen = _failing_relay(503)
    with BackgroundServer(app) as relay:

        async def go() -> None:
            async with AsyncOHTTPClient(
                relay.url + "/ohttp", key_config=KEY.config, retries=2, retry_backoff_s=0.001
            ) as transport:
                await PhoneAPI(transport, "m").upload("next_word", "a cup of", "tea", None)

        with pytest.raises(RelayError):
            asyncio.run(go())
    assert len(seen) == 3  # was 9 when PhoneAPI retried the transport's retries


def test_veil_client_refuses_a_transport_that_retries_itself() -> None:
    transport = AsyncOHTTPClient("http://relay.invalid/ohttp", key_config=KEY.config, retries=2)
    with pytest.raises(ValueError, match="retries=0"):
        VeilClient(transport, MemoryParamStore(), model="m")
    with pytest.raises(ValueError, match="never retries"):
        PhoneAPI(transport, "m", retries=1)


def test_the_waits_of_one_request_are_bounded_in_total() -> None:
    policy = RetryPolicy(retries=10, backoff_s=0.0, max_wait_s=60.0)
    # The relay's retry-after is honoured (capped per wait) until the total would pass max_wait_s.
    assert policy.next_pause(0, 0.0, retry_after=20.0) == 20.0
    assert policy.next_pause(1, 20.0, retry_after=600.0) == MAX_RETRY_AFTER_S == 30.0
    assert policy.next_pause(2, 50.0, retry_after=10.0) == 10.0
    assert policy.next_pause(3, 60.0, retry_after=1.0) is None
    assert policy.next_pause(10, 0.0) is None  # the attempts are spent
    # Full jitter: uniform in [0, backoff_s * 2**k].
    jittered = [RetryPolicy(backoff_s=0.5).pause(2) for _ in range(200)]
    assert all(0.0 <= p <= 2.0 for p in jittered) and len(set(jittered)) > 100
    assert [parse_retry_after(v) for v in ("7", "", None, "1.5", "\xb2")] == [7.0, None, None, None, None]
    with pytest.raises(ValueError, match="max_wait_s"):
        RetryPolicy(max_wait_s=-1.0)

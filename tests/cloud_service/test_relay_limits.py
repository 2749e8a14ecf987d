"""The relay's rate limit, queue and concurrency bounds, and its two mixes, against real ASGI apps."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from veil.client_sdk.ohttp import REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE
from veil.cloud_service.relay import RelayConfig, create_relay_app
from veil.cloud_service.relay_limits import RateLimiter
from veil.cloud_service.relay_mix import ConstantRateMix, ThresholdMix

HEADERS = {"content-type": REQUEST_MEDIA_TYPE}


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.take("198.51.100.7") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("198.51.100.7") == pytest.approx(0.5)  # one token comes back in 1/rate s
    assert limiter.take("198.51.100.8") == 0.0  # another address has its own bucket
    clock.t += 0.5
    assert limiter.take("198.51.100.7") == 0.0
    assert limiter.take("198.51.100.7") > 0


def test_limiter_forgets_full_buckets_stays_bounded_and_keeps_no_address() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=10.0, burst=5, max_clients=3, clock=clock)
    for i in range(10):
        limiter.take(f"203.0.113.{i}")
    assert len(limiter) == 3  # the least recently seen went first
    assert not any(b"203.0.113" in key for key in limiter._buckets)  # keyed by a MAC, not the address
    clock.t += 0.5  # burst / rate: every bucket is full again, so every entry is dropped
    limiter.take("203.0.113.99")
    assert len(limiter) == 1
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(rate_per_s=0, burst=1)


def _recorder(delay: float = 0.0):
    """A forward() that records (body, loop time) and answers after ``delay``."""
    sent: list[tuple[bytes, float]] = []

    async def forward(body: bytes) -> Response:
        sent.append((body, asyncio.get_running_loop().time()))
        await asyncio.sleep(delay)
        return Response(body)

    return forward, sent


def test_threshold_mix_releases_a_full_batch_at_once_shuffled() -> None:
    async def main() -> list[list[bytes]]:
        forward, sent = _recorder()
        mix = ThresholdMix(forward, min_batch=8, hold_window_s=30.0)
        orders = []
        for _ in range(5):
            sent.clear()
            bodies = [bytes([i]) for i in range(8)]
            started = time.monotonic()
            answers = await asyncio.gather(*(mix.submit(b) for b in bodies))
            assert [a.body for a in answers] == bodies  # each client gets its own answer
            assert time.monotonic() - started < 5  # released by the count, not the 30 s window
            assert max(t for _, t in sent) - min(t for _, t in sent) < 0.5  # all leave together
            orders.append([b for b, _ in sent])
        return orders

    orders = asyncio.run(main())
    # 5 batches of 8 all in arrival order would happen with probability (1/8!)^5.
    assert any(order != [bytes([i]) for i in range(8)] for order in orders)


def test_threshold_mix_releases_a_short_batch_after_the_window() -> None:
    async def main() -> float:
        forward, _ = _recorder()
        mix = ThresholdMix(forward, min_batch=5, hold_window_s=0.3)
        started = time.monotonic()
        await asyncio.gather(mix.submit(b"a"), mix.submit(b"b"))
        return time.monotonic() - started

    assert 0.25 <= asyncio.run(main()) < 3


def test_constant_rate_mix_never_sends_faster_than_its_rate() -> None:
    async def main() -> tuple[float, list[float], float]:
        forward, sent = _recorder()
        mix = ConstantRateMix(forward, rate_per_s=40.0)
        start = asyncio.get_running_loop().time()
        await asyncio.gather(*(mix.submit(bytes([i])) for i in range(8)))
        return start, [t for _, t in sent], mix.tick_s

    start, times, tick = asyncio.run(main())
    assert tick == pytest.approx(0.025)
    # The i-th departure waits for the i-th grid tick after the arrival (a busy machine only makes
    # it later): all 8 arrived at once, yet they leave one per tick, never in a burst.
    assert all(t >= start + i * tick - 1e-3 for i, t in enumerate(sorted(times)))
    assert sorted(times)[-1] - start < 8 * tick + 2.0


def _slow_gateway(delay: float, stats: dict[str, int]) -> Starlette:
    async def ohttp(request: Request) -> Response:
        stats["now"] += 1
        stats["max"] = max(stats["max"], stats["now"])
        await asyncio.sleep(delay)
        stats["now"] -= 1
        return Response(await request.body(), media_type=RESPONSE_MEDIA_TYPE)

    return Starlette(routes=[Route("/ohttp", ohttp, methods=["POST"])])


def _relay(config: RelayConfig, gateway: Starlette, client: tuple[str, int]) -> httpx.AsyncClient:
    relay = create_relay_app(config, transport=httpx.ASGITransport(app=gateway))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=relay, client=client), base_url="http://relay")


def test_relay_answers_429_with_retry_after_per_address() -> None:
    stats = {"now": 0, "max": 0}
    gateway = _slow_gateway(0.0, stats)
    config = RelayConfig("http://gateway.internal", rate_per_s=0.5, rate_burst=2)

    async def main() -> None:
        app = create_relay_app(config, transport=httpx.ASGITransport(app=gateway))
        a = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("198.51.100.1", 5)), base_url="http://r"
        )
        b = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("198.51.100.2", 5)), base_url="http://r"
        )
        async with a, b:
            assert [
                (await a.post("/ohttp", content=b"x", headers=HEADERS)).status_code for _ in range(2)
            ] == [200] * 2
            limited = await a.post("/ohttp", content=b"x", headers=HEADERS)
            assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
            error = limited.json()["error"]
            assert error["type"] == "rate_limit_exceeded" and "198.51" not in limited.text
            assert (await b.post("/ohttp", content=b"x", headers=HEADERS)).status_code == 200
            assert (await a.get("/.well-known/ohttp-gateway")).status_code == 429  # one bucket for both

    asyncio.run(main())


def test_relay_bounds_its_queue_and_its_concurrency() -> None:
    stats = {"now": 0, "max": 0}
    gateway = _slow_gateway(0.2, stats)

    async def main() -> list[int]:
        config = RelayConfig("http://gateway.internal", rate_per_s=0, max_pending=6, max_concurrency=2)
        async with _relay(config, gateway, ("198.51.100.1", 5)) as relay:
            answers = await asyncio.gather(
                *(relay.post("/ohttp", content=bytes([i]), headers=HEADERS) for i in range(8))
            )
        full = [r for r in answers if r.status_code == 503]
        assert all(
            r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "relay_overloaded" for r in full
        )
        return sorted(r.status_code for r in answers)

    assert asyncio.run(main()) == [200] * 6 + [503] * 2
    assert stats["max"] == 2


def test_relay_config_refuses_contradictory_or_out_of_range_limits() -> None:
    for kwargs, fragment in [
        ({"rate_per_s": -1}, "rate_per_s"),
        ({"rate_burst": 0}, "rate_burst"),
        ({"max_pending": 0}, "max_pending"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"min_batch": 4}, "hold_window_s"),
        ({"min_batch": 10, "hold_window_s": 1, "max_pending": 5}, "min_batch"),
        ({"constant_rate_per_s": -2}, "constant_rate_per_s"),
        ({"constant_rate_per_s": 10, "hold_window_s": 0.1}, "one mix"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            RelayConfig(**kwargs)

"""How the relay releases requests to the gateway: at once, in shuffled batches, or at a constant rate.

A relay that forwards each request the moment it arrives lets whoever watches both sides (the gateway
and a network observer near the phones) match them by time. Two classic mixes make that harder:

* :class:`ThresholdMix` (the batching mix of Chaum, "Untraceable electronic mail, return addresses,
  and digital pseudonyms", Communications of the ACM 24(2), 1981): requests are held and each batch
  is forwarded in a random order, once it has ``min_batch`` requests, or once the batch's first
  request has waited ``hold_window_s`` (with ``min_batch = 1`` the hold is a random time up to
  ``hold_window_s``). Every request in a batch leaves at the same moment, so the gateway cannot tell
  their arrival order.
* :class:`ConstantRateMix` (a timed pool mix in the terms of Serjantov, Dingledine and Syverson,
  "From a trickle to a flood: active attacks on several mix types", Information Hiding 2002):
  requests join a pool, and on every tick of a fixed grid the relay sends ``rate_per_s * tick`` of
  them chosen uniformly at random, so departures happen only on the grid and say nothing of arrival
  times within it. No dummy requests are sent when the pool is empty: a cover request would have to
  be sealed to the gateway, which would open it and know it for what it is.

Both forward through the relay's bounded-concurrency ``forward`` and use the OS's randomness (a
seeded generator could be predicted by an observer).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.responses import JSONResponse, Response

__all__ = ["ConstantRateMix", "Direct", "Forward", "Mixer", "ThresholdMix"]

Forward = Callable[[bytes], Awaitable[Response]]
_rng = random.SystemRandom()
_MIN_TICK_S = 0.002  # finer ticks than the event loop's timers can keep are pointless


class Mixer(Protocol):
    async def submit(self, body: bytes) -> Response: ...


class Direct:
    """Forwards every request at once (no mixing)."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward

    async def submit(self, body: bytes) -> Response:
        return await self.forward(body)


class _Releaser:
    """Holds (body, future) pairs and delivers them as background tasks."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self._tasks: set[asyncio.Task[None]] = set()

    def _release(self, body: bytes, future: asyncio.Future[Response]) -> None:
        task = asyncio.create_task(self._deliver(body, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, body: bytes, future: asyncio.Future[Response]) -> None:
        try:
            response = await self.forward(body)
        except Exception:  # a relay bug must not leave the client hanging
            error = {"type": "bad_gateway", "message": "the relay could not forward the request"}
            response = JSONResponse({"error": {**error, "param": None, "code": None}}, 502)
        if not future.done():  # the client may have gone away
            future.set_result(response)


class ThresholdMix(_Releaser):
    """Forwards each batch shuffled once it has ``min_batch`` requests or its hold time has passed."""

    def __init__(self, forward: Forward, *, min_batch: int, hold_window_s: float) -> None:
        if min_batch < 1 or hold_window_s <= 0:
            raise ValueError(f"need min_batch >= 1 and hold_window_s > 0, got {min_batch}, {hold_window_s}")
        super().__init__(forward)
        self.min_batch = min_batch
        self.hold_window_s = hold_window_s
        self._pending: list[tuple[bytes, asyncio.Future[Response]]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, body: bytes) -> Response:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        self._pending.append((body, future))
        if self.min_batch > 1 and len(self._pending) >= self.min_batch:
            self._flush()
        elif self._timer is None:
            hold = _rng.uniform(0, self.hold_window_s) if self.min_batch == 1 else self.hold_window_s
            self._timer = loop.call_later(hold, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        _rng.shuffle(batch)
        for body, future in batch:  # started in shuffled order
            self._release(body, future)


class ConstantRateMix(_Releaser):
    """Sends held requests on a fixed grid of ticks, ``rate_per_s`` per second, chosen at random."""

    def __init__(self, forward: Forward, *, rate_per_s: float) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        super().__init__(forward)
        self.rate_per_s = rate_per_s
        self.tick_s = max(1.0 / rate_per_s, _MIN_TICK_S)
        self._per_tick = rate_per_s * self.tick_s  # >= 1
        self._pool: list[tuple[bytes, asyncio.Future[Response]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, body: bytes) -> Response:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pool.append((body, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        credit = 0.0
        while self._pool:
            # The grid is fixed to the loop's clock, not to the first arrival, so the first departure
            # does not reveal when the first request came in.
            await asyncio.sleep(self.tick_s - loop.time() % self.tick_s)
            credit = min(credit + self._per_tick, max(1.0, self._per_tick))
            count = min(int(credit), len(self._pool))
            credit -= count
            for _ in range(count):
                body, future = self._pool.pop(_rng.randrange(len(self._pool)))
                self._release(body, future)
        self._sender = None

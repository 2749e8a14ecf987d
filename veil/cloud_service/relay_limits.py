"""The relay's per-address rate limit: a token bucket per client address, in memory only.

Each address may send ``burst`` requests at once and ``rate_per_s`` per second after that (the token
bucket of RFC 2697 section 1, single rate); a request with no token is answered 429 with
``Retry-After`` (RFC 6585 section 4). The relay must not keep a record of who sent what, so:

* the address is never stored as such: the dictionary key is a BLAKE2b MAC of it (RFC 7693) under a
  random key made at start-up and never written anywhere, so even a memory dump lists no addresses;
* an entry whose bucket has refilled (``burst / rate_per_s`` seconds after its last request) is the same
  as no entry and is dropped; the dictionary never holds more than ``max_clients`` entries (the least
  recently seen go first);
* nothing here logs, and the relay forwards nothing about the address.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets by client address.

    Parameters
    ----------
    rate_per_s : float
        Tokens added per second (> 0).
    burst : int
        Bucket size: requests an idle address may send at once (>= 1).
    max_clients : int
        Most addresses remembered at once.
    clock : callable
        Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_clients < 1:
            raise ValueError(
                f"need rate_per_s > 0, burst >= 1, max_clients >= 1; got {rate_per_s}, {burst}, {max_clients}"
            )
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._key = os.urandom(32)
        self._refill_s = self.burst / self.rate_per_s
        # key -> (tokens, time of the last request); ordered from least to most recently seen
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _id(self, address: str) -> bytes:
        return hashlib.blake2b(address.encode("utf-8", "replace"), key=self._key, digest_size=16).digest()

    def take(self, address: str) -> float:
        """Spend one token of ``address``: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        while self._buckets:  # forget addresses whose bucket is full again (oldest first)
            oldest = next(iter(self._buckets.values()))
            if now - oldest[1] < self._refill_s:
                break
            self._buckets.popitem(last=False)
        key = self._id(address)
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate_per_s
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

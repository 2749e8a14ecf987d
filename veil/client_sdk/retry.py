"""How long a phone waits before resending, decided in one place.

Exponential backoff with full jitter: attempt ``k`` (from 0) waits a uniform time in
``[0, backoff_s * 2**k]``, drawn from the OS's secure source so that retry timing is no fingerprint; a
relay's ``Retry-After`` (RFC 9110 section 10.2.3, delay-seconds form) is honoured when longer, up to
:data:`MAX_RETRY_AFTER_S`; and the waits of one request add up to at most ``max_wait_s``.

One layer retries: :class:`~veil.client_sdk.client.VeilClient`, which knows that every phone route is safe
to resend (uploads carry an ``Idempotency-Key``). :class:`~veil.client_sdk.api.PhoneAPI` never retries,
and the OHTTP transports make one attempt unless built with ``retries`` for use without ``VeilClient``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["MAX_RETRY_AFTER_S", "RetryPolicy", "parse_retry_after"]

MAX_RETRY_AFTER_S = 30.0
"""The longest a relay's ``Retry-After`` may park a phone before one attempt."""

_jitter = random.SystemRandom()  # retry timing must not be predictable from a seeded generator


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in delay-seconds form, or ``None`` (absent, an HTTP date,
    or junk).

    >>> parse_retry_after("2"), parse_retry_after("soon"), parse_retry_after("²")
    (2.0, None, None)
    """
    if value and value.isascii() and value.isdigit():  # not '²': isdigit() takes it, float() does not
        return float(value)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    Parameters
    ----------
    retries : int
        Extra attempts after the first, >= 0.
    backoff_s : float
        Attempt ``k`` (from 0) waits a uniform time in ``[0, backoff_s * 2**k]``, >= 0.
    max_wait_s : float
        The most one request spends waiting between attempts, in total, >= 0: a retry whose wait would
        pass it is not made, and the last error stands.
    """

    retries: int = 3
    backoff_s: float = 0.2
    max_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0 or not (math.isfinite(self.backoff_s) and self.backoff_s >= 0):
            raise ValueError(f"need retries >= 0 and backoff_s >= 0, got {self.retries}, {self.backoff_s}")
        if not self.max_wait_s >= 0:
            raise ValueError(f"need max_wait_s >= 0, got {self.max_wait_s}")

    def pause(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after failed attempt ``attempt`` (from 0): full jitter, or the relay's
        ``retry_after`` (capped at :data:`MAX_RETRY_AFTER_S`) when that is longer."""
        pause = _jitter.uniform(0.0, self.backoff_s * 2**attempt)
        if retry_after is not None:
            pause = max(pause, min(retry_after, MAX_RETRY_AFTER_S))
        return pause

    def next_pause(self, attempt: int, waited: float, retry_after: float | None = None) -> float | None:
        """The wait before attempt ``attempt + 1``, or ``None`` when no retry is left: the attempts are
        spent, or the wait would take the total past ``max_wait_s`` (``waited`` so far)."""
        if attempt >= self.retries:
            return None
        pause = self.pause(attempt, retry_after)
        return pause if waited + pause <= self.max_wait_s else None

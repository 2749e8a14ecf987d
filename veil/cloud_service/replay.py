"""Replay protection for the OHTTP gateway: every ``enc`` is accepted once for its key's whole life.

RFC 9458 section 6.5 leaves replay protection to the gateway. An encapsulated request is identified by
its HPKE ``enc`` (the sender's fresh ephemeral public key, RFC 9180 section 5.1): a relay that sends
the same bytes again replays the same request. The gateway keeps a digest of every ``enc`` it accepted
(:func:`enc_digest`, 16 bytes of SHA-256) in a :class:`ReplayStore`, tagged with the key's epoch, until
that key retires: then the key no longer decrypts anything, and :meth:`ReplayStore.forget` drops its
rows, so the store stays bounded by the traffic of the live keys.

* :class:`MemoryReplayStore`: one process (tests, single-process demos).
* :class:`veil.cloud_service.gateway_setup.DatabaseReplayStore`: the service's; shared by every worker
  and durable across restarts. The insert is atomic (a primary key on the digest), so a request
  replayed to two workers at once is accepted by exactly one.
* :class:`GroupCommit`: batches the checks of concurrent requests into one store call (one transaction
  and one commit for many requests), off the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DIGEST_BYTES",
    "GroupCommit",
    "MemoryReplayStore",
    "ReplayStore",
    "ReplayVerdict",
    "SeenRequest",
    "enc_digest",
]

DIGEST_BYTES = 16
"""128 bits: a collision among 2^40 stored digests has probability about 2^-49."""


def enc_digest(enc: bytes) -> bytes:
    """The stored form of an ``enc``: the first 16 bytes of its SHA-256."""
    return hashlib.sha256(enc).digest()[:DIGEST_BYTES]


class ReplayVerdict(enum.Enum):
    """What the store says about one request."""

    FRESH = "fresh"
    """First time seen: recorded, serve it."""
    REPLAY = "replay"
    """Seen before under this key: refuse."""
    KEY_RETIRED = "key_retired"
    """Its key retired meanwhile (this process had not reloaded yet): refuse as an unknown key."""


@dataclass(frozen=True)
class SeenRequest:
    """One accepted encapsulation: its ``enc`` digest and the key (id and epoch) it was sealed to."""

    digest: bytes
    key_id: int
    epoch: int


class ReplayStore(Protocol):
    """Digests of accepted encapsulations, per key epoch."""

    def record(self, seen: Sequence[SeenRequest]) -> list[ReplayVerdict]:
        """Insert each digest unless present; one verdict per item, in order.

        Atomic per item: of two concurrent calls with the same digest, exactly one gets ``FRESH``
        (within one call, the first of two equal digests is ``FRESH``, the second ``REPLAY``).
        """
        ...

    def forget(self, epochs: Collection[int]) -> int:
        """Drop the digests recorded under these (retired) epochs; returns how many went."""
        ...


class MemoryReplayStore:
    """A :class:`ReplayStore` in this process's memory (lost on restart: tests and demos only)."""

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def record(self, seen: Sequence[SeenRequest]) -> list[ReplayVerdict]:
        verdicts = []
        with self._lock:
            for item in seen:
                if item.digest in self._seen:
                    verdicts.append(ReplayVerdict.REPLAY)
                else:
                    self._seen[item.digest] = item.epoch
                    verdicts.append(ReplayVerdict.FRESH)
        return verdicts

    def forget(self, epochs: Collection[int]) -> int:
        drop = set(epochs)
        with self._lock:
            gone = [d for d, epoch in self._seen.items() if epoch in drop]
            for digest in gone:
                del self._seen[digest]
        return len(gone)


class GroupCommit:
    """Checks requests against a :class:`ReplayStore` in batches, in a worker thread.

    While one batch is being written, requests that arrive wait and form the next batch, so a store
    that commits once per call (a database) commits once per batch instead of once per request, and
    an idle gateway adds no waiting. Batches hold at most ``max_batch`` requests.
    """

    def __init__(self, store: ReplayStore, max_batch: int = 512) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[SeenRequest, asyncio.Future[ReplayVerdict]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def check(self, seen: SeenRequest) -> ReplayVerdict:
        """The verdict for one request (raises what the store raises, e.g. ``StoreError``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReplayVerdict] = loop.create_future()
        self._pending.append((seen, future))
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write())
        return await future

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                verdicts = await loop.run_in_executor(None, self.store.record, [s for s, _ in batch])
            except Exception as exc:  # every waiter gets the failure; the next batch tries again
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), verdict in zip(batch, verdicts, strict=True):
                if not future.done():  # its request may have been cancelled meanwhile
                    future.set_result(verdict)

"""Group commit of uploads: concurrent uploads share one transaction and one ``fsync``.

An API process receives uploads from many phones at once; committing each in its own transaction costs
one ``fsync`` of the WAL per upload (SQLite ``synchronous=FULL``, PostgreSQL ``synchronous_commit=on``),
which bounds throughput at the disk's sync rate. :class:`UploadBatcher` queues the uploads that arrive
while a commit is in flight and writes them with the next commit, one multi-row ``INSERT ... ON
CONFLICT DO NOTHING`` in one transaction (group commit: DeWitt et al., "Implementation Techniques for
Main Memory Database Systems", SIGMOD 1984, section 4; Gray and Reuter, "Transaction Processing",
1993, section 9.4.7). Each caller is answered only after its transaction committed, so the durability
promise of :func:`~veil.cloud_service.store.repository.add_upload` is kept: an acknowledged upload is on
disk. Idempotency works as there: a key already stored with the same content answers ``created=False``
with the stored id, with other content :class:`~veil.cloud_service.store.errors.IdempotencyConflict`.

Batches form by themselves under load (everything that arrived during the previous commit), so an idle
service adds no delay; ``window_s`` waits a little longer to collect more when the disk is slow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from veil.cloud_service.store.errors import IdempotencyConflict, StoreError
from veil.cloud_service.store.repository import UploadIn, UploadResult, _encode
from veil.cloud_service.store.tables import Upload
from veil.cloud_service.store.util import utc_day

__all__ = ["GroupCommitConfig", "UploadBatcher", "add_uploads"]

log = logging.getLogger(__name__)

Outcome = UploadResult | IdempotencyConflict | StoreError
"""What one upload of a batch became."""


@dataclass(frozen=True)
class GroupCommitConfig:
    """How uploads are grouped into transactions.

    Attributes
    ----------
    max_batch : int
        Most uploads per transaction (bounds the statement size and the latency of one commit).
    window_s : float
        Extra time to wait for more uploads once one is queued and no commit is running; 0 commits at
        once (batches still form from whatever arrives during the previous commit).
    """

    max_batch: int = 512
    window_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0 <= self.window_s <= 1:
            raise ValueError(f"window_s must be in [0, 1] seconds, got {self.window_s}")


def _insert(engine: Engine) -> Any:
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    # Conflict on the idempotency key only: the row is skipped and looked up below.
    return insert(Upload).on_conflict_do_nothing(index_elements=[Upload.idempotency_key])


def _row(upload: UploadIn, content_hash: str, day: Any) -> dict[str, Any]:
    emb = upload.embedding
    return {
        "idempotency_key": upload.idempotency_key,
        "task": upload.task,
        "text": upload.text,
        "label": upload.label,
        "embedding": None if emb is None else _encode(emb),
        "n_tokens": None if emb is None else emb.shape[0],
        "hidden": None if emb is None else emb.shape[1],
        "model": upload.model,
        "day": day,
        "request_hash": content_hash,
    }


def add_uploads(engine: Engine, uploads: Sequence[UploadIn]) -> list[Outcome]:
    """Store ``uploads`` in one transaction; one outcome per upload, in order.

    An upload whose key is already stored (or appears earlier in ``uploads``) is a retry when its
    content hash matches (``created=False``, the stored id) and an :class:`IdempotencyConflict`
    otherwise. A database failure fails the whole batch with :class:`StoreError` (nothing committed).
    """
    hashes = [u.content_hash() for u in uploads]
    day = utc_day()
    first: dict[str, int] = {}
    for i, upload in enumerate(uploads):
        first.setdefault(upload.idempotency_key, i)
    rows = [_row(uploads[i], hashes[i], day) for i in first.values()]
    try:
        with engine.begin() as conn:
            inserted = dict(
                conn.execute(_insert(engine).returning(Upload.idempotency_key, Upload.id), rows).all()
            )
            missing = [key for key in first if key not in inserted]
            stored = {}
            if missing:
                stmt = select(Upload.idempotency_key, Upload.id, Upload.request_hash)
                for key, id_, digest in conn.execute(stmt.where(Upload.idempotency_key.in_(missing))):
                    stored[key] = (id_, digest)
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StoreError(f"add_uploads failed: {detail[0] if detail else type(exc).__name__}") from None
    out: list[Outcome] = []
    for i, upload in enumerate(uploads):
        key = upload.idempotency_key
        if key in inserted and first[key] == i:
            out.append(UploadResult(id=inserted[key], created=True))
            continue
        id_, digest = (
            (inserted[key], hashes[first[key]]) if key in inserted else stored.get(key, (None, None))
        )
        if id_ is None:
            out.append(StoreError("upload rejected by the database"))
        elif digest != hashes[i]:
            out.append(IdempotencyConflict("idempotency_key was already used for a different upload"))
        else:
            out.append(UploadResult(id=id_, created=False))
    return out


class UploadBatcher:
    """Collects concurrent :meth:`add` calls of one process into group commits (see the module doc).

    Parameters
    ----------
    engine : the store's engine (SQLite WAL with ``synchronous=FULL``, or PostgreSQL).
    config : batch size and collection window.

    Commits run on one thread of their own, so the event loop keeps accepting uploads meanwhile.
    """

    def __init__(self, engine: Engine, config: GroupCommitConfig | None = None) -> None:
        self.engine = engine
        self.config = config or GroupCommitConfig()
        self._pending: list[tuple[UploadIn, asyncio.Future[UploadResult]]] = []
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="veil-group-commit")
        self.batches = 0
        """Transactions committed so far (for tests and benchmarks)."""

    async def add(self, upload: UploadIn) -> UploadResult:
        """Store ``upload``; returns once its transaction has committed.

        Raises
        ------
        IdempotencyConflict
            The key is already stored with different content.
        StoreError
            The database failed (the upload may be retried with the same key).
        """
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done() or self._loop is not loop:
            # Made on first use, so the event and the task belong to the loop that serves requests
            # (a new loop, as in tests that run the app under several asyncio.run calls, gets its own).
            self._loop, self._pending = loop, []
            self._wake = asyncio.Event()
            self._runner = asyncio.create_task(self._run(self._wake))
        future: asyncio.Future[UploadResult] = loop.create_future()
        self._pending.append((upload, future))
        self._wake.set()  # type: ignore[union-attr]
        return await future

    async def _run(self, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wake.wait()
            if self.config.window_s > 0:
                await asyncio.sleep(self.config.window_s)
            batch = self._pending[: self.config.max_batch]
            del self._pending[: len(batch)]
            if not self._pending:
                wake.clear()
            if not batch:
                continue
            self._busy = True
            try:
                outcomes = await loop.run_in_executor(self._thread, self._commit, [u for u, _ in batch])
            except Exception as exc:  # every waiter must hear back, whatever failed
                log.error("group commit failed: %s", type(exc).__name__)
                outcomes = [StoreError(f"upload could not be stored: {type(exc).__name__}")] * len(batch)
            finally:
                self._busy = False
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the caller went away; its upload is stored all the same
                    continue
                if isinstance(outcome, UploadResult):
                    future.set_result(outcome)
                else:
                    future.set_exception(outcome)

    def _commit(self, uploads: list[UploadIn]) -> list[Outcome]:
        try:
            outcomes = add_uploads(self.engine, uploads)
        except StoreError:
            if len(uploads) == 1:
                raise
            # One bad row must not fail its neighbours: each alone, in its own transaction.
            outcomes = []
            for upload in uploads:
                try:
                    outcomes.extend(add_uploads(self.engine, [upload]))
                except StoreError as exc:
                    outcomes.append(exc)
        self.batches += 1
        return outcomes

    async def aclose(self) -> None:
        """Finish the queued uploads, then stop."""
        while self._pending or self._busy:
            await asyncio.sleep(0.005)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._thread.shutdown(wait=True)

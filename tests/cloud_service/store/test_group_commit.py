"""Group commit of uploads, on SQLite and PostgreSQL: one transaction per batch, per-upload outcomes that
match ``add_upload`` (created, retry, conflict), and an answer only once the row is committed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from veil.cloud_service.store import IdempotencyConflict, UploadIn, UploadResult
from veil.cloud_service.store.group_commit import GroupCommitConfig, UploadBatcher, add_uploads
from veil.cloud_service.store.tables import Upload


def _upload(i: int, text: str | None = None) -> UploadIn:
    emb = np.full((1, 8), i, dtype=np.float32)
    return UploadIn(
        idempotency_key=f"key-{i:016d}", task="next_word", text=text or f"t{i}", model="m", embedding=emb
    )


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Upload)).scalar_one()


def test_one_batch_gives_each_upload_its_own_outcome(store_engine: Engine) -> None:
    first = add_uploads(store_engine, [_upload(1), _upload(2)])
    assert all(isinstance(r, UploadResult) and r.created for r in first)
    out = add_uploads(store_engine, [_upload(3), _upload(1), _upload(2, "other"), _upload(3), _upload(4)])
    assert out[0].created and out[4].created
    assert out[1] == UploadResult(id=first[0].id, created=False)  # a retry of a stored upload
    assert isinstance(out[2], IdempotencyConflict)  # the key of another content
    assert out[3] == UploadResult(id=out[0].id, created=False)  # a retry within the same batch
    assert _count(store_engine) == 4
    with store_engine.connect() as conn:
        blob = conn.execute(select(Upload.embedding).where(Upload.id == out[4].id)).scalar_one()
    assert blob == np.full(8, 4, dtype="<f4").tobytes()  # the float32 bytes, as they travelled


def test_the_batcher_groups_concurrent_uploads_and_answers_after_commit(store_engine: Engine) -> None:
    batcher = UploadBatcher(store_engine, GroupCommitConfig(max_batch=64))

    async def one(i: int) -> UploadResult:
        result = await batcher.add(_upload(i))
        with store_engine.connect() as conn:  # another connection already sees it: committed
            stored = conn.execute(select(Upload.id).where(Upload.idempotency_key == f"key-{i:016d}"))
            assert stored.scalar_one() == result.id
        return result

    async def main() -> list[UploadResult]:
        try:
            return await asyncio.gather(*(one(i) for i in range(300)))
        finally:
            await batcher.aclose()

    results = asyncio.run(main())
    assert all(r.created for r in results) and len({r.id for r in results}) == 300
    assert _count(store_engine) == 300
    assert 300 / 64 <= batcher.batches < 300  # grouped, and never more than max_batch at once


def test_a_conflict_fails_only_its_own_upload(store_engine: Engine) -> None:
    add_uploads(store_engine, [_upload(7)])
    batcher = UploadBatcher(store_engine)

    async def main() -> list:
        try:
            return await asyncio.gather(
                batcher.add(_upload(8)), batcher.add(_upload(7, "changed")), return_exceptions=True
            )
        finally:
            await batcher.aclose()

    ok, conflict = asyncio.run(main())
    assert isinstance(ok, UploadResult) and ok.created
    assert isinstance(conflict, IdempotencyConflict)


@pytest.mark.parametrize(("max_batch", "window_s"), [(0, 0.0), (8, -1.0), (8, 2.0)])
def test_bad_config_is_refused(max_batch: int, window_s: float) -> None:
    with pytest.raises(ValueError):
        GroupCommitConfig(max_batch=max_batch, window_s=window_s)


def test_the_batcher_serves_one_event_loop_after_another(store_engine: Engine) -> None:
    batcher = UploadBatcher(store_engine)
    first = asyncio.run(batcher.add(_upload(20)))
    second = asyncio.run(batcher.add(_upload(21)))  # a new loop: the old runner is gone with its loop
    assert first.created and second.created and _count(store_engine) == 2

"""Uploads: validation, idempotency (also under concurrency), round trip, counting and iteration."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from veil.cloud_service.store import (
    IdempotencyConflict,
    UploadIn,
    add_upload,
    count_uploads,
    iter_uploads,
    session_factory,
    utc_day,
)
from veil.cloud_service.store.tables import Upload


def _upload(key: str = "k" * 16, **overrides: object) -> UploadIn:
    fields: dict[str, object] = {
        "idempotency_key": key,
        "task": "classification",
        "text": "the film was wonderful",
        "label": "positive",
        "embedding": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "model": "tiny-llama",
    }
    fields.update(overrides)
    return UploadIn(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"idempotency_key": "short"}, "idempotency_key"),
        ({"idempotency_key": "x" * 129}, "idempotency_key"),
        ({"idempotency_key": "a" * 15 + "!"}, "idempotency_key"),
        ({"idempotency_key": "a" * 16 + "\n"}, "idempotency_key"),
        ({"task": "regression"}, "task"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "a" * 16385}, "at most 16384"),
        ({"text": "nul\x00byte"}, "NUL"),
        ({"text": "lone \ud800 surrogate"}, "surrogate"),
        ({"label": "l" * 257}, "label"),
        ({"model": ""}, "model"),
        ({"embedding": np.zeros(4, dtype=np.float32)}, "shape"),
        ({"embedding": np.zeros((0, 4), dtype=np.float32)}, "shape"),
        ({"embedding": np.array([[1.0, np.nan]], dtype=np.float32)}, "finite"),
        ({"embedding": np.array([[1.0, np.inf]])}, "finite"),
        ({"embedding": np.array([[1e300]])}, "finite"),
        ({"embedding": np.array([["a"]])}, "real numbers"),
        ({"embedding": [[1.0, 2.0]]}, "numpy array"),
    ],
)
def test_upload_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _upload(**overrides)


def test_upload_accepts_the_limits() -> None:
    upload = _upload("a" * 128, text="a" * 16384, label="", embedding=np.ones((1, 1)))
    assert upload.embedding is not None and upload.embedding.dtype == np.float32


def test_add_and_read_back(store_session: Session) -> None:
    first = add_upload(store_session, _upload("key-one-0123456789"))
    second = add_upload(
        store_session, _upload("key-two-0123456789", task="next_word", label=None, embedding=None)
    )
    assert first.created and second.created and second.id != first.id  # random ids: no order

    stored = list(iter_uploads(store_session))
    assert [u.id for u in stored] == sorted([first.id, second.id])
    a, b = sorted(stored, key=lambda u: u.id != first.id)  # the first upload, then the second
    expected = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    assert a.embedding is not None and a.embedding.dtype == np.float32 and a.embedding.flags.writeable
    np.testing.assert_array_equal(a.embedding, expected)  # bit-exact round trip
    assert (a.task, a.text, a.label, a.model) == (
        "classification",
        "the film was wonderful",
        "positive",
        "tiny-llama",
    )
    assert (b.task, b.label, b.embedding) == ("next_word", None, None)
    assert a.day == utc_day() and isinstance(a.day, dt.date) and not isinstance(a.day, dt.datetime)


def test_retry_returns_the_same_id(store_session: Session) -> None:
    first = add_upload(store_session, _upload())
    retry = add_upload(store_session, _upload())
    assert retry.id == first.id and first.created and not retry.created
    assert count_uploads(store_session) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"text": "a different text"},
        {"label": None},
        {"label": "negative"},
        {"task": "next_word"},
        {"model": "another-model"},
        {"embedding": None},
        {"embedding": np.arange(12, dtype=np.float32).reshape(4, 3) / 7},  # same values, other shape
        {"embedding": np.arange(12, dtype=np.float32).reshape(3, 4)},
    ],
)
def test_reused_key_with_other_content_conflicts(store_session: Session, change: dict[str, object]) -> None:
    add_upload(store_session, _upload())
    with pytest.raises(IdempotencyConflict):
        add_upload(store_session, _upload(**change))
    assert count_uploads(store_session) == 1
    add_upload(store_session, _upload("another-key-0123456"))  # the session is still usable
    assert count_uploads(store_session) == 2


def test_concurrent_inserts_of_one_key_store_one_row(store_engine: Engine) -> None:
    sessions = session_factory(store_engine)
    barrier = threading.Barrier(4)
    results, errors = [], []

    def insert() -> None:
        try:
            with sessions() as session:
                barrier.wait()
                results.append(add_upload(session, _upload("raced-key-0123456789")))
        except Exception as exc:  # collected and reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=insert) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == 4 and len({r.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Upload)) == 1


def test_count_and_iterate_with_filters_in_batches(store_session: Session) -> None:
    next_word = []
    for i in range(7):
        result = add_upload(
            store_session,
            _upload(f"batch-key-{i:08d}", task="next_word" if i % 2 else "classification", model=f"m{i % 3}"),
        )
        if i % 2:
            next_word.append(result.id)
    assert count_uploads(store_session) == 7
    assert count_uploads(store_session, task="next_word") == 3
    assert count_uploads(store_session, model="m0") == 3
    assert count_uploads(store_session, task="classification", model="m0") == 2
    assert count_uploads(store_session, model="nope") == 0
    ids = [u.id for u in iter_uploads(store_session, batch=2)]
    assert ids == sorted(ids) and len(ids) == 7
    assert [u.id for u in iter_uploads(store_session, task="next_word", batch=1)] == sorted(next_word)
    assert [u.model for u in iter_uploads(store_session, model="m1", batch=3)] == ["m1", "m1"]
    assert list(iter_uploads(store_session, model="nope")) == []
    with pytest.raises(ValueError, match="batch"):
        next(iter_uploads(store_session, batch=0))


def test_database_rejects_inconsistent_rows(store_session: Session) -> None:
    # The CHECK constraints back the validation up for writers that bypass UploadIn.
    row = Upload(
        idempotency_key="bad-row-0123456789", task="other", text="t", label=None, embedding=None,
        n_tokens=None, hidden=None, model="m", day=utc_day(), request_hash="0" * 64,
    )  # fmt: skip
    store_session.add(row)
    with pytest.raises(Exception, match="(?i)check"):
        store_session.commit()
    store_session.rollback()
    assert count_uploads(store_session) == 0

"""The published codebook: init, atomic publish, and retirement from counts against enforce_k_min."""

from __future__ import annotations

import numpy as np
import pytest

from veil.client_sdk.distributions import Codebook, choose_prototype, enforce_k_min
from veil.cloud_service.codebooks import CodebookStore, init_codebook, retire_by_counts


def test_init_codebook_is_seeded_float32_and_all_usable() -> None:
    a, b = init_codebook(5, 2, (2, 3), seed=1), init_codebook(5, 2, (2, 3), seed=1)
    assert a.version == b.version != init_codebook(5, 2, (2, 3), seed=2).version
    assert a.prototypes.shape == (5, 2, 3) and a.active.all() and a.k_min == 2
    np.testing.assert_array_equal(a.prototypes, a.prototypes.astype(np.float32))
    with pytest.raises(ValueError, match="size"):
        init_codebook(0, 1, (1, 3))


@pytest.mark.parametrize("seed", range(5))
def test_retiring_from_counts_round_by_round_is_enforce_k_min(seed: int) -> None:
    """The cloud sees counts only; phones re-choose after each round. The result is enforce_k_min's."""
    rng = np.random.default_rng(seed)
    users, k = 40, 12
    book = Codebook(rng.normal(size=(k, 1, 2)), k_min=4)
    losses = rng.normal(size=(users, k)) + rng.normal(size=k) * 0.5  # some prototypes popular
    want_choices, want_book = enforce_k_min(losses, book)
    assert not want_book.active.all()  # the case retires something
    current = book
    for _ in range(k):
        choices = np.array([choose_prototype(row, current) for row in losses])  # on each phone
        counts = np.bincount(choices, minlength=k)  # the aggregate the cloud sees
        nxt = retire_by_counts(current, counts)
        if nxt.version == current.version:
            break
        current = nxt
    assert current.active.tolist() == want_book.active.tolist()
    np.testing.assert_array_equal(choices, want_choices)


def test_retire_by_counts_refuses_bad_counts() -> None:
    book = Codebook(np.zeros((3, 1, 1)) + np.arange(3)[:, None, None], [True, True, False], k_min=2)
    with pytest.raises(ValueError, match="3 non-negative integers"):
        retire_by_counts(book, [1, 2])
    with pytest.raises(ValueError, match="retired prototypes"):
        retire_by_counts(book, [2, 2, 1])
    with pytest.raises(ValueError, match="at least that many"):
        retire_by_counts(book, [1, 0, 0])
    assert retire_by_counts(book, [2, 1, 0]).active.tolist() == [True, False, False]


def test_store_publishes_atomically_and_rereads_changes(tmp_path) -> None:
    store = CodebookStore(tmp_path)
    assert store.current() is None
    first = store.publish(init_codebook(4, 1, (1, 3), seed=0))
    assert store.current().version == first.version
    second = store.publish(retire_by_counts(first, [3, 0, 1, 1]))
    assert CodebookStore(tmp_path).current().version == store.current().version == second.version
    assert [p.name for p in tmp_path.iterdir()] == ["codebook.npz"]

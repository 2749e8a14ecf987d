"""Stage 3 in codebook mode through the job runner: uploads decode to prototypes, the prototypes train
with the model, and the runner publishes the trained codebook as a new version."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from veil.client_sdk.distributions import Codebook, PrototypeDistribution
from veil.cloud_service.codebooks import CodebookStore
from veil.cloud_service.jobs.personalized import PersonalizedTrainingConfig, train_personalized
from veil.cloud_service.jobs.runner import run_training_job
from veil.cloud_service.store import make_engine, migrate, session_factory
from veil.cloud_service.store.repository import UploadIn, add_upload
from veil.models.dp_training import DPConfig

HIDDEN = 64  # tiny-llama


def _cfg(**overrides) -> PersonalizedTrainingConfig:
    fields = {
        "task": "next_word",
        "epochs": 2,
        "batch_size": 16,
        "lr": 1e-2,
        "cold_start_fraction": 0.0,
        "eval_fraction": 0.2,
    }
    fields |= {"lora": None, "freeze_embeddings": True}  # fast: the big token-embedding matrix stays frozen
    return PersonalizedTrainingConfig(**{**fields, **overrides})


def _upload(text: str, label: str, embedding: np.ndarray | None) -> UploadIn:
    return UploadIn(
        idempotency_key=secrets.token_urlsafe(24), task="next_word", text=text, model="tiny-llama",
        label=label, embedding=embedding,
    )  # fmt: skip


def test_codebook_job_trains_and_publishes_the_prototypes(data_dir, tmp_path) -> None:
    rng = np.random.default_rng(0)
    book = Codebook(rng.normal(0, 1, (4, 1, HIDDEN)).astype(np.float32), [True, True, True, False], k_min=2)
    store = CodebookStore(tmp_path)
    published = store.publish(book)
    engine = make_engine(None, tmp_path)
    migrate(engine)
    sessions = session_factory(engine)
    groups = {0: "tea", 2: "coffee"}  # two groups of phones; prototype 1 is usable but unchosen
    with sessions() as s:
        for i in range(100):
            proto = (0, 2)[i % 2]
            sample = PrototypeDistribution(published, proto, noise_std=1e-3).sample(rng)
            text = (
                f"day {rng.integers(10**6)}: in the morning I always drink some"  # says nothing of the group
            )
            add_upload(s, _upload(text, groups[proto], sample))
        add_upload(s, _upload("no embedding", "tea", None))

    report = run_training_job(
        sessions, "tiny-llama", tmp_path / "ckpt", _cfg(codebook=True), tmp_path, show_progress=False
    )
    assert report.skipped == {"no_embedding": 1} and report.codebook_prototypes_used == 2
    assert report.codebook_previous_version == published.version != report.codebook_version
    new = store.current()
    assert new is not None and new.version == report.codebook_version
    assert new.active.tolist() == [True, True, True, False] and new.k_min == 2
    moved = np.abs(new.prototypes - published.prototypes).max(axis=(1, 2))
    assert moved[0] > 1e-4 and moved[2] > 1e-4  # the chosen prototypes trained
    assert moved[1] == 0 and moved[3] == 0  # no upload decoded to them: no gradient
    # the labels live only in the prototypes: the trained model reads them from the held-out uploads
    assert report.heldout_accuracy >= 0.9 and report.heldout_accuracy_population <= 0.8


def test_codebook_job_under_dp_trains_the_prototypes_and_reports_epsilon(data_dir, tmp_path) -> None:
    rng = np.random.default_rng(1)
    book = Codebook(rng.normal(0, 1, (3, 1, HIDDEN)).astype(np.float32), k_min=2)
    store = CodebookStore(tmp_path)
    published = store.publish(book)
    engine = make_engine(None, tmp_path)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as s:
        for i in range(60):
            proto = i % 2
            sample = PrototypeDistribution(published, proto, noise_std=1e-3).sample(rng)
            add_upload(s, _upload(f"note {i}: I drink", ("tea", "coffee")[proto], sample))
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    report = run_training_job(
        sessions,
        "tiny-llama",
        tmp_path / "ckpt",
        _cfg(codebook=True, dp=dp, epochs=1),
        tmp_path,
        show_progress=False,
    )
    assert report.epsilon is not None and report.epsilon > 0 and report.delta is not None
    assert report.codebook_previous_version == published.version != report.codebook_version
    new = store.current()
    assert new is not None and new.version == report.codebook_version
    assert np.abs(new.prototypes[:2] - published.prototypes[:2]).max() > 1e-4  # noised and trained


def test_codebook_mode_refuses_a_missing_codebook(data_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="none is published"):
        train_personalized([], "tiny-llama", tmp_path / "x", _cfg(codebook=True), data_dir)
    wrong = Codebook(np.zeros((2, 1, 8)))
    with pytest.raises(ValueError, match="embedding shape"):
        train_personalized([], "tiny-llama", tmp_path / "x", _cfg(codebook=True), data_dir, codebook=wrong)

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from veil.cloud_service.jobs.personalized import PersonalizedTrainingConfig, train_personalized
from veil.models.checkpoint import load_personalized
from veil.models.dp_training import DPConfig

HIDDEN = 64  # tiny-llama


@dataclass
class Upload:
    """What the store hands the job: no user, no time, one sampled embedding."""

    text: str
    label: str | None
    task: str
    embedding: np.ndarray | None


def _uploads(n: int = 200, seed: int = 0) -> list[Upload]:
    """Real sentences; each simulated user is one of two types, its label is its type's, and every upload
    carries a fresh sample from the user's distribution N(+-direction, 0.3^2): only the embedding
    tells the label."""
    from veil.simulation.data import PopulationConfig, make_population

    texts = [e.text for e in make_population(PopulationConfig(n_users=5, train_per_user=48, seed=seed)).train]
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(1, HIDDEN))
    out = []
    for i in range(n):
        user = i % 10
        sign = 1.0 if user % 2 else -1.0
        sample = (sign * direction + 0.3 * rng.normal(size=(1, HIDDEN))).astype(np.float32)
        out.append(Upload(texts[i % len(texts)], "like" if sign > 0 else "dislike", "classification", sample))
    return out


def _junk() -> list[Upload]:
    return [
        Upload("no label here", None, "classification", np.zeros((1, HIDDEN), np.float32)),
        Upload("made for another model", "like", "classification", np.zeros((1, 576), np.float32)),
        Upload("see you", "soon", "next_word", None),
        Upload("broken", "like", "classification", np.full((1, HIDDEN), np.nan, np.float32)),
    ]


def _cfg(**overrides) -> PersonalizedTrainingConfig:
    fields = {"epochs": 4, "batch_size": 16, "lr": 3e-3, "cold_start_fraction": 0.0, "eval_fraction": 0.2}
    fields.update(overrides)
    return PersonalizedTrainingConfig(**fields)


@pytest.mark.parametrize("dp", [None, DPConfig(noise_multiplier=1.0, max_grad_norm=1.0)], ids=["plain", "dp"])
def test_train_personalized_end_to_end(data_dir, tmp_path, dp: DPConfig | None) -> None:
    uploads = _uploads() + _junk()
    seen: list[tuple[int, int, float]] = []
    report = train_personalized(
        iter(uploads), "tiny-llama", tmp_path / "ckpt", _cfg(dp=dp), data_dir, lambda *a: seen.append(a)
    )
    assert report.n_uploads == 204 and report.n_skipped == 4
    assert report.skipped == {"no_label": 1, "embedding_shape": 1, "other_task": 1, "embedding_nonfinite": 1}
    assert (report.n_train, report.n_heldout) == (160, 40)
    assert report.steps == 40 and [s[:2] for s in seen] == [(i, 40) for i in range(1, 41)]
    # Personalisation works through the stored samples; without them the labels are a guess.
    assert report.heldout_accuracy is not None and report.heldout_accuracy >= 0.9
    assert report.heldout_accuracy_population is not None and report.heldout_accuracy_population <= 0.8
    if dp is None:
        assert report.epsilon is None and report.delta is None
    else:
        assert math.isfinite(report.epsilon) and report.delta == pytest.approx(160**-1.1)  # type: ignore[arg-type]
        assert report.accountant == "prv" and report.noise_multiplier == 1.0
    doc = report.to_json()
    json.dumps(doc, allow_nan=False)
    assert doc["checkpoint"] == str(tmp_path / "ckpt")

    model, _, meta = load_personalized(report.checkpoint)
    assert meta["classes"] == ["dislike", "like"] and meta["n_uploads"] == 204
    if dp is None:
        assert meta["privacy"] is None
    else:
        assert meta["privacy"]["epsilon"] == report.epsilon and meta["privacy"]["unit"].startswith(
            "one upload"
        )
    assert not any("lora_" in n for n, _ in model.named_parameters())  # merged


def test_training_continues_from_a_checkpoint(data_dir, tmp_path) -> None:
    first = train_personalized(_uploads(120), "tiny-llama", tmp_path / "a", _cfg(epochs=1), data_dir)
    # Uploads with a class the checkpoint does not know are skipped, not silently added.
    more = _uploads(120, seed=1) + [Upload("x", "neutral", "classification", None)]
    second = train_personalized(more, first.checkpoint, tmp_path / "b", _cfg(epochs=3), data_dir)
    assert second.skipped == {"unknown_class": 1}
    assert second.heldout_accuracy is not None and second.heldout_accuracy >= 0.9
    with pytest.raises(ValueError, match="already exists"):
        train_personalized(more, first.checkpoint, tmp_path / "b", _cfg(), data_dir)
    with pytest.raises(ValueError, match="trained for classification"):
        train_personalized(more, first.checkpoint, tmp_path / "c", _cfg(task="next_word"), data_dir)


def test_next_word_job_with_cold_start_uploads(data_dir, tmp_path) -> None:
    rng = np.random.default_rng(0)
    uploads = [
        Upload(
            f"Thanks, see you {i}", word, "next_word", None if i % 4 == 0 else rng.normal(size=(1, HIDDEN))
        )
        for i, word in enumerate(["soon", "later"] * 20)
    ]
    report = train_personalized(
        uploads, "tiny-llama", tmp_path / "nw", _cfg(task="next_word", epochs=1), data_dir
    )
    assert report.n_skipped == 0 and report.n_train == 32 and math.isfinite(report.final_loss)
    model, _, meta = load_personalized(report.checkpoint)
    assert model.head is None and model.config.placement == "prefix" and meta["classes"] is None


def test_no_usable_uploads_is_a_clear_error(data_dir, tmp_path) -> None:
    with pytest.raises(
        ValueError, match=r"no usable uploads .*4 uploads \(embedding_nonfinite: 1, embedding_shape"
    ):
        train_personalized(_junk(), "tiny-llama", tmp_path / "x", _cfg(), data_dir)
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_personalized(_uploads(20)[::2], "tiny-llama", tmp_path / "x", _cfg(), data_dir)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="eval_fraction"):
        PersonalizedTrainingConfig(eval_fraction=1.0)
    with pytest.raises(ValueError, match="task"):
        PersonalizedTrainingConfig(task="translation")
    with pytest.raises(ValueError, match="lr"):  # a TrainConfig field, inherited with its validation
        PersonalizedTrainingConfig(lr=0)

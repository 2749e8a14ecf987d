from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask
from veil.models.training import LoraSettings, TrainConfig, embedding_gradients, evaluate, fit


def _task(n: int = 64, seed: int = 0) -> TokenizedTask:
    rng = np.random.default_rng(seed)
    tokens = [list(rng.integers(3, 128, size=rng.integers(3, 8))) for _ in range(n)]
    return TokenizedTask("classification", tokens, rng.integers(0, 2, size=n), pad_id=2)


def _model(tiny_base) -> PersonalizedLM:
    return PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1, placement="suffix", num_labels=2))


def test_stage3_learns_to_read_the_embedding(tiny_base) -> None:
    # Labels are random with respect to the text; only the embedding tells them apart.
    data = _task(160)
    model = _model(tiny_base)
    direction = np.random.default_rng(1).normal(size=(1, 64))
    sign = np.where(data.targets == 1, 1.0, -1.0)
    rng = np.random.default_rng(2)

    def source(idx: np.ndarray) -> np.ndarray:
        return sign[idx, None, None] * direction[None] + 0.1 * rng.normal(size=(idx.size, 1, 64))

    train, held_out = np.arange(96), np.arange(96, 160)
    losses = fit(
        model, data, train, TrainConfig(epochs=10, lr=3e-3, batch_size=16, cold_start_fraction=0.0), source
    )
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    assert evaluate(model, data, held_out, source).mean() > 0.95
    assert evaluate(model, data, held_out).mean() < 0.75  # unseen texts: without the embedding, a guess


def test_embedding_gradients_match_finite_differences(tiny_base) -> None:
    data = _task(4)
    model = _model(tiny_base).double()
    e = np.random.default_rng(3).normal(size=(4, 1, 64))
    idx = np.arange(4)
    model.float()
    losses, grad = embedding_gradients(model, data, idx, e)
    assert grad.shape == (4, 1, 64) and losses.shape == (4,)
    h = 1e-2
    for coord in (0, 17, 63):
        plus, minus = e.copy(), e.copy()
        plus[:, 0, coord] += h
        minus[:, 0, coord] -= h
        lp, _ = embedding_gradients(model, data, idx, plus)
        lm, _ = embedding_gradients(model, data, idx, minus)
        np.testing.assert_allclose((lp - lm) / (2 * h), grad[:, 0, coord], rtol=0.05, atol=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_lora_trains_only_adapters_and_head(tiny_base) -> None:
    data = _task(32)
    model = _model(tiny_base)
    before = {n: p.detach().clone() for n, p in model.base.named_parameters()}
    fit(model, data, np.arange(32), TrainConfig(epochs=1, lr=1e-2, batch_size=8, lora=LoraSettings(r=4)))
    changed = {n for n, p in model.base.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert changed == set()  # base weights frozen
    assert any("lora_" in n for n, _ in model.base.named_parameters())


@pytest.mark.parametrize("private", [False, True])
def test_freeze_embeddings_trains_everything_but_the_token_matrix(tiny_base, private: bool) -> None:
    from veil.models.dp_training import DPConfig, fit_private

    data = TokenizedTask("next_word", _task(32).token_ids, np.random.default_rng(1).integers(3, 128, 32), 2)
    model = PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1, placement="prefix"))
    before = {n: p.detach().clone() for n, p in model.base.named_parameters()}
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=8, freeze_embeddings=True)
    if private:
        emb = np.random.default_rng(2).normal(size=(32, 1, model.hidden_size))
        fit_private(model, data, np.arange(32), cfg, DPConfig(noise_multiplier=1.0), embeddings=emb)
    else:
        fit(model, data, np.arange(32), cfg)
    changed = {n for n, p in model.base.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n in before if "embed_tokens" in n or "lm_head" in n}
    assert frozen and not (changed & frozen)
    assert any("self_attn" in n for n in changed) and any("mlp" in n for n in changed)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="cold_start_fraction"):
        TrainConfig(cold_start_fraction=1.0)
    with pytest.raises(ValueError, match="no training examples"):
        fit(None, _task(), [], TrainConfig())  # type: ignore[arg-type]

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from veil.models.dp_training import (
    DPSGD,
    DPConfig,
    DPTrainConfig,
    attach_private,
    compute_epsilon,
    default_delta,
    fit_private,
    plan_privacy,
    trainable_parameters,
)
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask, row_losses
from veil.models.training import LoraSettings, TrainConfig, evaluate, fit


def _task(n: int, task: str = "classification", seed: int = 0) -> TokenizedTask:
    rng = np.random.default_rng(seed)
    tokens = [list(rng.integers(3, 128, size=rng.integers(3, 8))) for _ in range(n)]
    high = 2 if task == "classification" else 128
    return TokenizedTask(task, tokens, rng.integers(0, high, size=n), pad_id=2)  # type: ignore[arg-type]


def _model(tiny_base, task: str = "classification") -> PersonalizedLM:
    if task == "classification":
        return PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1, placement="suffix", num_labels=2))
    return PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1, placement="prefix"))


def _embeddings(data: TokenizedTask, noise: float = 0.1, seed: int = 2) -> np.ndarray:
    """An embedding that gives the label away: +direction for class 1, -direction for class 0."""
    direction = np.random.default_rng(1).normal(size=(1, 64))
    sign = np.where(data.targets == 1, 1.0, -1.0)
    jitter = noise * np.random.default_rng(seed).normal(size=(len(data), 1, 64))
    return (sign[:, None, None] * direction[None] + jitter).astype(np.float32)


def _norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize(
    ("task", "lora"), [("classification", True), ("classification", False), ("next_word", True)]
)
def test_per_sample_gradients_and_clipping_match_a_naive_loop(tiny_base, task: str, lora: bool) -> None:
    # lora=False is full fine-tuning: LlamaRMSNorm goes through Opacus' functorch sampler, and the tied
    # embedding matrix collects per-sample gradients from the lookup and (next_word) the LM head.
    data = _task(6, task)
    model = _model(tiny_base, task)
    params = trainable_parameters(model, TrainConfig(lora=LoraSettings(r=4) if lora else None), task)
    if lora:
        for name, p in model.named_parameters():
            if "lora_B" in name:  # non-zero B, so that the A matrices get gradients too
                torch.nn.init.normal_(p, std=0.1)
    emb = np.random.default_rng(0).normal(size=(6, 1, 64)).astype(np.float32)
    has = np.array([True, False, True, True, False, True])  # personalised and population rows mixed
    model.train()
    naive = []  # reference: one autograd pass per example, on the same model
    for i in range(6):
        loss = row_losses(model, data.batch([i], emb[[i]], has[[i]]), task).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        naive.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)])
    norms = [_norm(row) for row in naive]
    clip = float(np.median(norms))
    assert sum(n > clip * 1.01 for n in norms) >= 2  # clipping bites for some rows, not for others

    hooks, optim = attach_private(
        model,
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=4,
    )
    try:
        row_losses(model, data.batch(np.arange(6), emb, has), task).sum().backward()
        for j, p in enumerate(params):
            want = torch.stack([row[j] for row in naive])
            torch.testing.assert_close(p.grad_sample, want, atol=1e-5, rtol=1e-3)  # type: ignore[attr-defined]
        optim.pre_step()  # clip each row to `clip`, add (zero) noise, divide by the expected batch size
        for j, p in enumerate(params):
            want = sum(row[j] * min(1.0, clip / n) for row, n in zip(naive, norms, strict=True)) / 4
            torch.testing.assert_close(p.grad, want, atol=1e-6, rtol=1e-3)
    finally:
        hooks.cleanup()  # type: ignore[attr-defined]


def test_epsilon_is_finite_and_falls_as_noise_grows(tiny_base) -> None:
    data = _task(48)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, lora=LoraSettings(r=2))
    results = []
    for sigma in (0.8, 2.0):
        model = _model(type(tiny_base)(tiny_base.config))
        r = fit_private(model, data, np.arange(48), cfg, DPConfig(noise_multiplier=sigma), _embeddings(data))
        assert r.steps == 6 and r.sample_rate == pytest.approx(1 / 6) and r.delta == default_delta(48)
        assert math.isfinite(r.epsilon) and r.epsilon > 0  # type: ignore[arg-type]
        # The accountant saw every step: its figure is the closed-form composition of 6 steps.
        assert r.epsilon == pytest.approx(compute_epsilon(sigma, 1 / 6, 6, r.delta, "prv"), rel=1e-6)
        results.append(r.epsilon)
    assert results[0] > results[1]
    # RDP is a looser bound than PRV for the same mechanism.
    assert compute_epsilon(0.8, 1 / 6, 6, default_delta(48), "rdp") > results[0]


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_target_epsilon_is_met(tiny_base, accountant: str) -> None:
    data = _task(64)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, lora=LoraSettings(r=2))
    dp = DPConfig(target_epsilon=3.0, delta=1e-4, accountant=accountant)
    r = fit_private(_model(tiny_base), data, np.arange(64), cfg, dp, _embeddings(data))
    assert r.steps == 8 and r.delta == 1e-4 and r.accountant == accountant
    assert 3.0 - 0.3 < r.epsilon <= 3.0 + 1e-3  # type: ignore[operator]  # met, and not by overshooting sigma


def test_dp_training_still_learns_an_easy_task(tiny_base) -> None:
    data = _task(160)
    emb = _embeddings(data)
    cfg = TrainConfig(epochs=6, batch_size=16, lr=3e-3, cold_start_fraction=0.0, lora=LoraSettings(r=4))
    model = _model(tiny_base)
    r = fit_private(model, data, np.arange(128), cfg, DPConfig(noise_multiplier=1.0, max_grad_norm=1.0), emb)
    assert np.nanmean(r.losses[-8:]) < 0.5 * np.nanmean(r.losses[:4])
    assert evaluate(model, data, np.arange(128, 160), lambda i: emb[i]).mean() > 0.9
    assert r.epsilon is not None and r.epsilon < 10
    # The hooks are gone: the model trains and infers as a plain module again, and DP can run again.
    assert not any(hasattr(p, "grad_sample") or p.grad is not None for p in model.parameters())
    again = TrainConfig(epochs=1, batch_size=8, lora=LoraSettings(r=4))
    r2 = fit_private(model, data, np.arange(16), again, DPConfig(noise_multiplier=1.0), emb)
    assert r2.steps == 2


def test_empty_poisson_batches_still_take_noisy_steps(tiny_base) -> None:
    data = _task(4)
    cfg = TrainConfig(epochs=12, batch_size=1, lr=1e-3, lora=LoraSettings(r=2))
    model = _model(tiny_base)
    head = model.head.weight.detach().clone()  # type: ignore[union-attr]
    r = fit_private(
        model, data, np.arange(4), cfg, DPConfig(noise_multiplier=1.0, accountant="rdp"), _embeddings(data)
    )
    assert r.steps == 48 and len(r.losses) == 48
    assert any(math.isnan(x) for x in r.losses)  # P(no empty batch in 48 draws of q=1/4) ~ 1e-8
    assert r.epsilon == pytest.approx(compute_epsilon(1.0, 0.25, 48, r.delta, "rdp"))  # type: ignore[arg-type]
    assert not torch.equal(head, model.head.weight)  # type: ignore[union-attr]


def test_without_dp_it_is_fit_on_the_stored_embeddings(tiny_base) -> None:
    data = _task(32)
    emb = _embeddings(data)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3)
    a, b = _model(tiny_base), _model(type(tiny_base)(tiny_base.config))
    b.load_state_dict(a.state_dict())
    r = fit_private(a, data, np.arange(32), cfg, None, emb)
    reference = fit(b, data, np.arange(32), cfg, lambda idx: emb[idx])
    assert r.losses == reference and r.epsilon is None and r.steps == 8
    # Uploads without an embedding train as population rows (a path fit cannot express).
    has = np.arange(32) % 3 != 0
    r = fit_private(a, data, np.arange(32), cfg, None, emb, has)
    assert r.steps == 8 and all(math.isfinite(x) for x in r.losses)


def test_plan_follows_opacus_sampling() -> None:
    plan = plan_privacy(DPConfig(noise_multiplier=1.3), 100, TrainConfig(epochs=3, batch_size=32))
    assert (plan.steps_per_epoch, plan.steps) == (4, 12) and plan.sample_rate == 0.25
    assert (
        plan.expected_batch_size == 25 and plan.delta == default_delta(100) and plan.noise_multiplier == 1.3
    )


def test_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        DPConfig()
    with pytest.raises(ValueError, match="exactly one"):
        DPConfig(noise_multiplier=1.0, target_epsilon=1.0)
    with pytest.raises(ValueError, match="accountant"):
        DPConfig(noise_multiplier=1.0, accountant="gdp")
    with pytest.raises(ValueError, match="delta"):
        DPConfig(noise_multiplier=1.0, delta=1.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        DPConfig(noise_multiplier=0.0)
    with pytest.raises(ValueError, match="no training examples"):
        fit_private(None, _task(4), [], TrainConfig(), None)  # type: ignore[arg-type]
    assert default_delta(1000) < 1 / 1000


def test_dp_sgd_is_an_update_of_the_one_training_loop(tiny_base) -> None:
    data = _task(32)
    emb = _embeddings(data)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, lora=LoraSettings(r=2))
    update = DPSGD(DPConfig(noise_multiplier=1.0, accountant="rdp"))
    with pytest.raises(ValueError, match="finished run"):
        update.result([])
    model = _model(tiny_base)
    losses = fit(model, data, np.arange(32), cfg, lambda idx: emb[idx], update=update)
    r = update.result(losses)
    assert r.steps == len(losses) == 8 and r.sample_rate == 0.25
    assert r.epsilon == pytest.approx(compute_epsilon(1.0, 0.25, 8, r.delta, "rdp"))  # type: ignore[arg-type]
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # detached after the run


def test_without_dp_a_seed_reproduces_the_run_with_cold_start_uploads(tiny_base) -> None:
    data = _task(32)
    emb = _embeddings(data)
    has = np.arange(32) % 3 != 0
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3)
    start = _model(tiny_base).state_dict()
    runs = []
    for _ in range(2):
        model = _model(type(tiny_base)(tiny_base.config))
        model.load_state_dict(start)
        runs.append(fit_private(model, data, np.arange(32), cfg, None, emb, has).losses)
    assert runs[0] == runs[1]


def test_job_configs_inherit_the_shared_training_fields() -> None:
    from dataclasses import fields

    from veil.models.dp_codebook import CodebookStage3Config

    shared = {f.name for f in fields(DPTrainConfig)}
    assert {f.name for f in fields(TrainConfig)} < shared
    assert shared < {f.name for f in fields(CodebookStage3Config)}
    with pytest.raises(ValueError, match="lr"):
        CodebookStage3Config(lr=0)

"""DP-SGD stage 3 on codebook uploads: per-sample clipping covers the prototype rows; the accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from veil.models.dp_codebook import (
    CodebookStage3Config,
    PrototypeTable,
    fit_codebook_stage3,
    group_privacy,
    user_level_epsilon,
)
from veil.models.dp_training import (
    DPConfig,
    attach_private,
    compute_epsilon,
    default_delta,
    trainable_parameters,
)
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask, row_losses
from veil.models.training import LoraSettings
from veil.privacy_analysis.accounting import DEFAULT_ORDERS, gaussian_rdp, rdp_to_epsilon

K = 4


def _task(n: int, seed: int = 0) -> TokenizedTask:
    rng = np.random.default_rng(seed)
    tokens = [list(rng.integers(3, 128, size=rng.integers(3, 8))) for _ in range(n)]
    return TokenizedTask("next_word", tokens, rng.integers(0, 128, size=n), pad_id=2)


def _model(tiny_base) -> PersonalizedLM:
    return PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1, placement="prefix"))


def _prototypes(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(K, 1, 64))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_each_examples_prototype_gradient_is_its_own_row_and_is_clipped_with_the_model(tiny_base) -> None:
    data = _task(6)
    model = _model(tiny_base)
    params = trainable_parameters(model, CodebookStage3Config(lora=LoraSettings(r=2)), "next_word")
    table = PrototypeTable(_prototypes())
    params = params + [table.table.weight]
    index = torch.tensor([0, 2, 2, 1, 0, 3])
    model.train()
    naive = []  # one autograd pass per example
    for i in range(6):
        loss = row_losses(model, data.batch([i], table(index[[i]])), "next_word").sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        naive.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)])
    for i, row in enumerate(naive):  # an example's prototype gradient lives in its own row only
        others = [j for j in range(K) if j != index[i]]
        assert float(row[-1][others].abs().max()) == 0.0 and float(row[-1][index[i]].norm()) > 0
    norms = [math.sqrt(sum(float(g.pow(2).sum()) for g in row)) for row in naive]
    proto_norms = [float(row[-1].norm()) for row in naive]
    clip = 0.5 * float(np.median(proto_norms))  # below most examples' prototype gradient alone
    assert sum(n > clip * 1.01 for n in proto_norms) >= 4

    hooks, optim = attach_private(
        torch.nn.ModuleList([model, table]),
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=1,
    )
    try:
        row_losses(model, data.batch(np.arange(6), table(index)), "next_word").sum().backward()
        want = torch.stack([row[-1] for row in naive])  # (6, K, 64)
        torch.testing.assert_close(table.table.weight.grad_sample, want, atol=1e-5, rtol=1e-3)  # type: ignore[attr-defined]
        optim.pre_step()  # clip each example to `clip` (over all parameters together), sum, zero noise
        summed = sum(row[-1] * min(1.0, clip / n) for row, n in zip(naive, norms, strict=True))
        torch.testing.assert_close(table.table.weight.grad, summed, atol=1e-6, rtol=1e-3)
        # One example alone: its whole update, prototype row included, is at most the clip norm,
        # although its prototype gradient alone is larger.
        i = int(np.argmax(proto_norms))
        optim.zero_grad(set_to_none=True)
        row_losses(model, data.batch([i], table(index[[i]])), "next_word").sum().backward()
        optim.pre_step()
        total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))  # type: ignore[union-attr]
        assert total == pytest.approx(clip, rel=1e-4) and proto_norms[i] > 1.5 * clip
        assert float(table.table.weight.grad[index[i]].norm()) <= clip * (1 + 1e-5)
    finally:
        hooks.cleanup()  # type: ignore[attr-defined]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_dp_stage3_trains_prototypes_and_reports_the_accountants_epsilon(tiny_base) -> None:
    data = _task(64)
    index = np.arange(64) % 3  # prototype 3 is used by no upload
    protos = _prototypes()
    dp = DPConfig(target_epsilon=4.0, accountant="rdp")
    cfg = CodebookStage3Config(epochs=2, batch_size=16, lr=1e-2, lora=LoraSettings(r=2), dp=dp)
    r = fit_codebook_stage3(_model(tiny_base), data, np.arange(64), index, protos, cfg)
    t = r.train
    assert t.steps == 8 and t.sample_rate == 0.25 and t.delta == default_delta(64) and len(t.losses) == 8
    sigma = t.noise_multiplier
    assert t.epsilon == pytest.approx(compute_epsilon(sigma, 0.25, 8, t.delta, "rdp"), rel=1e-9)  # type: ignore[arg-type]
    assert 4.0 - 0.4 < t.epsilon <= 4.0 + 1e-3  # type: ignore[operator]
    # Noise reaches every row, the unused one too.
    assert r.prototypes.shape == (K, 1, 64) and not np.allclose(r.prototypes[3], protos[3])
    report = r.privacy(uploads_per_user=4)
    assert report is not None and report["unit_of_privacy"].startswith("one upload")
    assert report["sampling"] == "Poisson" and report["max_grad_norm"] == 1.0
    assert report["user_level"]["epsilon"] > report["epsilon"]


def test_without_dp_an_unused_prototype_stays_put_and_frozen_ones_do_not_move(tiny_base) -> None:
    data = _task(32)
    index = np.arange(32) % 3
    protos = _prototypes()
    cfg = CodebookStage3Config(epochs=1, batch_size=8, lr=1e-2, lora=LoraSettings(r=2))
    r = fit_codebook_stage3(_model(tiny_base), data, np.arange(32), index, protos, cfg)
    assert r.privacy() is None and r.train.epsilon is None and r.train.steps == 4
    np.testing.assert_allclose(r.prototypes[3], protos[3], atol=1e-6)
    assert not np.allclose(r.prototypes[:3], protos[:3])
    frozen = CodebookStage3Config(
        epochs=1, batch_size=8, lr=1e-2, lora=LoraSettings(r=2), train_prototypes=False
    )
    r = fit_codebook_stage3(
        _model(type(tiny_base)(tiny_base.config)), data, np.arange(32), index, protos, frozen
    )
    np.testing.assert_allclose(r.prototypes, protos, atol=1e-6)


def test_user_level_epsilon_is_the_record_level_one_for_one_upload_and_a_gaussian_at_full_sampling() -> None:
    from veil.privacy_analysis.accounting import dp_sgd_epsilon

    assert user_level_epsilon(1.0, 0.01, 100, 1e-5, 1) == pytest.approx(
        dp_sgd_epsilon(1.0, 0.01, 100, 1e-5, "rdp")
    )
    # q = 1: every upload of the user is in every step, a Gaussian of sensitivity m (closed form).
    orders = np.array(DEFAULT_ORDERS)
    closed, _ = rdp_to_epsilon(orders, gaussian_rdp(orders, 4.0, steps=10, sensitivity=3), 1e-5)
    assert user_level_epsilon(4.0, 1.0, 10, 1e-5, 3) == pytest.approx(closed, rel=1e-6)
    eps = [user_level_epsilon(1.0, 0.01, 100, 1e-5, m) for m in (1, 2, 4)]
    assert eps[0] < eps[1] < eps[2]


def test_group_privacy_chains_neighbours_and_validates() -> None:
    eps, delta = group_privacy(0.5, 1e-6, 3)
    assert eps == 1.5 and delta == pytest.approx(1e-6 * (1 + math.exp(0.5) + math.exp(1.0)))
    with pytest.raises(ValueError, match="k must be"):
        group_privacy(1.0, 1e-6, 0)


def test_inputs_are_checked(tiny_base) -> None:
    data = _task(8)
    cfg = CodebookStage3Config(epochs=1, batch_size=4, lora=LoraSettings(r=2))
    model = _model(tiny_base)
    with pytest.raises(ValueError, match="prototypes must have shape"):
        fit_codebook_stage3(model, data, np.arange(8), np.zeros(8, dtype=int), np.zeros((K, 2, 64)), cfg)
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        fit_codebook_stage3(model, data, np.arange(8), np.full(8, 4), _prototypes(), cfg)
    with pytest.raises(ValueError, match="integers of shape"):
        fit_codebook_stage3(model, data, np.arange(8), np.zeros(7, dtype=int), _prototypes(), cfg)
    with pytest.raises(ValueError, match="no training examples"):
        fit_codebook_stage3(model, data, [], np.zeros(8, dtype=int), _prototypes(), cfg)

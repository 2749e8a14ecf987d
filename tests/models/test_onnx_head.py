"""Parity of the private mixing head's ONNX graph (``prototype_head``) with its numpy math, and the
same head fitted through either: the phone's ONNX path learns what the numpy reference learns."""

from __future__ import annotations

import numpy as np
import pytest

from veil.client_sdk.math_backends import OnnxBackend
from veil.client_sdk.private_head import HeadAnswers, PrivateHead, PrivateHeadConfig, head_math
from veil.models.onnx.export import export_onnx


@pytest.fixture(scope="module", params=[17, 18])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> OnnxBackend:
    out = tmp_path_factory.mktemp(f"onnx-head-{request.param}")
    export_onnx(out, ["prototype"], opset=request.param)
    return OnnxBackend(out, "prototype")


def answers(n: int, m: int, k: int, vocab: int, seed: int) -> HeadAnswers:
    rng = np.random.default_rng(seed)
    tokens = np.stack([[rng.choice(vocab, size=k, replace=False) for _ in range(m)] for _ in range(n)])
    probs = rng.dirichlet(np.ones(k + 3), size=(n, m))[:, :, :k]
    return HeadAnswers(tokens, np.log(probs))


@pytest.mark.parametrize(("m", "seed"), [(1, 0), (3, 1), (5, 2)])
def test_graph_matches_numpy_scores_loss_and_gradients(backend, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = answers(12, m, 4, 9, seed)  # a small vocabulary, so candidates repeat across prototypes
    cand, first, logp = a.candidates()
    bias = np.where(first, rng.normal(size=first.shape), 0.0)
    hit = first & (rng.random(first.shape) < 0.15)
    hit &= np.cumsum(hit, axis=1) == 1  # at most one target per row; some rows have none
    logits = rng.normal(size=m)
    want = head_math(logp, first, bias, hit, logits)
    got = backend.head_math()(logp, first, bias, hit, logits)
    np.testing.assert_allclose(got[0][first], want[0][first], rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(got[0][~first]))
    assert got[1] == pytest.approx(want[1], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-4, atol=1e-6)


def test_graph_with_no_target_gives_zero_loss_and_gradients(backend) -> None:
    a = answers(4, 2, 3, 20, 5)
    _, first, logp = a.candidates()
    score, loss, g_logits, g_score = backend.head_math()(
        logp, first, np.zeros(first.shape), np.zeros(first.shape, bool), np.zeros(2)
    )
    assert loss == 0.0 and not g_logits.any() and not g_score.any()
    assert np.isfinite(score[first]).all()


def test_a_head_fitted_through_the_graph_predicts_as_the_numpy_head(backend) -> None:
    rng = np.random.default_rng(7)
    a = answers(30, 3, 5, 12, 7)
    targets = a.tokens[np.arange(30), rng.integers(0, 3, 30), rng.integers(0, 5, 30)]
    cfg = PrivateHeadConfig(steps=60, lr=0.1, bias_l2=0.05)
    ref, onnx_head = PrivateHead(3), PrivateHead(3, math=backend.head_math())
    ref_losses, onnx_losses = ref.fit(a, targets, cfg), onnx_head.fit(a, targets, cfg)
    np.testing.assert_allclose(onnx_losses, ref_losses, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(onnx_head.weights, ref.weights, atol=1e-3)
    assert np.array_equal(onnx_head.predict(a), ref.predict(a))
    assert onnx_losses[-1] < onnx_losses[0]


def test_only_the_prototype_graphs_carry_a_head(tmp_path) -> None:
    export_onnx(tmp_path, ["gaussian"])
    with pytest.raises(ValueError, match="prototype"):
        OnnxBackend(tmp_path, "gaussian").head_math()

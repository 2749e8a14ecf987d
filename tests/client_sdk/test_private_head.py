"""Private mixing on the phone: candidates, exact gradients, and that the head learns a deviation."""

from __future__ import annotations

import numpy as np
import pytest

from veil.client_sdk.private_head import HeadAnswers, PrivateHead, PrivateHeadConfig


def answers(n: int, m: int, k: int, vocab: int, seed: int = 0) -> HeadAnswers:
    rng = np.random.default_rng(seed)
    tokens = np.stack([[rng.choice(vocab, size=k, replace=False) for _ in range(m)] for _ in range(n)])
    probs = rng.dirichlet(np.ones(k + 3), size=(n, m))[:, :, :k]
    return HeadAnswers(tokens, np.log(probs))


def test_candidates_take_each_token_once_and_floor_missing_ones() -> None:
    a = HeadAnswers(np.array([[[1, 2], [2, 3]]]), np.log(np.array([[[0.5, 0.2], [0.6, 0.1]]])))
    cand, first, logp = a.candidates()
    assert cand.tolist() == [[1, 2, 2, 3]]
    assert first.tolist() == [[True, True, False, True]]
    # token 1 is not among prototype 1's answers: floored at its smallest returned probability (0.1)
    assert np.exp(logp[0, 0]) == pytest.approx([0.5, 0.1])
    assert np.exp(logp[0, 1]) == pytest.approx([0.2, 0.6])
    assert np.exp(logp[0, 3]) == pytest.approx([0.2, 0.1])


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(3)
    a = answers(9, 3, 4, 10)
    targets = a.tokens[np.arange(9), rng.integers(0, 3, 9), rng.integers(0, 4, 9)]
    head = PrivateHead(3, rng.normal(size=3))
    head.bias = {t: float(rng.normal()) for t in range(10)}
    loss, g_logits, g_bias = head.loss_and_grads(a, targets, bias_l2=0.2)
    eps = 1e-6
    for i in range(3):
        head.logits[i] += eps
        up = head.loss_and_grads(a, targets, bias_l2=0.2)[0]
        head.logits[i] -= eps
        assert g_logits[i] == pytest.approx((up - loss) / eps, abs=1e-4)
    for t in range(10):
        head.bias[t] += eps
        up = head.loss_and_grads(a, targets, bias_l2=0.2)[0]
        head.bias[t] -= eps
        assert g_bias.get(t, 0.0) == pytest.approx((up - loss) / eps, abs=1e-4)


def test_a_zero_head_predicts_the_most_likely_token_of_one_prototype() -> None:
    a = answers(20, 1, 5, 50)
    best = a.tokens[np.arange(20), 0, a.logprobs[:, 0].argmax(axis=1)]
    assert np.array_equal(PrivateHead(1).predict(a), best)


def test_the_head_learns_an_individual_deviation_from_the_group() -> None:
    """The group's answer prefers token 7 after every prompt; this user always types token 8."""
    n = 30
    tokens = np.tile(np.array([7, 8, 9, 10]), (n, 1, 1))  # (n, 1, 4)
    logprobs = np.log(np.tile(np.array([0.6, 0.2, 0.1, 0.05]), (n, 1, 1)))
    a = HeadAnswers(tokens, logprobs)
    head = PrivateHead(1)
    assert np.all(head.predict(a) == 7)
    losses = head.fit(a, np.full(n, 8), PrivateHeadConfig(steps=100, lr=0.1, bias_l2=0.01))
    assert losses[-1] < losses[0]
    assert np.all(head.predict(a) == 8)
    assert head.bias[8] > 0 > head.bias[7]


def test_mixture_weights_move_to_the_prototype_that_explains_the_user() -> None:
    n = 40
    tokens = np.tile(np.array([[1, 2], [2, 1]]), (n, 1, 1))  # proto 0 prefers 1, proto 1 prefers 2
    logprobs = np.log(np.tile(np.array([[0.8, 0.1], [0.8, 0.1]]), (n, 1, 1)))
    head = PrivateHead(2)
    head.fit(HeadAnswers(tokens, logprobs), np.full(n, 2), PrivateHeadConfig(steps=200, bias_l2=10.0))
    assert head.weights[1] > 0.9  # the bias is pinned by its penalty: the weights do the work


@pytest.mark.parametrize(
    ("tokens", "logprobs", "match"),
    [
        (np.zeros((2, 3)), np.zeros((2, 3)), "shape"),
        (np.zeros((2, 1, 3)), np.zeros((2, 1, 4)), "shape"),
        (np.zeros((2, 1, 3)), np.ones((2, 1, 3)), "<= 0"),
        (np.zeros((2, 1, 3)), np.full((2, 1, 3), np.nan), "finite"),
    ],
)
def test_bad_answers_are_refused(tokens: np.ndarray, logprobs: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HeadAnswers(tokens, logprobs)

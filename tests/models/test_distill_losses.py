"""Distillation losses against naive formulas, TRL's generalized JSD and finite differences."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from veil.models.distillation.losses import (
    LOSS_NAMES,
    LOSSES,
    AdaptiveKL,
    DistillLoss,
    get_loss,
)

# per name, the hyperparameters gradcheck uses (AKL's weights must carry gradient to match differences)
GRAD_PARAMS: dict[str, dict[str, float | bool]] = {"adaptive_kl": {"detach_weights": False}}


def _logits(*shape: int, seed: int, scale: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=gen, dtype=dtype)


def _naive(name: str, p: torch.Tensor, q: torch.Tensor, loss: DistillLoss) -> torch.Tensor:
    """Per-position divergence written straight from the papers' formulas, p teacher and q student."""

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (a / b).log()).sum(-1)

    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "skewed_forward_kl":
        return kl(p, loss.lam * p + (1 - loss.lam) * q)
    if name == "skewed_reverse_kl":
        return kl(q, loss.lam * q + (1 - loss.lam) * p)
    if name in ("js", "generalized_jsd"):
        beta = 0.5 if name == "js" else loss.beta
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "adaptive_kl":
        out = torch.empty(p.shape[:-1], dtype=p.dtype)
        for idx in itertools.product(*map(range, p.shape[:-1])):
            pi, qi = p[idx], q[idx]
            g_head = g_tail = 0.0
            cumulative = 0.0
            for j in pi.argsort(descending=True).tolist():
                gap = abs(float(pi[j] - qi[j]))
                if cumulative < loss.mu:
                    g_head += gap
                else:
                    g_tail += gap
                cumulative += float(pi[j])
            total = g_head + g_tail
            out[idx] = (g_head * kl(pi, qi) + g_tail * kl(qi, pi)) / total
        return out
    raise AssertionError(name)


def test_every_name_is_registered_and_built_by_get_loss():
    assert tuple(LOSSES) == LOSS_NAMES
    assert len(LOSS_NAMES) == 8
    for name in LOSS_NAMES:
        loss = get_loss(name, temperature=0.5)
        assert loss.name == name and loss.temperature == 0.5


def test_get_loss_refuses_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="known: forward_kl, reverse_kl"):
        get_loss("kl")
    with pytest.raises(ValueError, match="unknown parameters \\['beta'\\]"):
        get_loss("forward_kl", beta=0.5)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("forward_kl", {"temperature": 0.0}),
        ("forward_kl", {"temperature": float("inf")}),
        ("skewed_forward_kl", {"lam": 1.0}),
        ("skewed_reverse_kl", {"lam": 0.0}),
        ("generalized_jsd", {"beta": 1.5}),
        ("adaptive_kl", {"mu": 0.0}),
    ],
)
def test_out_of_range_hyperparameters_raise(name, params):
    with pytest.raises(ValueError, match="must be"):
        get_loss(name, **params)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_matches_the_naive_formula(name):
    student, teacher = _logits(2, 3, 11, seed=1), _logits(2, 3, 11, seed=2)
    loss = get_loss(name, temperature=0.8)
    p = torch.softmax(teacher / 0.8, -1)
    q = torch.softmax(student / 0.8, -1)
    torch.testing.assert_close(loss.per_token(student, teacher), _naive(name, p, q, loss))
    torch.testing.assert_close(loss(student, teacher), _naive(name, p, q, loss).mean())


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_non_negative_and_zero_when_the_distributions_match(name):
    loss = get_loss(name)
    for seed in range(5):
        student = _logits(3, 4, 17, seed=seed, scale=4.0, dtype=torch.float32)
        teacher = _logits(3, 4, 17, seed=100 + seed, scale=4.0, dtype=torch.float32)
        assert loss.per_token(student, teacher).min() >= 0
        assert loss(student, teacher) > 1e-3
        # same distribution, shifted logits: softmax is shift-invariant
        same = loss.per_token(student, teacher=student + 3.0)
        torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-6, rtol=0)


def test_forward_and_reverse_kl_differ_on_asymmetric_inputs():
    # teacher spread over two modes, student on one: forward KL punishes the missed mode hard
    teacher = torch.log(torch.tensor([[[0.49, 0.49, 0.02]]]))
    student = torch.log(torch.tensor([[[0.96, 0.02, 0.02]]]))
    values = {name: float(get_loss(name)(student, teacher)) for name in LOSS_NAMES}
    assert values["forward_kl"] > values["reverse_kl"] + 0.3
    assert values["skewed_forward_kl"] != pytest.approx(values["skewed_reverse_kl"])
    assert values["skewed_forward_kl"] < values["forward_kl"]
    assert values["skewed_reverse_kl"] < values["reverse_kl"]


def test_js_is_generalized_jsd_at_one_half_and_below_log_two():
    student, teacher = _logits(2, 5, 9, seed=3, scale=6.0), _logits(2, 5, 9, seed=4, scale=6.0)
    js = get_loss("js").per_token(student, teacher)
    torch.testing.assert_close(js, get_loss("generalized_jsd", beta=0.5).per_token(student, teacher))
    assert js.max() <= math.log(2)


def test_generalized_jsd_ends_are_forward_and_reverse_kl():
    student, teacher = _logits(2, 3, 7, seed=5), _logits(2, 3, 7, seed=6)
    gjsd0 = get_loss("generalized_jsd", beta=0.0)(student, teacher)
    gjsd1 = get_loss("generalized_jsd", beta=1.0)(student, teacher)
    torch.testing.assert_close(gjsd0, get_loss("forward_kl")(student, teacher))
    torch.testing.assert_close(gjsd1, get_loss("reverse_kl")(student, teacher))


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_matches_trl(beta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns that its API is unstable
        gkd = pytest.importorskip("trl.experimental.gkd")
    student, teacher = _logits(2, 6, 13, seed=7), _logits(2, 6, 13, seed=8)
    labels = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(9))
    labels[0, :2] = -100  # prompt
    labels[1, 4:] = -100  # padding
    expected = gkd.GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, temperature=0.9
    )
    ours = get_loss("generalized_jsd", beta=beta, temperature=0.9)(student, teacher, labels != -100)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradients_match_finite_differences(name):
    loss = get_loss(name, temperature=0.7, **GRAD_PARAMS.get(name, {}))
    student = _logits(2, 2, 6, seed=10).requires_grad_(True)
    teacher = _logits(2, 2, 6, seed=11)
    mask = torch.tensor([[True, False], [True, True]])
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, mask), (student,))


def test_adaptive_kl_detached_weights_give_the_weighted_kl_gradients():
    student = _logits(1, 3, 8, seed=12).requires_grad_(True)
    teacher = _logits(1, 3, 8, seed=13)
    p, q = torch.softmax(teacher, -1), torch.softmax(student, -1).detach()
    akl = AdaptiveKL()
    # weights from the values (no gradient), checked against the naive head/tail split
    w_head = (akl.per_token(student, teacher) - _naive("reverse_kl", p, q, akl)) / (
        _naive("forward_kl", p, q, akl) - _naive("reverse_kl", p, q, akl)
    )
    fkl = get_loss("forward_kl").per_token(student, teacher)
    rkl = get_loss("reverse_kl").per_token(student, teacher)
    expected = torch.autograd.grad((w_head.detach() * fkl + (1 - w_head.detach()) * rkl).mean(), student)
    (got,) = torch.autograd.grad(akl(student, teacher), student)
    torch.testing.assert_close(got, expected[0])


def test_mask_excludes_positions_from_the_value_and_the_gradient():
    loss = get_loss("forward_kl")
    student = _logits(2, 4, 5, seed=14).requires_grad_(True)
    teacher = _logits(2, 4, 5, seed=15)
    mask = torch.tensor([[False, True, True, True], [False, False, True, False]])
    value = loss(student, teacher, mask)
    torch.testing.assert_close(value, loss.per_token(student, teacher)[mask].mean())
    (grad,) = torch.autograd.grad(value, student)
    assert grad[~mask].abs().max() == 0 and grad[mask].abs().min(-1).values.min() > 0
    # an attention-style 0/1 mask means the same
    torch.testing.assert_close(loss(student, teacher, mask.long()), value)


def test_an_empty_mask_gives_zero_not_nan():
    student = _logits(1, 3, 5, seed=16).requires_grad_(True)
    value = get_loss("js")(student, _logits(1, 3, 5, seed=17), torch.zeros(1, 3, dtype=torch.bool))
    value.backward()
    assert value == 0 and torch.isfinite(student.grad).all()


def test_temperature_divides_both_logits():
    student, teacher = _logits(2, 3, 7, seed=18), _logits(2, 3, 7, seed=19)
    for name in LOSS_NAMES:
        hot = get_loss(name, temperature=2.0)(student, teacher)
        torch.testing.assert_close(hot, get_loss(name)(student / 2.0, teacher / 2.0))


def test_half_precision_logits_are_computed_in_float32():
    student, teacher = _logits(1, 2, 9, seed=20), _logits(1, 2, 9, seed=21)
    value = get_loss("reverse_kl")(student.bfloat16(), teacher.bfloat16())
    assert value.dtype == torch.float32
    reference = get_loss("reverse_kl")(student.bfloat16().double(), teacher.bfloat16().double())
    torch.testing.assert_close(value.double(), reference, atol=1e-6, rtol=1e-5)


def test_shape_mismatches_raise():
    loss = get_loss("forward_kl")
    with pytest.raises(ValueError, match="student's shape"):
        loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6))
    with pytest.raises(ValueError, match="must be \\(B, T, V\\)"):
        loss(torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="mask must be"):
        loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), torch.ones(2, 1, dtype=torch.bool))

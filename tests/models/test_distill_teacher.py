"""TopKTeacher: construction, storage, and the top-k losses against the full ones."""

from __future__ import annotations

import math

import pytest
import torch

from veil.models.distillation.losses import LOSS_NAMES, get_loss
from veil.models.distillation.teacher import TopKTeacher

# the losses that are f-divergences: merging ids into a tail bucket can only lower them
F_DIVERGENCES = tuple(name for name in LOSS_NAMES if name != "adaptive_kl")


def _logits(*shape: int, seed: int, scale: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=gen, dtype=dtype)


def _peaked_teacher(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Logits whose top 8 ids hold most of the mass, like a trained LM's."""
    logits = _logits(batch, length, vocab, seed=seed, scale=1.0)
    gen = torch.Generator().manual_seed(seed + 1)
    top = torch.stack([torch.randperm(vocab, generator=gen)[:8] for _ in range(batch * length)])
    bonus = torch.zeros(batch * length, vocab, dtype=logits.dtype).scatter(1, top, 6.0)
    return logits + bonus.view(batch, length, vocab)


def test_from_logits_keeps_the_top_k_and_the_rest_of_the_mass():
    logits = _logits(2, 3, 20, seed=0)
    teacher = TopKTeacher.from_logits(logits, k=5, temperature=0.5)
    logp = torch.log_softmax(logits / 0.5, -1)
    top = logp.topk(5, -1)
    assert teacher.k == 5 and teacher.vocab_size == 20 and teacher.temperature == 0.5
    torch.testing.assert_close(teacher.ids, top.indices)
    torch.testing.assert_close(teacher.logprobs, top.values)
    torch.testing.assert_close(teacher.tail_logmass, torch.log1p(-top.values.exp().sum(-1)))
    # the k ids and the tail hold the whole distribution
    total = torch.logsumexp(torch.cat([teacher.logprobs, teacher.tail_logmass[..., None]], -1), -1)
    torch.testing.assert_close(total, torch.zeros(2, 3, dtype=torch.float64))


def test_the_tail_is_empty_when_k_is_the_vocabulary():
    teacher = TopKTeacher.from_logits(_logits(1, 2, 6, seed=1), k=6)
    assert torch.isneginf(teacher.tail_logmass).all()


def test_bytes_per_token_do_not_depend_on_the_vocabulary():
    for vocab in (64, 4096):
        teacher = TopKTeacher.from_logits(_logits(2, 3, vocab, seed=2, dtype=torch.float32), k=8)
        assert teacher.nbytes == 2 * 3 * (8 * (8 + 4) + 4)
        assert teacher.logprobs.dtype == torch.float32


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load_round_trip(tmp_path, suffix):
    teacher = TopKTeacher.from_logits(_logits(2, 4, 30, seed=3, dtype=torch.float32), k=7, temperature=0.9)
    path = tmp_path / f"teacher{suffix}"
    teacher.save(path)
    loaded = TopKTeacher.load(path)
    assert (loaded.vocab_size, loaded.temperature, loaded.k) == (30, 0.9, 7)
    torch.testing.assert_close(loaded.ids, teacher.ids, rtol=0, atol=0)
    torch.testing.assert_close(loaded.logprobs, teacher.logprobs, rtol=0, atol=0)
    torch.testing.assert_close(loaded.tail_logmass, teacher.tail_logmass, rtol=0, atol=0)


def test_bfloat16_logprobs_are_saved_to_npz_as_float32(tmp_path):
    teacher = TopKTeacher.from_logits(_logits(1, 2, 10, seed=4), k=3)
    teacher = TopKTeacher(teacher.ids, teacher.logprobs.bfloat16(), teacher.tail_logmass, 10)
    teacher.save(tmp_path / "t.npz")
    loaded = TopKTeacher.load(tmp_path / "t.npz")
    assert loaded.logprobs.dtype == torch.float32
    torch.testing.assert_close(loaded.logprobs, teacher.logprobs.float(), rtol=0, atol=0)


def test_unknown_suffix_and_bad_fields_raise(tmp_path):
    logits = _logits(1, 2, 10, seed=5)
    teacher = TopKTeacher.from_logits(logits, k=3)
    with pytest.raises(ValueError, match="must end in one of"):
        teacher.save(tmp_path / "t.pt")
    with pytest.raises(ValueError, match="k must be in"):
        TopKTeacher.from_logits(logits, k=11)
    with pytest.raises(ValueError, match="temperature must be"):
        TopKTeacher.from_logits(logits, k=3, temperature=0.0)
    with pytest.raises(ValueError, match="ids must be int64"):
        TopKTeacher(teacher.ids.int(), teacher.logprobs, teacher.tail_logmass, 10)
    with pytest.raises(ValueError, match="tail_logmass must be"):
        TopKTeacher(teacher.ids, teacher.logprobs, teacher.tail_logmass[:, :1], 10)


def test_losses_refuse_a_teacher_of_another_vocabulary_temperature_or_length():
    student = _logits(1, 2, 10, seed=6)
    loss = get_loss("forward_kl", temperature=0.8)
    with pytest.raises(ValueError, match="vocab_size is 12"):
        loss(student, TopKTeacher.from_logits(_logits(1, 2, 12, seed=7), k=3, temperature=0.8))
    with pytest.raises(ValueError, match="rebuild it at the loss's temperature"):
        loss(student, TopKTeacher.from_logits(_logits(1, 2, 10, seed=7), k=3))
    with pytest.raises(ValueError, match="covers \\(B, T\\)"):
        loss(student, TopKTeacher.from_logits(_logits(1, 3, 10, seed=7), k=3, temperature=0.8))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_top_k_at_the_vocabulary_size_equals_the_full_loss(name):
    student, logits = _logits(2, 3, 9, seed=8), _logits(2, 3, 9, seed=9)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    loss = get_loss(name, temperature=0.7)
    full = loss(student, logits, mask)
    torch.testing.assert_close(
        loss(student, TopKTeacher.from_logits(logits, k=9, temperature=0.7), mask), full
    )


@pytest.mark.parametrize("name", F_DIVERGENCES)
def test_top_k_f_divergences_are_lower_bounds_of_the_full_ones(name):
    student, logits = _logits(2, 5, 50, seed=10), _peaked_teacher(2, 5, 50, seed=11)
    loss = get_loss(name)
    full = loss.per_token(student, logits)
    for k in (1, 4, 8, 20):
        top = loss.per_token(student, TopKTeacher.from_logits(logits, k))
        assert (top <= full + 1e-12).all(), k
        assert (top >= 0).all()


def test_top_k_kl_errors_are_the_tail_terms_of_the_chain_rule():
    # KL(p || q) = KL over {top-k, tail} + p(tail) KL(p | tail || q | tail): the top-k loss drops the last term
    student, logits = _logits(2, 4, 40, seed=12), _peaked_teacher(2, 4, 40, seed=13)
    teacher = TopKTeacher.from_logits(logits, k=8)
    logp, logq = torch.log_softmax(logits, -1), torch.log_softmax(student, -1)
    tail = torch.ones_like(logp, dtype=torch.bool).scatter(-1, teacher.ids, False)

    def tail_term(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
        mass_a = torch.where(tail, log_a.exp(), 0.0).sum(-1, keepdim=True)
        mass_b = torch.where(tail, log_b.exp(), 0.0).sum(-1, keepdim=True)
        cond_a, cond_b = log_a - mass_a.log(), log_b - mass_b.log()
        return mass_a[..., 0] * torch.where(tail, cond_a.exp() * (cond_a - cond_b), 0.0).sum(-1)

    for name, (a, b) in {"forward_kl": (logp, logq), "reverse_kl": (logq, logp)}.items():
        loss = get_loss(name)
        error = loss.per_token(student, logits) - loss.per_token(student, teacher)
        torch.testing.assert_close(error, tail_term(a, b))


def test_small_k_errors_are_small_for_a_peaked_teacher():
    # the student is a perturbed teacher, as during distillation; the top 8 ids hold most of the mass
    logits = _peaked_teacher(4, 8, 200, seed=14)
    student = logits + _logits(4, 8, 200, seed=15, scale=0.5)
    teacher = TopKTeacher.from_logits(logits, k=8)
    tail_p = teacher.tail_logmass.exp()
    assert tail_p.max() < 0.35
    for name in ("forward_kl", "skewed_forward_kl", "js", "generalized_jsd", "adaptive_kl"):
        loss = get_loss(name)
        full, top = loss(student, logits), loss(student, teacher)
        assert abs(float(full - top)) <= 0.5 * float(full), name
    # total variation: the merged tail hides at most half the tail masses
    tv = get_loss("tv")
    tail_q = 1 - torch.softmax(student, -1).gather(-1, teacher.ids).sum(-1)
    error = tv.per_token(student, logits) - tv.per_token(student, teacher)
    assert (error <= 0.5 * (tail_p + tail_q) + 1e-12).all()


def test_top_k_gradient_is_per_id_on_the_top_k_and_one_common_signal_on_the_tail():
    student = _logits(1, 2, 30, seed=16).requires_grad_(True)
    teacher = TopKTeacher.from_logits(_logits(1, 2, 30, seed=17), k=5)
    (grad,) = torch.autograd.grad(get_loss("forward_kl")(student, teacher), student)
    q = torch.softmax(student.detach(), -1)
    p_top, p_tail = teacher.logprobs.exp(), teacher.tail_logmass.exp()
    q_tail = 1 - q.gather(-1, teacher.ids).sum(-1)
    # d/ds of the mean over 2 positions of KL on k + 1 categories: q - p on the top-k ids, and
    # q_j (1 - p_tail / q_tail) on every tail id j (one ratio per position)
    expected = q * (1 - p_tail / q_tail)[..., None]
    expected = expected.scatter(-1, teacher.ids, q.gather(-1, teacher.ids) - p_top) / 2
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_top_k_gradients_match_finite_differences(name):
    params = {"detach_weights": False} if name == "adaptive_kl" else {}
    loss = get_loss(name, temperature=1.3, **params)
    student = _logits(2, 2, 7, seed=18).requires_grad_(True)
    teacher = TopKTeacher.from_logits(_logits(2, 2, 7, seed=19), k=3, temperature=1.3)
    mask = torch.tensor([[True, True], [False, True]])
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, mask), (student,))


def test_the_tail_bucket_hides_how_the_student_spreads_its_tail():
    # two students with the same top-k probabilities and tail mass, one spreading the tail like the teacher
    # and one putting it all on a single id: top-k reverse KL scores them the same, the full loss does not
    logits = torch.log(torch.tensor([[[0.6, 0.2, 0.1, 0.05, 0.05]]], dtype=torch.float64))
    like = torch.log(torch.tensor([[[0.5, 0.3, 0.1, 0.05, 0.05]]], dtype=torch.float64))
    lumped = torch.log(torch.tensor([[[0.5, 0.3, 0.1 - 1e-6, 1e-6, 0.1 - 1e-6]]], dtype=torch.float64))
    lumped = lumped - torch.logsumexp(lumped, -1, keepdim=True)
    teacher = TopKTeacher.from_logits(logits, k=2)
    rkl = get_loss("reverse_kl")
    torch.testing.assert_close(rkl(like, teacher), rkl(lumped, teacher), atol=1e-6, rtol=0)
    assert rkl(lumped, logits) > rkl(like, logits) + 0.05
    assert math.isfinite(float(rkl(lumped, teacher)))

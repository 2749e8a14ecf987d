"""CDM (arXiv:2502.11104), ULD (arXiv:2402.12030) and MinED (arXiv:2401.10491) on two local tokenizers.

A byte-level BPE (the teacher's, ``<|im_end|>``) and a Metaspace BPE (the student's, ``</s>``) are trained
on the gensim Lee corpus; tiny random GPT-2 models supply logits.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from veil.models.distillation.cdm import (
    CDMConfig,
    DualTeacherConfig,
    cdm_loss,
    dual_teacher_loss,
    masked_kl,
)
from veil.models.distillation.mined import MinEDConfig, mined_loss, mined_targets
from veil.models.distillation.uld import ULDConfig, uld_distance, uld_loss
from veil.models.distillation.vocab_map import VocabPair

TEXTS = [
    "Hugging Face released new tokenizers for the bushfire season in New South Wales.",
    "The firefighters said strong winds pushed the fire towards homes near the town today.",
]


def _train(kind: str) -> PreTrainedTokenizerFast:
    from gensim.test.utils import datapath
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    with open(datapath("lee_background.cor"), encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    if kind == "byte":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        eos = "<|im_end|>"
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>", "<unk>"])
        eos = "</s>"
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos)


@pytest.fixture(scope="module")
def teacher_tok() -> PreTrainedTokenizerFast:
    return _train("byte")


@pytest.fixture(scope="module")
def student_tok() -> PreTrainedTokenizerFast:
    return _train("metaspace")


def _model(tok: PreTrainedTokenizerFast, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def _logits_labels(tok: PreTrainedTokenizerFast, model: GPT2LMHeadModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted ``(B, L-1, V)`` logits and ``(B, L-1)`` labels of :data:`TEXTS`, padding -> -100."""
    batch = tok([t + tok.eos_token for t in TEXTS], return_tensors="pt", padding=True)
    logits = model(**batch).logits[:, :-1]
    labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    return logits, labels


def naive_topk_kl(teacher: torch.Tensor, student: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """CDM's KD with one vocabulary: per position the teacher's then the student's top-K ids, plain KL."""
    ids = torch.cat([teacher.topk(k, -1).indices, student.topk(k, -1).indices], dim=-1)  # (N, 2K)
    log_pt = torch.log_softmax(teacher.gather(-1, ids) / temperature, -1)
    log_ps = torch.log_softmax(student.gather(-1, ids) / temperature, -1)
    return temperature**2 * (log_pt.exp() * (log_pt - log_ps)).sum() / ids.numel()


def test_identical_tokenizers_reduce_cdm_to_plain_top_k_kl(student_tok) -> None:
    vocab = VocabPair.from_tokenizers(student_tok, student_tok)
    s_logits, labels = _logits_labels(student_tok, _model(student_tok, 0))
    t_logits, _ = _logits_labels(student_tok, _model(student_tok, 1))
    config = CDMConfig(top_k=20)
    out = cdm_loss(s_logits, labels, t_logits, labels, vocab, config)
    assert all(a.one_to_one.all() for a in out.alignments)
    assert out.unmasked_rate == 1.0
    keep = labels != -100
    expected = naive_topk_kl(t_logits[keep], s_logits[keep], 20, config.temperature)
    torch.testing.assert_close(out.kd, expected, rtol=1e-5, atol=1e-7)
    ce = torch.nn.functional.cross_entropy(s_logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, 0.9 * ce + 0.1 * expected)


def test_cdm_across_tokenizers_is_finite_and_trains_the_student(teacher_tok, student_tok) -> None:
    vocab = VocabPair.from_tokenizers(teacher_tok, student_tok)
    student = _model(student_tok, 0)
    s_logits, s_labels = _logits_labels(student_tok, student)
    with torch.no_grad():
        t_logits, t_labels = _logits_labels(teacher_tok, _model(teacher_tok, 1))
    out = cdm_loss(s_logits, s_labels, t_logits, t_labels, vocab)
    assert torch.isfinite(out.loss) and out.kd >= 0
    assert 0.0 < out.unmasked_rate <= 1.0
    assert any(not a.one_to_one.all() for a in out.alignments)  # the tokenisations really differ
    out.loss.backward()
    assert student.lm_head.weight.grad is not None and student.lm_head.weight.grad.abs().sum() > 0
    static_only = cdm_loss(s_logits.detach(), s_labels, t_logits, t_labels, vocab, CDMConfig(threshold=0.0))
    assert static_only.unmasked_rate <= out.unmasked_rate


def test_masked_entries_get_zero_gradient() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(4, 6)
    student = torch.randn(4, 6, requires_grad=True)
    mask = torch.rand(4, 6) > 0.4
    mask[3] = False  # a unit where nothing maps adds nothing and stays NaN-free
    loss = masked_kl(teacher, student, mask, temperature=0.8)
    loss.backward()
    assert torch.isfinite(loss)
    assert (student.grad[~mask] == 0).all() and student.grad[mask].abs().sum() > 0
    # masked values do not matter at all
    moved = student.detach().clone()
    moved[~mask] += 100.0
    torch.testing.assert_close(masked_kl(teacher, moved, mask, 0.8), loss.detach())


def test_dual_teacher_loss_adds_the_same_tokenizer_kl(teacher_tok, student_tok) -> None:
    vocab = VocabPair.from_tokenizers(teacher_tok, student_tok)
    s_logits, s_labels = _logits_labels(student_tok, _model(student_tok, 0))
    same, _ = _logits_labels(student_tok, _model(student_tok, 2))
    cross, t_labels = _logits_labels(teacher_tok, _model(teacher_tok, 1))
    config = DualTeacherConfig(beta_same=0.3, beta_cdm=0.2)
    total = dual_teacher_loss(s_logits, s_labels, same, cross, t_labels, vocab, config)
    cdm = cdm_loss(s_logits, s_labels, cross, t_labels, vocab, config)
    keep = s_labels != -100
    log_pt = torch.log_softmax(same[keep] / 0.8, -1)
    kl_same = 0.64 * (log_pt.exp() * (log_pt - torch.log_softmax(s_logits[keep] / 0.8, -1))).sum(-1).mean()
    torch.testing.assert_close(total, 0.9 * cdm.ce + 0.3 * kl_same + 0.2 * cdm.kd)
    with pytest.raises(ValueError, match="same-tokenizer"):
        dual_teacher_loss(s_logits, s_labels, cross, cross, t_labels, vocab, config)


def test_configs_refuse_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="alpha"):
        CDMConfig(alpha=1.5)
    with pytest.raises(ValueError, match="top_k"):
        CDMConfig(top_k=0)
    with pytest.raises(ValueError, match="beta"):
        DualTeacherConfig(beta_same=-1)
    with pytest.raises(ValueError, match="temperature"):
        ULDConfig(teacher_temperature=0)
    with pytest.raises(ValueError, match="kd_rate"):
        MinEDConfig(kd_rate=2)


def test_uld_is_zero_on_identical_distributions_and_positive_across_tokenizers(
    teacher_tok, student_tok
) -> None:
    s_logits, s_labels = _logits_labels(student_tok, _model(student_tok, 0))
    t_logits, t_labels = _logits_labels(teacher_tok, _model(teacher_tok, 1))
    keep = s_labels != -100
    ce = torch.nn.functional.cross_entropy(s_logits[keep], s_labels[keep])
    torch.testing.assert_close(uld_loss(s_logits, s_labels, s_logits, s_labels), ce)
    # a permutation of the vocabulary is invisible to the sorted distance
    perm = torch.randperm(s_logits.shape[-1])
    probs = torch.softmax(s_logits[keep], -1)
    assert uld_distance(probs, probs[:, perm]) < 1e-6
    cross = uld_loss(s_logits, s_labels, t_logits, t_labels, ULDConfig(ce_weight=0.0))
    assert cross > 0


def test_mined_on_identical_inputs_is_the_weighted_ce(student_tok) -> None:
    vocab = VocabPair.from_tokenizers(student_tok, student_tok, mapper="mined")
    s_logits, labels = _logits_labels(student_tok, _model(student_tok, 0))
    keep = labels != -100
    ce = torch.nn.functional.cross_entropy(s_logits[keep], labels[keep])
    loss = mined_loss(s_logits, labels, s_logits, labels, vocab, MinEDConfig(kd_rate=0.5))
    torch.testing.assert_close(loss, 0.5 * ce, rtol=1e-5, atol=1e-6)


def test_mined_uses_the_teacher_only_at_one_to_one_positions(teacher_tok, student_tok) -> None:
    vocab = VocabPair.from_tokenizers(teacher_tok, student_tok, mapper="mined")
    s_logits, s_labels = _logits_labels(student_tok, _model(student_tok, 0))
    t_logits, t_labels = _logits_labels(teacher_tok, _model(teacher_tok, 1))
    target, used = mined_targets(s_labels, t_logits, t_labels, vocab, temperature=2.0)
    torch.testing.assert_close(target.sum(-1), torch.ones(target.shape[0]))
    gold = s_labels[s_labels != -100]
    assert 0 < used.sum() < used.numel()
    assert (target[~used].argmax(-1) == gold[~used]).all() and (target[~used].max(-1).values == 1).all()
    loss = mined_loss(s_logits, s_labels, t_logits, t_labels, vocab)
    assert torch.isfinite(loss) and loss >= 0
    with pytest.raises(ValueError, match="mined"):
        mined_targets(s_labels, t_logits, t_labels, VocabPair.from_tokenizers(teacher_tok, student_tok), 2.0)

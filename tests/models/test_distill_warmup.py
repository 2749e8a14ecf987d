"""Warmup-Distill (arXiv:2502.11766): flag rules, corrections, DPO pairs and the warm-up's effect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from veil.models.distillation.kd import KDConfig, generate
from veil.models.distillation.warmup import (
    WarmupConfig,
    build_pairs,
    correct_inplace,
    correct_regen,
    dpo_loss,
    flag_tokens,
    preference_pairs,
    warm_up,
    warmup_distill,
)
from veil.models.loading import tiny_llama_config

PAD, BOS, EOS = 0, 1, 2
CHARS = "abcdk:."
VOCAB = {c: i + 3 for i, c in enumerate(CHARS)}
KEYS = [a + b for a in "abcd" for b in "abcd"]


def encode(text: str) -> list[int]:
    """Char-level ids (0 pad, 1 bos, 2 eos)."""
    return [VOCAB[c] for c in text]


def prompt_ids(key: str) -> list[int]:
    return [BOS, *encode(f"k{key}:")]


def answer_ids(key: str) -> list[int]:
    # a known continuation per prompt: "ab" -> "baab." then EOS
    return [*encode(key[::-1] + key + "."), EOS]


PROMPTS = [prompt_ids(k) for k in KEYS]
ANSWERS = [answer_ids(k) for k in KEYS]


def tiny(hidden: int, layers: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tiny_llama_config(
        vocab_size=len(CHARS) + 3,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 16,
        num_key_value_heads=max(1, hidden // 32),
        pad_token_id=PAD,
    )
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    """A 2x64 Llama trained to give each prompt's known continuation (a few seconds)."""
    from veil.models.distillation.kd import pack, response_logits

    model = tiny(64, 2, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    ids, attn, resp = pack(PROMPTS, ANSWERS, PAD)
    for _ in range(300):
        logits, targets, mask = response_logits(model, ids, attn, resp)
        loss = F.cross_entropy(logits[mask], targets[mask])
        if float(loss.detach()) < 0.01:  # ~40 steps: every continuation at p > 0.99
            return model.eval()
        opt.zero_grad()
        loss.backward()
        opt.step()
    raise RuntimeError(f"teacher did not learn the corpus (loss {float(loss.detach()):.3f})")


def student(seed: int = 1) -> torch.nn.Module:
    """A random-init 1x32 Llama: smaller than the teacher, same vocabulary."""
    return tiny(32, 1, seed=seed)


def test_abs_mode_flags_exactly_the_tokens_below_tau() -> None:
    p_teacher = torch.tensor([0.05, 0.1, 0.099, 0.5, 1.0])
    p_student = torch.tensor([0.9, 0.9, 0.01, 0.01, 0.5])
    flags = flag_tokens(p_teacher.log(), p_student.log(), "abs", tau=0.1)
    # 0.1 itself is not below tau; the student's probability plays no part
    assert flags.tolist() == [True, False, True, False, False]


def test_margin_mode_flags_exactly_the_log_ratios_above_delta() -> None:
    p_teacher = torch.tensor([0.01, 0.01, 0.5, 0.001, 0.2])
    p_student = torch.tensor([0.5, 0.05, 0.9, 0.0005, 0.9])
    delta = math.log(4.0)
    flags = flag_tokens(p_teacher.log(), p_student.log(), "margin", delta=delta)
    expected = [math.log(s / t) > delta for s, t in zip(p_student.tolist(), p_teacher.tolist(), strict=True)]
    assert flags.tolist() == expected == [True, True, False, False, True]


def test_inplace_correction_changes_exactly_the_flagged_tokens() -> None:
    completion = [3, 4, 5, 6, 7, EOS]
    flags = [False, True, False, True, True, False]
    argmax = [8, 9, 8, 9, 8, 9]  # differs from the completion everywhere
    fixed = correct_inplace(completion, flags, argmax)
    changed = [a != b for a, b in zip(completion, fixed, strict=True)]
    assert changed == flags
    assert fixed == [3, 9, 5, 9, 8, EOS]


def test_regen_keeps_the_prefix_before_the_first_flag_then_follows_the_teacher(
    teacher: torch.nn.Module,
) -> None:
    prompt = PROMPTS[5]
    completion = [VOCAB["d"], VOCAB["d"], VOCAB["k"], VOCAB["a"], VOCAB["b"]]
    flags = [False, False, True, False, True]
    argmax = [VOCAB["a"]] * 5
    fixed = correct_regen(
        teacher, prompt, completion, flags, argmax, max_new_tokens=8, eos_id=EOS, pad_id=PAD
    )
    assert fixed[:2] == completion[:2]
    assert fixed[2] == VOCAB["a"]
    rest = generate(teacher, [prompt + fixed[:3]], 8 - 3, eos_id=EOS, pad_id=PAD, greedy=True)[0]
    assert fixed[3:] == rest
    assert len(fixed) <= 8
    assert (
        correct_regen(teacher, prompt, completion, [False] * 5, argmax, 8, eos_id=EOS, pad_id=PAD)
        == completion
    )


@pytest.mark.parametrize("fix", ["inplace", "regen"])
def test_dpo_pairs_have_chosen_different_from_rejected(teacher: torch.nn.Module, fix: str) -> None:
    config = WarmupConfig(n_samples=2, max_new_tokens=6, fix=fix)  # type: ignore[arg-type]
    pairs = build_pairs(student(), teacher, PROMPTS[:8], config, eos_id=EOS, pad_id=PAD)
    dpo = preference_pairs(pairs)
    assert len(pairs) == 16
    assert dpo, "a random student's samples should draw corrections from a trained teacher"
    assert all(p.chosen != p.rejected for p in dpo)
    # every pair left out was left unchanged by the correction
    assert all(p.chosen == p.rejected for p in pairs if p not in dpo)


def test_dpo_loss_matches_the_naive_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=gen) * 3 for _ in range(4))
    beta = 0.3
    naive = [
        -math.log(1.0 / (1.0 + math.exp(-beta * ((a - c) - (b - d)))))
        for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), strict=True)
    ]
    assert float(dpo_loss(pc, pr, rc, rr, beta)) == pytest.approx(sum(naive) / 5, rel=1e-5)


def test_sft_warm_up_on_a_trained_teachers_corrections_lowers_flags_nll_and_kl(
    teacher: torch.nn.Module,
) -> None:
    config = WarmupConfig(n_samples=4, max_new_tokens=8, objective="sft", epochs=8, lr=1e-2, batch_size=16)
    report = warm_up(student(), teacher, PROMPTS, config, eos_id=EOS, pad_id=PAD)
    assert report.n_samples == 64 and report.n_corrected > 32
    assert report.before.flagged_rate > 0.5
    # measured: flagged 0.90 -> 0.07, teacher NLL 6.0 -> 0.45 nats, KL 2.1 -> 0.1
    assert report.after.flagged_rate < report.before.flagged_rate / 2
    assert report.after.teacher_nll < report.before.teacher_nll / 2
    assert report.after.kl < report.before.kl


def test_dpo_plus_sft_warm_up_then_kd_runs_from_the_warmed_up_student(teacher: torch.nn.Module) -> None:
    def forward_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t_lp, s_lp = t_logits.log_softmax(-1), s_logits.log_softmax(-1)
        return ((t_lp.exp() * (t_lp - s_lp)).sum(-1) * mask).sum() / mask.sum()

    model = student()
    config = WarmupConfig(
        n_samples=2, max_new_tokens=6, objective="dpo+sft", epochs=2, lr=1e-2, batch_size=16
    )
    kd = KDConfig(lmbda=0.5, max_new_tokens=6, steps=3, lr=1e-3, batch_size=4)
    report, history = warmup_distill(
        model, teacher, PROMPTS, ANSWERS, config, kd, eos_id=EOS, pad_id=PAD, loss_fn=forward_kl
    )
    assert report.losses and all(math.isfinite(x) for x in report.losses)
    assert len(history) == 3 and all(math.isfinite(s.loss) for s in history)


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "prob"},
        {"fix": "resample"},
        {"objective": "ppo"},
        {"tau": 0.0},
        {"n_samples": 0},
        {"beta": 0.0},
    ],
)
def test_config_rejects_invalid_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        WarmupConfig(**bad)

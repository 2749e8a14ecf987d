"""GKD-style distillation (arXiv:2306.13649): packing, sampling, the on-policy mix and a KD step."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from veil.models.distillation import kd
from veil.models.distillation.kd import KDConfig, distill, generate, pack, response_logits, response_rows
from veil.models.loading import tiny_llama_config

PAD, EOS, VOCAB = 0, 2, 24


def tiny(hidden: int, layers: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tiny_llama_config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 16,
        num_key_value_heads=max(1, hidden // 32),
        pad_token_id=PAD,
    )
    return AutoModelForCausalLM.from_config(config)


PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10], [1, 11]]
RESPONSES = [[12, 13, EOS], [14, EOS], [15, 16, 17, 18], [19, 20, EOS]]


def forward_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over the masked positions."""
    t_lp, s_lp = t_logits.log_softmax(-1), s_logits.log_softmax(-1)
    return ((t_lp.exp() * (t_lp - s_lp)).sum(-1) * mask).sum() / mask.sum()


def test_pack_right_pads_and_masks_only_the_response_tokens() -> None:
    ids, attn, resp = pack([[1, 5], [1]], [[6, EOS], [7]], PAD)
    # [1 5] + [6 eos] -> [1 5 6 eos]; [1] + [7] -> [1 7 pad pad]
    assert ids.tolist() == [[1, 5, 6, EOS], [1, 7, PAD, PAD]]
    assert attn.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert resp.tolist() == [[False, False, True, True], [False, True, False, False]]


def test_response_logits_predict_the_next_token_and_mask_the_response_targets() -> None:
    model = tiny(32, 1, seed=0).eval()
    ids, attn, resp = pack(PROMPTS, RESPONSES, PAD)
    logits, targets, mask = response_logits(model, ids, attn, resp)
    assert logits.shape == (4, ids.shape[1] - 1, VOCAB)
    assert int(mask.sum()) == sum(len(r) for r in RESPONSES)
    assert targets[mask].tolist() == [t for r in RESPONSES for t in r]
    # the first response token of row 0 is predicted from the prompt alone
    alone = model(input_ids=torch.tensor([PROMPTS[0]])).logits[0, -1]
    torch.testing.assert_close(logits[0, len(PROMPTS[0]) - 1], alone, rtol=1e-4, atol=1e-4)


def test_response_rows_are_the_full_logits_at_the_response_targets() -> None:
    model = tiny(32, 1, seed=0).eval()
    ids, attn, resp = pack(PROMPTS, RESPONSES, PAD)
    with torch.no_grad():
        logits, _, mask = response_logits(model, ids, attn, resp)
        rows = response_rows(model, ids, attn, resp)
    assert rows.shape == (sum(len(r) for r in RESPONSES), VOCAB)
    torch.testing.assert_close(rows, logits[mask], rtol=1e-5, atol=1e-5)


def test_greedy_generation_follows_the_argmax_and_stops_at_eos_or_the_limit() -> None:
    model = tiny(32, 1, seed=0).eval()
    out = generate(model, PROMPTS[:2], 5, eos_id=EOS, pad_id=PAD, greedy=True)
    for prompt, new in zip(PROMPTS[:2], out, strict=True):
        assert 1 <= len(new) <= 5
        assert EOS not in new[:-1]
        seq = list(prompt)
        for tok in new:
            assert tok == int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(tok)
    sampled = generate(model, PROMPTS, 3, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(0))
    assert all(1 <= len(s) <= 3 for s in sampled)


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_lmbda_picks_given_responses_or_student_samples(
    monkeypatch: pytest.MonkeyPatch, lmbda: float
) -> None:
    samples: list[list[list[int]]] = []

    def recording_generate(*args: Any, **kwargs: Any) -> list[list[int]]:
        out = generate(*args, **kwargs)
        samples.append(out)
        return out

    trained_tokens: list[int] = []

    def recording_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        trained_tokens.append(int(mask.sum()))
        return forward_kl(s_logits, t_logits, mask)

    monkeypatch.setattr(kd, "generate", recording_generate)
    config = KDConfig(lmbda=lmbda, steps=3, batch_size=4, max_new_tokens=4, lr=1e-3)
    responses = RESPONSES if lmbda == 0.0 else None
    student, teacher = tiny(32, 1, seed=1), tiny(64, 2, seed=0)
    history = distill(
        student, teacher, PROMPTS, responses, config, eos_id=EOS, pad_id=PAD, loss_fn=recording_loss
    )
    assert [s.on_policy for s in history] == [lmbda == 1.0] * 3
    if lmbda == 0.0:
        assert samples == []
        assert trained_tokens == [sum(len(r) for r in RESPONSES)] * 3
    else:
        assert len(samples) == 3
        assert trained_tokens == [sum(len(r) for r in batch) for batch in samples]


def test_a_kd_step_lowers_the_kl_on_its_batch() -> None:
    student, teacher = tiny(32, 1, seed=1), tiny(64, 2, seed=0).eval()
    ids, attn, resp = pack(PROMPTS, RESPONSES, PAD)

    def batch_kl() -> float:
        with torch.no_grad():
            t, _, mask = response_logits(teacher, ids, attn, resp)
            s, _, _ = response_logits(student, ids, attn, resp)
            return float(forward_kl(s, t, mask))

    before = batch_kl()
    config = KDConfig(lmbda=0.0, steps=1, batch_size=4, lr=1e-2)
    history = distill(
        student, teacher, PROMPTS, RESPONSES, config, eos_id=EOS, pad_id=PAD, loss_fn=forward_kl
    )
    assert history[0].loss == pytest.approx(before, rel=1e-4)
    assert batch_kl() < before


def test_missing_responses_are_refused_unless_fully_on_policy() -> None:
    model = tiny(32, 1, seed=0)
    with pytest.raises(ValueError, match="lmbda"):
        distill(model, model, PROMPTS, None, KDConfig(lmbda=0.5), eos_id=EOS, pad_id=PAD, loss_fn=forward_kl)


@pytest.mark.parametrize("bad", [{"lmbda": 1.5}, {"temperature": 0.0}, {"steps": 0}, {"lr": -1.0}])
def test_config_rejects_invalid_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        KDConfig(**bad)

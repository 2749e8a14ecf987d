"""KV compression inside generate_batch, on a tiny random GQA Llama (4 layers, 8 query heads, 2 KV heads):
cache bytes, per-layer lengths, RoPE positions, padded batches, soft tokens, against a masked reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_gqa import VOCAB, tiny_gqa_llama
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from veil.models.compression import (
    H2O,
    DBudgetKV,
    PrefillCompression,
    PyramidKV,
    QueryCapture,
    SnapKV,
    StreamingLLM,
    attention_modules,
)
from veil.models.compression.scoring import query_attention
from veil.models.generation import SamplingParams, generate_batch
from veil.models.personalization import PersonalizationConfig, PersonalizedLM


@pytest.fixture(scope="module")
def lm() -> PersonalizedLM:
    return PersonalizedLM(tiny_gqa_llama(), PersonalizationConfig(n_tokens=2, placement="prefix")).eval()


def _prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, VOCAB, size=n).tolist()


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0)


def _run(lm, prompts, compression, new=8, embs=None):
    logits, kept = [], []
    out = generate_batch(
        lm,
        prompts,
        embs or [None] * len(prompts),
        [_greedy(new)] * len(prompts),
        pad_id=0,
        on_logits=logits.append,
        compression=compression,
        on_kv_kept=kept.extend,
    )
    return [t for t, _ in out], torch.stack(logits), kept


def test_threshold_zero_prunes_nothing_and_keeps_the_logits(lm: PersonalizedLM) -> None:
    prompt = _prompt(40, 0)
    tokens, logits, _ = _run(lm, [prompt], None, new=10)
    comp = DBudgetKV(threshold=0.0)
    got_tokens, got_logits, kept = _run(lm, [prompt], comp, new=10)
    assert kept[0].per_layer == (1.0,) * 4
    assert got_tokens == tokens
    assert torch.equal(got_logits, logits)


def test_pruned_cache_keeps_kv_heads_and_is_smaller_in_bytes(lm: PersonalizedLM) -> None:
    ids = torch.tensor([_prompt(48, 1)])
    packed = lm.pack(ids, torch.ones_like(ids))
    pc = PrefillCompression(lm.base, [DBudgetKV(threshold=0.2)])
    with torch.no_grad(), pc.capture():
        out = lm.base(**packed.as_kwargs(), use_cache=True)
    cache = out.cache
    before = [(layer.keys.nbytes + layer.values.nbytes, layer.keys.shape) for layer in cache.layers]
    masks = pc.apply(cache, packed.attention_mask.bool(), packed.soft_mask)
    after = [(layer.keys.nbytes + layer.values.nbytes, layer.keys.shape) for layer in cache.layers]
    assert all(shape[1] == 2 for _, shape in before + after)  # num_key_value_heads, never repeated
    assert [b for b, _ in after[:2]] == [b for b, _ in before[:2]]  # layers 0-1 untouched
    assert all(a < b for (a, _), (b, _) in zip(after[2:], before[2:], strict=True))
    assert sum(a for a, _ in after) < sum(b for b, _ in before)
    assert masks == [None] * 4  # one row: every slot holds a kept key, so no layer needs a mask
    assert all(layer.keys.is_contiguous() for layer in cache.layers)


def _reference_greedy(
    model, prompt: list[int], keep: list[torch.Tensor], new: int
) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding without a cache: the whole sequence each step at positions 0..n+t-1, where in layer
    l every query after the prompt sees only that layer's kept prompt keys (and every later token)."""
    n = len(prompt)

    def masked(module, query, key, value, attention_mask, **kwargs):
        total = key.shape[2]
        q_pos = torch.arange(total)[:, None]
        k_pos = torch.arange(total)[None, :]
        kept = torch.cat([keep[module.layer_idx][0], torch.ones(total - n, dtype=torch.bool)])  # (total,)
        mask = (k_pos <= q_pos) & (kept[None, :] | (q_pos < n))  # prompt queries saw everything
        return sdpa_attention_forward(module, query, key, value, mask[None, None], **kwargs)

    AttentionInterface.register("test_reference_mask", masked)
    model.set_attn_implementation("test_reference_mask")
    seq, tokens, logits = list(prompt), [], []
    with torch.no_grad():
        for _ in range(new):
            last = model(torch.tensor([seq])).logits[0, -1]
            logits.append(last)
            tokens.append(int(last.argmax()))
            seq.append(tokens[-1])
    return tokens, torch.stack(logits)


def test_greedy_output_equals_a_reference_that_hides_exactly_the_dropped_keys(lm: PersonalizedLM) -> None:
    prompt = _prompt(48, 4)
    comp = DBudgetKV(threshold=0.15)
    tokens, logits, kept = _run(lm, [prompt], comp, new=10)
    keep = list(comp.last_keep)
    lengths = [int(k.sum()) for k in keep]
    assert lengths[:2] == [48, 48] and max(lengths[2:]) < 48 and len(set(lengths[2:])) > 1, lengths
    ref_tokens, ref_logits = _reference_greedy(tiny_gqa_llama(), prompt, keep, 10)
    assert tokens[0] == ref_tokens
    torch.testing.assert_close(logits[:, 0], ref_logits, rtol=0, atol=1e-4)
    # and pruning changed something, so the reference is not the full cache in disguise
    full_tokens, full_logits, _ = _run(lm, [prompt], None, new=10)
    assert (full_logits - logits).abs().max() > 1e-3


def test_batch_rows_of_different_lengths_equal_each_row_alone(lm: PersonalizedLM) -> None:
    prompts = [_prompt(40, 3), _prompt(25, 4), _prompt(33, 5)]
    comps = [DBudgetKV(threshold=0.1), None, SnapKV(budget=0.5, window_size=8)]
    tokens, _, kept = _run(lm, prompts, comps, new=8)
    for r in range(3):
        alone, _, kept_alone = _run(lm, [prompts[r]], comps[r], new=8)
        assert tokens[r] == alone[0]
        assert kept[r] == (kept_alone[0] if kept_alone else None)
    assert kept[1] is None and kept[0].per_layer[2] < 1.0


def test_soft_tokens_are_never_pruned(lm: PersonalizedLM) -> None:
    emb = np.random.default_rng(6).normal(size=(2, 64)).astype(np.float32)
    prompts = [_prompt(30, 6), _prompt(20, 7)]
    comp = DBudgetKV(threshold=0.999)
    _run(lm, prompts, comp, new=3, embs=[emb, emb])
    # rows are [soft soft t1 ...] and [pad * 10, soft soft t1 ...]: the soft tokens are at 0-1 and 10-11
    for keep in comp.last_keep:
        assert bool(keep[0, :2].all()) and bool(keep[1, 10:12].all()) and not bool(keep[1, :10].any())
    for keep in comp.last_keep[2:]:  # sinks are the first four real positions, soft tokens included
        assert keep[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 31]


@pytest.mark.parametrize(
    "comp",
    [
        StreamingLLM(budget=16),
        SnapKV(budget=16, window_size=4),
        H2O(budget=16),
        PyramidKV(budget=16, window_size=4, beta=4.0),
    ],
    ids=["streaming", "snapkv", "h2o", "pyramidkv"],
)
def test_baselines_decode_at_their_budget(lm: PersonalizedLM, comp) -> None:
    prompts = [_prompt(40, 8), _prompt(30, 9)]
    tokens, _, kept = _run(lm, prompts, comp, new=4)
    assert all(len(t) == 4 for t in tokens)
    for row, n in zip(kept, (40, 30), strict=True):
        assert sum(row.per_layer) * n == pytest.approx(16 * 4)


def test_captured_query_row_equals_eager_attention(lm: PersonalizedLM) -> None:
    eager = tiny_gqa_llama(attn="eager")
    ids = torch.tensor([_prompt(20, 10)])
    with torch.no_grad(), QueryCapture(attention_modules(eager), window=1) as cap:
        out = eager(ids, use_cache=True, output_attentions=True)
    scaling = eager.model.layers[0].self_attn.scaling
    for layer, want in enumerate(out.attentions):
        keys = out.past_key_values.layers[layer].keys
        got = query_attention(cap.queries[layer], keys, torch.ones(1, 20, dtype=torch.bool), scaling)
        torch.testing.assert_close(got[:, :, 0], want[:, :, -1], rtol=1e-4, atol=1e-5)


def test_models_that_cannot_be_hooked_are_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    ).eval()
    with pytest.raises(ValueError, match="needs one attention module per layer with q_proj"):
        generate_batch(PersonalizedLM(gpt2), [[5, 6, 7]], [None], [_greedy(2)], 0, compression=DBudgetKV())
    with pytest.raises(ValueError, match="needs attn_implementation='sdpa'"):
        generate_batch(
            PersonalizedLM(tiny_gqa_llama(attn="eager")),
            [[5, 6]],
            [None],
            [_greedy(2)],
            0,
            compression=DBudgetKV(),
        )
    with pytest.raises(ValueError, match="budget of 9 tokens exceeds the prompt of 3 tokens"):
        generate_batch(
            PersonalizedLM(tiny_gqa_llama()),
            [[5, 6, 7]],
            [None],
            [_greedy(2)],
            0,
            compression=StreamingLLM(budget=9),
        )


@pytest.mark.slow
def test_smollm2_prunes_upper_layers_and_keeps_the_first_token(data_dir) -> None:
    from veil.models.loading import load_model

    loaded = load_model("smollm2-135m-instruct", data_dir)
    tok = loaded.tokenizer
    facts = " ".join(f"The code for box {i} is {1000 + 37 * i}." for i in range(40))
    text = tok.apply_chat_template(
        [{"role": "user", "content": facts + " What is the code for box 31?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    smol = PersonalizedLM(loaded.model, PersonalizationConfig(n_tokens=0)).eval()
    full, _, _ = _run(smol, [prompt], None, new=8)
    comp = DBudgetKV()  # the paper's defaults
    got, _, kept = _run(smol, [prompt], comp, new=8)
    assert kept[0].per_layer[:2] == (1.0, 1.0) and kept[0].mean < 0.9
    assert got[0][0] == full[0][0]  # the prefill saw the full prompt: the first token cannot change
    assert len(got[0]) == 8


def _teacher(lm, prompts, compression, teachers, new=8):
    forced: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    out = generate_batch(
        lm,
        prompts,
        [None] * len(prompts),
        [_greedy(new)] * len(prompts),
        pad_id=0,
        on_logits=logits.append,
        compression=compression,
        teacher_tokens=teachers,
        on_teacher_logits=forced.append,
    )
    return [t for t, _ in out], torch.stack(logits), forced[0]


@pytest.mark.parametrize("comp", [None, DBudgetKV(threshold=0.2), StreamingLLM(budget=12)])
def test_teacher_forced_logits_equal_the_step_logits_on_the_own_output_and_leave_decoding_alone(
    lm: PersonalizedLM, comp
) -> None:
    prompt = _prompt(40, 3)
    tokens, logits, _ = _run(lm, [prompt], comp, new=8)
    got_tokens, got_logits, forced = _teacher(lm, [prompt], comp, tokens, new=8)
    assert got_tokens == tokens and torch.equal(got_logits, logits)  # the cache was cut back exactly
    assert forced.shape == (1, 8, VOCAB)  # [r, i] predicts token i of the teacher
    # one forward of 7 tokens against 7 steps of one: the same distributions up to summation order
    torch.testing.assert_close(forced[0], logits[:, 0], atol=1e-4, rtol=1e-4)


def test_teacher_forcing_rows_of_unequal_lengths_equals_each_row_alone(lm: PersonalizedLM) -> None:
    prompts, teachers = [_prompt(30, 4), _prompt(41, 5)], [_prompt(3, 6), _prompt(6, 7)]
    comp = DBudgetKV(threshold=0.2)
    _, _, both = _teacher(lm, prompts, comp, teachers)
    for r in range(2):
        _, _, alone = _teacher(lm, [prompts[r]], comp, [teachers[r]])
        n = len(teachers[r])  # positions past a shorter row's end are padding
        torch.testing.assert_close(both[r, :n], alone[0, :n], atol=1e-4, rtol=1e-4)


def test_teacher_tokens_need_their_callback_and_one_continuation_per_row(lm: PersonalizedLM) -> None:
    with pytest.raises(ValueError, match="go together"):
        generate_batch(lm, [[5, 6]], [None], [_greedy(2)], 0, teacher_tokens=[[1]])
    with pytest.raises(ValueError, match="one non-empty teacher continuation per row"):
        generate_batch(lm, [[5, 6]], [None], [_greedy(2)], 0, teacher_tokens=[[]], on_teacher_logits=print)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the Triton path needs one")
def test_on_a_gpu_the_triton_kernels_keep_what_the_reference_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_lm = (
        PersonalizedLM(tiny_gqa_llama(), PersonalizationConfig(n_tokens=2, placement="prefix")).cuda().eval()
    )
    prompts = [_prompt(120, 11), _prompt(77, 12)]
    runs = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("VEIL_KERNELS", mode)
        comp = DBudgetKV(threshold=0.1)
        tokens, logits, kept = _run(cuda_lm, prompts, comp, new=8)
        runs[mode] = (tokens, logits, [k.per_layer for k in kept], [m.cpu() for m in comp.last_keep])
    ref, tri = runs["reference"], runs["triton"]
    assert tri[0] == ref[0] and tri[2] == ref[2]
    assert all(torch.equal(a, b) for a, b in zip(tri[3], ref[3], strict=True))
    torch.testing.assert_close(tri[1], ref[1], rtol=0, atol=1e-4)
    assert min(min(p) for p in ref[2]) < 1.0  # something was pruned

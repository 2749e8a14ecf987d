"""The question prefilled after compression (``generate_batch(..., question_lengths=...)``), on a tiny
random GQA Llama: equal to one prefill without compression, the question never pruned with it, rows of a
batch independent of each other, against a masked reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_gqa import N_LAYERS, VOCAB, tiny_gqa_llama
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from veil.models.compression import H2O, DBudgetKV, PyramidKV, SnapKV, StreamingLLM
from veil.models.generation import SamplingParams, generate_batch
from veil.models.personalization import PackedInputs, PersonalizationConfig, PersonalizedLM
from veil.models.two_part_prefill import split_packed


@pytest.fixture(scope="module", params=["prefix", "suffix"])
def lm(request: pytest.FixtureRequest) -> PersonalizedLM:
    return PersonalizedLM(tiny_gqa_llama(), PersonalizationConfig(n_tokens=2, placement=request.param)).eval()


def _prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, VOCAB, size=n).tolist()


def _run(lm, prompts, compression=None, questions=None, new=8, embs=None, logits=None):
    kept: list = []
    out = generate_batch(
        lm,
        prompts,
        embs or [None] * len(prompts),
        [SamplingParams(max_new_tokens=new, temperature=0.0)] * len(prompts),
        pad_id=0,
        compression=compression,
        on_logits=logits.append if logits is not None else None,
        on_kv_kept=kept.extend,
        question_lengths=questions,
    )
    return [t for t, _ in out], kept


# rows of unequal context and question lengths; the last has no question (its whole prompt is context)
PROMPTS = [_prompt(40, 1), _prompt(25, 2), _prompt(33, 3), _prompt(20, 4)]
QUESTIONS = [6, 11, 1, 0]
METHODS = {
    "dbudgetkv": lambda: DBudgetKV(threshold=0.2),
    "streaming_llm": lambda: StreamingLLM(budget=8),
    "snapkv": lambda: SnapKV(budget=8, window_size=4),
    "h2o": lambda: H2O(budget=8),
    "pyramidkv": lambda: PyramidKV(budget=8, window_size=4, beta=4.0),
}


def test_split_puts_each_rows_tail_after_its_context_keeping_positions() -> None:
    # rows [pad c1 c2 q1] and [d1 r1 r2 r3], tails 1 and 3
    embeds = torch.tensor([[0.0, 1, 2, 3], [4, 5, 6, 7]])[..., None]  # (2, 4, 1): the value names the token
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    positions = torch.tensor([[0, 0, 1, 2], [0, 1, 2, 3]])
    context, question = split_packed(PackedInputs(embeds, mask, positions), torch.tensor([1, 3]))
    assert context.inputs_embeds[..., 0].tolist() == [[1, 2], [0, 4]]  # [c1 c2], [pad d1]
    assert context.attention_mask.tolist() == [[1, 1], [0, 1]]
    assert context.position_ids.tolist() == [[0, 1], [0, 0]]
    assert question.inputs_embeds[..., 0].tolist() == [[0, 0, 3], [5, 6, 7]]  # [pad pad q1], [r1 r2 r3]
    assert question.attention_mask.tolist() == [[0, 0, 1], [1, 1, 1]]
    assert question.position_ids.tolist() == [[0, 0, 2], [1, 2, 3]]


def test_without_compression_two_parts_give_the_tokens_of_one_prefill(lm: PersonalizedLM) -> None:
    emb = np.random.default_rng(5).normal(size=(2, 64)).astype(np.float32)
    embs = [emb, None, emb, None]
    one, _ = _run(lm, PROMPTS, new=10, embs=embs)
    two, _ = _run(lm, PROMPTS, questions=QUESTIONS, new=10, embs=embs)
    assert two == one
    for r in range(len(PROMPTS)):  # and each row alone
        alone, _ = _run(lm, [PROMPTS[r]], questions=[QUESTIONS[r]], new=10, embs=[embs[r]])
        assert alone[0] == one[r]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_a_batch_of_unequal_rows_each_as_alone(lm: PersonalizedLM, method: str) -> None:
    comp = METHODS[method]()
    tokens, kept = _run(lm, PROMPTS, comp, QUESTIONS, new=6)
    assert all(len(t) == 6 for t in tokens)
    assert comp.last_keep[0].shape == (4, 40 - 6)  # scored over the longest context, never a question
    if method != "dbudgetkv":  # a fixed budget of 8 of each row's context tokens
        for row, (p, q) in zip(kept, zip(PROMPTS, QUESTIONS, strict=True), strict=True):
            assert sum(row.per_layer) * (len(p) - q) == pytest.approx(8 * N_LAYERS)
    for r in range(len(PROMPTS)):
        alone, _ = _run(lm, [PROMPTS[r]], METHODS[method](), [QUESTIONS[r]], new=6)
        assert alone[0] == tokens[r], (method, r)


def test_a_question_of_zero_tokens_is_one_prefill(lm: PersonalizedLM) -> None:
    comp = DBudgetKV(threshold=0.2)
    assert _run(lm, PROMPTS[:2], comp, [0, 0])[0] == _run(lm, PROMPTS[:2], comp)[0]


def _reference_greedy(
    model, prompt: list[int], n: int, keep: list[torch.Tensor], new: int
) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding without a cache: every query at or after position ``n`` (the question's and the
    generated tokens) sees, in layer ``l``, only that layer's kept context keys ``keep[l]`` ``(n,)``
    and every token from ``n`` on; the context's own queries saw the whole context."""

    def masked(module, query, key, value, attention_mask, **kwargs):
        total = key.shape[2]
        q_pos = torch.arange(total)[:, None]
        k_pos = torch.arange(total)[None, :]
        kept = torch.cat([keep[module.layer_idx], torch.ones(total - n, dtype=torch.bool)])  # (total,)
        mask = (k_pos <= q_pos) & (kept[None, :] | (q_pos < n))
        return sdpa_attention_forward(module, query, key, value, mask[None, None], **kwargs)

    AttentionInterface.register("test_question_after_mask", masked)
    model.set_attn_implementation("test_question_after_mask")
    seq, tokens, logits = list(prompt), [], []
    with torch.no_grad():
        for _ in range(new):
            logits.append(model(torch.tensor([seq])).logits[0, -1])
            tokens.append(int(logits[-1].argmax()))
            seq.append(tokens[-1])
    return tokens, torch.stack(logits)


@pytest.mark.parametrize("question", [1, 9])
def test_the_question_sees_the_kept_context_and_itself_and_is_never_pruned(question: int) -> None:
    lm = PersonalizedLM(tiny_gqa_llama(), PersonalizationConfig(n_tokens=0)).eval()
    prompt, n = _prompt(48, 7), 48 - question
    comp, logits, before = DBudgetKV(threshold=0.15), [], []
    tokens, _ = _run(lm, [prompt], comp, [question], new=10, logits=logits)
    keep = [k[0] for k in comp.last_keep]  # (n,) per layer: the context only
    assert all(k.shape == (n,) for k in keep)
    assert max(int(k.sum()) for k in keep[2:]) < n  # something was pruned
    ref_tokens, ref_logits = _reference_greedy(tiny_gqa_llama(), prompt, n, keep, 10)
    assert tokens[0] == ref_tokens
    torch.testing.assert_close(torch.stack(logits)[:, 0], ref_logits, rtol=0, atol=1e-4)
    # the question after compression is another regime: even the first token's logits change
    _run(lm, [prompt], DBudgetKV(threshold=0.15), new=10, logits=before)
    assert (before[0] - logits[0]).abs().max() > 1e-3


@pytest.mark.parametrize("questions", [[1], [3, 1, 2], [-1, 2], [4, 2], [1.5, 2]])
def test_question_lengths_must_leave_a_context_token_in_every_row(lm: PersonalizedLM, questions) -> None:
    with pytest.raises(ValueError, match="question length"):
        _run(lm, [[5, 6, 7, 8], [5, 6]], DBudgetKV(), questions, new=2)

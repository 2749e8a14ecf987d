"""The step-wise batched generator against transformers' own generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.models.generation import SamplingParams, generate_batch, sample_next
from veil.models.personalization import PersonalizationConfig, PersonalizedLM


@pytest.fixture()
def lm(tiny_base) -> PersonalizedLM:
    return PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=2, placement="prefix")).eval()


def _reference(lm: PersonalizedLM, prompt: list[int], emb: np.ndarray | None, n: int) -> list[int]:
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    e = None if emb is None else torch.tensor(emb[None], dtype=torch.float32)
    out = lm.generate(ids, mask, e, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0].tolist()


def test_greedy_batch_equals_transformers_generate_row_by_row(lm: PersonalizedLM) -> None:
    rng = np.random.default_rng(0)
    prompts = [[5, 9, 17, 33], [7, 8], [100, 3, 4, 5, 6, 7, 8]]
    embs = [
        rng.normal(size=(2, lm.hidden_size)).astype(np.float32),
        None,
        rng.normal(size=(2, lm.hidden_size)),
    ]
    params = [SamplingParams(max_new_tokens=6, temperature=0.0)] * 3
    got = generate_batch(lm, prompts, embs, params, pad_id=0)
    for (tokens, reason), prompt, emb in zip(got, prompts, embs, strict=True):
        assert reason == "length"
        assert tokens == _reference(lm, prompt, None if emb is None else np.asarray(emb, np.float32), 6)


def test_stop_tokens_lengths_and_caller_stop(lm: PersonalizedLM) -> None:
    prompt = [5, 9, 17, 33]
    sampled = SamplingParams(max_new_tokens=30, temperature=2.0, seed=7)
    longer, _ = generate_batch(lm, [prompt], [None], [sampled], 0)[0]
    k = next(
        i for i, t in enumerate(longer) if t not in longer[:i] and i > 0
    )  # first new token after the 1st
    stop = SamplingParams(max_new_tokens=30, temperature=2.0, seed=7, stop_token_ids=(longer[k],))
    assert generate_batch(lm, [prompt], [None], [stop], 0)[0] == (longer[:k], "stop")
    first = _reference(lm, prompt, None, 3)
    calls = []

    def on_step(step):
        calls.append(step)
        return {1} if len(calls) == 2 else None

    out = generate_batch(
        lm,
        [prompt, prompt],
        [None, None],
        [SamplingParams(max_new_tokens=4, temperature=0.0)] * 2,
        0,
        on_step,
    )
    assert out[0] == (first + _reference(lm, prompt, None, 4)[3:], "length")
    assert out[1] == (first[:2], "stop")
    assert calls[2][1] is None  # the stopped row produces nothing more


def test_seeded_sampling_is_reproducible_and_independent_of_batch(lm: PersonalizedLM) -> None:
    p = SamplingParams(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=123)
    alone = generate_batch(lm, [[5, 6, 7]], [None], [p], 0)[0]
    again = generate_batch(lm, [[5, 6, 7]], [None], [p], 0)[0]
    paired = generate_batch(lm, [[5, 6, 7], [9, 9]], [None, None], [p, SamplingParams(seed=1)], 0)[0]
    assert alone == again == paired


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), g) for _ in range(300)}
    assert draws == {0, 1}
    assert sample_next(logits, SamplingParams(temperature=0.0), None) == 0


def test_top_k_keeps_only_the_k_most_likely_tokens() -> None:
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, SamplingParams(temperature=1.0, top_k=2), g) for _ in range(300)}
    assert draws == {0, 1}
    assert {sample_next(logits, SamplingParams(temperature=2.0, top_k=1), g) for _ in range(50)} == {0}
    everything = {sample_next(logits, SamplingParams(temperature=1.0, top_k=0), g) for _ in range(300)}
    assert everything == {0, 1, 2, 3}


def test_repetition_penalty_divides_a_seen_positive_logit_and_multiplies_a_negative_one() -> None:
    logits = torch.tensor([2.0, 1.9, -1.0, -1.05])
    before = logits.clone()
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.1)
    assert sample_next(logits, greedy, None) == 0  # nothing seen yet
    assert sample_next(logits, greedy, None, seen=[0, 0]) == 1  # 2.0 / 1.1 < 1.9
    assert sample_next(torch.tensor([-1.0, -1.05]), greedy, None, seen=[0]) == 1  # -1.1 < -1.05
    assert torch.equal(logits, before)  # the caller's logits are left alone


def test_repetition_penalty_matches_transformers_generate(lm: PersonalizedLM) -> None:
    prompts = [[5, 9, 17, 33, 5, 9], [7, 8, 7, 8]]
    params = [SamplingParams(max_new_tokens=8, temperature=0.0, repetition_penalty=5.0)] * 2
    got = generate_batch(lm, prompts, [None, None], params, pad_id=0)
    plain = generate_batch(
        lm, prompts, [None, None], [SamplingParams(max_new_tokens=8, temperature=0.0)] * 2, 0
    )
    for (tokens, _), prompt in zip(got, prompts, strict=True):
        ids = torch.tensor([prompt])
        # the base model from token ids: transformers then penalises the prompt's tokens too, as we do (at
        # 5.0 the answer differs from penalising the generated tokens only)
        ref = lm.base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                               pad_token_id=0, eos_token_id=None, repetition_penalty=5.0)  # fmt: skip
        assert tokens == ref[0, len(prompt) :].tolist()
    assert got != plain  # the penalty changed what was generated


@pytest.mark.parametrize(
    "kwargs",
    [{"max_new_tokens": 0}, {"temperature": 3.0}, {"top_p": 0.0}, {"top_k": -1}, {"repetition_penalty": 0.0}],
)
def test_sampling_params_validate(kwargs) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)

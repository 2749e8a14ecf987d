"""Sampling at the edges of the allowed ranges: tiny temperatures and tiny top_p behave like greedy.

Regression for a schemathesis finding: ``temperature=1e-40`` (valid: the API allows [0, 2]) overflowed
the scaled logits to inf, the softmax gave nan and ``torch.multinomial`` raised, so the completion
failed with a 500; ``top_p=1e-300`` rounded to 0 in float32 and kept no token at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.client_sdk.runtime import generate as phone
from veil.models.generation import SamplingParams, sample_next

TINY = [1e-30, 1e-40, 1e-300, 5e-324]


@pytest.mark.parametrize("temperature", TINY)
@pytest.mark.parametrize("top_p", [1.0, 0.5, 1e-300, 5e-324])
def test_tiny_temperature_or_top_p_picks_the_top_token_in_torch_and_numpy(temperature, top_p) -> None:
    logits = torch.randn(257, generator=torch.Generator().manual_seed(3)) * 30
    params = SamplingParams(max_new_tokens=1, temperature=temperature, top_p=top_p)
    phone_params = phone.SamplingParams(max_new_tokens=1, temperature=temperature, top_p=top_p)
    best = int(logits.argmax())
    assert sample_next(logits, params, torch.Generator().manual_seed(0)) == best
    assert phone.sample_next(logits.numpy(), phone_params, np.random.default_rng(0)) == best


def test_tiny_top_p_keeps_only_the_top_token_at_ordinary_temperatures() -> None:
    logits = torch.zeros(64)
    logits[17] = 0.5  # the most likely token, but far from certain at temperature 1
    params = SamplingParams(max_new_tokens=1, temperature=1.0, top_p=1e-300)
    draws = {sample_next(logits, params, torch.Generator().manual_seed(s)) for s in range(20)}
    assert draws == {17}


# Regression: schemathesis' second 5xx. A seed beyond 64 bits reached torch.Generator.manual_seed,
# which raised inside the batch.
@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, -13032562358911203482271744])
def test_a_seed_beyond_64_bits_is_refused_when_the_params_are_made(seed: int) -> None:
    with pytest.raises(ValueError, match="seed must be in"):
        SamplingParams(max_new_tokens=1, seed=seed)


def test_every_64_bit_seed_seeds_a_generator() -> None:
    for seed in (-(2**63), -1, 0, 2**63 - 1, 2**64 - 1):
        params = SamplingParams(max_new_tokens=1, seed=seed)
        torch.Generator().manual_seed(params.seed)

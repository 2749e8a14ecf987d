"""The one builder of the experiments' from-scratch Llama."""

from __future__ import annotations

import torch

from veil.models.distillation.students import train_metaspace_bpe
from veil.models.scratch import scratch_llama


def test_the_scratch_llama_fits_its_tokenizer_and_is_the_same_for_a_seed() -> None:
    tokenizer = train_metaspace_bpe(["a small road to the north", "the road to the south"] * 20, 320)
    model = scratch_llama(tokenizer, hidden=64, layers=2, seed=3)
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (
        len(tokenizer),
        64,
        192,
        2,
    )
    assert cfg.num_attention_heads == cfg.num_key_value_heads == 2 and cfg.tie_word_embeddings
    assert cfg.eos_token_id == tokenizer.eos_token_id and cfg.bos_token_id is None
    again, other = scratch_llama(tokenizer, 64, 2, seed=3), scratch_llama(tokenizer, 64, 2, seed=4)
    w = model.model.embed_tokens.weight
    assert torch.equal(w, again.model.embed_tokens.weight) and not torch.equal(
        w, other.model.embed_tokens.weight
    )

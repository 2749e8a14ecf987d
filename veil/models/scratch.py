"""The small Llama that Veil's experiments train from scratch on CPU (RAG, translation, long-form, the
distillation teacher): one builder, so every experiment's model reads the same."""

from __future__ import annotations

from typing import Any

__all__ = ["scratch_llama"]


def scratch_llama(tokenizer: Any, hidden: int, layers: int, seed: int, max_positions: int = 1024) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` for ``tokenizer``: feed-forward 3 x ``hidden``, one
    attention head (and one KV head) per 32 dimensions, tied embeddings, no BOS; the weights are drawn
    after ``torch.manual_seed(seed)`` on the CPU, so they are the same on every machine."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 32)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)

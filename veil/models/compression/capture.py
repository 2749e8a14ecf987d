"""Post-RoPE prompt queries, captured by forward hooks on each layer's attention during prefill.

The cache holds keys but not queries; the scoring methods need the queries of the last prompt
positions. A forward hook (with kwargs) on every ``self_attn`` recomputes them from the hook's hidden
states: ``q_proj`` of the last ``w`` positions, ``q_norm`` where the module has one (Qwen3, Gemma3), then
rotate-half RoPE with the layer's ``position_embeddings``. The attention itself keeps running on SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["QueryCapture", "attention_modules"]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every decoder layer, in layer order; ``ValueError`` if they cannot be hooked."""
    found = {
        int(m.layer_idx): m
        for name, m in model.named_modules()
        if name.endswith("self_attn")
        and hasattr(m, "q_proj")
        and hasattr(m, "head_dim")
        and hasattr(m, "layer_idx")
    }
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not found or (n_layers is not None and sorted(found) != list(range(n_layers))):
        raise ValueError(
            f"KV compression needs one attention module per layer with q_proj, head_dim and layer_idx "
            f"(transformers' Llama/Qwen/Mistral layout); {type(model).__name__} has {len(found)} such modules"
            f" for {n_layers} layers"
        )
    return [found[i] for i in sorted(found)]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class QueryCapture:
    """Context manager: while active, records the post-RoPE queries ``(B, H, w, d)`` of the last
    ``window`` positions (``None``: all) of every forward through the given attention modules."""

    def __init__(self, modules: list[nn.Module], window: int | None) -> None:
        self.modules = modules
        self.window = window
        self.queries: dict[int, Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, n, hidden)
        cos, sin = kwargs["position_embeddings"]  # (B, n, d) each
        if self.window is not None:
            w = min(self.window, hidden.shape[1])
            hidden, cos, sin = hidden[:, -w:], cos[:, -w:], sin[:, -w:]
        b, w = hidden.shape[:2]
        q = module.q_proj(hidden).view(b, w, -1, module.head_dim)  # (B, w, H, d)
        if hasattr(module, "q_norm"):
            q = module.q_norm(q)
        q = q.transpose(1, 2)  # (B, H, w, d)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, w, d)
        self.queries[int(module.layer_idx)] = q * cos + _rotate_half(q) * sin

    def __enter__(self) -> QueryCapture:
        if self.window == 0:
            return self
        for m in self.modules:
            self._handles.append(m.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

"""Text in, text out, over a :class:`~veil.models.personalization.PersonalizedLM`: what DeepRAG's loop,
its baselines and its training search call.

DeepRAG (arXiv:2502.01142, §3) drives its model as raw text: the chat template is rendered once for the
user turn, and the assistant's turn so far is continued (prefix continuation) until a stop string such
as ``Intermediate answer:`` or ``Let``. :class:`TextLM` is that interface; :class:`HFTextLM` implements it
with the service's batched generation loop (:func:`veil.models.generation.generate_batch`), greedy,
stopping a row as soon as its decoded text holds a stop string (the cut follows OpenAI's ``stop``: the
text ends before the stop string). Each completion carries its tokens' log-probabilities, which the
confidence-triggered baseline (FLARE, arXiv:2305.06983) reads. A user embedding personalises every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from veil.models.generation import SamplingParams, first_stop, generate_batch
from veil.models.personalization import PersonalizedLM

__all__ = ["Completion", "HFTextLM", "TextLM"]


@dataclass(frozen=True)
class Completion:
    """One continuation.

    Attributes
    ----------
    text: the generated text, cut before the stop string.
    stop: the stop string that ended it; ``None`` at the token limit or the end of the turn.
    logprobs: the log-probability of each generated token that starts before the cut.
    """

    text: str
    stop: str | None
    logprobs: tuple[float, ...] = ()

    @property
    def min_prob(self) -> float:
        """The least likely kept token's probability (1.0 for an empty completion)."""
        return float(np.exp(min(self.logprobs))) if self.logprobs else 1.0


class TextLM(Protocol):
    """Continues raw prompts until a stop string."""

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        """The raw prompt of a one-turn chat whose assistant turn starts with ``assistant_prefix``."""
        ...

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        """One continuation per prompt (greedy, unless the LM is built to sample)."""
        ...


class HFTextLM:
    """:class:`TextLM` over a personalised causal LM and its tokenizer.

    Parameters
    ----------
    lm: the model (a plain transformers model is wrapped with no soft tokens).
    tokenizer: its tokenizer, with a chat template.
    user_embedding: ``(n_tokens, hidden)`` soft tokens for every call, or ``None`` (the population model).
    batch_size: prompts per forward batch.
    temperature: ``0``: greedy (the default); above 0 every continuation is sampled (nucleus ``top_p``).
    top_p: the nucleus mass when sampling.
    seed: with sampling, seeds the k-th row this LM generates with ``seed + k`` (``None``: fresh
        randomness), so a run is reproducible and no two rows share a draw.
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        user_embedding: np.ndarray | None = None,
        batch_size: int = 8,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        SamplingParams(temperature=temperature, top_p=top_p)  # raises on values out of range
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self._calls = 0
        if not isinstance(lm, PersonalizedLM):
            from veil.models.personalization import PersonalizationConfig

            lm = PersonalizedLM(lm, PersonalizationConfig(n_tokens=0, placement="prefix"))
        if user_embedding is not None and lm.config.n_tokens == 0:
            raise ValueError("a user embedding needs a model with soft tokens (n_tokens > 0)")
        self.lm, self.tokenizer, self.user_embedding, self.batch_size = (
            lm.eval(),
            tokenizer,
            user_embedding,
            batch_size,
        )
        eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self._eos = tuple(sorted({int(t) for t in eos if isinstance(t, int) and t >= 0}))
        self._pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos[0])

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return rendered + assistant_prefix

    def complete(
        self, prompts: Sequence[str], stop: Sequence[str] = (), max_new_tokens: int = 64
    ) -> list[Completion]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        out: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._batch(prompts[start : start + self.batch_size], list(stop), max_new_tokens)
        return out

    def _batch(self, prompts: Sequence[str], stop: list[str], max_new_tokens: int) -> list[Completion]:
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        tokens: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        last: dict[str, torch.Tensor] = {}

        def on_logits(logits: torch.Tensor) -> None:
            last["lp"] = torch.log_softmax(logits.float(), dim=-1)

        def on_step(new: list[int | None]) -> set[int]:
            done = set()
            for r, tok in enumerate(new):
                if tok is None:
                    continue
                tokens[r].append(tok)
                logprobs[r].append(float(last["lp"][r, tok]))
                if (
                    stop
                    and first_stop(self.tokenizer.decode(tokens[r], skip_special_tokens=True), stop)
                    is not None
                ):
                    done.add(r)
            return done

        params = [
            SamplingParams(
                max_new_tokens=max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=None if self.seed is None else self.seed + self._calls + r,
                stop_token_ids=self._eos,
            )
            for r in range(len(ids))
        ]
        self._calls += len(ids)
        with torch.inference_mode():
            generate_batch(
                self.lm, ids, [self.user_embedding] * len(ids), params, pad_id=self._pad,
                on_step=on_step, on_logits=on_logits,
            )  # fmt: skip
        return [self._completion(t, lp, stop) for t, lp in zip(tokens, logprobs, strict=True)]

    def _completion(self, tokens: list[int], logprobs: list[float], stop: list[str]) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = first_stop(text, stop)
        if cut is None:
            return Completion(text, None, tuple(logprobs))
        hit = next(s for s in stop if s and text.startswith(s, cut))
        kept = [
            lp
            for i, lp in enumerate(logprobs)
            if len(self.tokenizer.decode(tokens[:i], skip_special_tokens=True)) < cut
        ]
        return Completion(text[:cut], hit, tuple(kept))

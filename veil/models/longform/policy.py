"""The policy LM of the step search: sampled steps that end at a separator.

LongDPO (arXiv:2502.02095, §3.1) grows a response one *step* at a time: a step is one generation call
that ends at a separator, the end of the turn or a token budget, sampled at temperature 0.7 (1.0, top-p
0.8 and top-k 50 for the extra samples of critique refinement). :class:`HFStepPolicy` samples ``n``
steps per prompt in one batch with :func:`veil.models.generation.generate_batch`, seeded per row, and
takes ``top_k`` and ``repetition_penalty`` too (the search passes ``top_k`` only when its critique sets
one, the evaluation ``repetition_penalty`` always).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["HFStepPolicy", "Step", "StepPolicy", "end_of_turn"]


@dataclass(frozen=True)
class Step:
    """One step: its text (with the separator it ended at) and whether it ended the response."""

    text: str
    final: bool


class StepPolicy(Protocol):
    """A policy may also tell its ``context_length`` in tokens; the search then refuses a task whose
    required length cannot fit it (:func:`veil.models.longform.search.check_targets`)."""

    end_text: str
    """What the tokenizer reads as the end of the assistant's turn (appended to a final step's pair)."""

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str: ...

    def steps(
        self, prompts: Sequence[str], n: int, *, separator: str, max_new_tokens: int,
        temperature: float, top_p: float, seed: int, top_k: int = 0, repetition_penalty: float = 1.0,
    ) -> list[list[Step]]:  # fmt: skip
        """``n`` sampled steps for each raw prompt (``top_k`` 0: none; ``repetition_penalty`` 1: none)."""
        ...


def end_of_turn(tokenizer: Any) -> str:
    """The text the chat template puts right after an assistant message (``</s>``, ``<|im_end|>``)."""
    marker = "\u2063veil\u2063"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = rendered.split(marker, 1)[1]
    end = after.split("\n", 1)[0].strip() or tokenizer.eos_token
    if not end:
        raise ValueError("the tokenizer's chat template marks no end of the assistant's turn")
    return end


class HFStepPolicy:
    """:class:`StepPolicy` over a transformers causal LM and its chat tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32) -> None:
        from veil.models.personalization import PersonalizationConfig, PersonalizedLM

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.lm = PersonalizedLM(model, PersonalizationConfig(n_tokens=0, placement="prefix")).eval()
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.end_text = end_of_turn(tokenizer)
        eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(self.end_text)]
        self._eos = tuple(sorted({int(t) for t in eos if isinstance(t, int) and t >= 0}))
        self._pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos[0])

    @property
    def context_length(self) -> int | None:
        """The model's context in tokens (``max_position_embeddings``; ``None`` if it names none)."""
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if n else None

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return rendered + assistant_prefix

    def steps(
        self, prompts: Sequence[str], n: int, *, separator: str, max_new_tokens: int,
        temperature: float, top_p: float, seed: int, top_k: int = 0, repetition_penalty: float = 1.0,
    ) -> list[list[Step]]:  # fmt: skip
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rows = [p for p in prompts for _ in range(n)]
        out: list[Step] = []
        for start in range(0, len(rows), self.batch_size):
            out += self._batch(rows[start : start + self.batch_size], separator, max_new_tokens,
                               temperature, top_p, seed + start, top_k, repetition_penalty)  # fmt: skip
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _batch(
        self, prompts: list[str], separator: str, max_new: int, temperature: float, top_p: float, seed: int,
        top_k: int = 0, repetition_penalty: float = 1.0,
    ) -> list[Step]:  # fmt: skip
        import torch

        from veil.models.generation import SamplingParams, generate_batch

        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        tokens: list[list[int]] = [[] for _ in prompts]
        cut: dict[int, int] = {}

        def on_step(new: list[int | None]) -> set[int]:
            done = set()
            for r, tok in enumerate(new):
                if tok is None:
                    continue
                tokens[r].append(tok)
                text = self.tokenizer.decode(tokens[r], skip_special_tokens=True)
                # a separator counts once some text precedes it (a step is never just a separator)
                lead = len(text) - len(text.lstrip())
                at = text.find(separator, lead) if separator else -1
                if at > lead:
                    cut[r] = at + len(separator)
                    done.add(r)
            return done

        params = [
            SamplingParams(max_new_tokens=max_new, temperature=temperature, top_p=top_p, seed=seed + r,
                           stop_token_ids=self._eos, top_k=top_k, repetition_penalty=repetition_penalty)
            for r in range(len(prompts))
        ]  # fmt: skip
        with torch.inference_mode():
            results = generate_batch(
                self.lm, ids, [None] * len(ids), params, pad_id=self._pad, on_step=on_step
            )
        steps = []
        for r, (_, reason) in enumerate(results):
            text = self.tokenizer.decode(tokens[r], skip_special_tokens=True)
            if r in cut:
                steps.append(Step(text[: cut[r]], final=False))
            else:  # the end of the turn ends the response; the token budget only ends the step
                steps.append(Step(text, final=reason == "stop"))
        return steps

"""Supervised fine-tuning on the translation methods' examples with TRL's ``SFTTrainer``.

Both methods' examples are TRL's conversational prompt-completion form (DRT-o1's
:func:`~veil.models.translation.thought.sft_example`, RAGtrans's
:func:`~veil.models.translation.multitask.multitask_examples`). :func:`tokenize_examples` renders each
with the tokenizer's chat template into ``input_ids`` and a ``completion_mask`` that leaves the prompt
out of the loss. The prompt is tokenized on its own, as :class:`~veil.models.rag.lm.HFTextLM` tokenizes
it at inference, and the answer's tokens follow it: the model learns the continuation it is later asked
for. Training is :func:`veil.models.rag.train.imitate` (the same ``SFTTrainer`` set-up as DeepRAG's
imitation stage) with the settings of :class:`TranslationSFTConfig`, whose defaults are DRT-o1's
backbone scale (arXiv:2412.17498 publishes no optimiser settings; these are Veil's choices for full
fine-tuning of a 135M-8B model: lr 1e-5, 2 epochs, effective batch 8, cosine, 10 % warm-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veil.models.rag.train import ImitationConfig, imitate

__all__ = ["TranslationSFTConfig", "fine_tune", "tokenize_examples"]


@dataclass(frozen=True)
class TranslationSFTConfig:
    """Fine-tuning settings (see the module docstring).

    Attributes
    ----------
    lr, epochs, batch_size, grad_accum, warmup_ratio, seed: as TRL's ``SFTConfig``.
    max_length: examples longer than this many tokens are dropped (not cut: a cut answer teaches a
        translation that stops mid-sentence).
    group_by_length: batches of examples of similar length (less padding), as the imitation stage's.
    """

    lr: float = 1e-5
    epochs: float = 2.0
    batch_size: int = 1
    grad_accum: int = 8
    warmup_ratio: float = 0.1
    max_length: int = 1024
    seed: int = 0
    group_by_length: bool = False

    def __post_init__(self) -> None:
        self.imitation()  # ImitationConfig raises ValueError on a bad setting

    def imitation(self) -> ImitationConfig:
        """The same settings as :func:`veil.models.rag.train.imitate` takes them."""
        return ImitationConfig(
            lr=self.lr, epochs=self.epochs, batch_size=self.batch_size, grad_accum=self.grad_accum,
            warmup_ratio=self.warmup_ratio, max_length=self.max_length, seed=self.seed,
            group_by_length=self.group_by_length,
        )  # fmt: skip


def _answer_text(
    tokenizer: Any, prompt: list[dict[str, str]], completion: list[dict[str, str]]
) -> tuple[str, str]:
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if full.startswith(prompt_text):
        # the template's own end of turn after the answer (e.g. "<|im_end|>\n"), not what follows it
        return prompt_text, full[len(prompt_text) :].rstrip("\n")
    return prompt_text, completion[-1]["content"] + (tokenizer.eos_token or "")


def tokenize_examples(
    tokenizer: Any, examples: Sequence[dict[str, Any]], max_length: int = 1024
) -> list[dict[str, list[int]]]:
    """``{"input_ids", "completion_mask"}`` per example no longer than ``max_length`` tokens."""
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    out = []
    for e in examples:
        if not e.get("prompt") or not e.get("completion"):
            raise ValueError(
                "every example needs a non-empty prompt and completion (TRL's conversational form)"
            )
        prompt_text, answer = _answer_text(tokenizer, list(e["prompt"]), list(e["completion"]))
        p = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if a and len(p) + len(a) <= max_length:
            out.append({"input_ids": p + a, "completion_mask": [0] * len(p) + [1] * len(a)})
    return out


def fine_tune(
    model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], config: TranslationSFTConfig | None = None
) -> dict[str, float]:
    """Fine-tune ``model`` in place on conversational examples; TRL's final training metrics."""
    cfg = config or TranslationSFTConfig()
    tokenized = tokenize_examples(tokenizer, examples, cfg.max_length)
    if not tokenized:
        raise ValueError(f"no example fits max_length={cfg.max_length} tokens")
    return imitate(model, tokenizer, tokenized, cfg.imitation())

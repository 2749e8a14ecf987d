"""The distillation experiment's models: the teachers (trained once, cached in the data directory), the
tokenizers, and each seed's initial students (:mod:`veil.models.distillation.experiment` runs them).

The teachers. SmolLM2-135M-Instruct fine-tuned on the ``teacher`` split, or a small Llama trained from
random weights on it (``ExperimentConfig.teacher``). The dual-teacher method's second teacher, over the
other-tokenizer student's vocabulary, is a Llama twice that student's width trained by SFT on the same
split at :data:`DUAL_TEACHER_LR` (our choice; arXiv:2502.11104 pairs two pretrained LLMs). Both are cached
under a hash of everything they depend on (``ExperimentConfig.teacher_key``, ``dual_teacher_key``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from veil.models.distillation.data import DistillDataConfig, Example, build_dataset
from veil.models.distillation.metrics import SFTConfig, train_sft

if TYPE_CHECKING:
    from veil.models.distillation.experiment import ExperimentConfig

__all__ = [
    "DUAL_TEACHER_LR",
    "Models",
    "build_models",
    "byte_level_bpe",
    "example_texts",
    "initial_students",
    "llama",
]

DUAL_TEACHER_LR = 1e-3


@dataclass
class Models:
    """What every seed shares: the teachers and both tokenizers."""

    teacher: Any
    tokenizer: Any
    other_tokenizer: Any
    other_teacher: Any = None
    vocab: dict[str, Any] = field(default_factory=dict)
    """The ``VocabPair`` of each mapper (``"exact"``, ``"mined"``), built once per run."""
    teacher_info: dict[str, Any] = field(default_factory=dict)


# --- teachers --------------------------------------------------------------------------------------


def example_texts(rows: Sequence[Example]) -> list[str]:
    return [t for e in rows for t in (e.instruction, e.response)]


def byte_level_bpe(texts: Sequence[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE with ``<|im_end|>`` as eos and pad, for the scratch teacher."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")


def llama(vocab: int, hidden: int, layers: int, tokenizer: Any, seed: int, device: str = "cpu") -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32), num_key_value_heads=max(1, hidden // 32),
        max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(device).eval()  # initialised on the CPU: the same weights everywhere


def _teacher(
    cfg: ExperimentConfig, teacher_rows: Sequence[Example], data_dir: Path | None
) -> tuple[Any, Any, dict]:
    """The fine-tuned (or scratch) teacher and its tokenizer, from the cache when present."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = None if data_dir is None else data_dir / "distillation" / "teachers" / cfg.teacher_key()
    info: dict[str, Any] = {"source": cfg.teacher, "steps": cfg.teacher_steps, "key": cfg.teacher_key()}
    if cache is not None and (cache / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32).to(cfg.device).eval()
        return model, AutoTokenizer.from_pretrained(cache), info | {"cached": True, "seconds": 0.0}
    start = time.perf_counter()
    if cfg.teacher == "smollm2":
        from veil.models.loading import load_model

        loaded = load_model(cfg.teacher_model, data_dir)
        model, tokenizer = loaded.model.to(cfg.device), loaded.tokenizer
        tokenizer.padding_side = "right"
    else:
        if cfg.scratch_tokenizer == "smollm2":
            from veil.models.loading import load_tokenizer

            tokenizer = load_tokenizer(cfg.teacher_model, data_dir)
        else:
            tokenizer = byte_level_bpe(example_texts(teacher_rows))
        model = llama(len(tokenizer), cfg.scratch_hidden, cfg.scratch_layers, tokenizer, 0, cfg.device)
    sft = SFTConfig(steps=cfg.teacher_steps, batch_size=cfg.batch_size, lr=cfg.teacher_lr, seed=0,
                    schedule=cfg.teacher_schedule)  # fmt: skip
    train_sft(model, tokenizer, teacher_rows, sft)
    if cache is not None:
        from veil.models.distillation.students import save_student

        save_student(model, tokenizer, cache)
    return model.eval(), tokenizer, info | {"cached": False, "seconds": time.perf_counter() - start}


def build_models(cfg: ExperimentConfig, data_dir: Path | None) -> Models:
    from veil.models.distillation.students import train_metaspace_bpe

    rows = build_dataset(DistillDataConfig(seed=0, n_train=0, n_heldout=0, n_teacher=cfg.n_teacher,
                                           corpus_fraction=0.0)).teacher  # fmt: skip
    teacher, tokenizer, info = _teacher(cfg, rows, data_dir)
    from veil.models.distillation.experiment import CROSS_TOKENIZER_METHODS

    other_tok = train_metaspace_bpe(example_texts(rows), cfg.other_vocab)
    models = Models(teacher, tokenizer, other_tok, teacher_info=info)
    if set(cfg.methods) & set(CROSS_TOKENIZER_METHODS[1:]):
        from veil.models.distillation.vocab_map import VocabPair

        models.vocab = {k: VocabPair.from_tokenizers(tokenizer, other_tok, k) for k in ("exact", "mined")}
    if "dual-teacher" in cfg.methods:
        models.other_teacher, models.teacher_info["dual_teacher"] = _dual_teacher(
            cfg, other_tok, rows, data_dir
        )
    return models


def _dual_teacher(
    cfg: ExperimentConfig, tokenizer: Any, rows: Sequence[Example], data_dir: Path | None
) -> tuple[Any, dict[str, Any]]:
    """The dual method's second teacher, over the student's tokenizer: twice the student's width, SFT on
    the same split; cached beside the main teacher under :meth:`ExperimentConfig.dual_teacher_key`."""
    from transformers import AutoModelForCausalLM

    key = cfg.dual_teacher_key(tokenizer)
    cache = None if data_dir is None else data_dir / "distillation" / "dual-teachers" / key
    if cache is not None and (cache / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32).to(cfg.device).eval()
        return model, {"key": key, "cached": True, "seconds": 0.0}
    start = time.perf_counter()
    model = llama(len(tokenizer), cfg.other_hidden * 2, cfg.other_layers, tokenizer, 0, cfg.device)
    train_sft(model, tokenizer, rows,
              SFTConfig(steps=cfg.dual_steps, batch_size=cfg.batch_size, lr=DUAL_TEACHER_LR, seed=0))  # fmt: skip
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(cache)
    return model.eval(), {"key": key, "cached": False, "seconds": time.perf_counter() - start}


def initial_students(m: Models, cfg: ExperimentConfig, seed: int) -> tuple[Any, Any]:
    from veil.models.distillation.students import StudentConfig, same_tokenizer_student

    same = same_tokenizer_student(m.teacher.config, cfg=StudentConfig(scale=cfg.student_scale, seed=seed),
                                  teacher=m.teacher).to(cfg.device)  # fmt: skip
    other = llama(
        len(m.other_tokenizer), cfg.other_hidden, cfg.other_layers, m.other_tokenizer, seed, cfg.device
    )
    return same, other

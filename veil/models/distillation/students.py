"""Student models for distilling a Llama teacher (SmolLM2-135M-Instruct by default).

- :func:`same_tokenizer_student`: a shallower (optionally narrower) Llama sharing the teacher's
  tokenizer and vocabulary, for same-tokenizer KD and Warmup-Distill (arXiv:2502.11766). By default
  it is initialised from the teacher: token embeddings, the first ``k`` decoder layers and the final
  norm are copied, as DistilBERT initialises its student from teacher layers (arXiv:1910.01108,
  section 3; DistilBERT takes every other layer, here the first ``k`` so the kept layers still feed
  each other as in the teacher). Warmup-Distill probes what the student already generates, which
  is only meaningful for a student that generates text at all; ``init="random"`` gives a student
  trained from scratch instead.
- :func:`other_tokenizer_student`: a small random Llama over a tokenizer trained here
  (:func:`train_metaspace_bpe`), for cross-tokenizer KD such as CDM (arXiv:2502.11104). The
  tokenizer is a Metaspace BPE with byte fallback (the SentencePiece-BPE style of Llama 2,
  arXiv:2307.09288), unlike the teacher's byte-level BPE, so token boundaries and spellings differ
  (``▁word`` against ``Ġword``). Its chat template writes :data:`~veil.models.distillation.data.PLAIN_PROMPT`.
  :func:`save_student` writes a directory that :func:`veil.models.loading.load_model` and
  ``veil export-onnx --lm DIR`` load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "PLAIN_CHAT_TEMPLATE",
    "OtherTokenizerStudentConfig",
    "StudentConfig",
    "other_tokenizer_student",
    "same_tokenizer_student",
    "save_student",
    "train_metaspace_bpe",
]

PAD, EOS = "<pad>", "</s>"
_SPACE = "\u2581"  # "▁", SentencePiece's visible space

PLAIN_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}{{ 'Response:\\n' + m['content'] + '</s>' + '\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'Instruction:\\n' + m['content'] + '\\n' }}"
    "{%- else -%}{{ m['content'] + '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Response:\\n' }}{%- endif -%}"
)
"""A chat template whose prompt for one user turn is ``PLAIN_PROMPT`` (the response then ends in ``</s>``)."""


@dataclass
class StudentConfig:
    """A same-tokenizer student's shape and initialisation.

    Attributes
    ----------
    scale: the fraction of the teacher's decoder layers kept (at least one).
    width_scale: the fraction of the teacher's attention heads (and so hidden size, at the teacher's
        head size and query/key-value grouping) and MLP width kept; must be 1 with ``init="teacher"``.
    init: ``"teacher"`` copies embeddings, the first layers and the final norm from the teacher;
        ``"random"`` draws fresh weights.
    seed: seeds the random initialisation.
    """

    scale: float = 0.2
    width_scale: float = 1.0
    init: Literal["teacher", "random"] = "teacher"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")
        if not 0.0 < self.width_scale <= 1.0:
            raise ValueError(f"width_scale must be in (0, 1], got {self.width_scale}")
        if self.init not in ("teacher", "random"):
            raise ValueError(f"init must be 'teacher' or 'random', got {self.init!r}")
        if self.init == "teacher" and self.width_scale != 1.0:
            raise ValueError(
                f"init='teacher' copies whole layers, so width_scale must be 1, got {self.width_scale}"
            )


def _student_llama_config(teacher_config: Any, cfg: StudentConfig) -> Any:
    from transformers import LlamaConfig

    t = teacher_config.to_dict()
    heads, kv = teacher_config.num_attention_heads, teacher_config.num_key_value_heads
    head_dim = getattr(teacher_config, "head_dim", None) or teacher_config.hidden_size // heads
    # SmolLM2: 9 query heads in 3 groups; width 1/3 -> 1 kv head x 3 queries = 3 heads, hidden 192
    kv_new = max(1, round(kv * cfg.width_scale))
    heads_new = kv_new * (heads // kv)
    t.update(
        num_hidden_layers=max(1, round(teacher_config.num_hidden_layers * cfg.scale)),
        num_attention_heads=heads_new,
        num_key_value_heads=kv_new,
        hidden_size=heads_new * head_dim,
        head_dim=head_dim,
        intermediate_size=max(8, round(teacher_config.intermediate_size * cfg.width_scale / 8) * 8),
    )
    for key in ("architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        t.pop(key, None)
    return LlamaConfig(**t)


def same_tokenizer_student(
    teacher_config: Any, scale: float | None = None, cfg: StudentConfig | None = None, teacher: Any = None
) -> Any:
    """A smaller ``LlamaForCausalLM`` with the teacher's vocabulary (see :class:`StudentConfig`).

    Parameters
    ----------
    teacher_config: the teacher's ``LlamaConfig`` (``teacher.config``).
    scale: overrides ``cfg.scale``.
    teacher: the teacher model; required when ``cfg.init == "teacher"``.
    """
    import torch
    from transformers import LlamaForCausalLM

    cfg = cfg or StudentConfig()
    if scale is not None:
        cfg = StudentConfig(scale=scale, width_scale=cfg.width_scale, init=cfg.init, seed=cfg.seed)
    if cfg.init == "teacher" and teacher is None:
        raise ValueError("init='teacher' needs the teacher model (teacher=...)")
    config = _student_llama_config(teacher_config, cfg)
    torch.manual_seed(cfg.seed)
    student = LlamaForCausalLM(config)
    if cfg.init == "teacher":
        k = config.num_hidden_layers
        src, dst = teacher.model, student.model
        dst.embed_tokens.load_state_dict(src.embed_tokens.state_dict())
        dst.norm.load_state_dict(src.norm.state_dict())
        for i in range(k):
            dst.layers[i].load_state_dict(src.layers[i].state_dict())
        if not config.tie_word_embeddings:
            student.lm_head.load_state_dict(teacher.lm_head.state_dict())
    return student.eval()


def train_metaspace_bpe(texts: Iterable[str], vocab_size: int = 6000, min_frequency: int = 2) -> Any:
    """Train a Metaspace BPE with byte fallback on ``texts``; a ``PreTrainedTokenizerFast``.

    Ids: ``<pad>`` 0, ``</s>`` 1 (eos), the 256 byte tokens ``<0x00>``..``<0xFF>`` 2-257, then the
    learned merges, ``vocab_size`` in all. Any text round-trips (unseen characters fall back to their
    UTF-8 bytes) except leading spaces, which the decoder strips like SentencePiece does.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    n_fixed = 2 + 256
    if vocab_size <= n_fixed:
        raise ValueError(f"vocab_size must exceed the {n_fixed} special and byte tokens, got {vocab_size}")
    pre = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="first", split=True)
    draft = Tokenizer(models.BPE())
    draft.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256,
        min_frequency=min_frequency,
        special_tokens=[PAD, EOS],
        show_progress=False,
    )
    draft.train_from_iterator(texts, trainer)
    learned = json.loads(draft.to_str())["model"]
    # the byte tokens must be ordinary vocabulary entries (not special tokens) for ByteFallback to
    # decode them, so the learned vocabulary is rebuilt with them placed after the two specials
    vocab = {PAD: 0, EOS: 1} | {f"<0x{b:02X}>": 2 + b for b in range(256)}
    for piece in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tok.pre_tokenizer = pre
    # the decoder of Llama 2's tokenizer.json: "▁" -> " ", bytes -> characters, drop the first space
    tok.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in (PAD, EOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=PLAIN_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


@dataclass
class OtherTokenizerStudentConfig:
    """A student over its own tokenizer: the tokenizer's size and the Llama's shape.

    Attributes
    ----------
    vocab_size: of the trained tokenizer (4-8k suits the corpora here).
    min_frequency: a merge must occur this often in the training text.
    hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: the Llama's shape.
    max_position_embeddings: the longest sequence.
    seed: seeds the random initialisation.
    """

    vocab_size: int = 6000
    min_frequency: int = 2
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 768
    max_position_embeddings: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads or self.hidden_size % self.num_heads:
            raise ValueError(
                f"need num_kv_heads | num_heads | hidden_size, got {self.num_kv_heads}, "
                f"{self.num_heads}, {self.hidden_size}"
            )
        if min(self.num_layers, self.intermediate_size, self.max_position_embeddings) < 1:
            raise ValueError("num_layers, intermediate_size and max_position_embeddings must be >= 1")


def other_tokenizer_student(
    texts: Iterable[str], cfg: OtherTokenizerStudentConfig | None = None, out_dir: Path | str | None = None
) -> tuple[Any, Any]:
    """Train a tokenizer on ``texts`` and build a random Llama for it; ``(model, tokenizer)``.

    With ``out_dir`` both are saved there (:func:`save_student`).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or OtherTokenizerStudentConfig()
    tokenizer = train_metaspace_bpe(texts, cfg.vocab_size, cfg.min_frequency)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config).eval()
    if out_dir is not None:
        save_student(model, tokenizer, out_dir)
    return model, tokenizer


def save_student(model: Any, tokenizer: Any, out_dir: Path | str) -> Path:
    """Save model and tokenizer to one directory, loadable by ``load_model`` and ``export-onnx --lm``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

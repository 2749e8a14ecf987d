"""The distillation experiment: every method against SFT, on one initial student, over seeds.

What is compared, at equal optimiser steps, batch size and training data (the ``train`` split of
:mod:`veil.models.distillation.data`, templated tasks whose true answer distributions are known):

- same-tokenizer student (:func:`~veil.models.distillation.students.same_tokenizer_student`, the
  teacher's first layers): ``sft``; GKD with forward, reverse, skewed forward and adaptive KL
  (``kd-*``, arXiv:2306.13649, arXiv:2402.03898, arXiv:2404.02657); ``warmup-distill``
  (arXiv:2502.11766: warm-up, then KD with forward KL; the warm-up's optimiser steps are taken from
  the KD budget, so the total stays equal);
- other-tokenizer student (a small Llama over a Metaspace BPE trained here): ``sft-other-tokenizer``;
  ``cdm`` (arXiv:2502.11104), ``uld`` (arXiv:2402.12030), ``minED`` (arXiv:2401.10491) and
  ``dual-teacher`` (CDM plus a teacher sharing the student's tokenizer, arXiv:2502.11104).

Every KD method is compared with SFT of its own student. Bits per character of the held-out reference
responses is the tokenizer-independent figure; NLL per token, ROUGE-L and exact match ("accuracy",
defined on the single-answer tasks) are reported too (:func:`~veil.models.distillation.metrics.evaluate`).

The teacher. SmolLM2-135M-Instruct does not know the templated answer distributions, so it is first
fine-tuned (SFT) on the ``teacher`` split; the result is cached in the data directory under a key of
the teacher's settings, so later runs reuse it. ``teacher="scratch"`` instead trains a small Llama from
random weights, over SmolLM2's tokenizer or a byte-level BPE trained here (tests; no model files).

The quick preset (``--quick``, 12.8 minutes measured on 2 shared CPU cores) trains the scratch teacher over
SmolLM2's tokenizer, not SmolLM2 itself: on 2 shared CPU cores, 40 SFT steps of SmolLM2-135M on
batches of 8 templated chat examples had not finished after 4 minutes, and every KD step needs a
teacher forward pass besides the student's, so the same-tokenizer KD methods alone would take about an
hour over three seeds. The full preset uses SmolLM2. The dual-teacher
method needs a second teacher over the *student's* tokenizer: a Llama twice the other-tokenizer
student's width, trained by SFT on the same ``teacher`` split (our choice; the paper pairs two
pretrained LLMs), cached beside the first teacher under a key that includes the student's vocabulary.

Every model and batch lives on ``ExperimentConfig.device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``); the
helpers take the device from the model they feed.

Runtime of :meth:`ExperimentConfig.quick` on 2 CPU cores: see ``benchmarks/README.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from veil.models.distillation.data import (
    DistillData,
    DistillDataConfig,
    Example,
    build_dataset,
    collate,
    encode_example,
    model_device,
)
from veil.models.distillation.metrics import EvalReport, SFTConfig, evaluate, train_sft

__all__ = [
    "CROSS_TOKENIZER_METHODS",
    "METHODS",
    "SAME_TOKENIZER_METHODS",
    "ExperimentConfig",
    "MethodName",
    "run_distillation_experiment",
]

MethodName = Literal[
    "sft",
    "kd-forward-kl",
    "kd-reverse-kl",
    "kd-skewed-forward-kl",
    "kd-adaptive-kl",
    "warmup-distill",
    "sft-other-tokenizer",
    "cdm",
    "uld",
    "minED",
    "dual-teacher",
]
METHODS: tuple[str, ...] = get_args(MethodName)
SAME_TOKENIZER_METHODS = METHODS[:6]
CROSS_TOKENIZER_METHODS = METHODS[6:]
KD_LOSSES = {
    "kd-forward-kl": "forward_kl",
    "kd-reverse-kl": "reverse_kl",
    "kd-skewed-forward-kl": "skewed_forward_kl",
    "kd-adaptive-kl": "adaptive_kl",
}
IGNORE_INDEX = -100
DUAL_TEACHER_LR = 1e-3


@dataclass
class ExperimentConfig:
    """One run of the comparison.

    Attributes
    ----------
    teacher: ``"smollm2"`` (SmolLM2-135M-Instruct fine-tuned on the teacher split) or ``"scratch"``.
    teacher_model: the registered model name or directory of the ``"smollm2"`` teacher (and of the
        tokenizer of a scratch teacher with ``scratch_tokenizer="smollm2"``).
    scratch_tokenizer: a scratch teacher's tokenizer, SmolLM2's (``"smollm2"``) or a 512-token
        byte-level BPE trained here (``"bpe"``, needs no model files).
    teacher_steps, teacher_lr: SFT of the teacher on the ``teacher`` split.
    scratch_layers, scratch_hidden: the ``"scratch"`` teacher's Llama shape.
    n_teacher, n_train, n_heldout: split sizes (templated tasks only).
    seeds: data, student initialisation and training order of each repetition.
    student_scale: the same-tokenizer student's share of the teacher's layers.
    other_vocab, other_hidden, other_layers: the other-tokenizer student.
    steps, batch_size, lr: every method's training budget.
    lmbda: GKD's on-policy fraction for the ``kd-*`` methods and warmup-distill's KD.
    max_new_tokens: longest generation (evaluation, on-policy samples, warm-up samples).
    warmup_prompts, warmup_samples: Warmup-Distill's probe (prompts x samples per prompt).
    cdm_top_k: CDM's top-K (the paper's 100 needs vocabularies far larger than ``other_vocab``).
    headline: the distilled method of the "beats SFT" check.
    methods: which methods run.
    device: where every model and batch lives: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Seeded draws
        (batch order, on-policy coins, samples) come from CPU generators on every device; CUDA kernels
        still round differently from the CPU's, so numbers agree across devices only approximately.
    threads: torch's intra-op CPU threads during the run, restored afterwards (``None``: unchanged).
    """

    teacher: Literal["smollm2", "scratch"] = "smollm2"
    teacher_model: str = "smollm2-135m-instruct"
    scratch_tokenizer: Literal["smollm2", "bpe"] = "smollm2"
    teacher_steps: int = 300
    teacher_lr: float = 1e-4
    scratch_layers: int = 2
    scratch_hidden: int = 64
    n_teacher: int = 2000
    n_train: int = 300
    n_heldout: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    student_scale: float = 0.2
    other_vocab: int = 1000
    other_hidden: int = 128
    other_layers: int = 2
    steps: int = 100
    batch_size: int = 8
    lr: float = 5e-4
    lmbda: float = 0.5
    max_new_tokens: int = 24
    warmup_prompts: int = 16
    warmup_samples: int = 2
    cdm_top_k: int = 20
    headline: str = "kd-forward-kl"
    methods: tuple[str, ...] = METHODS
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        _check_device(self.device)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        if self.teacher not in ("smollm2", "scratch"):
            raise ValueError(f"teacher must be 'smollm2' or 'scratch', got {self.teacher!r}")
        if self.scratch_tokenizer not in ("smollm2", "bpe"):
            raise ValueError(f"scratch_tokenizer must be 'smollm2' or 'bpe', got {self.scratch_tokenizer!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown method(s) {unknown or '(none)'}; known: {', '.join(METHODS)}")
        if not self.seeds:
            raise ValueError("need at least one seed")
        for name in ("teacher_steps", "n_teacher", "n_train", "n_heldout", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {self.lmbda}")

    @classmethod
    def quick(cls, seeds: int = 3) -> ExperimentConfig:
        """A 4 x 128 Llama over SmolLM2's tokenizer trained from scratch (not SmolLM2: see the module
        docstring), 2-layer students, 60 steps per method; 12.8 minutes measured on 2 shared CPU cores, teachers included.

        What keeps it there (2-core VM shared with other jobs, one seed of every method timed):

        - ``threads=1``: the models are 64-128 wide, too small to split one op over threads; with a
          second busy process on the machine, two threads made a teacher SFT step 10x slower (3-5 s
          against 0.3-0.4 s), the largest single cost of the earlier 27.5-minute run.
        - ``max_new_tokens=12`` (was 16): the longest reference response is 11 SmolLM2 tokens with
          eos, so every reference still fits; it bounds on-policy samples and evaluation generations.
        - Unchanged, because the comparison needs them: three seeds, 60 steps per method, a 300-step
          teacher on 2,000 examples, 200 training and 40 held-out examples, GKD's ``lmbda=0.25``,
          the 8 x 2 warm-up probe. The other savings are computational and change no result beyond
          rounding: the output head runs on response positions only (KD, warm-up, cross-tokenizer
          losses, sampling), and the dual teacher is cached beside the main teacher.
        """
        return cls(
            teacher="scratch", scratch_tokenizer="smollm2", scratch_layers=4, scratch_hidden=128,
            teacher_steps=300, teacher_lr=2e-3, n_teacher=2000, n_train=200, n_heldout=40,
            seeds=tuple(range(seeds)), student_scale=0.5, other_hidden=64, steps=60, lr=1e-3,
            lmbda=0.25, max_new_tokens=12, warmup_prompts=8, warmup_samples=2, threads=1,
        )  # fmt: skip

    @classmethod
    def full(cls, seeds: int = 3) -> ExperimentConfig:
        """The defaults: a 300-step teacher, 300 training examples, 100 steps per method."""
        return cls(seeds=tuple(range(seeds)))

    def teacher_key(self) -> str:
        """A short hash of everything the fine-tuned teacher depends on."""
        keys = ("teacher", "teacher_model", "teacher_steps", "teacher_lr", "n_teacher", "batch_size")
        keys += ("scratch_layers", "scratch_hidden", "scratch_tokenizer") if self.teacher == "scratch" else ()
        return _short_hash({k: getattr(self, k) for k in keys} | self._device_key())

    def dual_teacher_key(self, other_tokenizer: Any) -> str:
        """A short hash of everything the dual method's second teacher depends on, its tokenizer included."""
        keys = ("n_teacher", "teacher_steps", "batch_size", "other_hidden", "other_layers")
        vocab = sorted(other_tokenizer.get_vocab().items())
        return _short_hash({k: getattr(self, k) for k in keys} | {"lr": DUAL_TEACHER_LR, "vocab": vocab}
                           | self._device_key())  # fmt: skip

    def _device_key(self) -> dict[str, str]:
        # a teacher trained on a GPU rounds differently; CPU keys stay those of runs before ``device``
        return {} if self.device == "cpu" else {"device": "cuda"}


def _short_hash(blob: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _check_device(device: str) -> None:
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs CUDA, but torch.cuda.is_available() is False")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")


@dataclass
class _Models:
    """What every seed shares: the teachers and both tokenizers."""

    teacher: Any
    tokenizer: Any
    other_tokenizer: Any
    other_teacher: Any = None
    vocab: dict[str, Any] = field(default_factory=dict)
    """The ``VocabPair`` of each mapper (``"exact"``, ``"mined"``), built once per run."""
    teacher_info: dict[str, Any] = field(default_factory=dict)


# --- teachers --------------------------------------------------------------------------------------


def _texts(rows: Sequence[Example]) -> list[str]:
    return [t for e in rows for t in (e.instruction, e.response)]


def _byte_level_bpe(texts: Sequence[str], vocab_size: int = 512) -> Any:
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


def _llama(vocab: int, hidden: int, layers: int, tokenizer: Any, seed: int, device: str = "cpu") -> Any:
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
            tokenizer = _byte_level_bpe(_texts(teacher_rows))
        model = _llama(len(tokenizer), cfg.scratch_hidden, cfg.scratch_layers, tokenizer, 0, cfg.device)
    sft = SFTConfig(steps=cfg.teacher_steps, batch_size=cfg.batch_size, lr=cfg.teacher_lr, seed=0)
    train_sft(model, tokenizer, teacher_rows, sft)
    if cache is not None:
        from veil.models.distillation.students import save_student

        save_student(model, tokenizer, cache)
    return model.eval(), tokenizer, info | {"cached": False, "seconds": time.perf_counter() - start}


def _models(cfg: ExperimentConfig, data_dir: Path | None) -> _Models:
    from veil.models.distillation.students import train_metaspace_bpe

    rows = build_dataset(DistillDataConfig(seed=0, n_train=0, n_heldout=0, n_teacher=cfg.n_teacher,
                                           corpus_fraction=0.0)).teacher  # fmt: skip
    teacher, tokenizer, info = _teacher(cfg, rows, data_dir)
    other_tok = train_metaspace_bpe(_texts(rows), cfg.other_vocab)
    models = _Models(teacher, tokenizer, other_tok, teacher_info=info)
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
    model = _llama(len(tokenizer), cfg.other_hidden * 2, cfg.other_layers, tokenizer, 0, cfg.device)
    train_sft(model, tokenizer, rows,
              SFTConfig(steps=cfg.teacher_steps, batch_size=cfg.batch_size, lr=DUAL_TEACHER_LR, seed=0))  # fmt: skip
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(cache)
    return model.eval(), {"key": key, "cached": False, "seconds": time.perf_counter() - start}


# --- methods ---------------------------------------------------------------------------------------


def _split(tokenizer: Any, rows: Sequence[Example]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and response ids (eos included) of each example."""
    enc = [encode_example(tokenizer, e.instruction, e.response) for e in rows]
    prompts = [r.input_ids[: r.response_mask.index(1)] for r in enc]
    responses = [r.input_ids[r.response_mask.index(1) :] for r in enc]
    return prompts, responses


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _kd(cfg: ExperimentConfig, seed: int, loss: str, steps: int | None = None) -> Any:
    from veil.models.distillation.kd import KDConfig

    return KDConfig(loss=loss, lmbda=cfg.lmbda, max_new_tokens=cfg.max_new_tokens, steps=steps or cfg.steps,
                    lr=cfg.lr, batch_size=cfg.batch_size, seed=seed)  # fmt: skip


def run_kd(
    student: Any, m: _Models, rows: Sequence[Example], cfg: ExperimentConfig, seed: int, loss: str
) -> None:
    """GKD with ``loss`` from the teacher's responses (``lmbda`` of them the student's own)."""
    from veil.models.distillation.kd import distill

    prompts, responses = _split(m.tokenizer, rows)
    tok = m.tokenizer
    distill(
        student,
        m.teacher,
        prompts,
        responses,
        _kd(cfg, seed, loss),
        eos_id=tok.eos_token_id,
        pad_id=_pad_id(tok),
    )


def run_warmup_distill(
    student: Any, m: _Models, rows: Sequence[Example], cfg: ExperimentConfig, seed: int
) -> Any:
    """Warm-up on corrected student samples, then forward-KL KD for the rest of the step budget."""
    from veil.models.distillation.kd import distill
    from veil.models.distillation.warmup import WarmupConfig, warm_up

    prompts, responses = _split(m.tokenizer, rows)
    tok = m.tokenizer
    ids = dict(eos_id=tok.eos_token_id, pad_id=_pad_id(tok))
    warm = WarmupConfig(n_samples=cfg.warmup_samples, max_new_tokens=cfg.max_new_tokens, lr=cfg.lr,
                        batch_size=cfg.batch_size, seed=seed)  # fmt: skip
    report = warm_up(student, m.teacher, prompts[: cfg.warmup_prompts], warm, **ids)
    kd_steps = max(1, cfg.steps - len(report.losses))
    distill(student, m.teacher, prompts, responses, _kd(cfg, seed, "forward_kl", kd_steps), **ids)
    return report


def _shifted(model: Any, tokenizer: Any, rows: Sequence[Example], grad: bool) -> tuple[Tensor, Tensor]:
    """Logits ``(B, R, V)`` and labels ``(B, R)`` of the responses: ``logits[b, r]`` predicts
    ``labels[b, r]``, the ``r``-th token of row ``b``'s response; -100 past its end (``R``: the longest).

    The cross-tokenizer losses read labelled positions only, in order, so the prompt positions are left
    out before the output head, the largest matmul when the vocabulary is large.
    """
    encoded = [encode_example(tokenizer, e.instruction, e.response) for e in rows]
    device = model_device(model)
    batch = collate(encoded, _pad_id(tokenizer), device)
    starts = [r.response_mask.index(1) for r in encoded]
    lengths = [len(r.input_ids) - s for r, s in zip(encoded, starts, strict=True)]
    width, longest = batch["input_ids"].shape[1], max(lengths)
    # prompt [p1 p2] + response [r1 eos]: position 1 (p2) predicts r1, position 2 (r1) predicts eos;
    # positions past a row's end are clamped into the row, their labels are -100
    where = [[min(s - 1 + r, width - 1) for r in range(longest)] for s in starts]
    labels = [
        r.input_ids[s:] + [IGNORE_INDEX] * (longest - n)
        for r, s, n in zip(encoded, starts, lengths, strict=True)
    ]
    index = torch.tensor(where, device=device)  # (B, R)
    with torch.set_grad_enabled(grad):
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = hidden.last_hidden_state  # (B, L, H)
        picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, R, H)
        logits = model.get_output_embeddings()(picked)
    return logits, torch.tensor(labels, device=device)


CrossLoss = Callable[[Tensor, Tensor, Tensor, Tensor, list[Example]], Tensor]


def run_cross(
    student: Any, m: _Models, rows: Sequence[Example], cfg: ExperimentConfig, seed: int, loss: CrossLoss
) -> None:
    """A cross-tokenizer loop: the same examples under both tokenizers, ``loss(s_logits, s_labels, t_logits, t_labels, batch)``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    m.teacher.eval()
    student.train()
    for _ in range(cfg.steps):
        batch = [rows[i] for i in torch.randperm(len(rows), generator=gen)[: cfg.batch_size].tolist()]
        t_logits, t_labels = _shifted(m.teacher, m.tokenizer, batch, grad=False)
        s_logits, s_labels = _shifted(student, m.other_tokenizer, batch, grad=True)
        value = loss(s_logits, s_labels, t_logits, t_labels, batch)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
    student.eval()


def _cross_losses(m: _Models, cfg: ExperimentConfig) -> dict[str, CrossLoss]:
    from veil.models.distillation.cdm import CDMConfig, DualTeacherConfig, cdm_loss, dual_teacher_loss
    from veil.models.distillation.mined import mined_loss
    from veil.models.distillation.uld import uld_loss

    exact, mined = m.vocab["exact"], m.vocab["mined"]
    cdm_cfg = CDMConfig(top_k=cfg.cdm_top_k)
    dual_cfg = DualTeacherConfig(top_k=cfg.cdm_top_k)

    def dual(s, sl, t, tl, batch):  # noqa: ANN001, ANN202 - the CrossLoss signature
        same, _ = _shifted(m.other_teacher, m.other_tokenizer, batch, grad=False)
        return dual_teacher_loss(s, sl, same, t, tl, exact, dual_cfg)

    return {
        "cdm": lambda s, sl, t, tl, _: cdm_loss(s, sl, t, tl, exact, cdm_cfg).loss,
        "uld": lambda s, sl, t, tl, _: uld_loss(s, sl, t, tl),
        "minED": lambda s, sl, t, tl, _: mined_loss(s, sl, t, tl, mined),
        "dual-teacher": dual,
    }


# --- the run ---------------------------------------------------------------------------------------


def _metrics(report: EvalReport) -> dict[str, float]:
    return {
        "nll": report.nll_per_token,
        "bits_per_char": report.bits_per_char,
        "rouge_l": report.rouge_l,
        "accuracy": report.exact_match if report.exact_match is not None else float("nan"),
        "kl_to_truth": report.kl_to_truth if report.kl_to_truth is not None else float("nan"),
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _students(m: _Models, cfg: ExperimentConfig, seed: int) -> tuple[Any, Any]:
    from veil.models.distillation.students import StudentConfig, same_tokenizer_student

    same = same_tokenizer_student(m.teacher.config, cfg=StudentConfig(scale=cfg.student_scale, seed=seed),
                                  teacher=m.teacher).to(cfg.device)  # fmt: skip
    other = _llama(
        len(m.other_tokenizer), cfg.other_hidden, cfg.other_layers, m.other_tokenizer, seed, cfg.device
    )
    return same, other


def _one_seed(
    m: _Models,
    cfg: ExperimentConfig,
    seed: int,
    data: DistillData,
    tick: Callable[[], None],
    keep: dict[str, tuple[Any, Any]] | None = None,
) -> tuple[dict, Any]:
    """Every method on ``seed``'s data; with ``keep``, each trained student and its tokenizer go in it."""
    same0, other0 = _students(m, cfg, seed)
    cross = _cross_losses(m, cfg) if m.vocab else {}
    sft = SFTConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)
    out: dict[str, dict[str, float]] = {}
    warm = None
    for method in cfg.methods:
        start = time.perf_counter()
        if method in SAME_TOKENIZER_METHODS:
            student, tok = copy.deepcopy(same0), m.tokenizer
        else:
            student, tok = copy.deepcopy(other0), m.other_tokenizer
        if method.startswith("sft"):
            train_sft(student, tok, data.train, sft)
        elif method in KD_LOSSES:
            run_kd(student, m, data.train, cfg, seed, KD_LOSSES[method])
        elif method == "warmup-distill":
            warm = run_warmup_distill(student, m, data.train, cfg, seed)
        else:
            run_cross(student, m, data.train, cfg, seed, cross[method])
        out[method] = _metrics(evaluate(student, tok, data.heldout, cfg.max_new_tokens))
        out[method]["seconds"] = time.perf_counter() - start  # training and evaluation
        if keep is not None:
            keep[method] = (student, tok)
        tick()
    return out, warm


def run_distillation_experiment(
    cfg: ExperimentConfig,
    data_dir: Path | str | None = None,
    progress: Any = None,
    save_student: Path | str | None = None,
) -> dict[str, Any]:
    """Run every method of ``cfg`` over its seeds; the JSON-ready result (see ``veil experiment distillation``).

    ``data_dir`` caches the fine-tuned teachers (``None``: no cache); ``progress`` is a
    :class:`veil.progress.Progress` (default: none shown). ``save_student`` is a folder for the best
    student: first seed's student of the method with the lowest mean held-out bits/char, saved with its
    tokenizer (:func:`~veil.models.distillation.students.save_student`) for ``veil export-onnx --lm``;
    the result's ``student`` says which.
    """
    previous = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, Path(data_dir) if data_dir is not None else None, progress,
                    Path(save_student) if save_student is not None else None)  # fmt: skip
    finally:
        torch.set_num_threads(previous)


def _run(cfg: ExperimentConfig, data_dir: Path | None, progress: Any, save_to: Path | None) -> dict[str, Any]:
    from veil.progress import NullProgress

    progress = progress or NullProgress()
    start = time.perf_counter()
    with progress.stage(f"teacher ({cfg.teacher}, {cfg.teacher_steps} SFT steps, cached)", None):
        m = _models(cfg, data_dir)
    per_seed: dict[str, list[dict[str, float]]] = {k: [] for k in cfg.methods}
    warmups = []
    teacher_eval = None
    kept: dict[str, tuple[Any, Any]] = {}
    with progress.stage("methods x seeds", len(cfg.methods) * len(cfg.seeds)) as bar:
        for seed in cfg.seeds:
            data = build_dataset(DistillDataConfig(seed=seed, n_train=cfg.n_train, n_heldout=cfg.n_heldout,
                                                   n_teacher=0, corpus_fraction=0.0))  # fmt: skip
            if teacher_eval is None:
                teacher_eval = _metrics(evaluate(m.teacher, m.tokenizer, data.heldout, cfg.max_new_tokens))
            keep = kept if save_to is not None and seed == cfg.seeds[0] else None
            results, warm = _one_seed(m, cfg, seed, data, bar.advance, keep)
            for k, v in results.items():
                per_seed[k].append(v)
            if warm is not None:
                warmups.append(warm)
    methods = {}
    for name, rows in per_seed.items():
        summary: dict[str, Any] = {}
        for metric in rows[0]:
            summary[metric], summary[f"{metric}_std"] = _mean_std([r[metric] for r in rows])
        methods[name] = summary | {
            "per_seed": [{"seed": s} | r for s, r in zip(cfg.seeds, rows, strict=True)]
        }
    saved = _save_best(kept, methods, cfg.seeds[0], save_to) if save_to is not None else None
    return {
        "config": dataclasses.asdict(cfg),
        "methods": methods,
        "student": saved,
        "warmup": _warmup_summary(warmups),
        "teacher": m.teacher_info | (teacher_eval or {}),
        "checks": _checks(cfg, per_seed, warmups),
        "seconds": time.perf_counter() - start,
    }


def _save_best(
    kept: dict[str, tuple[Any, Any]], methods: dict[str, dict[str, Any]], seed: int, out: Path
) -> dict[str, Any]:
    """Save the kept student of the method with the lowest mean bits/char to ``out``; what was saved."""
    from veil.models.distillation.students import save_student

    best = min(kept, key=lambda name: methods[name]["bits_per_char"])
    model, tokenizer = kept[best]
    save_student(model.cpu(), tokenizer, out)
    return {"method": best, "seed": seed, "path": str(out), "bits_per_char": methods[best]["bits_per_char"]}


def _warmup_summary(reports: Sequence[Any]) -> dict[str, Any]:
    if not reports:
        return {}
    rows = [{"flagged_rate_before": r.before.flagged_rate, "flagged_rate_after": r.after.flagged_rate,
             "teacher_nll_before": r.before.teacher_nll, "teacher_nll_after": r.after.teacher_nll,
             "n_samples": r.n_samples, "n_corrected": r.n_corrected, "steps": len(r.losses)} for r in reports]  # fmt: skip
    means = {k: _mean_std([r[k] for r in rows])[0] for k in rows[0]}
    return means | {"per_seed": rows}


def _checks(cfg: ExperimentConfig, per_seed: dict[str, list[dict]], warmups: Sequence[Any]) -> dict[str, Any]:
    """Computed, not asserted: which distilled students beat their own SFT on bits/char in every seed."""

    def beats(method: str, baseline: str) -> bool | None:
        if method not in per_seed or baseline not in per_seed:
            return None
        pairs = zip(per_seed[method], per_seed[baseline], strict=True)
        return all(a["bits_per_char"] < b["bits_per_char"] for a, b in pairs)

    wins = {m: beats(m, "sft") for m in SAME_TOKENIZER_METHODS[1:]}
    wins |= {m: beats(m, "sft-other-tokenizer") for m in CROSS_TOKENIZER_METHODS[1:]}
    baseline = "sft" if cfg.headline in SAME_TOKENIZER_METHODS else "sft-other-tokenizer"
    lowered = [r.after.flagged_rate < r.before.flagged_rate for r in warmups]
    return {
        "headline": cfg.headline,
        "headline_beats_sft_every_seed": beats(cfg.headline, baseline),
        "beats_own_sft_every_seed": {k: v for k, v in wins.items() if v is not None},
        "warmup_lowers_flagged_rate_every_seed": all(lowered) if lowered else None,
    }

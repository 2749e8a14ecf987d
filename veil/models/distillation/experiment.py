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
fine-tuned (SFT) on the ``teacher`` split; ``teacher="scratch"`` instead trains a small Llama from
random weights, over SmolLM2's tokenizer or a byte-level BPE trained here. Either way the teacher must
know the task better than the student can learn it from the ``train`` split, or there is nothing to
distil: it sees ten times the data, and its held-out bits/char is reported next to the students'.
Teachers are built and cached by :mod:`veil.models.distillation.pairs`; each method's training lives in
:mod:`veil.models.distillation.methods`.

The quick preset (``--quick``) trains the scratch teacher over a 512-token byte-level BPE, not
SmolLM2: on 2 shared CPU cores, 40 SFT steps of SmolLM2-135M on batches of 8 templated chat examples
had not finished after 4 minutes, and every KD step needs a teacher forward pass besides the
student's, so the same-tokenizer KD methods alone would take about an hour over three seeds. The full
preset uses SmolLM2 (for a GPU: ``--device cuda``).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from veil.models.distillation.data import DistillData, DistillDataConfig, build_dataset
from veil.models.distillation.methods import cross_losses, run_cross, run_kd, run_warmup_distill
from veil.models.distillation.metrics import EvalReport, SFTConfig, evaluate, train_sft
from veil.models.distillation.pairs import DUAL_TEACHER_LR, Models, build_models, initial_students

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
    teacher_steps, teacher_lr, teacher_schedule: SFT of the teacher on the ``teacher`` split; cosine decay
        (our choice) reached 0.53 held-out bits/char in 1,500 steps of the quick preset's scratch teacher
        where a constant rate reached 0.66.
    dual_teacher_steps: SFT steps of the dual-teacher method's second teacher (``None``: ``teacher_steps``).
    scratch_layers, scratch_hidden: the ``"scratch"`` teacher's Llama shape.
    n_teacher, n_train, n_heldout: split sizes (templated tasks only).
    seeds: data, student initialisation and training order of each repetition.
    student_scale: the same-tokenizer student's share of the teacher's layers.
    other_vocab, other_hidden, other_layers: the other-tokenizer student.
    steps, batch_size, lr: every method's training budget.
    other_steps: the other-tokenizer student's steps (``sft-other-tokenizer`` and the cross-tokenizer
        methods alike; ``None``: ``steps``). That student starts from random weights: at 60 steps it
        barely leaves the start (ROUGE-L 0) and no method differs from SFT beyond noise; at 300 (one
        seed, quick preset otherwise) CDM, ULD and dual-teacher beat its SFT on bits/char (1.87, 1.93,
        1.67 against 2.29).
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
    teacher_schedule: Literal["constant", "cosine"] = "cosine"
    dual_teacher_steps: int | None = None
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
    other_steps: int | None = None
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
        for name in (
            "teacher_steps",
            "dual_steps",
            "cross_steps",
            "n_teacher",
            "n_train",
            "n_heldout",
            "steps",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {self.lmbda}")

    @classmethod
    def quick(cls, seeds: int = 3) -> ExperimentConfig:
        """A 4 x 128 Llama over a 512-token byte-level BPE trained from scratch as the teacher (not SmolLM2:
        see the module docstring), 2-layer students, 60 steps per method, on 2 CPU cores.

        What it is built on (2-core VM, one thread, one seed timed, see ``benchmarks/README.md``):

        - The teacher must know the task better than the student can learn it from the ``train`` split,
          or there is nothing to distil. The earlier preset's teacher (over SmolLM2's 49,152-token
          vocabulary, 300 constant-rate steps) reached 1.29 held-out bits/char, worse than the SFT
          student's 1.10, and every KD method lost to SFT. With a 512-token vocabulary a step costs a
          fraction as much, so the teacher gets 1,500 steps with cosine decay and reaches 0.57.
        - ``n_train=100``: the few-labels regime where soft targets carry the most (arXiv:1503.02531,
          section 1). With 200 examples the SFT student came within seed noise of the teacher
          (0.63-0.76 bits/char against 0.57), every KD loss beat SFT on the mean over three seeds
          (0.659-0.681 against 0.687) but only adaptive KL did so in every seed.
        - ``threads=1``: the models are 64-128 wide, too small to split one op over threads; with a
          second busy process on the machine, two threads made a step several times slower.
        - ``dual_teacher_steps=600``: the dual method's second teacher is a 2 x 128 model over 1,000 tokens.
        - ``n_heldout=100``: 40 held-out examples left differences between methods within noise.
        - ``warmup_prompts=32``: Warmup-Distill's probe of the student (64 samples), large enough for the
          flagged-token rate before and after warm-up to be compared.
        - ``max_new_tokens=12``: every reference response fits; it bounds on-policy samples and
          evaluation generations.
        """
        return cls(
            teacher="scratch", scratch_tokenizer="bpe", scratch_layers=4, scratch_hidden=128,
            teacher_steps=1500, teacher_lr=3e-3, teacher_schedule="cosine", dual_teacher_steps=600,
            n_teacher=2000, n_train=100, n_heldout=100, seeds=tuple(range(seeds)), student_scale=0.5,
            other_hidden=64, steps=60, lr=1e-3, lmbda=0.25, max_new_tokens=12, warmup_prompts=32,
            warmup_samples=2, threads=1,
        )  # fmt: skip

    @classmethod
    def full(cls, seeds: int = 3) -> ExperimentConfig:
        """The defaults: a 300-step teacher, 300 training examples, 100 steps per method."""
        return cls(seeds=tuple(range(seeds)))

    def teacher_key(self) -> str:
        """A short hash of everything the fine-tuned teacher depends on."""
        keys = ("teacher", "teacher_model", "teacher_steps", "teacher_lr", "teacher_schedule", "n_teacher",
                "batch_size")  # fmt: skip
        keys += ("scratch_layers", "scratch_hidden", "scratch_tokenizer") if self.teacher == "scratch" else ()
        return _short_hash({k: getattr(self, k) for k in keys} | self._device_key())

    @property
    def cross_steps(self) -> int:
        """Optimiser steps of the other-tokenizer student's methods."""
        return self.steps if self.other_steps is None else self.other_steps

    @property
    def dual_steps(self) -> int:
        """SFT steps of the dual method's second teacher."""
        return self.teacher_steps if self.dual_teacher_steps is None else self.dual_teacher_steps

    def dual_teacher_key(self, other_tokenizer: Any) -> str:
        """A short hash of everything the dual method's second teacher depends on, its tokenizer included."""
        keys = ("n_teacher", "dual_steps", "batch_size", "other_hidden", "other_layers")
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


def _one_seed(
    m: Models,
    cfg: ExperimentConfig,
    seed: int,
    data: DistillData,
    tick: Callable[[], None],
    keep: dict[str, tuple[Any, Any]] | None = None,
) -> tuple[dict, Any]:
    """Every method on ``seed``'s data; with ``keep``, each trained student and its tokenizer go in it."""
    same0, other0 = initial_students(m, cfg, seed)
    cross = cross_losses(m, cfg) if m.vocab else {}
    sft = SFTConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)
    sft_other = dataclasses.replace(sft, steps=cfg.cross_steps)
    out: dict[str, dict[str, float]] = {}
    warm = None
    for method in cfg.methods:
        start = time.perf_counter()
        if method in SAME_TOKENIZER_METHODS:
            student, tok = copy.deepcopy(same0), m.tokenizer
        else:
            student, tok = copy.deepcopy(other0), m.other_tokenizer
        if method.startswith("sft"):
            train_sft(student, tok, data.train, sft if method == "sft" else sft_other)
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
    start, cpu_start = time.perf_counter(), time.process_time()
    with progress.stage(f"teacher ({cfg.teacher}, {cfg.teacher_steps} SFT steps, cached)", None):
        m = build_models(cfg, data_dir)
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
        # CPU time of this process: with one thread, what the wall time would be on an idle machine
        "cpu_seconds": time.process_time() - cpu_start,
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

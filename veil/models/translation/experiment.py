"""The translation experiment: document-grounded translation (RAGtrans, arXiv:2412.04342) with no, clean
and noisy documents on small models trained from scratch, and long-thought translation (DRT-o1,
arXiv:2412.17498) on a local instruct model.

* :mod:`~veil.models.translation.grounded_experiment`: two small Llamas trained from scratch at the same
  budget, one on RAGtrans-style multi-task data, one on translation records alone, on the generated
  document-grounded set (held-out entities); BLEU, chrF and term accuracy with no, clean, irrelevant
  and namesake documents, with and without the relevance judge; each judge's accuracy against chance;
  the named (served) model zero-shot the same ways.
* :mod:`~veil.models.translation.thought_experiment`: the translator/advisor/evaluator loop over the
  named model (SmolLM2-135M-Instruct by default): the evaluators' discrimination, the loop's score
  gain on similes, whether it holds against HSK references, and DRT synthesis end to end (rewrite,
  fine-tune, parse).

The checks (the issue's claims) are computed from the numbers, never asserted. Every stage's CPU seconds
(one torch thread by default) are recorded next to the wall-clock ones, since the machine is shared.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from veil.models.rag.lm import TextLM
from veil.models.translation.grounded import GroundedSetConfig
from veil.models.translation.grounded_experiment import GroundedExperimentConfig
from veil.models.translation.long_thought import LongThoughtConfig
from veil.models.translation.sft import TranslationSFTConfig
from veil.models.translation.thought_experiment import LongThoughtExperimentConfig
from veil.progress import NullProgress, Progress

__all__ = ["TranslationExperimentConfig", "run_translation_experiment"]


@dataclass(frozen=True)
class TranslationExperimentConfig:
    """One run. ``quick()`` is the 2-core preset.

    Attributes
    ----------
    model: the served model (every long-thought role, and the grounded half's zero-shot rows), by the name
        :func:`veil.models.loading.load_model` takes.
    grounded: the document-grounded experiment (``None``: skipped).
    long_thought: the long-thought experiment (``None``: skipped).
    threads: torch's CPU threads during the run, restored afterwards.
    """

    model: str = "smollm2-135m-instruct"
    grounded: GroundedExperimentConfig | None = field(default_factory=GroundedExperimentConfig)
    long_thought: LongThoughtExperimentConfig | None = field(default_factory=LongThoughtExperimentConfig)
    threads: int = 1

    @classmethod
    def quick(cls) -> TranslationExperimentConfig:
        """About 20 minutes of one core: the from-scratch models on a few thousand examples, the served
        model zero-shot on 32 of their test examples, the loop on 8 similes and 4 HSK sentences with two
        rounds of four sampled revisions each, DRT fine-tuning on what improved."""
        return cls(
            grounded=GroundedExperimentConfig(
                grounded_set=GroundedSetConfig(n_examples=600, rendering_pool=40), test_examples=64, hsk_pairs=300,
                train_examples=2400,
            ),
            long_thought=LongThoughtExperimentConfig(
                simile_examples=8, hsk_examples=4, discrimination_examples=16,
                long_thought=LongThoughtConfig(max_rounds=2, keyword_tokens=32, translation_tokens=40,
                                               advice_tokens=40, revision_samples=4),
                drt_records=8, drt_test=4, drt_tokens=160,
                drt_sft=TranslationSFTConfig(lr=1e-4, epochs=1, batch_size=1, grad_accum=2, max_length=768),
            ),
        )  # fmt: skip

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.grounded is None and self.long_thought is None:
            raise ValueError("nothing to run: grounded and long_thought are both None")


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "platform": platform.platform(),
    }


def run_translation_experiment(
    cfg: TranslationExperimentConfig | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    lm: TextLM | None = None,
) -> dict[str, Any]:
    """Run both halves; a JSON-ready dict with ``document_grounded``, ``long_thought``, ``checks``,
    ``seconds`` and ``cpu_seconds``.

    ``lm`` replaces the named long-thought model (a scripted stand-in in tests: only the ``rating``
    evaluator then, and no DRT fine-tuning).
    """
    import torch

    cfg = cfg or TranslationExperimentConfig()
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, data_dir, progress or NullProgress(), lm)
    finally:
        torch.set_num_threads(previous)


def _run(
    cfg: TranslationExperimentConfig, data_dir: Any, progress: Progress, lm: TextLM | None
) -> dict[str, Any]:
    from veil.models.translation.grounded_experiment import run_grounded_experiment
    from veil.models.translation.thought_experiment import run_long_thought_experiment

    wall, cpu = time.perf_counter(), time.process_time()
    result: dict[str, Any] = {"config": dataclasses.asdict(cfg), "machine_before": _machine()}
    seconds: dict[str, float] = {}
    grounded = thought = None
    model = tokenizer = None
    served = cfg.grounded is not None and cfg.grounded.served_examples > 0
    if lm is None and (cfg.long_thought is not None or served):
        from veil.models.loading import load_model
        from veil.models.rag.lm import HFTextLM

        loaded = load_model(cfg.model, data_dir)
        model, tokenizer = loaded.model.eval(), loaded.tokenizer
        lm = HFTextLM(model, tokenizer, batch_size=8)
    if cfg.grounded is not None:  # first: DRT's fine-tuning below changes the named model
        t0 = time.perf_counter()
        grounded = run_grounded_experiment(cfg.grounded, progress, lm if served else None)
        seconds["grounded_s"] = round(time.perf_counter() - t0, 1)
    if cfg.long_thought is not None and lm is not None:
        t0 = time.perf_counter()
        lt = cfg.long_thought
        thought = run_long_thought_experiment(
            lt, lm, _similes(lt.simile_examples + lt.drt_test),
            _hsk(lt.discrimination_examples + lt.hsk_examples), model, tokenizer, progress,
        )  # fmt: skip
        seconds["long_thought_s"] = round(time.perf_counter() - t0, 1)
    seconds["total_s"] = round(time.perf_counter() - wall, 1)
    return result | {
        "machine_after": _machine(),
        "document_grounded": grounded,
        "long_thought": thought,
        "checks": {**(grounded["checks"] if grounded else {}), **_thought_checks(thought)},
        "seconds": seconds,
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }


def _thought_checks(thought: dict[str, Any] | None) -> dict[str, bool | None]:
    """Computed, never asserted; ``None`` where the part did not run."""
    if thought is None:
        return {}
    s, h, d = thought.get("similes"), thought.get("hsk"), thought.get("drt")
    disc = (thought.get("discrimination") or {}).get(thought["evaluator"])
    return {
        "evaluator_discriminates": disc["pairwise_accuracy"] > 0.5 if disc else None,
        "long_thought_improves_on_similes": s["final_score"] > s["draft_score"] if s else None,
        "long_thought_gain_holds_on_hsk_references": h["final_chrf"] > h["draft_chrf"] if h else None,
        "drt_answers_parse_complete": d["complete_share"] >= 0.5 if d and "complete_share" in d else None,
    }


def _hsk(n: int) -> list[Any]:
    if n == 0:
        return []
    from veil.models.translation.data import hsk_pairs

    # from the end of the list: the grounded experiment's parallel text is its start
    return hsk_pairs("en", "zh")[-n:]


def _similes(n: int) -> list[str]:
    if n == 0:
        return []
    from veil.models.translation.similes import simile_set

    # every k-th sentence, so each source (Wikipedia, news, reviews) is represented
    found = simile_set()
    step = max(1, len(found) // n)
    return [s.text for s in found[::step][:n]]

"""The long-thought half of the translation experiment (DRT-o1, arXiv:2412.17498), on one local model
that plays translator, advisor and (through an evaluator of :mod:`~veil.models.translation.evaluators`)
the evaluator:

1. **Can the evaluator score?** On HSK pairs, each evaluator scores the reference and another pair's
   reference as translations of the source; its pairwise accuracy (ties count half) against chance 0.5.
2. **Does the loop improve the evaluator's score?** The loop on the simile set (no references): the mean
   score of the first draft against the final translation's, the share of sources improved, and the
   share of revisions that beat the translation they revise (with accept-if-better, the final score
   cannot fall below the draft's, so this win rate says whether the revisions, not the selection, help).
3. **Is the gain real?** The loop on HSK sentences, which have references: chrF and BLEU of the drafts
   and of the final translations.
4. **DRT synthesis end to end:** the traces that improved are rewritten into MetaphorTrans records
   (:func:`~veil.models.translation.long_thought.to_record`), the model is fine-tuned on them in DRT-o1's
   format (:func:`~veil.models.translation.long_thought.training_example`, TRL), and answers held-out
   similes under DRT-o1's prompts; each answer is parsed by
   :func:`~veil.models.translation.thought.parse_long_thought`, and the share of complete
   ``<thought>/<output>`` answers and of each fallback is reported. This changes the model's weights, so
   it runs last.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from veil.models.rag.lm import TextLM
from veil.models.translation.evaluators import EVALUATORS, Scorer, make_scorer
from veil.models.translation.long_thought import LongThoughtConfig, LongThoughtLoop, LongThoughtTrace
from veil.models.translation.sft import TranslationSFTConfig
from veil.progress import NullProgress, Progress

__all__ = ["LongThoughtExperimentConfig", "run_long_thought_experiment"]


@dataclass(frozen=True)
class LongThoughtExperimentConfig:
    """The long-thought experiment (see the module docstring).

    Attributes
    ----------
    simile_examples: simile sentences the loop runs on (spread over the set's sources).
    hsk_examples: HSK sentences the loop runs on (scored against their references).
    discrimination_examples: HSK pairs each evaluator is tested on (0: skip).
    evaluator: the loop's evaluator, one of :data:`~veil.models.translation.evaluators.EVALUATORS`
        (``round_trip``: the one whose score a revision can raise, see that module).
    compared_evaluators: the evaluators whose discrimination is measured.
    long_thought: the loop's settings.
    drt_records: the most rewritten traces the model is fine-tuned on (0: no DRT fine-tuning).
    drt_test: held-out similes the fine-tuned model answers.
    drt_sft: the DRT fine-tuning (arXiv:2412.17498 publishes no optimiser settings).
    drt_tokens: the fine-tuned model's generation budget per answer.
    revision_temperature: the temperature of the sampler that draws revisions when
        ``long_thought.revision_samples > 1`` (the translator's model, sampling).
    seed: seeds the sampler.
    """

    simile_examples: int = 50
    hsk_examples: int = 50
    discrimination_examples: int = 100
    evaluator: str = "round_trip"
    compared_evaluators: tuple[str, ...] = EVALUATORS
    long_thought: LongThoughtConfig = field(default_factory=lambda: LongThoughtConfig(revision_samples=4))
    drt_records: int = 64
    drt_test: int = 16
    drt_sft: TranslationSFTConfig = field(default_factory=lambda: TranslationSFTConfig(lr=5e-5, epochs=2))
    drt_tokens: int = 512
    revision_temperature: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.revision_temperature <= 2.0:
            raise ValueError(f"revision_temperature must be in (0, 2], got {self.revision_temperature}")
        if self.evaluator not in EVALUATORS or not set(self.compared_evaluators) <= set(EVALUATORS):
            raise ValueError(
                f"evaluator and compared_evaluators must be among {EVALUATORS}, got {self.evaluator!r}, "
                f"{self.compared_evaluators}"
            )
        counts = (self.simile_examples, self.hsk_examples, self.discrimination_examples, self.drt_records,
                  self.drt_test)  # fmt: skip
        if min(counts) < 0 or self.drt_tokens < 1:
            raise ValueError(
                f"example counts must be >= 0 and drt_tokens >= 1, got {counts}, {self.drt_tokens}"
            )


def _mean(xs: Sequence[float]) -> float:
    return round(sum(xs) / len(xs), 2) if xs else 0.0


def discrimination(scorer: Scorer, sources: list[str], references: list[str]) -> dict[str, float]:
    """Pairwise accuracy of ``scorer``: the reference against the next pair's, as a translation of the
    source (ties count half; chance is 0.5)."""
    wrong = references[1:] + references[:1]
    right_scores, wrong_scores = scorer.score(sources, references), scorer.score(sources, wrong)
    wins = sum(
        1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(right_scores, wrong_scores, strict=True)
    )
    return {
        "pairwise_accuracy": round(wins / len(sources), 4),
        "ties": round(sum(a == b for a, b in zip(right_scores, wrong_scores, strict=True)) / len(sources), 4),
        "mean_reference_score": _mean(right_scores),
        "mean_mismatched_score": _mean(wrong_scores),
    }


def loop_summary(traces: list[LongThoughtTrace]) -> dict[str, Any]:
    """Scores of the first draft and the final translation, and how the revisions fared."""
    revisions = [r for t in traces for r in t.rounds[1:]]
    return {
        "sentences": len(traces),
        "draft_score": _mean([t.rounds[0].score for t in traces]),
        "final_score": _mean([t.best.score for t in traces]),
        "improved_share": round(sum(t.improved for t in traces) / len(traces), 4),
        "revisions": len(revisions),
        "revision_win_rate": round(sum(r.accepted for r in revisions) / len(revisions), 4)
        if revisions
        else None,
        "mean_rounds": _mean([len(t.rounds) - 1 for t in traces]),
        "stopped_at_threshold": round(sum(t.stopped == "threshold" for t in traces) / len(traces), 4),
        "examples": [
            {"source": t.source, "draft": t.rounds[0].translation, "final": t.final} for t in traces[:3]
        ],
    }


def run_long_thought_experiment(
    cfg: LongThoughtExperimentConfig,
    lm: TextLM,
    similes: list[str],
    hsk: list[Any],
    model: Any = None,
    tokenizer: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the four parts over ``lm`` (``model`` and ``tokenizer`` behind it for the logit-based
    evaluators and the DRT fine-tuning; without them only ``rating`` runs and no model is trained).

    ``similes``: the loop's sentences then the DRT test sentences; ``hsk``: pairs for the discrimination
    test, then the loop's HSK sentences.
    """
    from veil.models.translation.metrics import corpus_bleu, corpus_chrf

    progress = progress or NullProgress()
    lt = cfg.long_thought
    cpu: dict[str, float] = {}
    clock = time.process_time()

    def lap(name: str) -> None:
        nonlocal clock
        cpu[name] = round(time.process_time() - clock, 1)
        clock = time.process_time()

    out: dict[str, Any] = {"evaluator": cfg.evaluator}
    pairs, loop_hsk = (
        hsk[: cfg.discrimination_examples],
        hsk[cfg.discrimination_examples :][: cfg.hsk_examples],
    )
    compared = (
        cfg.compared_evaluators
        if model is not None
        else tuple(e for e in cfg.compared_evaluators if e == "rating")
    )
    if pairs and compared:
        with progress.stage("evaluator discrimination", len(compared)) as bar:
            out["discrimination"] = {}
            for name in compared:
                scorer = make_scorer(name, lm, model, tokenizer, lt.source_language, lt.target_language)
                out["discrimination"][name] = discrimination(
                    scorer, [p.source for p in pairs], [p.target for p in pairs]
                )
                bar.advance(1)
        lap("discrimination_cpu_s")
    scorer = make_scorer(cfg.evaluator, lm, model, tokenizer, lt.source_language, lt.target_language)
    sampler = None
    if lt.revision_samples > 1:
        from veil.models.rag.lm import HFTextLM

        # a scripted stand-in (no model) draws its own "samples"
        sampler = (
            HFTextLM(model, tokenizer, batch_size=16, temperature=cfg.revision_temperature, seed=cfg.seed)
            if model is not None
            else lm
        )
    loop = LongThoughtLoop(lm, config=lt, scorer=scorer, sampler=sampler)
    loop_similes, drt_test = similes[: cfg.simile_examples], similes[cfg.simile_examples :][: cfg.drt_test]
    traces: list[LongThoughtTrace] = []
    if loop_similes:
        with progress.stage("long-thought loop (similes)", None):
            simile_traces = loop.run(loop_similes)
        out["similes"] = loop_summary(simile_traces)
        traces += simile_traces
        lap("similes_cpu_s")
    if loop_hsk:
        with progress.stage("long-thought loop (HSK)", None):
            hsk_traces = loop.run([p.source for p in loop_hsk])
        refs = [p.target for p in loop_hsk]
        drafts, finals = [t.rounds[0].translation for t in hsk_traces], [t.final for t in hsk_traces]
        out["hsk"] = loop_summary(hsk_traces) | {
            "draft_chrf": round(corpus_chrf(drafts, refs).score, 2),
            "final_chrf": round(corpus_chrf(finals, refs).score, 2),
            "draft_bleu": round(corpus_bleu(drafts, refs, "zh").score, 2),
            "final_bleu": round(corpus_bleu(finals, refs, "zh").score, 2),
        }
        traces += hsk_traces
        lap("hsk_cpu_s")
    out["drt"] = _drt(cfg, traces, drt_test, model, tokenizer, progress) if model is not None else None
    lap("drt_cpu_s")
    out["cpu_seconds"] = cpu
    return out


def _drt(
    cfg: LongThoughtExperimentConfig,
    traces: list[LongThoughtTrace],
    test: list[str],
    model: Any,
    tokenizer: Any,
    progress: Progress,
) -> dict[str, Any]:
    """Rewrite, fine-tune, answer and parse (part 4 of the module docstring)."""
    from veil.models.rag.lm import HFTextLM
    from veil.models.translation.long_thought import to_record, training_example
    from veil.models.translation.sft import fine_tune, tokenize_examples
    from veil.models.translation.thought import DRT_SYSTEM_PROMPT, drt_user_prompt, parse_long_thought

    lt = cfg.long_thought
    records = [r for t in traces if (r := to_record(t, lt.require_improvement)) is not None][
        : cfg.drt_records
    ]
    out: dict[str, Any] = {"traces": len(traces), "records": len(records)}
    if not records or cfg.drt_records == 0:
        return out | {"trained": False}
    examples = [training_example(r, lt.source_language, lt.target_language) for r in records]
    lengths = [len(e["input_ids"]) for e in tokenize_examples(tokenizer, examples, cfg.drt_sft.max_length)]
    if not lengths:
        return out | {
            "trained": False,
            "reason": f"no record fits max_length={cfg.drt_sft.max_length} tokens",
        }
    with progress.stage(f"DRT fine-tuning ({len(records)} records)", None):
        metrics = fine_tune(model.train(), tokenizer, examples, cfg.drt_sft)
    out |= {"trained": True, "train_loss": round(float(metrics.get("train_loss", 0.0)), 4),
            "mean_example_tokens": _mean(lengths)}  # fmt: skip
    if not test:
        return out
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": DRT_SYSTEM_PROMPT},
             {"role": "user", "content": drt_user_prompt(s, lt.source_language, lt.target_language)}],
            tokenize=False, add_generation_prompt=True,
        )
        for s in test
    ]  # fmt: skip
    with progress.stage(f"DRT answers ({len(test)} held-out similes)", None):
        answers = HFTextLM(model.eval(), tokenizer, batch_size=8).complete(
            prompts, max_new_tokens=cfg.drt_tokens
        )
    parsed = [parse_long_thought(a.text) for a in answers]
    sources: dict[str, int] = {}
    for p in parsed:
        sources[p.source] = sources.get(p.source, 0) + 1
    return out | {
        "test": len(test),
        "complete_share": round(sum(p.complete for p in parsed) / len(parsed), 4),
        "parsed_by": sources,
        "nonempty_translation_share": round(
            sum(bool(p.translation.strip()) for p in parsed) / len(parsed), 4
        ),
        "mean_answer_chars": _mean([len(a.text) for a in answers]),
        "examples": [
            {"source": s, "answer": a.text[:400], "translation": p.translation}
            for s, a, p in list(zip(test, answers, parsed, strict=True))[:2]
        ],  # fmt: skip
    }

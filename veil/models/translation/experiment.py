"""The translation experiment: direct, long-thought (DRT-o1, arXiv:2412.17498) and document-grounded
translation (RAGtrans, arXiv:2412.04342) with clean, noisy and no documents, on one local model.

Data (all offline):

* the generated document-grounded set (:mod:`~veil.models.translation.grounded`), English to Chinese,
  where each name's rendering is stated only in its documents. The last ``test_examples`` examples are
  evaluated; the others (other entities) are the multi-task training data when ``train_examples > 0``;
* HSK sentences (:func:`~veil.models.translation.data.hsk_pairs`), English to Chinese, for direct and
  long-thought translation of everyday text (``hsk_examples``, the first of the set);
* the literary simile set (:func:`~veil.models.translation.similes.simile_set`), which has no references:
  there the long-thought loop is judged by its own evaluator's scores, first draft against final.

Methods, each over the same :class:`~veil.models.rag.lm.HFTextLM` (greedy):

* ``direct``: :func:`~veil.models.translation.grounded_translate.translation_prompt` without documents.
  Document-grounded translation with *no* documents uses exactly this prompt, so it is this row;
* ``long_thought``: the translator/advisor/evaluator loop's final translation, the model in every role;
* ``document_<noise>``: grounded translation with the example's ``clean``, ``irrelevant`` or ``partial``
  (namesake) document, judged by ``grounded.relevance`` first; with ``unfiltered`` also ``..._all``,
  every document kept, to show what the relevance judge saves.

Scores: corpus BLEU (sacreBLEU, ``zh`` tokenizer) and chrF against the references, and on the generated
set the term accuracy (the share of outputs holding the name's rendering). The checks are computed, not
asserted: a clean document raises BLEU over no document; each noisy kind costs at most
``noisy_tolerance_bleu`` BLEU against no document; the loop's final score beats the first draft's, on
average, on the simile set.

Optional training (``train_examples > 0``): the model is first fine-tuned with TRL on the multi-task
examples (:mod:`~veil.models.translation.multitask`) built from the training entities (clean and
irrelevant documents), their English/Chinese documents as parallel text, and HSK pairs not evaluated.
On 2 CPU cores one SmolLM2-135M example costs about 12 s, so the quick preset does not train.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from veil.models.rag.lm import Completion, HFTextLM, TextLM
from veil.models.translation.grounded import GroundedSetConfig, grounded_records, grounded_set
from veil.models.translation.grounded_translate import GroundedConfig, GroundedTranslator
from veil.models.translation.long_thought import LongThoughtConfig, LongThoughtLoop
from veil.models.translation.metrics import corpus_bleu, corpus_chrf, term_accuracy
from veil.models.translation.sft import TranslationSFTConfig
from veil.progress import NullProgress, Progress

__all__ = ["TranslationExperimentConfig", "run_translation_experiment"]

NOISES = ("clean", "irrelevant", "partial")


@dataclass(frozen=True)
class TranslationExperimentConfig:
    """One run. ``quick()`` is the 2-core preset.

    Attributes
    ----------
    model: the model, by the name :func:`veil.models.loading.load_model` takes.
    grounded_set: the generated set (its size covers the test and training examples).
    test_examples: generated examples evaluated (the set's last ones).
    hsk_examples: HSK pairs translated English to Chinese by ``direct`` and ``long_thought`` (0: none).
    simile_examples: simile sentences the loop runs on (0: none).
    long_thought: the loop's settings.
    grounded: document-grounded translation's settings (the relevance judge).
    unfiltered: also translate with every noisy document kept (``relevance="all"``).
    noisy_tolerance_bleu: the BLEU a noisy document may cost against none and still "cost little".
    train_examples: multi-task training examples (0: no training).
    sft: the fine-tuning settings.
    batch_size: prompts per generation batch.
    threads: torch's CPU threads during the run, restored afterwards.
    """

    model: str = "smollm2-135m-instruct"
    grounded_set: GroundedSetConfig = field(default_factory=lambda: GroundedSetConfig(n_examples=400))
    test_examples: int = 100
    hsk_examples: int = 100
    simile_examples: int = 50
    long_thought: LongThoughtConfig = field(default_factory=LongThoughtConfig)
    grounded: GroundedConfig = field(default_factory=GroundedConfig)
    unfiltered: bool = True
    noisy_tolerance_bleu: float = 1.0
    train_examples: int = 2000
    sft: TranslationSFTConfig = field(default_factory=lambda: TranslationSFTConfig(lr=5e-5, epochs=1))
    batch_size: int = 8
    threads: int = 1

    @classmethod
    def quick(cls) -> TranslationExperimentConfig:
        """SmolLM2 inference only, on small samples with short generations: minutes on 2 CPU cores."""
        return cls(
            grounded_set=GroundedSetConfig(n_examples=16),
            test_examples=16,
            hsk_examples=8,
            simile_examples=8,
            long_thought=LongThoughtConfig(
                max_rounds=2, keyword_tokens=32, translation_tokens=40, advice_tokens=40
            ),
            grounded=GroundedConfig(translation_tokens=40),
            unfiltered=False,
            train_examples=0,
        )

    def __post_init__(self) -> None:
        if not 1 <= self.test_examples <= self.grounded_set.n_examples:
            raise ValueError(
                f"test_examples must be in [1, {self.grounded_set.n_examples}] (the set's size), "
                f"got {self.test_examples}"
            )
        if min(self.hsk_examples, self.simile_examples, self.train_examples) < 0:
            raise ValueError("hsk_examples, simile_examples and train_examples must be >= 0")
        if self.noisy_tolerance_bleu < 0:
            raise ValueError(f"noisy_tolerance_bleu must be >= 0, got {self.noisy_tolerance_bleu}")
        if self.batch_size < 1 or self.threads < 1:
            raise ValueError(f"batch_size and threads must be >= 1, got {self.batch_size}, {self.threads}")
        if (self.long_thought.source_language, self.long_thought.target_language) != ("en", "zh") or (
            self.grounded.source_language,
            self.grounded.target_language,
        ) != ("en", "zh"):
            raise ValueError("the experiment's sets are English to Chinese")


class _CountingLM:
    """A :class:`TextLM` that remembers greedy completions by prompt (the same prompt, e.g. after every
    noisy document was dropped, is not generated twice) and advances a progress bar per prompt."""

    def __init__(self, lm: TextLM) -> None:
        self.lm, self.cache, self.advance = lm, {}, (lambda n: None)
        self.generated = 0

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return self.lm.chat_prompt(user, assistant_prefix)

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        key = (tuple(stop), max_new_tokens)
        todo = list(dict.fromkeys(p for p in prompts if (p, key) not in self.cache))
        if todo:
            for p, c in zip(
                todo, self.lm.complete(todo, stop=stop, max_new_tokens=max_new_tokens), strict=True
            ):
                self.cache[(p, key)] = c
            self.generated += len(todo)
        self.advance(len(prompts))
        return [self.cache[(p, key)] for p in prompts]


def _scores(hyps: list[str], refs: list[str], terms: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bleu": round(corpus_bleu(hyps, refs, "zh").score, 2),
        "chrf": round(corpus_chrf(hyps, refs).score, 2),
    }
    if terms is not None:
        out["term_accuracy"] = round(term_accuracy(hyps, terms), 4)
    out["examples"] = [{"hypothesis": h, "reference": r} for h, r in list(zip(hyps, refs, strict=True))[:3]]
    return out


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
    """Run every method; a JSON-ready dict with ``sets``, ``methods``, ``checks`` and ``seconds``.

    ``lm`` replaces the model named in ``cfg`` (a scripted stand-in in tests; no training then).
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
    seconds: dict[str, float] = {}
    start = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[f"{name}_s"], clock = round(now - clock, 1), now

    loaded = None
    if lm is None:  # first, so that a bad model name fails before any work
        from veil.models.loading import load_model

        loaded = load_model(cfg.model, data_dir)
    examples = grounded_set(cfg.grounded_set)
    test, train = examples[-cfg.test_examples :], examples[: -cfg.test_examples]
    hsk = _hsk(cfg.hsk_examples + (cfg.train_examples if lm is None else 0))
    hsk_test, hsk_train = hsk[: cfg.hsk_examples], hsk[cfg.hsk_examples :]
    similes = _similes(cfg.simile_examples)
    trained: dict[str, Any] | None = None
    if loaded is not None:
        trained = _train(cfg, loaded, train, hsk_train, progress)
        lm = HFTextLM(loaded.model.eval(), loaded.tokenizer, batch_size=cfg.batch_size)
        lap("load_and_train")
    counting = _CountingLM(lm)

    methods: dict[str, dict[str, Any]] = {}
    refs, terms = [e.tgt for e in test], [e.entity.rendering for e in test]
    srcs = [e.src for e in test]
    translator = GroundedTranslator(counting, cfg.grounded)
    runs: list[tuple[str, GroundedTranslator, str | None]] = [("direct", translator, None)]
    runs += [(f"document_{n}", translator, n) for n in NOISES]
    if cfg.unfiltered:
        keep_all = GroundedTranslator(counting, dataclasses.replace(cfg.grounded, relevance="all"))
        runs += [(f"document_{n}_all", keep_all, n) for n in NOISES[1:]]
    for name, t, noise in runs:
        with progress.stage(f"{name} (generated set)", len(srcs)) as bar:
            counting.advance = lambda n, bar=bar: bar.advance(n)
            docs = [[e.documents[noise]] if noise else [] for e in test]
            out = t.translate(srcs, docs)
        methods[name] = {"generated": _scores([o.translation for o in out], refs, terms)}
        if noise:
            used = sum(bool(o.documents_used) for o in out) / len(out)
            methods[name]["generated"]["documents_kept"] = round(used, 4)
    lap("grounded")

    loop = LongThoughtLoop(counting, config=cfg.long_thought)
    with progress.stage("long_thought (generated set)", None) as bar:
        counting.advance = lambda n, bar=bar: bar.advance(n)
        traces = loop.run(srcs)
    methods["long_thought"] = {"generated": _scores([t.final for t in traces], refs, terms)}
    lap("long_thought_generated")

    if hsk_test:
        hsk_src, hsk_ref = [p.source for p in hsk_test], [p.target for p in hsk_test]
        with progress.stage("direct (HSK)", len(hsk_src)) as bar:
            counting.advance = lambda n, bar=bar: bar.advance(n)
            methods["direct"]["hsk"] = _scores(
                [o.translation for o in translator.translate(hsk_src)], hsk_ref
            )
        with progress.stage("long_thought (HSK)", None) as bar:
            counting.advance = lambda n, bar=bar: bar.advance(n)
            methods["long_thought"]["hsk"] = _scores([t.final for t in loop.run(hsk_src)], hsk_ref)
        lap("hsk")

    simile: dict[str, Any] = {}
    if similes:
        with progress.stage("long_thought (similes)", None) as bar:
            counting.advance = lambda n, bar=bar: bar.advance(n)
            st = loop.run([s.text for s in similes])
        draft = sum(t.rounds[0].score for t in st) / len(st)
        final = sum(t.best.score for t in st) / len(st)
        simile = {
            "sentences": len(st),
            "draft_score": round(draft, 2),
            "final_score": round(final, 2),
            "improved_share": round(sum(t.improved for t in st) / len(st), 4),
            "mean_rounds": round(sum(len(t.rounds) - 1 for t in st) / len(st), 2),
            "stopped_at_threshold": round(sum(t.stopped == "threshold" for t in st) / len(st), 4),
            "examples": [
                {"source": t.source, "draft": t.rounds[0].translation, "final": t.final} for t in st[:3]
            ],
        }
        lap("similes")
    seconds["total_s"] = round(time.perf_counter() - start, 1)

    g = {k: v["generated"] for k, v in methods.items()}
    checks: dict[str, bool | None] = {
        "clean_document_beats_none": g["document_clean"]["bleu"] > g["direct"]["bleu"],
        "noisy_document_costs_little": all(
            g["direct"]["bleu"] - g[f"document_{n}"]["bleu"] <= cfg.noisy_tolerance_bleu for n in NOISES[1:]
        ),
        "long_thought_improves_on_similes": simile["final_score"] > simile["draft_score"] if simile else None,
    }
    return {
        "config": dataclasses.asdict(cfg),
        "machine": _machine(),
        "sets": {
            "generated": {"test": len(test), "train_entities": len(train)},
            "hsk": {"test": len(hsk_test)},
            "similes": len(similes),
        },
        "training": trained,
        "methods": methods,
        "similes": simile,
        "checks": checks,
        "generated_prompts": counting.generated,
        "seconds": seconds,
    }


def _hsk(n: int) -> list[Any]:
    if n == 0:
        return []
    from veil.models.translation.data import hsk_pairs

    return hsk_pairs("en", "zh")[:n]


def _similes(n: int) -> list[Any]:
    if n == 0:
        return []
    from veil.models.translation.similes import simile_set

    # every k-th sentence, so each source (Wikipedia, news, reviews) is represented
    found = simile_set()
    step = max(1, len(found) // n)
    return found[::step][:n]


def _train(
    cfg: TranslationExperimentConfig, loaded: Any, train: list[Any], hsk_train: list[Any], progress: Progress
) -> dict[str, Any] | None:
    """Multi-task fine-tuning of ``loaded.model`` in place (see the module docstring); ``None`` if off."""
    if cfg.train_examples == 0 or not train:
        return None
    from veil.models.translation.multitask import ParallelText, multitask_examples
    from veil.models.translation.sft import fine_tune

    records = grounded_records(train, "clean") + grounded_records(train, "irrelevant")
    parallel = [ParallelText(e.entity.document_en, e.entity.document_zh, "en", "zh") for e in train]
    parallel += [ParallelText(p.source, p.target, "en", "zh") for p in hsk_train]
    examples = multitask_examples(records, parallel)[: cfg.train_examples]
    with progress.stage("multi-task fine-tuning", None):
        metrics = fine_tune(loaded.model.train(), loaded.tokenizer, examples, cfg.sft)
    return {"examples": len(examples), "train_loss": round(float(metrics.get("train_loss", 0.0)), 4)}

"""The DeepRAG experiment on the generated world: does training teach a model when to retrieve?

Everything runs here, on CPU, from random weights (no model files):

1. **A base model that knows some facts and the protocol** (our stand-in for the paper's pretrained
   instruct model): a small Llama over a BPE trained on the world's text, trained with TRL's
   ``SFTTrainer`` on (a) the parametric facts in every phrasing (the only way it can know them) and
   (b) *demonstrations*: the gold decompositions of half the training questions, written in the step
   protocol with retrieved passages spliced in. In a demonstration an external hop always retrieves and a
   parametric hop retrieves with probability ``demo_retrieve_p``: the base model can decompose, answer
   from memory and read passages, but its decision is not tied to what it knows (and it never sees an
   external fact answered from memory, which would teach it to invent them).
2. **Stage I** (imitation): the best-first search (:func:`~veil.models.rag.search.find_paths`), with the
   base model as answerer and the gold decomposition as writer, finds each remaining training question's
   cheapest correct path; the base model is fine-tuned on those paths, passages masked (DeepRAG-Imi).
3. **Stage II** (calibration): the search again with the imitation model writing its own subqueries;
   one DPO pair per step of each cheapest correct path (DeepRAG).

Evaluated on the world's test questions with BM25 top-k retrieval over the world's corpus: the base
model under each baseline policy (no retrieval, single-shot, every step, confidence-triggered) and under
its own decisions, DeepRAG-Imi and DeepRAG. Reported per method: exact match and token F1 of the final
answer, retrievals per question, and decision quality: each step whose subquery is a gold hop's is
labelled by whether that hop's fact is external, and the retrieve decisions are scored by accuracy,
balanced accuracy, F1 and Matthews correlation against those labels (as the paper's Table 5).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from veil.models.rag.deeprag import LoopConfig, RagAnswer, Retrieve, answer_questions
from veil.models.rag.lm import HFTextLM
from veil.models.rag.protocol import (
    Step,
    Trace,
    exact_match,
    passage_line,
    render_prompt,
    render_trace,
    token_f1,
)
from veil.models.rag.search import (
    SearchConfig,
    calibration_pairs,
    find_paths,
    gold_writer,
    imitation_example,
    lm_writer,
)
from veil.models.rag.sparse import BM25Index
from veil.models.rag.train import CalibrationConfig, ImitationConfig, calibrate, imitate
from veil.models.rag.world import World, WorldConfig, WorldQuestion, build_world

__all__ = ["BASELINES", "RagExperimentConfig", "decision_quality", "run_rag_experiment"]

BASELINES = ("no-retrieval", "single-shot", "every-step", "confidence", "base-decides")
"""The base model's policies: ``never``, ``single``, ``always``, ``confidence``, ``deeprag``."""
_POLICY = {"no-retrieval": "never", "single-shot": "single", "every-step": "always",
           "confidence": "confidence", "base-decides": "deeprag"}  # fmt: skip


@dataclass(frozen=True)
class RagExperimentConfig:
    """One run. ``quick()`` is the 2-core preset; the defaults are larger."""

    world: WorldConfig = field(default_factory=WorldConfig)
    vocab_size: int = 1500
    hidden: int = 192
    layers: int = 4
    base_epochs: float = 30.0
    base_lr: float = 3e-3
    demo_fraction: float = 0.5
    demo_retrieve_p: float = 0.5
    imitation: ImitationConfig = field(
        default_factory=lambda: ImitationConfig(
            lr=1e-3, epochs=4, batch_size=8, grad_accum=1, max_length=1024
        )
    )
    calibration: CalibrationConfig = field(
        default_factory=lambda: CalibrationConfig(
            lr=2e-4, epochs=3, batch_size=8, grad_accum=1, max_length=1024
        )
    )
    search: SearchConfig = field(default_factory=lambda: SearchConfig(max_expansions=16))
    top_k: int = 3
    n_eval: int = 49
    batch_size: int = 32
    seed: int = 0

    @classmethod
    def quick(cls) -> RagExperimentConfig:
        return cls(hidden=128, base_epochs=20.0, n_eval=32)

    def __post_init__(self) -> None:
        if not 0.0 < self.demo_fraction < 1.0 or not 0.0 <= self.demo_retrieve_p <= 1.0:
            raise ValueError("demo_fraction must be in (0, 1) and demo_retrieve_p in [0, 1]")
        if self.vocab_size <= 300 or self.hidden < 16 or self.layers < 1 or self.n_eval < 1:
            raise ValueError("vocab_size > 300, hidden >= 16, layers >= 1 and n_eval >= 1 are required")


def bm25_retriever(world: World) -> Retrieve:
    """BM25 (the paper's retriever) over the world's corpus: ``(query, k) -> [(id, text)]``."""
    docs = world.corpus()
    index = BM25Index()
    index.add([d["contents"] for d in docs])

    def retrieve(query: str, k: int) -> list[tuple[str, str]]:
        best = np.argsort(-index.scores(query), kind="stable")[:k]
        return [(docs[i]["id"], docs[i]["contents"]) for i in best]

    return retrieve


def decision_quality(answers: Sequence[RagAnswer], questions: Sequence[WorldQuestion]) -> dict[str, float]:
    """Retrieve decisions against the gold labels of the steps whose subquery is a gold hop's."""
    tp = fp = tn = fn = 0
    for a, q in zip(answers, questions, strict=True):
        labels = {h.subquery: h.needs_retrieval for h in q.hops}
        for s in a.trace.steps:
            if s.subquery not in labels:
                continue
            want, did = labels[s.subquery], bool(s.retrieved)
            tp, fp, tn, fn = (
                tp + (want and did),
                fp + (did and not want),
                tn + (not want and not did),
                fn + (want and not did),
            )
    n = tp + fp + tn + fn
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    tpr = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    return {
        "steps": n,
        "accuracy": (tp + tn) / n if n else 0.0,
        "balanced_accuracy": (tpr + tnr) / 2,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "mcc": (tp * tn - fp * fn) / denom if denom else 0.0,
    }


def _tokenizer(world: World, vocab_size: int) -> Any:
    from veil.models.distillation.students import train_metaspace_bpe

    texts = world.training_text() + [d["contents"] for d in world.corpus()]
    texts += [q.text for q in world.questions] + [h.subquery for q in world.questions for h in q.hops]
    texts += [render_trace(Trace("", [Step("x", True, [("1", "y")], "z")], "z")), render_prompt("x")]
    return train_metaspace_bpe(texts, vocab_size)


def _model(tokenizer: Any, cfg: RagExperimentConfig) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=3 * cfg.hidden,
        num_hidden_layers=cfg.layers, num_attention_heads=max(1, cfg.hidden // 32),
        num_key_value_heads=max(1, cfg.hidden // 32), max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def _demo(q: WorldQuestion, retrieve: Retrieve, k: int, rng: random.Random, p: float) -> Trace:
    steps = []
    for hop in q.hops:
        retrieved = hop.needs_retrieval or rng.random() < p
        passages = [(pid, passage_line(t)) for pid, t in retrieve(hop.subquery, k)] if retrieved else []
        steps.append(Step(hop.subquery, retrieved, passages, hop.answer))
    return Trace(q.text, steps, q.answer)


def _fact_example(tokenizer: Any, sentence: str) -> dict[str, list[int]]:
    ids = tokenizer(sentence + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return {"input_ids": ids, "completion_mask": [1] * len(ids)}


def _evaluate(
    lm: HFTextLM,
    questions: Sequence[WorldQuestion],
    retrieve: Retrieve,
    policy: str,
    cfg: RagExperimentConfig,
) -> dict[str, Any]:
    start = time.perf_counter()
    loop = LoopConfig(policy=policy, max_steps=cfg.search.max_steps, top_k=cfg.top_k)  # type: ignore[arg-type]
    answers = answer_questions(lm, [q.text for q in questions], retrieve, loop)
    return {
        "em": float(
            np.mean([exact_match(a.answer, q.answer) for a, q in zip(answers, questions, strict=True)])
        ),
        "f1": float(np.mean([token_f1(a.answer, q.answer) for a, q in zip(answers, questions, strict=True)])),
        "retrievals": float(np.mean([a.retrievals for a in answers])),
        "decisions": decision_quality(answers, questions),
        "malformed": float(np.mean([a.ended == "malformed" for a in answers])),
        "seconds": time.perf_counter() - start,
    }


def run_rag_experiment(
    cfg: RagExperimentConfig | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Train and evaluate every method; a JSON-ready dict with ``methods`` and the run's facts."""
    import copy

    cfg = cfg or RagExperimentConfig()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    world = build_world(cfg.world)
    retrieve = bm25_retriever(world)
    rng = random.Random(cfg.seed)
    train = list(world.split("train"))
    rng.shuffle(train)
    n_demo = int(len(train) * cfg.demo_fraction)
    demos, searched = train[:n_demo], train[n_demo:]
    tests = world.split("test")[: cfg.n_eval]
    tokenizer = _tokenizer(world, cfg.vocab_size)
    model = _model(tokenizer, cfg)
    lm = HFTextLM(model, tokenizer, batch_size=cfg.batch_size)

    say(f"base model: {len(world.training_text())} fact sentences, {len(demos)} demonstrations")
    base_data = [_fact_example(tokenizer, s) for s in world.training_text()]
    base_data += [
        imitation_example(lm, tokenizer, _demo(q, retrieve, cfg.top_k, rng, cfg.demo_retrieve_p))
        for q in demos
    ]
    base_cfg = ImitationConfig(lr=cfg.base_lr, epochs=cfg.base_epochs, batch_size=16, grad_accum=1, warmup_ratio=0.05,
                               max_length=1024, seed=cfg.seed)  # fmt: skip
    base_metrics = imitate(model, tokenizer, base_data, base_cfg)
    timings = {"base_s": time.perf_counter() - t0}
    methods: dict[str, Any] = {}
    for name in BASELINES:
        say(f"evaluating {name}")
        methods[name] = _evaluate(lm, tests, retrieve, _POLICY[name], cfg)

    say(f"stage I: searching {len(searched)} questions")
    t1 = time.perf_counter()
    paths = find_paths(lm, [(q.text, q.answer) for q in searched], gold_writer(world), retrieve, cfg.search)
    found = [p for p in paths if p.correct]
    imi_model = copy.deepcopy(model)
    imi_lm = HFTextLM(imi_model, tokenizer, batch_size=cfg.batch_size)
    if found:
        imitate(
            imi_model,
            tokenizer,
            [imitation_example(imi_lm, tokenizer, p.trace) for p in found],
            cfg.imitation,
        )
    timings["imitation_s"] = time.perf_counter() - t1
    methods["deeprag-imi"] = _evaluate(imi_lm, tests, retrieve, "deeprag", cfg)

    say("stage II: calibration")
    t2 = time.perf_counter()
    paths2 = find_paths(
        imi_lm, [(q.text, q.answer) for q in searched], lm_writer(imi_lm), retrieve, cfg.search
    )
    pairs = [pair for p in paths2 if p.correct for pair in calibration_pairs(imi_lm, p.trace)]
    cal_model = copy.deepcopy(imi_model)
    cal_lm = HFTextLM(cal_model, tokenizer, batch_size=cfg.batch_size)
    if pairs:
        calibrate(cal_model, tokenizer, pairs, cfg.calibration)
    timings["calibration_s"] = time.perf_counter() - t2
    methods["deeprag"] = _evaluate(cal_lm, tests, retrieve, "deeprag", cfg)
    timings["total_s"] = time.perf_counter() - t0
    every, deep, imi = methods["every-step"], methods["deeprag"], methods["deeprag-imi"]
    return {
        "config": asdict(cfg),
        "world": {
            "facts": len(world.facts),
            "parametric": len(world.parametric_facts()),
            "test_questions": len(tests),
            "external_hops_per_question": float(
                np.mean([sum(h.needs_retrieval for h in q.hops) for q in tests])
            ),
        },  # fmt: skip
        "training": {
            "base_loss": base_metrics.get("train_loss"),
            "stage1_paths": len(found),
            "stage1_questions": len(searched),
            "stage2_paths": sum(p.correct for p in paths2),
            "stage2_pairs": len(pairs),
        },  # fmt: skip
        "methods": methods,
        "checks": {
            "deeprag_retrieves_less_than_every_step": deep["retrievals"] < every["retrievals"],
            "deeprag_at_least_as_accurate_as_every_step": deep["em"] >= every["em"],
            "decisions_better_than_chance": deep["decisions"]["mcc"] > 0,
            "calibration_improves_decisions": deep["decisions"]["mcc"] > imi["decisions"]["mcc"],
        },
        "seconds": timings,
    }

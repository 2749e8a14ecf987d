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

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.models.entity_tokens import SPACE as _SPACE
from veil.models.entity_tokens import with_entity_tokens as _with_entity_tokens
from veil.models.rag.deeprag import LoopConfig, RagAnswer, Retrieve, answer_questions
from veil.models.rag.lm import Completion, HFTextLM, TextLM
from veil.models.rag.protocol import (
    FOLLOW_UP,
    INSTRUCTION,
    SEARCH,
    Step,
    Trace,
    exact_match,
    gold_trace,
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
from veil.models.scratch import scratch_llama
from veil.progress import Laps

__all__ = [
    "BASELINES",
    "RagExperimentConfig",
    "decision_counts",
    "decision_quality",
    "mcc_gain",
    "run_rag_experiment",
]

BASELINES = ("no-retrieval", "single-shot", "every-step", "confidence", "base-decides")
"""The base model's policies: ``never``, ``single``, ``always``, ``confidence``, ``deeprag``."""
_POLICY = {"no-retrieval": "never", "single-shot": "single", "every-step": "always",
           "confidence": "confidence", "base-decides": "deeprag"}  # fmt: skip


@dataclass(frozen=True)
class RagExperimentConfig:
    """One run. ``quick()`` is the 2-core preset; the defaults are larger.

    Attributes
    ----------
    world: the generated world (:class:`~veil.models.rag.world.WorldConfig`).
    vocab_size, hidden, layers: the BPE and the Llama trained from scratch.
    entity_tokens: every entity name (and distractor title) one token of its own, on top of
        ``vocab_size``. Our choice for a model trained from scratch (the paper fine-tunes pretrained
        LLMs, which already copy names): a subquery must name the question's entity, and copying one
        token is one induction step where a name of 3-5 BPE pieces took the base model more training
        than the quick preset holds; each fact is then also about one embedding.
    base_epochs, base_lr, base_batch_size: the base model's training (facts and demonstrations).
    fact_repeats: passes over the fact sentences per base epoch (they are short: extra passes are cheap,
        and memory is what the retrieve decision must track).
    facts_per_example: fact sentences packed into one training sequence, reshuffled every pass, so that
        a batch holds sequences as long as a demonstration's instead of 8-token rows padded to 500.
    first_step_drills: every training question's prompt and its gold first ``Follow up:`` line, one more
        short example per epoch, learned on that line only. Our choice for the from-scratch base model:
        the first subquery copies the question's entity, which the demonstrations alone show the quick
        preset's model too rarely for it to do so on held-out questions (benchmarks/README.md).
    demo_fraction, demo_retrieve_p: the share of training questions given as demonstrations and the
        probability that a demonstration retrieves on a parametric hop.
    imitation, calibration: stage I and stage II training (the paper's are for 7-8B models).
    search: the stage I and stage II search.
    n_search: training questions searched in each stage (``None``: every question not demonstrated).
    top_k: BM25 passages per retrieval, in demonstrations, search and evaluation (the paper: 3).
    instruction: the user turn's instruction (``None``: the protocol's ``INSTRUCTION``). A model trained
        from scratch learns nothing from it; it is a constant prefix of every sequence.
    baselines: which of :data:`BASELINES` the base model is evaluated under.
    n_eval: test questions evaluated (at most the world's test split).
    batch_size: prompts per generation batch.
    threads: torch's intra-op CPU threads during the run, restored afterwards (``None``: unchanged).
    seed: seeds the split, the demonstrations and the model.
    """

    world: WorldConfig = field(default_factory=WorldConfig)
    vocab_size: int = 1500
    entity_tokens: bool = True
    hidden: int = 192
    layers: int = 4
    base_epochs: float = 30.0
    base_lr: float = 3e-3
    base_batch_size: int = 16
    fact_repeats: int = 1
    facts_per_example: int = 1
    first_step_drills: bool = True
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
    n_search: int | None = None
    top_k: int = 3
    instruction: str | None = None
    baselines: tuple[str, ...] = BASELINES
    n_eval: int = 49
    batch_size: int = 32
    threads: int | None = None
    seed: int = 0

    @classmethod
    def quick(cls) -> RagExperimentConfig:
        """The 2-core preset: one torch thread, about 16 minutes of one core, 12 of them the base model's
        training, which a later run with the same seed loads from the data directory (benchmarks/README.md).

        What keeps it there, measured on the 2-core VM: ``threads=1`` (a 128-wide model gains nothing
        from a second thread on a shared machine); the short ``instruction`` and ``top_k=2`` (a
        demonstration is about 110 tokens, against 530 with the protocol's instruction, top 3 and a
        tokenizer whose merges crossed line ends); facts packed 16 to a sequence (a batch no longer
        pads 8-token rows to a demonstration's length); half the training questions as
        demonstrations and the other half (194) searched in each stage (with 96 of them, stage II had 88
        pairs and left the retrievals per question unchanged; with 194 it has about 200). Entity names
        are one token each
        (``entity_tokens``): without it the base model of this preset never copied the question's
        entity into a subquery.
        """
        return cls(
            hidden=128, base_epochs=12.0, base_lr=3e-3, base_batch_size=8, fact_repeats=4,
            facts_per_example=16, demo_fraction=0.5, n_search=None, top_k=2, instruction="Answer step by step.",
            n_eval=49, threads=1,
        )  # fmt: skip

    def __post_init__(self) -> None:
        if not 0.0 < self.demo_fraction < 1.0 or not 0.0 <= self.demo_retrieve_p <= 1.0:
            raise ValueError("demo_fraction must be in (0, 1) and demo_retrieve_p in [0, 1]")
        if self.vocab_size <= 300 or self.hidden < 16 or self.layers < 1 or self.n_eval < 1:
            raise ValueError("vocab_size > 300, hidden >= 16, layers >= 1 and n_eval >= 1 are required")
        for name in ("base_batch_size", "fact_repeats", "facts_per_example", "top_k", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_search is not None and self.n_search < 1:
            raise ValueError(f"n_search must be >= 1 or None, got {self.n_search}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        if unknown := [b for b in self.baselines if b not in BASELINES]:
            raise ValueError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
        if "every-step" not in self.baselines:
            raise ValueError(
                f"the checks compare with every-step, which baselines must hold: {self.baselines}"
            )

    def base_key(self) -> str:
        """A short hash of everything the base model depends on: its cache key in the data directory.

        The stages after it (search, imitation, calibration, evaluation) are not in it, so a run that
        changes only those reuses the base model.
        """
        import torch

        keys = ("world", "vocab_size", "entity_tokens", "hidden", "layers", "base_epochs", "base_lr",
                "base_batch_size", "fact_repeats", "facts_per_example", "first_step_drills", "demo_fraction",
                "demo_retrieve_p", "top_k", "instruction", "seed")  # fmt: skip
        blob = {k: getattr(self, k) for k in keys} | {"world": asdict(self.world), "version": _BASE_VERSION}
        blob["device"] = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU rounds differently
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


class _Instructed:
    """A :class:`~veil.models.rag.lm.TextLM` whose user turns carry ``instruction`` in place of the
    protocol's: every prompt of the loop, the search and the training examples goes through
    ``chat_prompt``, so one wrapper changes them all."""

    def __init__(self, lm: TextLM, instruction: str) -> None:
        self.lm, self.instruction = lm, instruction

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return self.lm.chat_prompt(user.replace(INSTRUCTION, self.instruction), assistant_prefix)

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        return self.lm.complete(prompts, stop, max_new_tokens)


class _ChatTemplate:
    """The prompts of a model not built yet: :meth:`HFTextLM.chat_prompt` without the model."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    chat_prompt = HFTextLM.chat_prompt

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        raise TypeError("a chat template alone cannot complete prompts")


def bm25_retriever(world: World) -> Retrieve:
    """BM25 (the paper's retriever) over the world's corpus: ``(query, k) -> [(id, text)]``."""
    docs = world.corpus()
    index = BM25Index()
    index.add([d["contents"] for d in docs])

    def retrieve(query: str, k: int) -> list[tuple[str, str]]:
        best = np.argsort(-index.scores(query), kind="stable")[:k]
        return [(docs[i]["id"], docs[i]["contents"]) for i in best]

    return retrieve


def decision_counts(answers: Sequence[RagAnswer], questions: Sequence[WorldQuestion]) -> np.ndarray:
    """``(len(questions), 4)``: per question, its steps' (tp, fp, tn, fn) against the gold labels of the
    steps whose subquery is a gold hop's (a retrieval is a positive)."""
    rows = []
    for a, q in zip(answers, questions, strict=True):
        labels = {h.subquery: h.needs_retrieval for h in q.hops}
        row = [0, 0, 0, 0]
        for s in a.trace.steps:
            if s.subquery in labels:
                want, did = labels[s.subquery], bool(s.retrieved)
                row[(0 if want else 1) if did else (3 if want else 2)] += 1
        rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), 4)


def _mcc(tp: float, fp: float, tn: float, fn: float) -> float:
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def decision_quality(answers: Sequence[RagAnswer], questions: Sequence[WorldQuestion]) -> dict[str, float]:
    """Retrieve decisions against the gold labels of the steps whose subquery is a gold hop's."""
    tp, fp, tn, fn = (int(x) for x in decision_counts(answers, questions).sum(axis=0))
    n = tp + fp + tn + fn
    tpr = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    return {
        "steps": n,
        "accuracy": (tp + tn) / n if n else 0.0,
        "balanced_accuracy": (tpr + tnr) / 2,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "mcc": _mcc(tp, fp, tn, fn),
    }


def mcc_gain(after: np.ndarray, before: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """MCC of ``after`` minus MCC of ``before`` (:func:`decision_counts` of two methods on the same
    questions), with a 95 % paired bootstrap interval over questions and the share of resamples in which
    the gain is positive. Our choice: the test split holds about 50 questions (80 decisions), where an
    MCC moves by 0.1 from one question set to the next, so a gain without its interval says little."""
    if after.shape != before.shape or after.ndim != 2 or after.shape[1] != 4:
        raise ValueError(
            f"need two (questions, 4) count arrays of one shape, got {after.shape}, {before.shape}"
        )
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(after), size=(resamples, len(after)))
    a, b = after[idx].sum(axis=1), before[idx].sum(axis=1)  # (resamples, 4)
    gains = np.array([_mcc(*x) - _mcc(*y) for x, y in zip(a, b, strict=True)])
    low, high = np.percentile(gains, [2.5, 97.5])
    return {
        "gain": _mcc(*after.sum(axis=0)) - _mcc(*before.sum(axis=0)),
        "low": float(low),
        "high": float(high),
        "p_positive": float(np.mean(gains > 0)),
    }


def _tokenizer(world: World, vocab_size: int, instruction: str, entity_tokens: bool = False) -> Any:
    """A Metaspace BPE on the world's text whose tokens never cross a line end.

    Every prompt the loop continues ends with a newline (after ``Response:`` or a step), while the
    training sequences go on past it; a merge such as ``\nF`` would tokenise the training text and the
    prompt differently at exactly the place the model must decide. A newline therefore ends a pre-token
    and the next line starts a new word (``▁Follow``); the protocol's words are learned from the gold
    traces of the training questions, so its markers take a few tokens each.

    With ``entity_tokens`` every name of the corpus (the world's entities and the distractors' titles) is
    one token: a normaliser joins the name's words with ``▂``, the pre-tokeniser isolates
    ``▁The▂Gusim`` from what follows (``?``, ``.``) after the Metaspace split, the name sits in the
    BPE's vocabulary (``ignore_merges``: a pre-token found whole is not merged), and the decoder turns
    ``▂`` back into a space. The BPE is trained with the names removed, so its merges go to the rest.
    """
    from tokenizers import pre_tokenizers

    from veil.models.distillation.students import train_metaspace_bpe

    texts = world.training_text() + [d["contents"] for d in world.corpus()]
    texts += [q.text for q in world.questions] + [h.subquery for q in world.questions for h in q.hops]
    texts += [
        render_prompt(q.text, instruction) + "\n" + render_trace(gold_trace(q, world))
        for q in world.split("train")
    ]
    names = _names(world) if entity_tokens else []
    if names:
        pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b")
        texts = [pattern.sub(" ", t) for t in texts]
    # "a\n b": the BPE sees the pieces the pre-tokeniser below makes of "a\nb"
    tokenizer = train_metaspace_bpe([t.replace("\n", "\n ") for t in texts], vocab_size)
    pre = [
        pre_tokenizers.Split("\n", behavior="merged_with_previous"),
        pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True),
    ]
    if not names:
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pre)
        return tokenizer
    return _with_entity_tokens(tokenizer, names, pre)


def _names(world: World) -> list[str]:
    """Every entity name and distractor title, longest first (so a regex prefers the whole name)."""
    titles = {d["contents"].split("\n", 1)[0] for d in world.corpus()}
    return sorted(titles | {e.name for e in world.entities}, key=lambda n: (-len(n), n))


def _model(tokenizer: Any, cfg: RagExperimentConfig) -> Any:
    return scratch_llama(tokenizer, cfg.hidden, cfg.layers, cfg.seed)


def _demo(q: WorldQuestion, retrieve: Retrieve, k: int, rng: random.Random, p: float) -> Trace:
    steps = []
    for hop in q.hops:
        retrieved = hop.needs_retrieval or rng.random() < p
        passages = [(pid, passage_line(t)) for pid, t in retrieve(hop.subquery, k)] if retrieved else []
        steps.append(Step(hop.subquery, retrieved, passages, hop.answer))
    return Trace(q.text, steps, q.answer)


def _fact_examples(
    tokenizer: Any, sentences: Sequence[str], per_example: int, rng: random.Random
) -> list[dict[str, list[int]]]:
    """The sentences in a fresh random order, ``per_example`` to a sequence (each sequence ends with EOS)."""
    order = rng.sample(list(sentences), len(sentences))
    out = []
    for i in range(0, len(order), per_example):
        ids = tokenizer(" ".join(order[i : i + per_example]) + tokenizer.eos_token, add_special_tokens=False)
        out.append({"input_ids": ids["input_ids"], "completion_mask": [1] * len(ids["input_ids"])})
    return out


def _drill(lm: TextLM, tokenizer: Any, q: WorldQuestion) -> dict[str, list[int]]:
    """The prompt of ``q`` and its gold first ``Follow up:`` line; the loss is on that line only."""
    prompt = lm.chat_prompt(render_prompt(q.text))
    enc = tokenizer(
        prompt + f"{FOLLOW_UP} {q.hops[0].subquery}\n", add_special_tokens=False, return_offsets_mapping=True
    )
    return {
        "input_ids": list(enc["input_ids"]),
        "completion_mask": [int(start >= len(prompt)) for start, _ in enc["offset_mapping"]],
    }


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
        "first_subquery_gold": float(
            np.mean(
                [
                    bool(a.trace.steps) and a.trace.steps[0].subquery == q.hops[0].subquery
                    for a, q in zip(answers, questions, strict=True)
                ]
            )
        ),
        "decisions": decision_quality(answers, questions),
        "malformed": float(np.mean([a.ended == "malformed" for a in answers])),
        "seconds": time.perf_counter() - start,
        "_counts": decision_counts(answers, questions),  # for the paired bootstrap; not in the result
    }


def run_rag_experiment(
    cfg: RagExperimentConfig | None = None,
    progress: Callable[[str], None] | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate every method; a JSON-ready dict with ``methods``, ``checks`` (the claims the
    experiment tests, computed) and ``seconds`` per stage.

    With ``data_dir`` the base model is cached under ``DATA_DIR/rag/experiment-base/KEY``
    (:meth:`RagExperimentConfig.base_key`) and reused by later runs; ``training.base_cached`` says
    whether this run trained it.
    """
    import torch

    cfg = cfg or RagExperimentConfig()
    previous = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, progress or (lambda _msg: None), data_dir)
    finally:
        torch.set_num_threads(previous)


_BASE_VERSION = 1
"""Bump when the base model's training changes in a way its config does not show (cached models go stale)."""


def _base_model(
    cfg: RagExperimentConfig,
    tokenizer: Any,
    data: Callable[[], list[dict[str, list[int]]]],
    cache: Path | None,
) -> tuple[Any, dict[str, Any]]:
    """The trained base model and its training metrics, from ``cache`` when it holds one."""
    import torch
    from transformers import LlamaForCausalLM

    if cache is not None and (cache / "config.json").is_file():
        model = LlamaForCausalLM.from_pretrained(cache, dtype=torch.float32)
        if torch.cuda.is_available():
            model = model.to("cuda")
        metrics = json.loads((cache / "metrics.json").read_text(encoding="utf-8"))
        return model.eval(), metrics | {"cached": True}
    model = _model(tokenizer, cfg)
    base_cfg = ImitationConfig(lr=cfg.base_lr, epochs=cfg.base_epochs / math.ceil(cfg.base_epochs),
                               batch_size=cfg.base_batch_size, grad_accum=1, warmup_ratio=0.05,
                               max_length=1024, seed=cfg.seed)  # fmt: skip
    metrics = imitate(model, tokenizer, data(), base_cfg)
    if cache is not None:
        # written to a sibling and renamed, so an interrupted run leaves no half a model behind
        tmp = cache.with_name(cache.name + ".tmp")
        model.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
        tmp.replace(cache)
    return model, metrics | {"cached": False}


def _run(cfg: RagExperimentConfig, say: Callable[[str], None], data_dir: Path | None) -> dict[str, Any]:
    import copy
    import dataclasses

    laps = Laps(say)
    lap, seconds, cpu = laps.lap, laps.seconds, laps.cpu
    search = dataclasses.replace(cfg.search, top_k=cfg.top_k)
    instruction = cfg.instruction or INSTRUCTION
    world = build_world(cfg.world)
    retrieve = bm25_retriever(world)
    rng = random.Random(cfg.seed)
    train = list(world.split("train"))
    rng.shuffle(train)
    n_demo = int(len(train) * cfg.demo_fraction)
    demos, searched = train[:n_demo], train[n_demo:][: cfg.n_search]
    tests = world.split("test")[: cfg.n_eval]
    tokenizer = _tokenizer(world, cfg.vocab_size, instruction, cfg.entity_tokens)

    def text_lm(m: Any) -> TextLM:
        return _Instructed(HFTextLM(m, tokenizer, batch_size=cfg.batch_size), instruction)

    lap("setup_s")
    facts = world.training_text()

    def base_data() -> list[dict[str, list[int]]]:
        say(
            f"base model: {len(facts)} fact sentences x {cfg.fact_repeats}, {len(demos)} demonstrations, "
            f"{len(train) if cfg.first_step_drills else 0} first-step drills"
        )
        prompts = _Instructed(_ChatTemplate(tokenizer), instruction)
        demo_data = [
            imitation_example(prompts, tokenizer, _demo(q, retrieve, cfg.top_k, rng, cfg.demo_retrieve_p))
            for q in demos
        ]
        drills = [_drill(prompts, tokenizer, q) for q in train] if cfg.first_step_drills else []
        # every epoch sees the facts in new sequences: one pass over a list holding each epoch's copy
        return [
            x
            for _ in range(math.ceil(cfg.base_epochs))
            for x in demo_data
            + drills
            + [
                e
                for _ in range(cfg.fact_repeats)
                for e in _fact_examples(tokenizer, facts, cfg.facts_per_example, rng)
            ]
        ]

    cache = None if data_dir is None else Path(data_dir) / "rag" / "experiment-base" / cfg.base_key()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    model, base_metrics = _base_model(cfg, tokenizer, base_data, cache)
    if base_metrics["cached"]:
        say(f"base model: cached ({cache})")
    lm = text_lm(model)
    lap("base_train_s")
    methods: dict[str, Any] = {}
    for name in cfg.baselines:
        methods[name] = _evaluate(lm, tests, retrieve, _POLICY[name], cfg)
        say(_row(name, methods[name]))
    lap("baselines_eval_s")

    say(f"stage I: searching {len(searched)} questions")
    paths = find_paths(lm, [(q.text, q.answer) for q in searched], gold_writer(world), retrieve, search)
    found = [p for p in paths if p.correct]
    lap("stage1_search_s")
    imi_model = copy.deepcopy(model)
    imi_lm = text_lm(imi_model)
    if found:
        imitate(
            imi_model,
            tokenizer,
            [imitation_example(imi_lm, tokenizer, p.trace) for p in found],
            cfg.imitation,
        )
    lap("stage1_train_s")
    methods["deeprag-imi"] = _evaluate(imi_lm, tests, retrieve, "deeprag", cfg)
    say(_row("deeprag-imi", methods["deeprag-imi"]))
    lap("stage1_eval_s")

    say("stage II: calibration")
    paths2 = find_paths(imi_lm, [(q.text, q.answer) for q in searched], lm_writer(imi_lm), retrieve, search)
    pairs = [pair for p in paths2 if p.correct for pair in calibration_pairs(imi_lm, p.trace)]
    lap("stage2_search_s")
    cal_model = copy.deepcopy(imi_model)
    cal_lm = text_lm(cal_model)
    if pairs:
        calibrate(cal_model, tokenizer, pairs, cfg.calibration)
    lap("stage2_train_s")
    methods["deeprag"] = _evaluate(cal_lm, tests, retrieve, "deeprag", cfg)
    say(_row("deeprag", methods["deeprag"]))
    lap("stage2_eval_s")
    counts = {name: r.pop("_counts") for name, r in methods.items()}
    gain = mcc_gain(counts["deeprag"], counts["deeprag-imi"], seed=cfg.seed)
    say(
        f"calibration: MCC {gain['gain']:+.3f} over stage I (95 % interval {gain['low']:+.3f} to "
        f"{gain['high']:+.3f}, positive in {gain['p_positive']:.0%} of resamples)"
    )
    laps.total()
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
            "base_cached": base_metrics["cached"],
            "stage1_paths": len(found),
            "stage1_questions": len(searched),
            "stage1_retrievals_per_path": float(np.mean([p.retrievals for p in found])) if found else None,
            "stage2_paths": sum(p.correct for p in paths2),
            "stage2_pairs": len(pairs),
            "stage2_retrieve_pairs": sum(p["chosen"] == SEARCH for p in pairs),
        },  # fmt: skip
        "methods": methods,
        "calibration_gain": gain,
        "checks": _checks(methods),
        "seconds": seconds,
        "cpu_seconds": cpu,
    }


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"  {name}: EM {r['em']:.3f}, F1 {r['f1']:.3f}, {r['retrievals']:.2f} retrievals/question, "
        f"MCC {r['decisions']['mcc']:.3f} over {r['decisions']['steps']} steps, first subquery gold "
        f"{r['first_subquery_gold']:.2f} ({r['seconds']:.0f} s)"
    )


def _checks(methods: dict[str, Any]) -> dict[str, bool]:
    """Computed, not asserted: what the experiment is meant to show, against the base model retrieving at
    every step and against stage I alone."""
    every, deep, imi = methods["every-step"], methods["deeprag"], methods["deeprag-imi"]
    return {
        "deeprag_retrieves_less_than_every_step": deep["retrievals"] < every["retrievals"],
        "deeprag_at_least_as_accurate_as_every_step": deep["em"] >= every["em"],
        "decisions_better_than_chance": deep["decisions"]["mcc"] > 0,
        "calibration_improves_decisions": deep["decisions"]["mcc"] > imi["decisions"]["mcc"],
    }

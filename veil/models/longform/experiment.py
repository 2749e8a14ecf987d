"""The LongDPO experiment on generated writing tasks: does step-level DPO keep a model on length?

Everything runs here on CPU from the shipped corpus (no model download):

1. **Tasks.** Topics from the shipped Wikipedia sample (:func:`~veil.models.longform.data.wikipedia_topics`),
   each with its article's sentences, keywords and two generated facts; "Write about T in about L words"
   with L in ``lengths``. Topics are split: the search's prompts and held-out evaluation prompts.
2. **A base model that reads L but misses it** (our stand-in for the paper's LongWriter models, which
   write long but miss the length): by default a small Llama trained from scratch with TRL's SFT on
   drafts of the topic's sentences in paragraphs, some stating the topic's facts and, with probability
   ``drift_p``, restating one with another value (the drift the memory pool exists for). A draft aims
   at ``L * u`` words, ``u`` in ``draft_words`` (0.5 to 1.5), so the base model follows L only
   roughly; ``draft_words=None`` gives drafts of 1 to ``max_paragraphs`` paragraphs whatever L (a base
   model that ignores L, the preset before 2026-12; benchmarks/README.md). ``model`` names a pretrained
   model instead (e.g. ``smollm2-135m-instruct``; far slower on CPU).
3. **Collection.** The step search (width, depth, rule-based judge, memory pool with MiniLM, critique
   refinement) on the search prompts gives step pairs and chosen paths; outcome pairs come from
   ``width`` whole responses per prompt (the same number of generated steps, about).
4. **Training at equal budget.** From the base model, per seed: SFT on the chosen paths, outcome DPO,
   step-level DPO, each for the same number of optimizer updates (``budget_steps``; default: step DPO's
   ``epochs`` over its pairs).
5. **Evaluation** on held-out prompts, greedy: S_l, rule-based quality (mean of the seven principles,
   1-5) and the contradiction rate. The memory pool's effect: the base model's search on the held-out
   prompts with and without the pool, the contradiction rate of the responses it picks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.models.longform.critique import CritiqueConfig
from veil.models.longform.data import LongformPrompt, Topic, make_prompts, wikipedia_topics
from veil.models.longform.facts import Fact, fact_sentence
from veil.models.longform.judge import RuleJudge
from veil.models.longform.length import count_words, length_score
from veil.models.longform.memory import MemoryConfig
from veil.models.longform.policy import HFStepPolicy
from veil.models.longform.search import (
    StepSearchConfig,
    collect_pairs,
    contradiction_rate,
    cross_step_contradiction_rate,
)
from veil.models.longform.train import (
    LongDPOConfig,
    balance_end_pairs,
    cap_first_step_pairs,
    outcome_pairs,
    sft_examples,
    step_pairs,
)
from veil.models.rag.train import ImitationConfig
from veil.models.scratch import scratch_llama
from veil.progress import Laps

__all__ = [
    "LongformExperimentConfig",
    "base_drafts",
    "base_model",
    "base_model_dir",
    "compare_memory_pool",
    "paired_length_scores",
    "evaluate",
    "experiment_tasks",
    "run_longform_experiment",
]


@dataclass(frozen=True)
class LongformExperimentConfig:
    """One run; ``quick()`` is the 2-core preset.

    Attributes
    ----------
    model: ``None``: a Llama trained here from scratch; otherwise a name or directory for
        :func:`veil.models.loading.load_model` used as the base model as is.
    n_topics: topics used (of the sample's usable ones; ``None``: all).
    lengths: the required lengths L, one bucket each.
    n_eval: held-out topics (the rest are searched); each is evaluated at every length.
    search_per_topic: prompts per searched topic (each at another length).
    topic_sentences, sentence_words: each topic's first sentences of that many words, all a draft uses.
    drafts_per_topic, max_paragraphs, fact_p, drift_p: the scratch base model's training drafts.
    draft_words: ``None``: a draft has 1 to ``max_paragraphs`` paragraphs whatever its prompt's L (a
        base model that ignores L); ``(lo, hi)``: a draft aims at ``L * u`` words, ``u`` drawn
        log-uniformly from ``[lo, hi]``, and takes paragraphs while one more brings it closer (at
        least one, at most the topic's sentences, ``max_paragraphs`` not applied): a base model that
        reads L but misses it by that factor (the default, 0.5 to 1.5; benchmarks/README.md, run 5).
        Not in the paper, whose base models are LongWriter's.
    vocab_size, hidden, layers, base_epochs, base_lr: its tokenizer and Llama, and their training.
    search: the collection search, the paper's but for: steps end at a line break (64 tokens at
        most); a step's S_l is that of its greedy rollout to the end of the turn (``rollout``, 256
        tokens, the evaluation's budget; the released ``cumulative`` value teaches answers never to
        end here, benchmarks/README.md); the memory pool checks a step against itself too
        (``within_step``) at cosine 0.6 (MiniLM's cosines between two values of one attribute go down
        to 0.61; the paper's 0.8 is for another embedding model), on sentence chunks.
    pool_value_sees_facts: whether the memory pool's comparison values candidates with the full rule
        judge (``True``) or one blind to stated facts (``False``, the default): the full judge's quality
        already rules out a self-contradicting candidate, leaving the pool nothing to veto.
    dpo: step and outcome DPO (the paper's settings are for 8B models; small models need a larger lr),
        both with an NLL term on the chosen completion of weight 1 (RPO): without it DPO drives the
        end-of-turn token's log-probability down wherever a rejected step ends, until no answer ends
        (benchmarks/README.md, runs 1-3).
    sft: SFT on the chosen paths (lr and batch as DPO's).
    pool_seeds: the memory pool's comparison runs the search once per seed here, with and without the
        pool (:func:`compare_memory_pool`).
    balance_end_pairs: step DPO trains on :func:`~veil.models.longform.train.balance_end_pairs` of the
        step pairs (as many "end here" as "go on" pairs; not in the paper). Off: it does not stop step
        DPO's answers from running on here (benchmarks/README.md).
    cap_first_step_pairs: step DPO trains on :func:`~veil.models.longform.train.cap_first_step_pairs` of
        the step pairs (at most as many first-step pairs as pairs at later steps; applied before
        ``balance_end_pairs``; not in the paper): the search gives one first-step pair per prompt and
        few later, where an answer learns to stop.
    step_dpo: step DPO's own settings (``None``: ``dpo``'s, as outcome DPO), e.g. the length-normalised
        loss for step pairs only.
    budget_steps: optimizer updates per method (``None``: step DPO's epochs over its pairs).
    seeds: training seeds; each method is trained once per seed.
    eval_tokens: the token budget of an evaluated response.
    eval_repetition_penalty: the evaluation's repetition penalty on greedy decoding (the paper's vLLM
        evaluation: 1.1; 1 is none, the preset before run 7 in benchmarks/README.md, under which step
        DPO loses to outcome DPO in both seeds).
    threads: torch's CPU threads during the run (``None``: unchanged).
    seed: seeds the topics' facts, the split, the drafts and the base model.
    """

    model: str | None = None
    n_topics: int | None = None
    lengths: tuple[int, ...] = (20, 40, 80)
    n_eval: int = 24
    search_per_topic: int = 2
    topic_sentences: int = 8
    sentence_words: tuple[int, int] = (6, 16)
    drafts_per_topic: int = 8
    max_paragraphs: int = 4
    draft_words: tuple[float, float] | None = (0.5, 1.5)
    fact_p: float = 0.5
    drift_p: float = 0.5
    vocab_size: int = 2000
    hidden: int = 128
    layers: int = 2
    base_epochs: float = 20.0
    base_lr: float = 3e-3
    search: StepSearchConfig = field(
        default_factory=lambda: StepSearchConfig(
            separator="\n", step_tokens=64, step_value="rollout", rollout_tokens=256, critique=CritiqueConfig(),
            memory=MemoryConfig(chunk_words=12, within_step=True, threshold=0.6),
        )
    )  # fmt: skip
    dpo: LongDPOConfig = field(
        default_factory=lambda: LongDPOConfig(lr=2e-4, epochs=4, batch_size=8, max_length=512, sft_weight=1.0)
    )
    sft: ImitationConfig = field(
        default_factory=lambda: ImitationConfig(lr=1e-3, epochs=4, batch_size=8, grad_accum=1, max_length=512)
    )
    pool_value_sees_facts: bool = False
    pool_seeds: tuple[int, ...] = (0, 1, 2, 3)
    balance_end_pairs: bool = False
    cap_first_step_pairs: bool = False
    step_dpo: LongDPOConfig | None = None
    budget_steps: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_tokens: int = 256
    eval_repetition_penalty: float = 1.1
    threads: int | None = 1
    seed: int = 0

    @classmethod
    def quick(cls) -> LongformExperimentConfig:
        """The 2-core preset (about 10 minutes of one core; benchmarks/README.md)."""
        return cls(n_topics=60, n_eval=18, seeds=(0, 1))

    def overridden(self, fields: dict[str, Any]) -> LongformExperimentConfig:
        """This config with ``fields`` (as parsed from JSON) replaced: a list becomes a tuple, an object
        replaces fields of a dataclass field, at any depth (``step_dpo``, when unset, starts from
        ``dpo``), e.g. ``{"search": {"mode": "mcts", "critique": {"top_k": 50}}}``."""

        def value(current: Any, given: Any) -> Any:
            if isinstance(given, list):
                return tuple(given)
            if isinstance(given, dict) and dataclasses.is_dataclass(current):
                unknown = set(given) - {f.name for f in dataclasses.fields(current)}
                if unknown:
                    raise ValueError(f"not fields of {type(current).__name__}: {sorted(unknown)}")
                return dataclasses.replace(
                    current, **{k: value(getattr(current, k), v) for k, v in given.items()}
                )  # type: ignore[type-var]
            return given

        unknown = set(fields) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"not fields of LongformExperimentConfig: {sorted(unknown)}")
        start = {
            k: self.dpo if k == "step_dpo" and self.step_dpo is None else getattr(self, k) for k in fields
        }
        return dataclasses.replace(self, **{k: value(start[k], v) for k, v in fields.items()})

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be non-empty and >= 1, got {self.lengths}")
        if self.n_eval < 1 or not self.seeds or self.drafts_per_topic < 1 or self.max_paragraphs < 1:
            raise ValueError("n_eval, drafts_per_topic and max_paragraphs must be >= 1 and seeds non-empty")
        if not 0.0 <= self.fact_p <= 1.0 or not 0.0 <= self.drift_p <= 1.0:
            raise ValueError(f"fact_p and drift_p must be in [0, 1], got {self.fact_p}, {self.drift_p}")
        if self.draft_words is not None and not 0.0 < self.draft_words[0] <= self.draft_words[1]:
            raise ValueError(
                f"draft_words must be None or (lo, hi) with 0 < lo <= hi, got {self.draft_words}"
            )
        if not self.pool_seeds:
            raise ValueError("pool_seeds must be non-empty")
        if self.budget_steps is not None and self.budget_steps < 1:
            raise ValueError(f"budget_steps must be >= 1 or None, got {self.budget_steps}")
        if not self.eval_repetition_penalty > 0:
            raise ValueError(
                f"eval_repetition_penalty must be > 0 (1: none), got {self.eval_repetition_penalty}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")


def _draft(topic: Topic, target: int, rng: random.Random, cfg: LongformExperimentConfig) -> str:
    """Paragraphs of 1-2 consecutive sentences of the topic: 1 to ``max_paragraphs`` of them whatever
    ``target`` is, or, with ``cfg.draft_words = (lo, hi)``, as many as bring the draft closest to
    ``target * u`` words (``u`` log-uniform in ``[lo, hi]``)."""
    start = rng.randrange(len(topic.sentences))
    pool = list(topic.sentences[start:] + topic.sentences[:start])
    paragraphs: list[str] = []
    stated: list[Fact] = []
    if cfg.draft_words is None:
        count, aim = rng.randint(1, cfg.max_paragraphs), None
    else:
        lo, hi = cfg.draft_words
        count, aim = len(pool), target * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    words = 0
    for _ in range(count):
        if not pool and aim is not None:  # (the blind drafts keep their released behaviour)
            break
        par = [pool.pop(0) for _ in range(rng.randint(1, 2)) if pool]
        if topic.facts and rng.random() < cfg.fact_p:
            fact = rng.choice(topic.facts)
            if stated and rng.random() < cfg.drift_p:
                # drift: an earlier fact restated with another topic's value for the attribute
                old = rng.choice(stated)
                fact = Fact(old.subject, old.attribute, _other_value(old, rng))
            par.insert(rng.randrange(len(par) + 1), fact_sentence(fact))
            stated.append(fact)
        more = count_words(" ".join(par))
        # a paragraph that would take the draft further from its aim ends it (the first is always kept)
        if aim is not None and paragraphs and abs(words + more - aim) >= abs(words - aim):
            break
        paragraphs.append(" ".join(par))
        words += more
    return "\n".join(paragraphs)


def base_drafts(
    topics: Sequence[Topic], rng: random.Random, cfg: LongformExperimentConfig
) -> list[tuple[LongformPrompt, str]]:
    """The base model's training texts: ``drafts_per_topic`` per topic, each a prompt at a length drawn
    from ``cfg.lengths`` and its :func:`_draft`."""
    out = []
    for t in topics:
        for _ in range(cfg.drafts_per_topic):
            n = rng.choice(cfg.lengths)
            out.append(
                (
                    LongformPrompt(f"Write about {t.name} in about {n} words.", n, topic=t),
                    _draft(t, n, rng, cfg),
                )
            )
    return out  # fmt: skip


def _other_value(fact: Fact, rng: random.Random) -> str:
    from veil.models.longform.data import ATTRIBUTES

    return rng.choice([v for v in ATTRIBUTES[fact.attribute] if v != fact.value])


def _tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A Metaspace BPE whose tokens end at a line end, so a prompt that ends a paragraph tokenizes as
    the training text does at that place."""
    from tokenizers import pre_tokenizers

    from veil.models.distillation.students import train_metaspace_bpe

    tokenizer = train_metaspace_bpe([t.replace("\n", "\n ") for t in texts], vocab_size)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="merged_with_previous"),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    return tokenizer


def _scratch_model(tokenizer: Any, cfg: LongformExperimentConfig) -> Any:
    return scratch_llama(tokenizer, cfg.hidden, cfg.layers, cfg.seed)


def experiment_tasks(
    cfg: LongformExperimentConfig, rng: random.Random
) -> tuple[list[Topic], list[LongformPrompt], list[LongformPrompt]]:
    """The run's topics (shuffled by ``rng``, from which the base model's drafts go on drawing), the
    search prompts and the held-out prompts (every held-out topic at every length: the evaluation and
    the memory pool's comparison)."""
    topics = wikipedia_topics(
        seed=cfg.seed, max_sentences=cfg.topic_sentences, sentence_words=cfg.sentence_words
    )[: cfg.n_topics]
    if len(topics) <= cfg.n_eval:
        raise ValueError(f"n_eval ({cfg.n_eval}) must be below the {len(topics)} topics")
    rng.shuffle(topics)
    held, searched = topics[: cfg.n_eval], topics[cfg.n_eval :]
    search_tasks = make_prompts(searched, cfg.lengths, seed=cfg.seed, per_topic=cfg.search_per_topic)
    return (
        topics,
        search_tasks,
        make_prompts(held, cfg.lengths, seed=cfg.seed + 1, per_topic=len(cfg.lengths)),
    )


def evaluate(
    policy: HFStepPolicy,
    tasks: Sequence[LongformPrompt],
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
) -> dict[str, Any]:
    """Greedy responses to ``tasks`` (with ``repetition_penalty``): mean S_l and each prompt's, rule-based
    quality and contradiction rate, words per target, and generation tokens per second."""
    judge = RuleJudge()
    start = time.perf_counter()
    steps = policy.steps(
        [policy.chat_prompt(t.prompt) for t in tasks], 1, separator="", max_new_tokens=max_new_tokens,
        temperature=0.0, top_p=1.0, seed=0, repetition_penalty=repetition_penalty,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    texts = [s[0].text for s in steps]
    tokens = sum(len(policy.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    words = [count_words(t) for t in texts]
    by_length: dict[str, list[float]] = {}
    for t, w in zip(tasks, words, strict=True):
        by_length.setdefault(str(t.target_words), []).append(w)
    return {
        "length_score": float(np.mean(scores := [length_score(w, t.target_words) for w, t in zip(words, tasks, strict=True)])),
        "length_scores": [round(float(x), 3) for x in scores],
        "quality": float(np.mean([judge.quality(t, x).mean for t, x in zip(tasks, texts, strict=True)])),
        "contradiction_rate": contradiction_rate(texts),
        "words_by_target": {k: float(np.mean(v)) for k, v in sorted(by_length.items(), key=lambda kv: int(kv[0]))},
        "ended": float(np.mean([s[0].final for s in steps])),
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "sample": texts[0][:300],
    }  # fmt: skip


def run_longform_experiment(
    config: LongformExperimentConfig | None = None,
    progress: Callable[[str], None] | None = None,
    data_dir: Path | None = None,
    save_dir: Path | None = None,
) -> dict[str, Any]:
    """Runs the experiment (see the module docstring); a JSON-ready dict with ``methods`` mapping
    ``base``, ``sft``, ``outcome-dpo`` and ``step-dpo`` (means over seeds; ``per_seed`` too) to
    ``{length_score, quality, contradiction_rate}``. With ``data_dir`` the scratch base model is kept
    there and reused by later runs of the same recipe; with ``save_dir`` the first seed's step-DPO model
    and its tokenizer are saved there (a directory ``veil serve --model`` loads)."""
    import torch

    cfg = config or LongformExperimentConfig()
    previous = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        # TRL prints its final metrics on stdout, which must hold only the result (``--json``)
        with contextlib.redirect_stdout(sys.stderr):
            return _run(cfg, progress or (lambda _m: None), data_dir, save_dir)
    finally:
        torch.set_num_threads(previous)


def paired_length_scores(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Method ``a`` against ``b`` prompt by prompt: each seed's run of ``a`` is paired with the same
    seed's run of ``b`` on the same held-out prompt (the ``length_scores`` of :func:`evaluate`).

    Over every prompt-seed pair: the mean difference in S_l (a - b), its 95 % bootstrap interval,
    Wilcoxon's signed-rank p (scipy; two-sided, zero differences dropped) and how many pairs ``a``
    wins, loses and ties. The pairs of one prompt under several seeds are not independent, so
    ``by_prompt`` repeats the interval and the test on each prompt's difference averaged over the seeds
    (the prompts are the sample; with one seed the two agree)."""
    diffs = np.stack([np.subtract(x["length_scores"], y["length_scores"]) for x, y in zip(a, b, strict=True)])
    diff = diffs.ravel()
    out: dict[str, Any] = {"pairs": int(diff.size), "mean_diff": float(diff.mean()) if diff.size else 0.0,
                           "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
                           "ties": int((diff == 0).sum())} | _mean_test(diff)  # fmt: skip
    per_prompt = diffs.mean(axis=0)
    out["by_prompt"] = {"prompts": int(per_prompt.size)} | _mean_test(per_prompt)
    return out


def _mean_test(diff: np.ndarray) -> dict[str, Any]:
    """The 95 % percentile bootstrap interval of ``diff``'s mean and Wilcoxon's signed-rank p (1 and no
    interval with fewer than two non-zero differences)."""
    from scipy.stats import bootstrap, wilcoxon

    if np.count_nonzero(diff) < 2:
        return {"ci95": None, "wilcoxon_p": 1.0}
    ci = bootstrap(
        (diff,), np.mean, n_resamples=10_000, random_state=0, method="percentile"
    ).confidence_interval
    return {
        "ci95": [float(ci.low), float(ci.high)],
        "wilcoxon_p": float(wilcoxon(diff, zero_method="wilcox").pvalue),
    }


def _kinds_by_length(results: Sequence[Any], end: str) -> dict[str, dict[str, int]]:
    """:func:`_pair_kinds` of the step pairs of each required length."""
    by: dict[int, list[dict[str, str]]] = {}
    for r in results:
        by.setdefault(r.task.target_words, []).extend(
            {k: str(p[k]) for k in ("chosen", "rejected")} for p in r.pairs
        )
    return {str(n): _pair_kinds(pairs, end) for n, pairs in sorted(by.items())}


def _pair_kinds(pairs: Sequence[dict[str, str]], end: str) -> dict[str, int]:
    """How many pairs end the answer in the chosen step only, the rejected only, both or neither."""
    kinds = {"chosen_ends": 0, "rejected_ends": 0, "both_end": 0, "neither_ends": 0}
    for p in pairs:
        c, r = p["chosen"].endswith(end), p["rejected"].endswith(end)
        kinds[
            "both_end" if c and r else "chosen_ends" if c else "rejected_ends" if r else "neither_ends"
        ] += 1
    return kinds


def _words_by_target(drafts: Sequence[tuple[LongformPrompt, str]]) -> dict[str, float]:
    """The base model's training drafts' mean words per required length."""
    by: dict[int, list[int]] = {}
    for p, d in drafts:
        by.setdefault(p.target_words, []).append(count_words(d))
    return {str(n): round(float(np.mean(w)), 1) for n, w in sorted(by.items())}


def _count_by(values: Iterable[Any]) -> dict[str, int]:
    """How many of ``values`` are each value, keyed by its text, in sorted order."""
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return {str(k): n for k, n in sorted(counts.items())}


_BASE_VERSION = 1  # bump when the base model's recipe changes in a way its config does not show


def base_model_dir(cfg: LongformExperimentConfig, data_dir: Path | None) -> Path | None:
    """Where the scratch base model of ``cfg`` is kept: ``<data_dir>/longform/base-<hash>`` of every
    field it depends on (``None``: no data directory, or a pretrained model)."""
    if data_dir is None or cfg.model is not None:
        return None
    import torch

    keys = ("n_topics", "lengths", "topic_sentences", "sentence_words", "drafts_per_topic", "max_paragraphs",
            "fact_p", "drift_p", "vocab_size", "hidden", "layers", "base_epochs", "base_lr", "seed")  # fmt: skip
    blob = {k: getattr(cfg, k) for k in keys} | {"version": _BASE_VERSION}
    if cfg.draft_words is not None:  # only when set, so the bases cached before it existed stay valid
        blob["draft_words"] = list(cfg.draft_words)
    blob["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    key = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]
    return Path(data_dir) / "longform" / f"base-{key}"


def base_model(
    cfg: LongformExperimentConfig, topics: Sequence[Topic], rng: random.Random, data_dir: Path | None,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[Any, Any, list[tuple[LongformPrompt, str]]]:  # fmt: skip
    """The run's base model and tokenizer, and the drafts it trains on (drawn from ``rng`` even when the
    model is cached, so the rest of the run draws the same): ``cfg.model`` loaded, or the scratch Llama
    read from :func:`base_model_dir` or trained there (train mode left off; call ``.eval()``), on the GPU
    when there is one."""
    import torch

    from veil.models.dpo import restore_forward
    from veil.models.rag.train import imitate

    cached = base_model_dir(cfg, data_dir)
    # drawn even when the base model is cached: the JSON reports their lengths
    drafts = base_drafts(topics, rng, cfg) if cfg.model is None else []
    if cfg.model is None and cached is not None and (cached / "config.json").is_file():
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        base, tokenizer = (
            AutoModelForCausalLM.from_pretrained(cached),
            PreTrainedTokenizerFast.from_pretrained(cached),
        )
        say(f"base model: cached in {cached}")
    elif cfg.model is None:
        tokenizer = _tokenizer([p.prompt + "\n" + d for p, d in drafts], cfg.vocab_size)
        base = _scratch_model(tokenizer, cfg)
        policy = HFStepPolicy(base, tokenizer)
        examples = []
        for p, d in drafts:
            prompt = tokenizer(policy.chat_prompt(p.prompt), add_special_tokens=False)["input_ids"]
            ids = tokenizer(d + policy.end_text, add_special_tokens=False)["input_ids"]
            examples.append(
                {"input_ids": prompt + ids, "completion_mask": [0] * len(prompt) + [1] * len(ids)}
            )
        say(f"base model: {len(drafts)} drafts over {len(topics)} topics, {cfg.base_epochs:g} epochs")
        base.train()
        imitate(base, tokenizer, examples, ImitationConfig(
            lr=cfg.base_lr, epochs=cfg.base_epochs, batch_size=16, grad_accum=1, max_length=512, seed=cfg.seed,
            group_by_length=True,
        ))  # fmt: skip
        # the trainer's forward would make every copy below run this model's weights (restore_forward)
        restore_forward(base)
        if cached is not None:
            base.save_pretrained(cached)
            tokenizer.save_pretrained(cached)
    else:
        from veil.models.loading import load_model

        loaded = load_model(cfg.model)
        base, tokenizer = loaded.model, loaded.tokenizer
    if torch.cuda.is_available():  # a model read from the cache or loaded from disk starts on the CPU
        base = base.to("cuda")
    return base, tokenizer, drafts


def compare_memory_pool(
    policy: HFStepPolicy, tasks: Sequence[LongformPrompt], cfg: LongformExperimentConfig, encoder: object,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The memory pool's effect: ``cfg.search`` (critique off) on ``tasks`` with and without the pool,
    once per search seed (``seeds``, default ``cfg.pool_seeds``), valued by a rule judge that sees stated
    facts only if ``cfg.pool_value_sees_facts``. The rates are over every response of every seed; the
    same task and seed with and without the pool make a pair for McNemar's exact test
    (``only_without``: responses that contradict themselves without the pool only)."""
    from veil.models.evaluation.punchbench.stats import mcnemar_exact

    seeds = list(cfg.pool_seeds if seeds is None else seeds)
    judge = RuleJudge(sees_facts=cfg.pool_value_sees_facts)
    runs: dict[str, list[Any]] = {"with": [], "without": []}
    cpu = dict.fromkeys(runs, 0.0)
    for seed in seeds:
        for kind, memory in (("with", cfg.search.memory), ("without", None)):
            start = time.process_time()
            search = dataclasses.replace(cfg.search, memory=memory, critique=None, seed=seed)
            runs[kind] += collect_pairs(policy, judge, tasks, search, encoder)[0]
            cpu[kind] += time.process_time() - start
    flags = {k: np.array([contradiction_rate([r.text]) > 0 for r in v]) for k, v in runs.items()}
    test = mcnemar_exact(flags["without"], flags["with"])
    return {
        "responses": len(runs["with"]),
        "seeds": seeds,
        "contradiction_rate_with": float(flags["with"].mean()) if flags["with"].size else 0.0,
        "contradiction_rate_without": float(flags["without"].mean()) if flags["without"].size else 0.0,
        "only_without": test.only_a, "only_with": test.only_b, "mcnemar_p": test.p_value,
        "cross_step_rate_with": cross_step_contradiction_rate(runs["with"]),
        "cross_step_rate_without": cross_step_contradiction_rate(runs["without"]),
        "vetoes": sum(r.vetoes for r in runs["with"]),
        "seconds_per_step": sum(r.memory_seconds for r in runs["with"])
        / max(1, sum(len(r.steps) for r in runs["with"])),
        "value_sees_facts": cfg.pool_value_sees_facts,
        "search_cpu_s_with": round(cpu["with"], 1), "search_cpu_s_without": round(cpu["without"], 1),
    }  # fmt: skip


def _run(
    cfg: LongformExperimentConfig, say: Callable[[str], None], data_dir: Path | None, save_dir: Path | None
) -> dict[str, Any]:
    from veil.models.dpo import restore_forward
    from veil.models.rag.dense import load_minilm
    from veil.models.rag.train import imitate

    laps = Laps(say)
    lap, seconds, cpu = laps.lap, laps.seconds, laps.cpu
    rng = random.Random(cfg.seed)
    topics, search_tasks, eval_tasks = experiment_tasks(cfg, rng)
    pool_tasks = eval_tasks
    encoder = load_minilm()
    judge = RuleJudge()
    lap("setup_s")

    base, tokenizer, drafts = base_model(cfg, topics, rng, data_dir, say)
    base.eval()
    policy = HFStepPolicy(base, tokenizer)
    lap("base_s")

    say(f"step search on {len(search_tasks)} prompts (width {cfg.search.width}, depth {cfg.search.depth})")
    results, cut = collect_pairs(policy, judge, search_tasks, cfg.search, encoder)
    found = step_pairs(results)
    pairs = cap_first_step_pairs(results, cfg.seed) if cfg.cap_first_step_pairs else found
    pairs = balance_end_pairs(pairs, policy.end_text, cfg.seed) if cfg.balance_end_pairs else pairs
    sft = sft_examples(policy, tokenizer, results)
    generated = sum(r.generated_steps for r in results)
    lap("search_s")
    outcome, outcome_generated = outcome_pairs(policy, judge, search_tasks, cfg.search)
    lap("outcome_pairs_s")

    say(f"memory pool on {len(pool_tasks)} held-out prompts: the search with and without it")
    pool = compare_memory_pool(policy, pool_tasks, cfg, encoder)
    lap("pool_s")

    # the budget counts every step pair found, so balancing changes the pairs, not the number of updates
    steps_per_epoch = math.ceil(len(found) / (cfg.dpo.batch_size * cfg.dpo.grad_accum))
    budget = cfg.budget_steps or max(1, round(steps_per_epoch * cfg.dpo.epochs))
    methods: dict[str, list[dict[str, Any]]] = {
        "base": [evaluate(policy, eval_tasks, cfg.eval_tokens, cfg.eval_repetition_penalty)]
    }
    lap("eval_base_s")
    train_seconds: dict[str, float] = {}
    for seed in cfg.seeds:
        for name in ("sft", "outcome-dpo", "step-dpo"):
            say(f"{name}, seed {seed}: {budget} updates")
            model = copy.deepcopy(base).train()
            start = time.process_time()
            if name == "sft":
                imitate(model, tokenizer, sft, dataclasses.replace(cfg.sft, max_steps=budget, seed=seed))
                restore_forward(model)
            else:
                from veil.models.dpo import prefix_dpo

                dpo = (cfg.step_dpo or cfg.dpo) if name == "step-dpo" else cfg.dpo
                prefix_dpo(model, tokenizer, pairs if name == "step-dpo" else outcome,
                           dataclasses.replace(dpo, max_steps=budget, seed=seed))  # fmt: skip
            train_seconds[name] = train_seconds.get(name, 0.0) + time.process_time() - start
            if save_dir is not None and name == "step-dpo" and seed == cfg.seeds[0]:
                model.save_pretrained(save_dir)
                tokenizer.save_pretrained(save_dir)
            methods.setdefault(name, []).append(
                evaluate(
                    HFStepPolicy(model.eval(), tokenizer),
                    eval_tasks,
                    cfg.eval_tokens,
                    cfg.eval_repetition_penalty,
                )
            )
        lap(f"train_eval_seed{seed}_s")

    keys = ("length_score", "quality", "contradiction_rate")
    summary = {
        name: {k: float(np.mean([r[k] for r in runs])) for k in keys}
        | {"length_score_std": float(np.std([r["length_score"] for r in runs]))}
        for name, runs in methods.items()
    }
    laps.total()
    step_ls = [r["length_score"] for r in methods["step-dpo"]]
    paired = {
        f"step-dpo_vs_{other}": paired_length_scores(methods["step-dpo"], methods[other])
        for other in ("sft", "outcome-dpo")
    }
    checks = {
        "step_beats_sft_every_seed": all(s > r["length_score"] for s, r in zip(step_ls, methods["sft"], strict=True)),
        "step_beats_outcome_every_seed": all(
            s > r["length_score"] for s, r in zip(step_ls, methods["outcome-dpo"], strict=True)
        ),
        "pool_lowers_contradictions": pool["contradiction_rate_with"] < pool["contradiction_rate_without"],
        "pool_lowers_cross_step_contradictions": pool["cross_step_rate_with"] < pool["cross_step_rate_without"],
    }  # fmt: skip
    search_cpu_min = cpu["search_s"] / 60
    return {
        "config": {"model": cfg.model or f"scratch llama {cfg.layers}x{cfg.hidden}", "lengths": list(cfg.lengths),
                   "search_prompts": len(search_tasks), "eval_prompts": len(eval_tasks), "pool_prompts": len(pool_tasks), "seeds": list(cfg.seeds),
                   "width": cfg.search.width, "depth": cfg.search.depth, "mode": cfg.search.mode,
                   "step_value": cfg.search.step_value, "rejected": cfg.search.rejected, "pairs": cfg.search.pairs,
                   "dpo_lr": cfg.dpo.lr, "dpo_sft_weight": cfg.dpo.sft_weight, "dpo_loss": cfg.dpo.loss_type,
                   "dpo_beta": cfg.dpo.beta, "balance_end_pairs": cfg.balance_end_pairs,
                   "cap_first_step_pairs": cfg.cap_first_step_pairs,
                   "step_dpo_loss": (cfg.step_dpo or cfg.dpo).loss_type,
                   "step_dpo_beta": (cfg.step_dpo or cfg.dpo).beta,
                   "draft_words": list(cfg.draft_words) if cfg.draft_words else None, "base_epochs": cfg.base_epochs,
                   "critique_top_k": cfg.search.critique.top_k if cfg.search.critique else None,
                   "eval_repetition_penalty": cfg.eval_repetition_penalty,
                   "memory": dataclasses.asdict(cfg.search.memory) if cfg.search.memory else None,
                   "budget_steps": budget},
        "methods": summary,
        "per_seed": {name: [{k: r[k] for k in (*keys, "words_by_target", "ended", "length_scores")} for r in runs]
                     for name, runs in methods.items()},
        "samples": {name: runs[0]["sample"] for name, runs in methods.items()},
        "data": {
            "draft_words_by_target": _words_by_target(drafts),
            "step_pairs_by_depth": _count_by(p["depth"] for r in results for p in r.pairs),
            "step_pairs": len(found), "step_pairs_trained": len(pairs), "step_pair_kinds": _pair_kinds(found, policy.end_text),
            "step_pair_kinds_by_length": _kinds_by_length(results, policy.end_text), "rollouts": sum(r.rollouts for r in results),
            "fallback_pairs": sum(int(p["fallback"]) for r in results for p in r.pairs),
            "off_path_pairs": sum(1 - int(p.get("on_path", 1)) for r in results for p in r.pairs),
            "outcome_pairs": len(outcome), "sft_paths": len(sft), "search_steps_generated": generated,
            "outcome_responses_generated": outcome_generated, "refined_steps": sum(r.refined for r in results),
            "refine_attempts": sum(r.refine_attempts for r in results),
            "vetoes": sum(r.vetoes for r in results), "unparsable_judgements": sum(r.unparsable for r in results),
            "cut_short": cut,
        },
        "memory_pool": pool,
        "throughput": {
            "pairs_per_cpu_minute": len(found) / search_cpu_min if search_cpu_min > 0 else 0.0,
            # on a GPU, pairs per GPU-minute: the search's wall time, the device held throughout
            "pairs_per_wall_minute": len(found) / (seconds["search_s"] / 60) if seconds["search_s"] > 0 else 0.0,
            "device": str(getattr(base, "device", "cpu")),
            "tokens_per_s": {name: float(np.mean([r["tokens_per_s"] for r in runs])) for name, runs in methods.items()},
            "train_cpu_s": {k: round(v, 1) for k, v in train_seconds.items()},
        },
        "paired": paired,
        "checks": checks,
        "seconds": seconds,
        "cpu_seconds": cpu,
    }  # fmt: skip

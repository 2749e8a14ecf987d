"""A seeded instruction -> response dataset for distillation, with answers of known probabilities.

Two kinds of examples:

- **Templated tasks** whose true answer distribution is known, so the KL from the truth to a model is
  computable: proverb completion and small arithmetic (one correct answer in several formats, so
  exact match is defined), "which word fits the blank" and "pick one of three" (several correct answers
  at fixed probabilities). Soft targets should help most here: the student is small, the data few and
  each target one sample of an uncertain answer (Hinton et al., arXiv:1503.02531, section 1).
- **Corpus tasks** over real sentences of the Lee news corpus shipped in gensim's test data
  (summarise, continue, title a sentence), whose responses are a teacher's own greedy generations,
  cached once per model and seed as JSONL (:func:`cached_teacher_responses`).

Splits are a small ``train`` split for the student, a ``heldout`` split, and an optional large
``teacher`` split (templated only) for fitting a small teacher to the known distributions. Held-out
corpus sentences come from documents kept out of ``train`` (minus sentences that recur in training
documents). Templated held-out prompts are fresh draws from the same families, so a prompt may recur
across splits with a different sampled answer.

Every example is formatted with the tokenizer's chat template, or :data:`PLAIN_PROMPT` for tokenizers
without one; the response is encoded apart from the prompt and ends with the end-of-turn (eos) token,
which is what the loss and the metrics count (:func:`encode_example`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "CORPUS_TASKS",
    "PLAIN_PROMPT",
    "TEMPLATED_TASKS",
    "DistillData",
    "DistillDataConfig",
    "Encoded",
    "Example",
    "build_dataset",
    "cached_teacher_responses",
    "collate",
    "corpus_instructions",
    "corpus_sentences",
    "encode_example",
    "greedy_generate",
    "lee_documents",
    "model_device",
    "prompt_text",
    "teacher_cache_path",
    "templated_examples",
]

TemplatedTask = Literal["proverb", "arithmetic", "word", "choice"]
TEMPLATED_TASKS: tuple[str, ...] = get_args(TemplatedTask)
CorpusTask = Literal["summarise", "continue", "title"]
CORPUS_TASKS: tuple[str, ...] = get_args(CorpusTask)

PLAIN_PROMPT = "Instruction:\n{instruction}\nResponse:\n"
"""The prompt for tokenizers without a chat template (the response follows, then eos)."""

TeacherFn = Callable[[Sequence[str]], list[str]]


@dataclass(frozen=True)
class Example:
    """One instruction and its reference response.

    Attributes
    ----------
    instruction: the user's turn.
    response: the reference answer (a sample from ``probs`` for templated tasks, else the teacher's).
    task: one of :data:`TEMPLATED_TASKS` or :data:`CORPUS_TASKS`.
    answers: the support of the true answer distribution; empty when it is unknown.
    probs: the probability of each answer (sums to 1); empty when unknown.
    single_answer: the answers are formats of one correct answer, so exact match is defined.
    """

    instruction: str
    response: str
    task: str
    answers: tuple[str, ...] = ()
    probs: tuple[float, ...] = ()
    single_answer: bool = False


@dataclass
class DistillDataConfig:
    """How many examples of which kind, and the seed.

    Attributes
    ----------
    seed: every split is a deterministic function of it.
    n_train: student training examples (300-1,000 keeps the data-poor regime where soft targets help).
    n_heldout: held-out examples.
    n_teacher: templated examples for fitting a small teacher to the true distributions (0: none).
    corpus_fraction: share of ``train`` and ``heldout`` that are corpus tasks (needs a teacher).
    heldout_doc_fraction: share of Lee documents whose sentences are reserved for held-out.
    min_words, max_words: the corpus sentences kept.
    """

    seed: int = 0
    n_train: int = 500
    n_heldout: int = 200
    n_teacher: int = 0
    corpus_fraction: float = 0.25
    heldout_doc_fraction: float = 0.2
    min_words: int = 8
    max_words: int = 30

    def __post_init__(self) -> None:
        for name in ("n_train", "n_heldout", "n_teacher"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.corpus_fraction <= 1.0:
            raise ValueError(f"corpus_fraction must be in [0, 1], got {self.corpus_fraction}")
        if not 0.0 < self.heldout_doc_fraction < 1.0:
            raise ValueError(f"heldout_doc_fraction must be in (0, 1), got {self.heldout_doc_fraction}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")


@dataclass
class DistillData:
    """The splits of one seed."""

    train: list[Example]
    heldout: list[Example]
    teacher: list[Example] = field(default_factory=list)


# --- templated tasks -------------------------------------------------------------------------------

_PROVERBS = [
    ("A stitch in time", "saves nine"),
    ("Actions speak", "louder than words"),
    ("The early bird", "catches the worm"),
    ("Every cloud has", "a silver lining"),
    ("Don't count your chickens", "before they hatch"),
    ("Practice makes", "perfect"),
    ("When in Rome,", "do as the Romans do"),
    ("Better late", "than never"),
    ("All that glitters", "is not gold"),
    ("Look before", "you leap"),
    ("Honesty is", "the best policy"),
    ("Two heads are", "better than one"),
    ("Rome wasn't built", "in a day"),
    ("A picture is worth", "a thousand words"),
    ("Birds of a feather", "flock together"),
    ("Curiosity killed", "the cat"),
]
_PROVERB_ASK = ["Complete the proverb: {start} ...", "Finish this saying: {start} ..."]
_PROVERB_FORMATS = (("{end}.", 0.6), ("{start} {end}.", 0.3), ("It ends: {end}.", 0.1))

_WORD_FRAMES = [
    ("The ___ barked at the postman.", (("dog", 0.6), ("puppy", 0.25), ("terrier", 0.15))),
    ("She drank a cup of hot ___ this morning.", (("coffee", 0.5), ("tea", 0.4), ("cocoa", 0.1))),
    ("He opened the ___ to let in some fresh air.", (("window", 0.7), ("door", 0.3))),
    ("The children played in the ___ after school.", (("park", 0.5), ("garden", 0.3), ("yard", 0.2))),
    ("We took the ___ to get to the city centre.", (("bus", 0.4), ("train", 0.4), ("tram", 0.2))),
    ("Please pass me the ___ and pepper.", (("salt", 1.0),)),
    ("The ___ was shining brightly in the sky.", (("sun", 0.8), ("moon", 0.2))),
    ("I read an interesting ___ last night.", (("book", 0.5), ("article", 0.3), ("story", 0.2))),
    ("She wrote the address on the ___.", (("envelope", 0.6), ("card", 0.2), ("parcel", 0.2))),
    ("The farmer milked the ___ at dawn.", (("cow", 0.8), ("goat", 0.2))),
    ("He plays the ___ in a band.", (("guitar", 0.5), ("drums", 0.3), ("piano", 0.2))),
    ("They sat by the ___ to keep warm.", (("fire", 0.7), ("stove", 0.2), ("heater", 0.1))),
]
_WORD_ASK = ["Which word fits the blank? {frame}", "Fill in the blank with one word: {frame}"]

_CHOICE_ITEMS = [
    "apple", "pear", "plum", "cherry", "lemon", "red", "blue", "green", "yellow", "cat", "horse",
    "owl", "fox", "river", "hill", "forest", "violin", "flute", "harp",
]  # fmt: skip
_CHOICE_PROBS = (0.5, 0.3, 0.2)  # by position in the question: a rule the student can learn

_ARITH_ASK = {
    "+": ["What is {a} + {b}?", "Add {a} and {b}."],
    "-": ["What is {a} - {b}?", "Subtract {b} from {a}."],
}
_ARITH_FORMATS = (("{c}", 0.5), ("{a} {op} {b} = {c}", 0.3), ("The answer is {c}.", 0.2))


def _draw(rng: random.Random, task: str) -> tuple[str, tuple[str, ...], tuple[float, ...], bool]:
    if task == "proverb":
        start, end = rng.choice(_PROVERBS)
        answers = tuple(f.format(start=start, end=end) for f, _ in _PROVERB_FORMATS)
        probs = tuple(p for _, p in _PROVERB_FORMATS)
        return rng.choice(_PROVERB_ASK).format(start=start), answers, probs, True
    if task == "arithmetic":
        op = rng.choice("+-")
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        if op == "-" and b > a:
            a, b = b, a
        c = a + b if op == "+" else a - b
        answers = tuple(f.format(a=a, b=b, c=c, op=op) for f, _ in _ARITH_FORMATS)
        probs = tuple(p for _, p in _ARITH_FORMATS)
        return rng.choice(_ARITH_ASK[op]).format(a=a, b=b), answers, probs, True
    if task == "word":
        frame, fill = rng.choice(_WORD_FRAMES)
        return (
            rng.choice(_WORD_ASK).format(frame=frame),
            tuple(w for w, _ in fill),
            tuple(p for _, p in fill),
            False,
        )
    if task == "choice":
        items = tuple(rng.sample(_CHOICE_ITEMS, 3))
        return f"Pick one: {items[0]}, {items[1]} or {items[2]}.", items, _CHOICE_PROBS, False
    raise ValueError(f"task must be one of {TEMPLATED_TASKS}, got {task!r}")


def templated_examples(n: int, rng: random.Random) -> list[Example]:
    """``n`` templated examples, tasks in turn, each response one sample of its true distribution."""
    out = []
    for i in range(n):
        task = TEMPLATED_TASKS[i % len(TEMPLATED_TASKS)]
        instruction, answers, probs, single = _draw(rng, task)
        response = rng.choices(answers, weights=probs)[0]
        out.append(Example(instruction, response, task, answers, probs, single))
    rng.shuffle(out)
    return out


# --- corpus tasks ----------------------------------------------------------------------------------

_CORPUS_ASK = {
    "summarise": "Summarise this sentence in a few words: {s}",
    "continue": "Continue this text with one more sentence: {s}",
    "title": "Write a short title for this sentence: {s}",
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def lee_documents() -> list[str]:
    """The 300 documents of the Lee news corpus (gensim's test data), one string each."""
    try:
        from gensim.test.utils import datapath
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the Lee corpus ships with gensim: pip install gensim") from exc
    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def corpus_sentences(documents: Sequence[str], min_words: int = 8, max_words: int = 30) -> list[str]:
    """The distinct sentences of ``documents`` with ``min_words`` to ``max_words`` words, in order."""
    found = (s for doc in documents for s in _SENTENCE_END.split(doc))
    return list(dict.fromkeys(s for s in found if min_words <= len(s.split()) <= max_words))


def corpus_instructions(n: int, rng: random.Random, sentences: Sequence[str]) -> list[tuple[str, str]]:
    """``n`` ``(task, instruction)`` pairs over distinct ``sentences``, tasks in turn."""
    if n > len(sentences):
        raise ValueError(f"asked for {n} corpus instructions, only {len(sentences)} sentences qualify")
    chosen = rng.sample(list(sentences), n)
    return [(CORPUS_TASKS[i % 3], _CORPUS_ASK[CORPUS_TASKS[i % 3]].format(s=s)) for i, s in enumerate(chosen)]


def teacher_cache_path(data_dir: Path | str, model_name: str, seed: int, max_new_tokens: int) -> Path:
    """Where a teacher's greedy responses are cached: one JSONL per model, seed and length limit."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("_") or "model"
    return (
        Path(data_dir) / "distillation" / "teacher_responses" / f"{slug}-seed{seed}-n{max_new_tokens}.jsonl"
    )


def cached_teacher_responses(instructions: Sequence[str], teacher: TeacherFn, cache: Path) -> list[str]:
    """The teacher's response to each instruction, generating only those not yet in ``cache``.

    ``cache`` holds one ``{"instruction", "response"}`` object a line; new ones are appended.
    """
    known: dict[str, str] = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                known[row["instruction"]] = row["response"]
    missing = list(dict.fromkeys(i for i in instructions if i not in known))
    if missing:
        responses = teacher(missing)
        if len(responses) != len(missing):
            raise ValueError(
                f"the teacher returned {len(responses)} responses for {len(missing)} instructions"
            )
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("a", encoding="utf-8") as f:
            for instruction, response in zip(missing, responses, strict=True):
                f.write(json.dumps({"instruction": instruction, "response": response}) + "\n")
                known[instruction] = response
    return [known[i] for i in instructions]


def build_dataset(
    cfg: DistillDataConfig, teacher: TeacherFn | None = None, cache: Path | None = None
) -> DistillData:
    """All splits of ``cfg.seed``.

    Parameters
    ----------
    teacher: maps instructions to responses (e.g. :func:`greedy_generate` of the teacher); needed when
        ``cfg.corpus_fraction > 0``. Corpus examples whose response is empty are dropped.
    cache: the JSONL of :func:`cached_teacher_responses` (e.g. :func:`teacher_cache_path`); ``None``
        calls the teacher every time.
    """
    n_corpus = {s: round(getattr(cfg, f"n_{s}") * cfg.corpus_fraction) for s in ("train", "heldout")}
    if any(n_corpus.values()) and teacher is None:
        raise ValueError(f"corpus_fraction={cfg.corpus_fraction} needs a teacher to write the responses")
    splits: dict[str, list[Example]] = {}
    sentences: dict[str, list[str]] = {}
    if any(n_corpus.values()):
        docs = list(dict.fromkeys(lee_documents()))  # the corpus repeats a few documents
        random.Random(f"{cfg.seed}-docs").shuffle(docs)
        cut = round(len(docs) * (1 - cfg.heldout_doc_fraction))
        train = corpus_sentences(docs[:cut], cfg.min_words, cfg.max_words)
        seen = set(train)  # some wire-service sentences recur across documents
        heldout = [s for s in corpus_sentences(docs[cut:], cfg.min_words, cfg.max_words) if s not in seen]
        sentences = {"train": train, "heldout": heldout}
    for split in ("train", "heldout", "teacher"):
        rng = random.Random(f"{cfg.seed}-{split}")  # a string seed: stable across runs and platforms
        total = getattr(cfg, f"n_{split}")
        k = n_corpus.get(split, 0)
        rows = templated_examples(total - k, rng)
        if k:
            pairs = corpus_instructions(k, rng, sentences[split])
            instructions = [i for _, i in pairs]
            if cache is None:
                responses = teacher(instructions)  # type: ignore[misc]  # checked above
            else:
                responses = cached_teacher_responses(instructions, teacher, cache)  # type: ignore[arg-type]
            rows += [
                Example(i, r.strip(), t) for (t, i), r in zip(pairs, responses, strict=True) if r.strip()
            ]
            rng.shuffle(rows)
        splits[split] = rows
    return DistillData(train=splits["train"], heldout=splits["heldout"], teacher=splits["teacher"])


# --- formatting and encoding -----------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + response and which of them are the response (1) or the prompt (0)."""

    input_ids: list[int]
    response_mask: list[int]


def prompt_text(tokenizer: Any, instruction: str) -> str:
    """The prompt up to where the response begins: the chat template's, or :data:`PLAIN_PROMPT`."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
        )
    return PLAIN_PROMPT.format(instruction=instruction)


def encode_example(tokenizer: Any, instruction: str, response: str) -> Encoded:
    """Prompt and response encoded apart (as at generation time), the response closed by eos."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs an eos token to close responses")
    prompt = tokenizer(prompt_text(tokenizer, instruction), add_special_tokens=False)["input_ids"]
    answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(list(prompt) + list(answer), [0] * len(prompt) + [1] * len(answer))


def model_device(model: Any) -> Any:
    """The ``torch.device`` of a model's parameters: where its batches must live."""
    return next(model.parameters()).device


def collate(rows: Sequence[Encoded], pad_id: int, device: Any = None) -> dict[str, Any]:
    """Right-padded tensors ``input_ids``, ``attention_mask`` and ``response_mask``, each ``(B, T)``, on ``device``.

    ``device`` defaults to the CPU; pass :func:`model_device` of the model the batch feeds.
    """
    import torch

    width = max(len(r.input_ids) for r in rows)
    # row [p1 r1 eos] of width 5 -> ids [p1 r1 eos pad pad], attn [1 1 1 0 0], resp [0 1 1 0 0]
    pads = [width - len(r.input_ids) for r in rows]
    ids = [list(r.input_ids) + [pad_id] * n for r, n in zip(rows, pads, strict=True)]
    attn = [[1] * len(r.input_ids) + [0] * n for r, n in zip(rows, pads, strict=True)]
    resp = [list(r.response_mask) + [0] * n for r, n in zip(rows, pads, strict=True)]
    return {
        name: torch.tensor(value, dtype=torch.long, device=device)
        for name, value in (("input_ids", ids), ("attention_mask", attn), ("response_mask", resp))
    }


def greedy_generate(
    model: Any, tokenizer: Any, instructions: Sequence[str], max_new_tokens: int = 48, batch_size: int = 8
) -> list[str]:
    """Greedy responses of a causal LM to ``instructions`` (prompts left-padded, decoding stops at eos)."""
    import torch

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    out: list[str] = []
    model.eval()
    device = model_device(model)
    for start in range(0, len(instructions), batch_size):
        prompts = [
            tokenizer(prompt_text(tokenizer, i), add_special_tokens=False)["input_ids"]
            for i in instructions[start : start + batch_size]
        ]
        width = max(len(p) for p in prompts)
        # row [t1 t2] of width 4 -> [pad pad t1 t2], mask [0 0 1 1]
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        for row in gen[:, width:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out

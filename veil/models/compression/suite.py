"""A synthetic long-context suite for KV-cache compression, generated from a seed (nothing downloaded).

The tasks follow RULER's synthetic set (arXiv:2404.06654, Sec. 3): needles in a haystack of repeated
filler sentences (RULER's "repeat" haystack), inserted at a token-level depth. Every answer is several
tokens long (7-digit numbers, uuid-like strings, lists of names), because the first generated token
cannot change under compression after prefill: the prefill saw the full prompt.

Tasks (:data:`TASKS`):

- ``niah_single``: "One of the special magic numbers for {key} is: {7 digits}." at the depth.
- ``passkey``: "The pass key is {7 digits}. Remember it." at the depth.
- ``niah_multikey``: the target needle at the depth and three distractor needles (other keys) at random
  depths.
- ``niah_multivalue``: one key with three values, the first at the depth, the others at random depths;
  every value is part of the answer.
- ``variable_tracking``: ``VAR A = 12345`` then four hops ``VAR B = VAR A`` spread from the depth to the
  end; the answer is every variable name.
- ``json_kv``: a JSON object of uuid-like keys and values filling the context; the queried pair is at the
  depth.
- ``arithmetic``: three sentences of a two-step word problem at the depth (a GSM8K stand-in).

Each example holds the chat-templated prompt (SmolLM2's ChatML template, or any tokenizer's) with the
question after the context, and ``question_start``: the index where the question's tokens begin. The
question-before-compression regime (the paper's, arXiv:2502.16886) prefills and compresses the whole
prompt; the question-after regime compresses ``prompt_ids[:question_start]`` and then feeds the rest.

The prompt is assembled from separately tokenized pieces (template, filler sentences, needles), so
every needle starts at a known token index; the length target is met to within one filler sentence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = ["TASKS", "SuiteConfig", "SuiteExample", "Task", "build_suite", "is_correct"]

Task = Literal[
    "niah_single",
    "passkey",
    "niah_multikey",
    "niah_multivalue",
    "variable_tracking",
    "json_kv",
    "arithmetic",
]
TASKS: tuple[str, ...] = get_args(Task)

FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
_ADJECTIVES = ("quiet", "amber", "brave", "hollow", "silver", "narrow", "gentle", "rapid", "frozen", "golden")
_NOUNS = (
    "harbor",
    "lantern",
    "meadow",
    "falcon",
    "canyon",
    "violin",
    "orchard",
    "glacier",
    "compass",
    "thistle",
)
_PLACEHOLDER = "\x00CONTENT\x00"


@dataclass(frozen=True)
class SuiteConfig:
    """What to generate.

    Attributes
    ----------
    n_examples: examples; example ``i`` has task ``tasks[i % len(tasks)]`` and depth
        ``depths[i % len(depths)]`` (coprime lengths cover the task x depth grid).
    context_tokens: target length of the whole chat-templated prompt, in tokens.
    seed: the seed of every random choice (keys, values, distractor depths).
    depths: fractions of the context before the (first) needle, in ``[0, 1]``.
    tasks: task types to cycle through (a subset of :data:`TASKS`).
    """

    n_examples: int = 24
    context_tokens: int = 1024
    seed: int = 0
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    tasks: tuple[str, ...] = TASKS

    def __post_init__(self) -> None:
        if self.n_examples < 1:
            raise ValueError(f"n_examples must be >= 1, got {self.n_examples}")
        if self.context_tokens < 192:
            raise ValueError(
                f"context_tokens must be >= 192 (room for template and needles), got {self.context_tokens}"
            )
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must be a non-empty tuple of fractions in [0, 1], got {self.depths}")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")


@dataclass(frozen=True)
class SuiteExample:
    """One prompt and its answer.

    Attributes
    ----------
    task: the task type.
    depth: the requested depth (fraction of the context before the target needle).
    prompt_ids: the chat-templated prompt: template, context, question, generation prompt.
    context_start: index of the context's first token (after the template's system and user header).
    question_start: index of the question's first token (the context ends here).
    needle_start: index of the target needle's first token.
    needle_text: the target needle as inserted.
    answers: strings that must all appear in the output for the answer to be correct.
    """

    task: str
    depth: float
    prompt_ids: tuple[int, ...]
    context_start: int
    question_start: int
    needle_start: int
    needle_text: str
    answers: tuple[str, ...]

    @property
    def actual_depth(self) -> float:
        """Where the target needle starts, as a fraction of the context tokens."""
        return (self.needle_start - self.context_start) / (self.question_start - self.context_start)


def is_correct(example: SuiteExample, output: str) -> bool:
    """Every answer string occurs in ``output`` (RULER's string-match "all" metric)."""
    return all(a in output for a in example.answers)


def _seven_digits(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _uuid_like(rng: random.Random) -> str:
    return "-".join("".join(rng.choice("0123456789abcdef") for _ in range(n)) for n in (8, 4, 4, 4, 12))


def _word_key(rng: random.Random, taken: set[str]) -> str:
    while True:
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        if key not in taken:
            taken.add(key)
            return key


class _Builder:
    """Assembles one prompt from token pieces, keeping the token index of every inserted needle."""

    def __init__(self, tokenizer: Any, target: int) -> None:
        self.tok = tokenizer
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _PLACEHOLDER}], add_generation_prompt=True, tokenize=False
        )
        head, tail = text.split(_PLACEHOLDER)
        self.head = self.encode(head)
        self.tail = self.encode(tail)
        self.target = target
        self.filler = [self.encode(" " + s) for s in FILLER]

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def haystack(self, n_tokens: int) -> list[list[int]]:
        """Whole filler sentences, cycled, until ``n_tokens`` is reached to within one sentence."""
        out: list[list[int]] = []
        total, i = 0, 0
        while total + len(self.filler[i % len(self.filler)]) // 2 < n_tokens:
            out.append(self.filler[i % len(self.filler)])
            total += len(out[-1])
            i += 1
        return out

    def assemble(
        self, intro: str, needles: list[tuple[float, str]], question: str, task: str, depth: float,
        answers: tuple[str, ...], pieces: list[list[int]] | None = None, slot: int | None = None,
    ) -> SuiteExample:  # fmt: skip
        """Insert ``needles`` ``(depth, text)`` between haystack pieces; the first is the target.

        Each needle goes to the piece boundary whose token offset in the context is closest to
        ``depth * context tokens`` (other needles before it counted). ``pieces`` replaces the filler
        haystack (e.g. JSON pairs) and ``slot`` then places the single needle before piece ``slot``.
        """
        intro_ids = self.encode(intro)
        question_ids = self.encode(" " + question)
        needle_ids = [self.encode(" " + text) for _, text in needles]
        fixed = (
            len(self.head) + len(intro_ids) + sum(map(len, needle_ids)) + len(question_ids) + len(self.tail)
        )
        if pieces is None:
            pieces = self.haystack(self.target - fixed)
        context_len = len(intro_ids) + sum(map(len, pieces)) + sum(map(len, needle_ids))
        # token offset of each piece boundary: [0, len(p0), len(p0)+len(p1), ...]
        bounds = [0]
        for p in pieces:
            bounds.append(bounds[-1] + len(p))
        order = sorted(range(len(needles)), key=lambda k: (needles[k][0], k))
        slots = [0] * len(needles)
        lo, before = (
            0,
            len(intro_ids),
        )  # the earliest boundary left; context tokens ahead of it besides pieces
        for k in order:
            want = needles[k][0] * context_len
            j = (
                slot
                if slot is not None
                else min(range(lo, len(bounds)), key=lambda j: abs(before + bounds[j] - want))
            )
            slots[k], lo, before = j, j, before + len(needle_ids[k])
        ids = list(self.head) + intro_ids
        context_start = len(self.head)
        starts = [0] * len(needles)
        nxt = 0
        for piece_index in range(len(pieces) + 1):
            while nxt < len(order) and slots[order[nxt]] == piece_index:
                starts[order[nxt]] = len(ids)
                ids += needle_ids[order[nxt]]
                nxt += 1
            if piece_index < len(pieces):
                ids += pieces[piece_index]
        question_start = len(ids)
        ids += question_ids + self.tail
        return SuiteExample(
            task=task,
            depth=depth,
            prompt_ids=tuple(ids),
            context_start=context_start,
            question_start=question_start,
            needle_start=starts[0],
            needle_text=needles[0][1],
            answers=answers,
        )


def _niah(b: _Builder, rng: random.Random, task: str, depth: float) -> SuiteExample:
    taken: set[str] = set()
    key = _word_key(rng, taken)
    value = _seven_digits(rng)
    needles = [(depth, f"One of the special magic numbers for {key} is: {value}.")]
    answers: tuple[str, ...] = (value,)
    question = f"What is the special magic number for {key} mentioned in the provided text?"
    if task == "niah_multikey":
        for _ in range(3):
            needles.append(
                (
                    rng.random(),
                    f"One of the special magic numbers for {_word_key(rng, taken)} is: {_seven_digits(rng)}.",
                )
            )
    elif task == "niah_multivalue":
        values = [value] + [_seven_digits(rng) for _ in range(2)]
        needles += [
            (rng.random(), f"One of the special magic numbers for {key} is: {v}.") for v in values[1:]
        ]
        answers = tuple(values)
        question = f"What are all the special magic numbers for {key} mentioned in the provided text?"
    intro = "Some special magic numbers are hidden within the following text. Make sure to memorize them."
    return b.assemble(intro, needles, question + " Answer with the number only.", task, depth, answers)


def _passkey(b: _Builder, rng: random.Random, depth: float) -> SuiteExample:
    key = _seven_digits(rng)
    intro = "There is important information hidden inside a lot of irrelevant text. Find it and memorize it."
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    return b.assemble(intro, [(depth, needle)], "What is the pass key?", "passkey", depth, (key,))


def _variable_tracking(b: _Builder, rng: random.Random, depth: float) -> SuiteExample:
    names: list[str] = []
    while len(names) < 5:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10_000, 99_999))
    # the chain starts at the depth; the hops follow in order between it and the end of the context
    hop_depths = [depth + (1.0 - depth) * k / 5 for k in range(5)]
    needles = [(hop_depths[0], f"VAR {names[0]} = {value}.")]
    needles += [(hop_depths[k], f"VAR {names[k]} = VAR {names[k - 1]}.") for k in range(1, 5)]
    intro = "Memorize and track the chain of variable assignments hidden in the following text."
    question = f"Find all variables that are assigned the value {value} in the text above."
    return b.assemble(intro, needles, question, "variable_tracking", depth, tuple(names))


def _json_kv(b: _Builder, rng: random.Random, depth: float) -> SuiteExample:
    intro = "Extract the value corresponding to the specified key in the JSON object below."
    probe = b.encode(f' "{_uuid_like(rng)}": "{_uuid_like(rng)}",')
    probe_q = f' }} Key: "{_uuid_like(rng)}" The value associated with the specified key is:'
    fixed = len(b.head) + len(b.encode(intro)) + len(b.encode(probe_q)) + len(b.tail) + 4
    n_pairs = max(2, (b.target - fixed) // len(probe))
    pairs = [(_uuid_like(rng), _uuid_like(rng)) for _ in range(n_pairs)]
    # the target is never the last pair, so its trailing comma keeps the object valid JSON
    target = min(round(depth * (n_pairs - 1)), n_pairs - 2)
    key, value = pairs[target]
    rest = [p for i, p in enumerate(pairs) if i != target]
    pieces = [
        b.encode(f' "{k}": "{v}"' + ("," if i < len(rest) - 1 else "")) for i, (k, v) in enumerate(rest)
    ]
    needle = f'"{key}": "{value}",'
    question = f'}} Key: "{key}" The value associated with the specified key is:'
    # filler sentences take up the rounding gap, so the length target holds; the needle goes before
    # the ``target``-th remaining pair
    head = [b.encode(" JSON data: {")]
    gap = b.target - fixed - sum(map(len, pieces)) - len(b.encode(" " + needle)) - len(head[0])
    head = b.haystack(gap) + head
    return b.assemble(
        intro, [(depth, needle)], question, "json_kv", depth, (value,), head + pieces, len(head) + target
    )


def _arithmetic(b: _Builder, rng: random.Random, depth: float) -> SuiteExample:
    colors = rng.sample(["red", "blue", "green", "white", "black", "orange"], 3)
    a, more, times = rng.randint(100, 999), rng.randint(10, 99), rng.randint(2, 4)
    answer = str((a + more) * times)
    needle = (
        f"The {colors[0]} box holds {a} coins. The {colors[1]} box holds {more} more coins than the "
        f"{colors[0]} box. The {colors[2]} box holds {times} times as many coins as the {colors[1]} box."
    )
    intro = "A short word problem is hidden in the following text. Read it carefully."
    question = f"How many coins does the {colors[2]} box hold? Work it out and give the number."
    return b.assemble(intro, [(depth, needle)], question, "arithmetic", depth, (answer,))


def build_suite(tokenizer: Any, config: SuiteConfig | None = None) -> list[SuiteExample]:
    """The suite's examples: deterministic for a tokenizer and ``config.seed``."""
    config = config or SuiteConfig()
    rng = random.Random(config.seed)
    b = _Builder(tokenizer, config.context_tokens)
    out = []
    for i in range(config.n_examples):
        task = config.tasks[i % len(config.tasks)]
        depth = config.depths[i % len(config.depths)]
        if task in ("niah_single", "niah_multikey", "niah_multivalue"):
            out.append(_niah(b, rng, task, depth))
        elif task == "passkey":
            out.append(_passkey(b, rng, depth))
        elif task == "variable_tracking":
            out.append(_variable_tracking(b, rng, depth))
        elif task == "json_kv":
            out.append(_json_kv(b, rng, depth))
        else:
            out.append(_arithmetic(b, rng, depth))
    return out

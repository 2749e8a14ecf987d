"""LongDPO's step search and its preference pairs (arXiv:2502.02095, §3).

A response grows one step at a time (:mod:`veil.models.longform.policy`). At each node ``width``
candidate steps are sampled (paper: 4) and valued on the response so far *with* the candidate:
``value = quality + length_weight * S_l`` (the judge's mean over seven principles in 1-5, plus the
LongBench-Write length score on cumulative words divided by 10). What S_l is taken of is
``step_value``:

* ``cumulative`` (the paper and its released code): the words so far, as if the response ended with
  this step. A step that goes on is then scored as a response that stopped short, so whenever the
  target lies ahead a continuing step beats one that ends, even when the target is nearly reached; the
  pairs then mostly prefer "go on" to "end here", and DPO on them pushes the end-of-turn token down
  until answers never end (benchmarks/README.md, the longform section).
* ``lookahead``: a step that ends is scored on its words; one that goes on on the best S_l it can still
  reach (:func:`~veil.models.longform.length.reachable_length_score`: 100 below the target, the S_l of
  one more word past it). No generation; optimistic, so below the target it always prefers going on.
* ``rollout``: a step that goes on is completed by the policy, greedily, to the end of the turn (at
  most ``rollout_tokens``), and scored on the completed response's words: the value of where the step
  leads under the current policy, as a Monte-Carlo tree search's simulation values a leaf. One
  batched greedy generation per node. The rollout is not bound by ``depth``: the trained model is not
  either. Quality is still the step's own (the response so far with it), so the judge scores what the
  pair trains, not the rollout's text.

Two searches:

* ``greedy`` (the released code: ``vanila_mcts`` with one path and back-propagation left as a TODO):
  at each depth the best-valued candidate is taken, after the memory pool's veto, until a step ends the
  response or ``depth`` steps (paper: 4) were taken.
* ``mcts`` (the paper's description): ``simulations`` rounds of selection by UCT from the root,
  expansion of a leaf into ``width`` valued children, and back-propagation of the best child's value to
  the root; the response is then the path of highest mean value (the memory pool vetoes along it).

Every node on the chosen path gives a pair ``{prompt: instruction + chosen steps so far, chosen: the
chosen step, rejected: a sibling}``: a random one (``rejected="random"``, as released) or the
lowest-valued one (``"worst"``: the widest value gap); with no distinct sibling the rejected step is
the chosen one with adjacent words swapped with probability ``swap_p`` each (0.3, as released). A step that ends the
response carries the end-of-turn text, so the pair also teaches where to stop; other steps carry none.

A step valued below the critique threshold is refined (:mod:`veil.models.longform.critique`).
:func:`collect_pairs` runs the search over many tasks and, when cut short (a deadline, Ctrl-C), keeps
the pairs of the tasks it finished.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from veil.models.longform.critique import CritiqueConfig, with_suggestions
from veil.models.longform.data import LongformPrompt
from veil.models.longform.facts import contradictions, extract_facts
from veil.models.longform.judge import PRINCIPLES, Judge, Quality
from veil.models.longform.length import count_words, length_score, reachable_length_score
from veil.models.longform.memory import MemoryConfig, MemoryPool
from veil.models.longform.policy import Step, StepPolicy

__all__ = [
    "SearchResult",
    "StepSearchConfig",
    "StepValue",
    "check_targets",
    "collect_pairs",
    "contradiction_rate",
    "cross_step_contradiction_rate",
    "search",
    "swap_adjacent",
    "value",
]


StepValue = Literal["cumulative", "lookahead", "rollout"]
STEP_VALUES: tuple[str, ...] = get_args(StepValue)


@dataclass(frozen=True)
class StepSearchConfig:
    """The search (arXiv:2502.02095, §3.1 and the released ``MCTS/`` code).

    Attributes
    ----------
    width, depth: candidates per node and most steps per response (paper: 4 and 4).
    mode: ``greedy`` (as released) or ``mcts`` (with back-propagation, as the paper describes).
    simulations, exploration: MCTS rounds and the UCT constant ``c`` in ``mean + c sqrt(ln N / n)``.
    separator: the text that ends a step (the released code ends steps at the end-of-text token of
        LongWriter, whose steps are whole sections; our default is a paragraph break).
    step_tokens: the token budget of one step.
    temperature, top_p: the policy's sampling (paper: 0.7, 1.0).
    length_weight: the length score's weight in the value (paper: 1/10).
    step_value: what a candidate's S_l is taken of (module docstring; paper: ``cumulative``).
    rollout_tokens: the token budget of a ``rollout`` completion.
    rejected: which sibling a pair rejects: ``random`` (released) or ``worst`` (lowest value).
    pairs: which nodes give pairs: ``path`` (the chosen path's, as released) or ``tree`` (also every
        other expanded node: with ``mcts``, the nodes the simulations expanded off the chosen path;
        with ``greedy`` the same as ``path``). Not in the paper.
    swap_p: the no-sibling fallback's swap probability (released: 0.3).
    memory: the memory pool, or ``None`` for none.
    critique: critique refinement, or ``None`` for none.
    seed: seeds the sampling and the rejected-sibling draws.
    """

    width: int = 4
    depth: int = 4
    mode: Literal["greedy", "mcts"] = "greedy"
    simulations: int = 8
    exploration: float = 1.0
    separator: str = "\n\n"
    step_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    length_weight: float = 0.1
    step_value: StepValue = "cumulative"
    rollout_tokens: int = 256
    rejected: Literal["random", "worst"] = "random"
    pairs: Literal["path", "tree"] = "path"
    swap_p: float = 0.3
    memory: MemoryConfig | None = field(default_factory=MemoryConfig)
    critique: CritiqueConfig | None = field(default_factory=CritiqueConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1 or self.simulations < 1 or self.step_tokens < 1:
            raise ValueError(
                f"width, depth, simulations and step_tokens must be >= 1, got "
                f"{self.width}, {self.depth}, {self.simulations}, {self.step_tokens}"
            )
        if self.mode not in ("greedy", "mcts"):
            raise ValueError(f"mode must be 'greedy' or 'mcts', got {self.mode!r}")
        if self.step_value not in STEP_VALUES or self.rejected not in ("random", "worst"):
            raise ValueError(
                f"step_value must be one of {STEP_VALUES} and rejected 'random' or 'worst', got "
                f"{self.step_value!r}, {self.rejected!r}"
            )
        if self.pairs not in ("path", "tree"):
            raise ValueError(f"pairs must be 'path' or 'tree', got {self.pairs!r}")
        if self.rollout_tokens < 1:
            raise ValueError(f"rollout_tokens must be >= 1, got {self.rollout_tokens}")
        if not 0.0 < self.temperature <= 2.0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"temperature in (0, 2] and top_p in (0, 1] required, got {self.temperature}, {self.top_p}"
            )
        if not 0.0 <= self.swap_p <= 1.0 or self.length_weight < 0 or self.exploration < 0:
            raise ValueError("swap_p must be in [0, 1], length_weight and exploration >= 0")


@dataclass
class SearchResult:
    """One task's search: its response, pairs and bookkeeping."""

    task: LongformPrompt
    steps: list[Step]
    values: list[float]
    pairs: list[dict[str, str | int]]
    refined: int = 0
    refine_attempts: int = 0
    vetoes: int = 0
    unparsable: int = 0
    generated_steps: int = 0
    rollouts: int = 0
    memory_seconds: float = 0.0

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.steps)


def value(judge: Judge, task: LongformPrompt, text: str, length_weight: float = 0.1) -> tuple[float, Quality]:
    """``quality + length_weight * S_l`` of ``text`` (the whole response so far) and the quality."""
    q = judge.quality(task, text)
    return q.mean + length_weight * length_score(count_words(text), task.target_words), q


def swap_adjacent(text: str, p: float, rng: random.Random) -> str:
    """The released no-sibling fallback: walk the words, swapping each with the next with probability
    ``p`` (a swapped pair is skipped); whitespace between words is kept.

    >>> swap_adjacent("a b c d", 1.0, random.Random(0))
    'b a d c'
    """
    import re

    parts = re.split(r"(\s+)", text)
    idx = [i for i, w in enumerate(parts) if w and not w.isspace()]
    k = 0
    while k + 1 < len(idx):
        if rng.random() < p:
            i, j = idx[k], idx[k + 1]
            parts[i], parts[j] = parts[j], parts[i]
            k += 2
        else:
            k += 1
    return "".join(parts)


@dataclass
class _Node:
    step: Step | None
    value: float = 0.0
    quality: Quality | None = None
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)
    visits: int = 0
    total: float = 0.0

    def prefix(self) -> str:
        out, node = [], self
        while node is not None and node.step is not None:
            out.append(node.step.text)
            node = node.parent
        return "".join(reversed(out))

    def depth(self) -> int:
        return 0 if self.parent is None else 1 + self.parent.depth()

    @property
    def final(self) -> bool:
        return self.step is not None and self.step.final


class _Search:
    def __init__(
        self, policy: StepPolicy, judge: Judge, cfg: StepSearchConfig, encoder: object | None, seed: int
    ):
        self.policy, self.judge, self.cfg, self.encoder = policy, judge, cfg, encoder
        self.rng = random.Random(seed)
        self.seed = seed
        self.calls = 0
        self.unparsable = 0
        self.generated = 0
        self.rollouts = 0

    def _sample(
        self, user: str, prefix: str, n: int, temperature: float, top_p: float, top_k: int = 0
    ) -> list[Step]:
        self.calls += 1
        steps = self.policy.steps(
            [self.policy.chat_prompt(user, prefix)], n, separator=self.cfg.separator,
            max_new_tokens=self.cfg.step_tokens, temperature=temperature, top_p=top_p,
            seed=self.seed * 100_003 + self.calls * 101, **({"top_k": top_k} if top_k else {}),
        )[0]  # fmt: skip
        self.generated += len(steps)
        return steps

    def value_steps(
        self, task: LongformPrompt, prefix: str, steps: Sequence[Step]
    ) -> list[tuple[float, Quality]]:
        """Each candidate's ``(value, quality)`` after ``prefix``, by ``step_value`` (module docstring)."""
        cfg = self.cfg
        qualities = [self.judge.quality(task, prefix + s.text) for s in steps]
        self.unparsable += sum(q.unparsable for q in qualities)
        words = [count_words(prefix + s.text) for s in steps]
        if cfg.step_value == "cumulative":
            scores = [length_score(w, task.target_words) for w in words]
        elif cfg.step_value == "lookahead":
            scores = [
                reachable_length_score(w, task.target_words, s.final)
                for w, s in zip(words, steps, strict=True)
            ]
        else:
            going = [i for i, s in enumerate(steps) if not s.final]
            if going:
                self.rollouts += len(going)
                done = self.policy.steps(
                    [self.policy.chat_prompt(task.prompt, prefix + steps[i].text) for i in going], 1,
                    separator="", max_new_tokens=cfg.rollout_tokens, temperature=0.0, top_p=1.0, seed=0,
                )  # fmt: skip
                for i, rest in zip(going, done, strict=True):
                    words[i] += count_words(rest[0].text)
            scores = [length_score(w, task.target_words) for w in words]
        return [(q.mean + cfg.length_weight * sl, q) for q, sl in zip(qualities, scores, strict=True)]

    def expand(self, task: LongformPrompt, node: _Node) -> list[_Node]:
        prefix = node.prefix()
        steps = self._sample(task.prompt, prefix, self.cfg.width, self.cfg.temperature, self.cfg.top_p)
        return [
            _Node(s, v, q, parent=node)
            for s, (v, q) in zip(steps, self.value_steps(task, prefix, steps), strict=True)
        ]

    def refine(self, task: LongformPrompt, node: _Node) -> _Node | None:
        """A better step for ``node``'s place by critique, or ``None``."""
        crit = self.cfg.critique
        if crit is None or node.value >= crit.threshold or node.quality is None or node.step is None:
            return None
        parent = node.parent
        prefix = parent.prefix() if parent else ""
        extra = self._sample(
            task.prompt, prefix, crit.extra_samples, crit.temperature, crit.top_p, crit.top_k
        )
        scored = [(s, self.judge.quality(task, prefix + s.text)) for s in extra]
        suggestions = []
        for principle in PRINCIPLES:
            mine = node.quality.scores.get(principle)
            if mine is None:
                continue
            better = max(scored, key=lambda sq: sq[1].scores.get(principle, 0.0))
            if better[1].scores.get(principle, 0.0) > mine:
                tip = self.judge.suggest(task, principle, prefix + node.step.text, prefix + better[0].text)
                if tip is not None:
                    suggestions.append(tip)
        if not suggestions:
            return None
        suggestions.sort(key=lambda t: -t.confidence)
        user = with_suggestions(task.prompt, [t.text for t in suggestions[: crit.max_suggestions]])
        best = None
        regenerated = self._sample(user, prefix, crit.regenerations, self.cfg.temperature, self.cfg.top_p)
        for s, (v, q) in zip(regenerated, self.value_steps(task, prefix, regenerated), strict=True):
            if v > node.value and (best is None or v > best.value):
                best = _Node(s, v, q, parent=parent)
        return best


def _pair(task: LongformPrompt, policy: StepPolicy, prefix: str, chosen: _Node, siblings: Sequence[_Node],
          cfg: StepSearchConfig, rng: random.Random, depth: int) -> dict[str, str | int]:  # fmt: skip
    def text(step: Step) -> str:
        return step.text + (policy.end_text if step.final else "")

    good = text(chosen.step) if chosen.step is not None else ""
    others = [n for n in siblings if n is not chosen and n.step is not None and text(n.step) != good]
    if others:
        # "worst": the lowest value; among equals the first sampled (a draw would make ties random)
        pick = min(others, key=lambda n: n.value) if cfg.rejected == "worst" else rng.choice(others)
        bad = text(pick.step)  # type: ignore[arg-type]
    else:
        bad = swap_adjacent(good, cfg.swap_p, rng)
        for _ in range(8):
            if bad != good:
                break
            bad = swap_adjacent(good, max(cfg.swap_p, 0.5), rng)
    return {"prompt": policy.chat_prompt(task.prompt, prefix), "chosen": good, "rejected": bad,
            "depth": depth, "fallback": int(not others), "on_path": 1}  # fmt: skip


def check_targets(policy: StepPolicy, tasks: Sequence[LongformPrompt]) -> None:
    """Refuses, before any search starts, a task whose required length cannot fit the policy's context
    (a word takes a token at least); a policy without ``context_length`` has no limit to check.

    Zero, negative and empty are refused when a :class:`~veil.models.longform.data.LongformPrompt` is
    built, so a search never stops half-way on a task it could never have finished.
    """
    context = getattr(policy, "context_length", None)
    if context is None:
        return
    for i, task in enumerate(tasks):
        if task.target_words >= context:
            raise ValueError(
                f"task {i}: the required length ({task.target_words} words) cannot fit the policy's "
                f"context of {context} tokens"
            )


def search(
    policy: StepPolicy, judge: Judge, task: LongformPrompt, config: StepSearchConfig | None = None,
    encoder: object | None = None, seed: int | None = None,
) -> SearchResult:  # fmt: skip
    """One task's search (see the module docstring). ``encoder`` embeds chunks for the memory pool
    (required when ``config.memory`` is set)."""
    cfg = config or StepSearchConfig()
    if cfg.memory is not None and encoder is None:
        raise ValueError("the memory pool needs an encoder (e.g. veil.models.rag.dense.load_minilm())")
    check_targets(policy, [task])
    run = _Search(policy, judge, cfg, encoder, cfg.seed if seed is None else seed)
    pool = MemoryPool(judge, encoder, cfg.memory) if cfg.memory is not None else None
    root = _Node(None)
    if cfg.mode == "mcts":
        _simulate(run, task, root)
    result = SearchResult(task, [], [], [])
    node, paired = root, set()
    while len(result.steps) < cfg.depth and not node.final:
        paired.add(id(node))
        kids = node.children or run.expand(task, node)
        node.children = kids
        # greedy: by value; MCTS: by the back-propagated mean (unvisited children by their own value)
        ranked = sorted(kids, key=lambda n: -_mean(n))
        k = pool.choose([n.step.text for n in ranked if n.step]) if pool else 0
        chosen = ranked[k]
        if cfg.critique is not None and chosen.value < cfg.critique.threshold:
            result.refine_attempts += 1
        better = run.refine(task, chosen)
        if better is not None:
            kids.append(better)
            chosen, result.refined = better, result.refined + 1
        result.pairs.append(
            _pair(task, run.policy, node.prefix(), chosen, kids, cfg, run.rng, len(result.steps))
        )
        if chosen.step is None:  # pragma: no cover - expanded nodes always hold a step
            raise RuntimeError("a chosen node without a step")
        result.steps.append(chosen.step)
        result.values.append(chosen.value)
        if pool is not None:
            pool.add(chosen.step.text)
        node = chosen
    if cfg.pairs == "tree":
        result.pairs.extend(_off_path_pairs(run, task, root, paired))
    result.vetoes = pool.vetoes if pool else 0
    result.unparsable, result.generated_steps, result.rollouts = run.unparsable, run.generated, run.rollouts
    result.memory_seconds = pool.seconds if pool else 0.0
    return result


def _mean(node: _Node) -> float:
    """The back-propagated mean, or the node's own value while unvisited."""
    return node.total / node.visits if node.visits else node.value


def _off_path_pairs(
    run: _Search, task: LongformPrompt, root: _Node, paired: set[int]
) -> list[dict[str, str | int]]:
    """A pair at every expanded node not yet paired (depth first, children in sampled order): chosen =
    the child of highest mean, rejected as ``config.rejected`` says; no memory pool or critique here."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.children and id(node) not in paired:
            chosen = max(node.children, key=_mean)
            pair = _pair(
                task, run.policy, node.prefix(), chosen, node.children, run.cfg, run.rng, node.depth()
            )
            out.append(pair | {"on_path": 0})
        stack.extend(reversed(node.children))
    return out


def _simulate(run: _Search, task: LongformPrompt, root: _Node) -> None:
    """MCTS rounds: select by UCT, expand a leaf into ``width`` valued children, back-propagate."""
    cfg = run.cfg
    for _ in range(cfg.simulations):
        node = root
        while node.children and not node.final and node.depth() < cfg.depth:
            parent_visits = max(1, node.visits)
            node = max(
                node.children,
                key=lambda c: (
                    (c.total / c.visits if c.visits else c.value)
                    + cfg.exploration * math.sqrt(math.log(parent_visits + 1) / (c.visits + 1))
                ),
            )
        if not node.final and node.depth() < cfg.depth:
            node.children = run.expand(task, node)
            leaf = max(node.children, key=lambda c: c.value)
            leaf.visits, leaf.total = 1, leaf.value
            v = leaf.value
            node_up: _Node | None = node
        else:
            v, node_up = node.value, node
        while node_up is not None:
            node_up.visits += 1
            node_up.total += v
            node_up = node_up.parent


def collect_pairs(
    policy: StepPolicy, judge: Judge, tasks: Sequence[LongformPrompt], config: StepSearchConfig | None = None,
    encoder: object | None = None, deadline: float | None = None,
    on_task: Callable[[SearchResult], None] | None = None,
) -> tuple[list[SearchResult], bool]:  # fmt: skip
    """The search over ``tasks`` (task ``i`` seeded ``config.seed + i``); returns the finished results
    and whether the run was cut short (``deadline`` in ``time.monotonic()`` seconds, or Ctrl-C): the
    pairs of every finished task are kept. Every task's target is checked first
    (:func:`check_targets`), so a bad one stops the run before it starts."""
    cfg = config or StepSearchConfig()
    if cfg.memory is not None and encoder is None:
        raise ValueError("the memory pool needs an encoder (e.g. veil.models.rag.dense.load_minilm())")
    check_targets(policy, tasks)
    done: list[SearchResult] = []
    try:
        for i, task in enumerate(tasks):
            if deadline is not None and time.monotonic() > deadline:
                return done, True
            done.append(search(policy, judge, task, cfg, encoder, seed=cfg.seed + i))
            if on_task is not None:
                on_task(done[-1])
    except KeyboardInterrupt:
        return done, True
    return done, False


def cross_step_contradiction_rate(results: Sequence[SearchResult]) -> float:
    """The share of searched responses in which a step states a fact that an earlier step stated with
    another value (what the memory pool is there to veto; a step contradicting itself is not counted)."""
    hits = 0
    for r in results:
        earlier: list = []
        for step in r.steps:
            facts = extract_facts(step.text)
            if contradictions(facts, known=earlier) and any(
                f.key() in {e.key() for e in earlier} for f in facts
            ):
                hits += 1
                break
            earlier += facts
    return hits / len(results) if results else 0.0


def contradiction_rate(texts: Sequence[str]) -> float:
    """The share of texts that state some subject's attribute with two different values."""
    return sum(bool(contradictions(extract_facts(t))) for t in texts) / len(texts) if texts else 0.0

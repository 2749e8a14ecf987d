"""LongDPO's training data and runs: step-level DPO, and the two baselines it is compared with
(arXiv:2502.02095, §4: supervised fine-tuning on the chosen paths, and outcome DPO on whole responses).

All three go through Veil's shared TRL plumbing: DPO by :func:`veil.models.dpo.prefix_dpo` (pairs on
partial sequences, completions tokenized as given: a step ends with the end-of-turn text only when it
ends the response), SFT by :func:`veil.models.rag.train.imitate` (pre-tokenized, the prompt masked).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from veil.models.dpo import PairDPOConfig
from veil.models.longform.data import LongformPrompt
from veil.models.longform.judge import Judge
from veil.models.longform.policy import StepPolicy
from veil.models.longform.search import SearchResult, StepSearchConfig, value

__all__ = [
    "LongDPOConfig",
    "balance_end_pairs",
    "cap_first_step_pairs",
    "outcome_pairs",
    "sft_examples",
    "step_pairs",
]


@dataclass(frozen=True)
class LongDPOConfig(PairDPOConfig):
    """Step-level DPO with the paper's settings (arXiv:2502.02095, §4.1: sigmoid loss, beta 0.1, AdamW
    lr 1e-6, weight decay 0, clipping 1.0, 2 epochs, 10 % warm-up, batch 1, the start model as the
    frozen reference): exactly :class:`~veil.models.dpo.PairDPOConfig`'s defaults."""


def step_pairs(results: Sequence[SearchResult]) -> list[dict[str, str]]:
    """Every search's step pairs ``{prompt, chosen, rejected}`` in order."""
    return [{k: str(p[k]) for k in ("prompt", "chosen", "rejected")} for r in results for p in r.pairs]


def cap_first_step_pairs(results: Sequence[SearchResult], seed: int = 0) -> list[dict[str, str]]:
    """:func:`step_pairs` with at most as many first-step pairs (depth 0) as pairs at later steps: the
    first-step pairs are thinned at random, the others all kept, in order.

    Why: the search gives one first-step pair per prompt but few later ones (84 of 148 at depth 0 on the
    quick preset with a base that reads L), and a first step teaches how long a first paragraph is, not
    where the answer stops. Not in the paper.
    """
    depth = [int(p["depth"]) for r in results for p in r.pairs]
    first = [i for i, d in enumerate(depth) if d == 0]
    keep = set(random.Random(seed).sample(first, min(len(first), len(depth) - len(first))))
    return [p for i, p in enumerate(step_pairs(results)) if depth[i] != 0 or i in keep]


def balance_end_pairs(pairs: Sequence[dict[str, str]], end_text: str, seed: int = 0) -> list[dict[str, str]]:
    """``pairs`` with as many "end here" pairs (the chosen step ends the answer, the rejected goes on)
    as "go on" pairs (the reverse): the more frequent kind is thinned at random; pairs whose steps both
    end or both go on are all kept, in order.

    Why: with beta 0.1, DPO on pairs the model cannot tell apart turns a count imbalance ``a : b`` into a
    shift of about ``ln(a / b) / beta`` nats in the end-of-turn logit (the optimum of
    ``a log sigmoid(beta x) + b log sigmoid(-beta x)``); 37 : 27 is 3 nats. Not in the paper; on the
    quick preset it helps a little and does not stop step DPO's answers running on (benchmarks/README.md).
    """
    ends = [p["chosen"].endswith(end_text) != p["rejected"].endswith(end_text) for p in pairs]
    here = [i for i, p in enumerate(pairs) if ends[i] and p["chosen"].endswith(end_text)]
    on = [i for i, p in enumerate(pairs) if ends[i] and p["rejected"].endswith(end_text)]
    n, rng = min(len(here), len(on)), random.Random(seed)
    keep = set(rng.sample(here, n)) | set(rng.sample(on, n))
    return [p for i, p in enumerate(pairs) if not ends[i] or i in keep]


def sft_examples(
    policy: StepPolicy, tokenizer: object, results: Sequence[SearchResult]
) -> list[dict[str, list[int]]]:
    """The chosen paths as SFT examples: the prompt's ids (masked out), then the response's with the
    end-of-turn text if its last step ended it."""
    out = []
    for r in results:
        if not r.steps:
            continue
        prompt = tokenizer(policy.chat_prompt(r.task.prompt), add_special_tokens=False)["input_ids"]
        response = r.text + (policy.end_text if r.steps[-1].final else "")
        ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        out.append({"input_ids": prompt + ids, "completion_mask": [0] * len(prompt) + [1] * len(ids)})
    return out


def outcome_pairs(
    policy: StepPolicy, judge: Judge, tasks: Sequence[LongformPrompt], config: StepSearchConfig,
    samples: int | None = None, max_new_tokens: int | None = None,
) -> tuple[list[dict[str, str]], int]:  # fmt: skip
    """Whole-response pairs: ``samples`` responses per task (default: the search's ``width``), sampled
    at the search's temperature with no step separator, valued as the search values a path; chosen =
    best, rejected = worst (a task whose responses all read the same gives none). Returns the pairs and
    the number of responses generated.

    The token budget defaults to ``depth * step_tokens``, the search's most per response.
    """
    n = samples or config.width
    budget = max_new_tokens or config.depth * config.step_tokens
    prompts = [policy.chat_prompt(t.prompt) for t in tasks]
    drawn = policy.steps(
        prompts, n, separator="", max_new_tokens=budget, temperature=config.temperature,
        top_p=config.top_p, seed=config.seed + 7919,
    )  # fmt: skip
    pairs, rng = [], random.Random(config.seed)
    for task, prompt, steps in zip(tasks, prompts, drawn, strict=True):
        texts = [s.text + (policy.end_text if s.final else "") for s in steps]
        scored = sorted(
            ((value(judge, task, s.text, config.length_weight)[0], rng.random(), t) for s, t in zip(steps, texts, strict=True)),
            reverse=True,
        )  # fmt: skip
        if scored[0][2] != scored[-1][2]:
            pairs.append({"prompt": prompt, "chosen": scored[0][2], "rejected": scored[-1][2]})
    return pairs, len(tasks) * n

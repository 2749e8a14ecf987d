"""Running strategies over PunchBench items against any chat model, resumably, and reporting.

Every (strategy, item) outcome is appended to a JSONL log as soon as it is scored; a rerun with the same
log skips what is there, so an endpoint that fails mid-run costs only the item in flight. The report gives
accuracy per strategy by format, level and caption variant, and paired tests of every strategy against
zero-shot on the items both scored (arXiv:2412.11906, Sec. 4.3 compares regimes this way).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil.models.evaluation.punchbench.schema import Item, ItemError
from veil.models.evaluation.punchbench.scoring import Judge, RuleJudge, score
from veil.models.evaluation.punchbench.stats import mcnemar_exact, paired_bootstrap
from veil.models.evaluation.punchbench.strategies import Chat, make_strategy

__all__ = [
    "EndpointError",
    "EndpointTimeoutError",
    "OpenAIChat",
    "ResumeError",
    "load_log",
    "report",
    "run_punchbench",
]


class EndpointError(RuntimeError):
    """The model endpoint answered with an error or could not be reached."""


class EndpointTimeoutError(EndpointError):
    """The model endpoint did not answer within the timeout."""


class ResumeError(ValueError):
    """A scored-items log that cannot be resumed (other seed, or a corrupt line before the last)."""


@dataclass
class OpenAIChat:
    """A chat callable over any OpenAI-compatible ``/v1/chat/completions`` endpoint (the ``openai`` client).

    Greedy decoding (``temperature=0``) by default, as the paper uses for most models (Sec. 4.1).
    Retries live in one layer, the ``openai`` client's own (``max_retries``, with backoff).
    """

    base_url: str
    api_key: str
    model: str
    timeout_s: float = 60.0
    """Seconds to wait for one completion before :class:`EndpointTimeoutError`."""
    max_tokens: int = 128
    """Completion budget per question."""
    temperature: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        import openai

        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=self.max_retries
        )

    def __call__(self, messages: Sequence[dict[str, str]]) -> str:
        import openai

        try:
            out = self._client.chat.completions.create(
                model=self.model,
                messages=list(messages),  # type: ignore[arg-type]
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
        except openai.APITimeoutError as exc:
            raise EndpointTimeoutError(f"{self.base_url} did not answer within {self.timeout_s:g} s") from exc
        except openai.APIStatusError as exc:
            raise EndpointError(f"{self.base_url} answered HTTP {exc.status_code}: {exc.message}") from exc
        except openai.APIConnectionError as exc:
            raise EndpointError(f"cannot reach {self.base_url}: {exc}") from exc
        if not out.choices:
            raise EndpointError(f"{self.base_url} returned no choices")
        return out.choices[0].message.content or ""


def load_log(path: Path, seed: int) -> list[dict[str, Any]]:
    """Records already scored in ``path``; a torn last line (a crash mid-write) is dropped."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):
                break
            raise ResumeError(f"{path}:{n}: not JSON ({exc.msg}); the log is corrupt") from exc
        if rec.get("seed") != seed:
            raise ResumeError(f"{path}:{n}: scored with seed {rec.get('seed')}, this run uses {seed}")
        records.append(rec)
    return records


def run_punchbench(
    items: Sequence[Item],
    strategies: Sequence[str],
    chat: Chat,
    *,
    log_path: Path | None = None,
    seed: int = 0,
    judge: Judge | None = None,
    on_item: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Score every item under every strategy; return all records (resumed and new).

    Raises :class:`~veil.models.evaluation.punchbench.strategies.UnknownStrategyError` for an unknown
    name and :class:`~veil.models.evaluation.punchbench.schema.ItemError` for a repeated item id before
    any call, and lets :class:`EndpointError` through after saving what was scored.
    """
    judge = judge or RuleJudge()
    made = [make_strategy(name) for name in strategies]
    # records, the resume log and the paired tests are keyed by item id: a repeated id would merge items
    counts = Counter(it.item_id for it in items)
    repeated = next((iid for iid, n in counts.items() if n > 1), None)
    if repeated is not None:
        raise ItemError(repeated, "item_id", f"appears {counts[repeated]} times; item ids must be unique")
    if len({s.name for s in made}) != len(made):
        raise ValueError(f"strategies must be distinct, got {list(strategies)}")
    done = load_log(log_path, seed) if log_path else []
    seen = {(r["strategy"], r["item_id"]) for r in done}
    records = list(done)
    todo = [(s, it) for s in made for it in items if (s.name, it.item_id) not in seen]
    log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115  # closed below
    try:
        for k, (strategy, item) in enumerate(todo):
            trial = strategy.run(item, items, chat, seed)
            correct, parsed = score(item, trial.question, trial.reply, judge)
            rec = {
                "strategy": strategy.name,
                "item_id": item.item_id,
                "pair_id": item.pair_id,
                "format": item.format,
                "level": item.level,
                "variant": item.variant,
                "correct": bool(correct),
                "parsed": parsed,
                "reply": trial.reply,
                "transcript": trial.transcript,
                "seed": seed,
            }
            records.append(rec)
            if log is not None:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if on_item is not None:
                on_item(k + 1, len(todo))
    finally:
        if log is not None:
            log.close()
    return records


def report(
    records: Sequence[dict[str, Any]], *, baseline: str = "zero-shot", seed: int = 0
) -> dict[str, Any]:
    """Accuracy per strategy (overall, by format, level, variant), the model calls its answers took, and
    paired tests against ``baseline``."""
    by_strategy: dict[str, dict[str, bool]] = defaultdict(dict)
    calls: dict[str, int] = defaultdict(int)
    meta: dict[str, dict[str, Any]] = {}
    for r in records:
        by_strategy[r["strategy"]][r["item_id"]] = bool(r["correct"])
        calls[r["strategy"]] += len(r["transcript"])  # one turn per model call (an LM judge's are apart)
        meta[r["item_id"]] = r
    out: dict[str, Any] = {"strategies": {}, "comparisons": {}}
    for name, outcomes in by_strategy.items():
        entry: dict[str, Any] = {
            "items": len(outcomes),
            "calls": calls[name],
            "accuracy": float(np.mean(list(outcomes.values()))),
        }
        for key in ("format", "level", "variant"):
            groups: dict[str, list[bool]] = defaultdict(list)
            for iid, ok in outcomes.items():
                groups[meta[iid][key]].append(ok)
            entry[key] = {g: float(np.mean(v)) for g, v in sorted(groups.items())}
        out["strategies"][name] = entry
    base = by_strategy.get(baseline)
    for name, outcomes in by_strategy.items():
        if name == baseline or base is None:
            continue
        common = sorted(set(base) & set(outcomes))
        if not common:
            continue
        a = np.array([base[i] for i in common])
        b = np.array([outcomes[i] for i in common])
        mc, bs = mcnemar_exact(a, b), paired_bootstrap(a, b, seed=seed)
        out["comparisons"][name] = {
            "against": baseline,
            "items": len(common),
            "diff": bs.diff,
            "ci95": [bs.ci_low, bs.ci_high],
            "p_value": mc.p_value,
            "mcnemar": {"only_baseline": mc.only_a, "only_strategy": mc.only_b, "p_value": mc.p_value},
            "bootstrap_p_value": bs.p_value,
        }
    return out

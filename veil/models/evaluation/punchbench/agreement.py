"""Agreement between two binary judges of generated explanations (PunchBench, arXiv:2412.11906, Sec. 4.1).

The paper validates its LLM judge against human judgements with Gwet's agreement coefficient (above
70 %); here the same statistics compare any two judges, e.g. the LM judge against the rule judge, on
the generation replies of a run. Gwet's AC1 (Gwet 2008, Br. J. Math. Stat. Psychol. 61:29-48) stays
meaningful when one verdict dominates, where Cohen's kappa collapses (the "kappa paradox"), so both are
reported with the raw agreement and the 2x2 table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from veil.models.evaluation.punchbench.schema import Item
from veil.models.evaluation.punchbench.scoring import Judge

__all__ = ["cohen_kappa", "gwet_ac1", "judge_agreement"]


def _pair(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"need two equally long, non-empty 1-d verdict lists, got {x.shape} and {y.shape}")
    return x, y


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa, ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` from each judge's own marginals.

    ``nan`` when ``p_e == 1`` (both judges give one and the same verdict throughout).

    >>> round(cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]), 3)
    0.5
    """
    x, y = _pair(a, b)
    p_o = float(np.mean(x == y))
    p_e = float(x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean()))
    return math.nan if p_e == 1.0 else (p_o - p_e) / (1 - p_e)


def gwet_ac1(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Gwet's AC1 for two raters and two categories: ``(p_o - p_e) / (1 - p_e)``, ``p_e = 2 pi (1 - pi)``
    with ``pi`` the mean of the two judges' "yes" rates (so ``p_e <= 1/2`` and AC1 is always defined).

    >>> round(gwet_ac1([1, 1, 0, 0], [1, 0, 0, 0]), 3)  # p_o = 3/4, pi = 3/8, p_e = 15/32
    0.529
    """
    x, y = _pair(a, b)
    p_o = float(np.mean(x == y))
    pi = float((x.mean() + y.mean()) / 2)
    p_e = 2 * pi * (1 - pi)
    return (p_o - p_e) / (1 - p_e)


def judge_agreement(
    records: Sequence[Mapping[str, Any]], items: Sequence[Item], first: Judge, second: Judge
) -> dict[str, Any]:
    """Both judges' verdicts on every generation reply in ``records`` (a run's records or log) and
    their agreement: ``items``, ``agreement``, ``cohen_kappa``, ``gwet_ac1``, each judge's ``yes_rate``
    and the 2x2 ``table`` (``both_yes``, ``only_first``, ``only_second``, ``both_no``)."""
    by_id = {it.item_id: it for it in items}
    pairs = []
    for rec in records:
        if rec.get("format") != "generation":
            continue
        item = by_id.get(rec["item_id"])
        if item is None:
            raise ValueError(f"record of item {rec['item_id']!r} has no item among the {len(items)} given")
        pairs.append((first.judge(item, rec["reply"]), second.judge(item, rec["reply"])))
    if not pairs:
        raise ValueError("no generation records to judge")
    a, b = (np.array(v, dtype=bool) for v in zip(*pairs, strict=True))
    return {
        "items": len(pairs),
        "agreement": float(np.mean(a == b)),
        "cohen_kappa": cohen_kappa(a, b),
        "gwet_ac1": gwet_ac1(a, b),
        "yes_rate": [float(a.mean()), float(b.mean())],
        "table": {
            "both_yes": int(np.sum(a & b)),
            "only_first": int(np.sum(a & ~b)),
            "only_second": int(np.sum(~a & b)),
            "both_no": int(np.sum(~a & ~b)),
        },
    }

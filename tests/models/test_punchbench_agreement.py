"""Judge agreement for PunchBench generation replies: Cohen's kappa and Gwet's AC1 against the textbook
formulas on a 2x2 table, the kappa paradox AC1 avoids, and agreement of two real judges on records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from veil.models.evaluation.punchbench import Item, RuleJudge
from veil.models.evaluation.punchbench.agreement import cohen_kappa, gwet_ac1, judge_agreement


def _table(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """n[i, j]: items the first judge put in category i and the second in j (0 = no, 1 = yes)."""
    n = np.zeros((2, 2))
    for x, y in zip(a, b, strict=True):
        n[int(x), int(y)] += 1
    return n / n.sum()


def _kappa_reference(a: np.ndarray, b: np.ndarray) -> float:
    p = _table(a, b)
    p_o = sum(p[k, k] for k in range(2))
    p_e = sum(p[k, :].sum() * p[:, k].sum() for k in range(2))
    return (p_o - p_e) / (1 - p_e)


def _ac1_reference(a: np.ndarray, b: np.ndarray) -> float:
    # Gwet (2008), q categories: p_e = 1/(q-1) * sum_k pi_k (1 - pi_k), pi_k the mean marginal of k
    p, q = _table(a, b), 2
    p_o = sum(p[k, k] for k in range(q))
    pis = [(p[k, :].sum() + p[:, k].sum()) / 2 for k in range(q)]
    p_e = sum(pi * (1 - pi) for pi in pis) / (q - 1)
    return (p_o - p_e) / (1 - p_e)


@pytest.mark.parametrize("seed", range(20))
def test_kappa_and_ac1_match_the_formulas_on_the_two_by_two_table(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    a = rng.random(n) < rng.random()
    b = np.where(rng.random(n) < rng.random(), a, rng.random(n) < 0.5)
    assert gwet_ac1(a, b) == pytest.approx(_ac1_reference(a, b), abs=1e-12)
    if len(set(a.tolist())) == len(set(b.tolist())) == 1 and a[0] == b[0]:
        assert math.isnan(cohen_kappa(a, b))
    else:
        assert cohen_kappa(a, b) == pytest.approx(_kappa_reference(a, b), abs=1e-12)


def test_identical_verdicts_agree_fully_and_opposite_ones_not_at_all() -> None:
    a = [True, False, True, True]
    assert cohen_kappa(a, a) == pytest.approx(1.0) and gwet_ac1(a, a) == pytest.approx(1.0)
    flipped = [not v for v in a]
    assert cohen_kappa(a, flipped) < 0 and gwet_ac1(a, flipped) < 0


def test_ac1_stays_high_where_kappa_collapses_on_a_rare_verdict() -> None:
    # 98 of 100 agree, all on "no": kappa is about 0 (the paradox), AC1 near the raw agreement
    a = [False] * 98 + [True, False]
    b = [False] * 98 + [False, True]
    assert cohen_kappa(a, b) == pytest.approx(-0.0101, abs=1e-3)
    assert gwet_ac1(a, b) == pytest.approx(0.9796, abs=1e-3)


def test_bad_verdict_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="equally long"):
        gwet_ac1([True], [True, False])
    with pytest.raises(ValueError, match="non-empty"):
        cohen_kappa([], [])


REF = "The caption calls the day pleasant while the image shows rainy weather, so the praise is ironic."
ITEMS = [Item(f"g{k}", f"p{k}", "original", "reasoning", "generation", "c", REF) for k in range(4)]
REPLIES = [
    REF,  # every content word: both judges say yes
    "The pleasant day caption meets rainy weather: ironic praise.",  # half the words: only the lenient one
    "Rainy.",  # a few words: neither
    "A dog.",  # none: neither
]


def test_two_rule_judges_agree_on_the_replies_they_both_accept_and_reject() -> None:
    records = [
        {"item_id": it.item_id, "format": "generation", "reply": r}
        for it, r in zip(ITEMS, REPLIES, strict=True)
    ]
    records.append({"item_id": "mc", "format": "multiple-choice", "reply": "A"})  # not a generation: skipped
    out = judge_agreement(records, ITEMS, RuleJudge(min_recall=0.5), RuleJudge(min_recall=1.0))
    assert out["items"] == 4
    assert out["table"] == {"both_yes": 1, "only_first": 1, "only_second": 0, "both_no": 2}
    assert out["agreement"] == pytest.approx(0.75) and out["yes_rate"] == [0.5, 0.25]
    assert out["gwet_ac1"] == pytest.approx(gwet_ac1([1, 1, 0, 0], [1, 0, 0, 0]))
    with pytest.raises(ValueError, match="no generation records"):
        judge_agreement(records[-1:], ITEMS, RuleJudge(), RuleJudge())
    with pytest.raises(ValueError, match="has no item"):
        judge_agreement(records[:1], ITEMS[1:], RuleJudge(), RuleJudge())

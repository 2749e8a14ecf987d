"""PunchBench strategies, SC-CoQ chains, the scripted participant, paired statistics and resumable runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from veil.models.evaluation.punchbench import (
    STRATEGIES,
    EndpointError,
    Item,
    ItemError,
    ResumeError,
    SCCoQ,
    ScriptedParticipant,
    UnknownStrategyError,
    make_strategy,
    mcnemar_exact,
    paired_bootstrap,
    render,
    report,
    run_punchbench,
)


def _pair(pid: str, ironic: bool = True, variant: str = "original") -> list[Item]:
    """A hand-written pair in the synthetic set's shape (no WordNet needed)."""
    cap, foil = f"What pleasant weather ({pid})!", f"What nasty weather ({pid})!"
    right, wrong = f"Praise of rain is ironic ({pid}).", f"The dog is upside down ({pid})."
    base = {"pair_id": pid, "variant": variant, "caption": cap, "context": "Heavy rain."}
    k = f"{pid}-{variant}"
    items = [
        Item(f"{k}-p-yn", level="perception", format="yes-no", options=("yes", "no"),
             gold="yes" if ironic else "no", **base),
        Item(f"{k}-p-match", level="perception", format="matching", options=(cap, foil),
             gold=cap if ironic else foil, **base),
        Item(f"{k}-p-mc", level="perception", format="multiple-choice",
             options=(cap, foil, f"{foil} 2", f"{foil} 3"), gold=cap, **base),
    ]  # fmt: skip
    if ironic:
        items += [
            Item(f"{k}-r-yn", level="reasoning", format="yes-no", statement=right, options=("yes", "no"),
                 gold="yes", **base),
            Item(f"{k}-r-match", level="reasoning", format="matching", options=(right, wrong), gold=right, **base),
            Item(f"{k}-r-gen", level="reasoning", format="generation", gold=right, **base),
        ]  # fmt: skip
    return items


BANK = [it for i in range(12) for it in _pair(f"p{i}", ironic=i % 3 != 0)]


def _ids(chain: list[Item]) -> list[str]:
    return [it.item_id.split("-", 2)[2] for it in chain]


def test_intra_and_inter_chains_go_easy_to_hard_on_the_same_pair_and_variant() -> None:
    bank = BANK + _pair("p1", variant="synonymous")
    by_id = {it.item_id: it for it in bank}
    intra, inter = SCCoQ(chain="intra"), SCCoQ(chain="inter")
    assert _ids(intra.chain_for(by_id["p1-original-p-mc"], bank)) == ["p-yn", "p-match", "p-mc"]
    assert _ids(intra.chain_for(by_id["p1-original-r-gen"], bank)) == ["r-yn", "r-match", "r-gen"]
    assert _ids(inter.chain_for(by_id["p1-original-r-gen"], bank)) == [
        "p-yn",
        "r-yn",
        "p-match",
        "r-match",
        "r-gen",
    ]
    assert _ids(inter.chain_for(by_id["p1-original-p-match"], bank)) == ["p-yn", "r-yn", "p-match"]
    assert _ids(intra.chain_for(by_id["p1-original-p-yn"], bank)) == ["p-yn"]
    # a pair without a punchline has no reasoning step to ask
    assert _ids(inter.chain_for(by_id["p0-original-p-mc"], bank)) == ["p-yn", "p-match", "p-mc"]
    assert all(
        it.pair_id == "p1" and it.variant == "original"
        for it in inter.chain_for(by_id["p1-original-r-gen"], bank)
    )


@pytest.mark.parametrize("chain", ["intra", "inter"])
def test_sc_coq_feeds_the_models_own_answers_never_the_gold(chain: str) -> None:
    seen: list[list[dict]] = []

    def chat(messages):
        seen.append(list(messages))
        return f"reply-{len(seen)}"

    target = next(it for it in BANK if it.item_id == "p1-original-r-gen")
    trial = SCCoQ(chain=chain).run(target, BANK, chat, seed=0)
    steps = 3 if chain == "intra" else 5
    assert len(seen) == steps and len(trial.transcript) == steps
    for n, messages in enumerate(seen):
        own = [m["content"] for m in messages if m["role"] == "assistant"]
        assert own == [f"reply-{k + 1}" for k in range(n)]  # exactly its own earlier replies, in order
        # and nothing else: the user turns are the chain's rendered questions, no answer key anywhere
        asked = [m["content"] for m in messages if m["role"] == "user"]
        assert asked == [render(it, 0).text for it in SCCoQ(chain=chain).chain_for(target, BANK)[: n + 1]]
    assert trial.reply == f"reply-{steps}" and trial.transcript[-1]["item_id"] == target.item_id
    assert trial.question == render(target, 0)


def test_few_shot_shows_solved_examples_of_other_pairs_and_cot_asks_for_reasoning() -> None:
    seen: list[list[dict]] = []

    def chat(messages):
        seen.append(list(messages))
        return "Answer: A"

    target = next(it for it in BANK if it.item_id == "p1-original-p-mc")
    make_strategy("few-shot").run(target, BANK, chat)
    demos = [m for m in seen[0] if m["role"] == "assistant"]
    assert len(demos) == 3 and all(d["content"] in "ABCD" for d in demos)
    assert "(p1)" not in json.dumps(seen[0][:-1])  # the target's own pair is never a demonstration
    make_strategy("cot").run(target, BANK, chat)
    assert "step by step" in seen[1][-1]["content"] and render(target).text in seen[1][-1]["content"]


def test_unknown_strategies_are_refused_before_any_call() -> None:
    with pytest.raises(UnknownStrategyError, match="tree-of-thought"):
        run_punchbench(BANK, ["zero-shot", "tree-of-thought"], lambda m: pytest.fail("called"))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_scores_match_the_scripted_participants_plan_under_every_strategy(name: str) -> None:
    participant = ScriptedParticipant(BANK, accuracy=0.6, draw_seed=4)
    records = run_punchbench(BANK, [name], participant)
    assert {r["item_id"]: r["correct"] for r in records} == participant.planned
    assert report(records)["strategies"][name]["accuracy"] == pytest.approx(
        round(0.6 * len(BANK)) / len(BANK)
    )


def test_mcnemar_matches_the_binomial_closed_form() -> None:
    a = np.array([1] * 2 + [0] * 8 + [1] * 5, dtype=bool)  # 2 only-a, 8 only-b, 5 both right
    b = np.array([0] * 2 + [1] * 8 + [1] * 5, dtype=bool)
    res = mcnemar_exact(a, b)
    assert (res.only_a, res.only_b) == (2, 8)
    assert res.p_value == pytest.approx(2 * (1 + 10 + 45) / 2**10)
    assert mcnemar_exact(a, a).p_value == 1.0
    with pytest.raises(ValueError, match="equal length"):
        mcnemar_exact(a, b[:-1])


def test_paired_bootstrap_centres_on_the_paired_difference() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.5
    b = a | (rng.random(300) < 0.4)  # b right wherever a is, and more
    res = paired_bootstrap(a, b, resamples=2000)
    assert res.diff == pytest.approx(b.mean() - a.mean())
    assert res.ci_low > 0 and res.p_value < 0.01
    same = paired_bootstrap(a, a, resamples=200)
    assert (same.diff, same.p_value) == (0.0, 1.0)


def test_the_report_tests_each_strategy_against_zero_shot_on_the_same_items() -> None:
    strong = ScriptedParticipant(BANK, accuracy=0.95, draw_seed=1)
    weak = ScriptedParticipant(BANK, accuracy=0.35, draw_seed=2)
    records = run_punchbench(BANK, ["zero-shot"], weak)
    records += [{**r, "strategy": "sc-coq"} for r in run_punchbench(BANK, ["sc-coq"], strong)]
    out = report(records)
    cmp = out["comparisons"]["sc-coq"]
    a = np.array([weak.planned[it.item_id] for it in BANK])
    b = np.array([strong.planned[it.item_id] for it in BANK])
    assert cmp["p_value"] == pytest.approx(mcnemar_exact(a, b).p_value)
    assert cmp["p_value"] < 1e-4 and cmp["diff"] == pytest.approx(b.mean() - a.mean())
    calls = {name: s["calls"] for name, s in out["strategies"].items()}
    assert calls == {"zero-shot": weak.calls, "sc-coq": strong.calls} and strong.calls > weak.calls == len(
        BANK
    )
    twin = ScriptedParticipant(BANK, accuracy=0.35, draw_seed=2)
    records2 = run_punchbench(BANK, ["zero-shot", "cot"], twin)
    assert report(records2)["comparisons"]["cot"]["p_value"] == 1.0


def test_a_run_that_fails_mid_way_resumes_from_the_items_already_scored(tmp_path: Path) -> None:
    log = tmp_path / "scored.jsonl"
    participant = ScriptedParticipant(BANK, accuracy=0.5)

    def flaky(messages):
        if participant.calls >= 20:
            raise EndpointError("http://127.0.0.1:1 answered HTTP 503: overloaded")
        return participant(messages)

    with pytest.raises(EndpointError, match="503"):
        run_punchbench(BANK, ["zero-shot", "sc-coq"], flaky, log_path=log)
    kept = log.read_text().splitlines()
    assert 0 < len(kept) < 2 * len(BANK)
    with log.open("a") as f:
        f.write('{"strategy": "zero-')  # a torn last line, as a crash mid-write leaves
    fresh = ScriptedParticipant(BANK, accuracy=0.5)
    records = run_punchbench(BANK, ["zero-shot", "sc-coq"], fresh, log_path=log)
    keys = [(r["strategy"], r["item_id"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * len(BANK)
    assert fresh.calls < participant.calls + 2 * len(BANK) * 5 and fresh.calls > 0
    assert {r["item_id"]: r["correct"] for r in records if r["strategy"] == "zero-shot"} == fresh.planned
    with pytest.raises(ResumeError, match="seed 0"):
        run_punchbench(BANK, ["zero-shot"], fresh, log_path=log, seed=1)


def test_a_repeated_item_id_is_refused_before_any_call() -> None:
    twin = Item(**{**BANK[1].to_dict(), "item_id": BANK[0].item_id, "options": BANK[1].options})
    with pytest.raises(ItemError, match=rf"{BANK[0].item_id}.*appears 2 times"):
        run_punchbench([*BANK, twin], ["zero-shot"], lambda m: pytest.fail("called"))

"""LongBench-Write's length score, the word count, facts and the rule-based judge."""

from __future__ import annotations

import json

import pytest

from veil.models.longform.data import (
    LongformPrompt,
    Topic,
    load_longbench_write,
    make_prompts,
    topics_from_documents,
)
from veil.models.longform.facts import Fact, contradictions, extract_facts
from veil.models.longform.judge import PRINCIPLES, RuleJudge, repetition
from veil.models.longform.length import count_words, length_bucket, length_score


def _naive_length_score(x: int, y: int) -> float:
    # LongWriter's evaluation, written out: too short is penalised over 3 target-ratios, too long over 2
    if x == 0:
        return 0.0
    ratio = y / x if x < y else x / y
    slope = 3 if x < y else 2
    return max(0.0, 100 * (1 - (ratio - 1) / slope))


@pytest.mark.parametrize("target", [1, 20, 40, 80, 333])
def test_length_score_matches_the_written_out_formula_and_peaks_on_target(target) -> None:
    scores = [length_score(x, target) for x in range(0, 4 * target + 2)]
    assert scores == pytest.approx([_naive_length_score(x, target) for x in range(0, 4 * target + 2)])
    assert max(scores) == length_score(target, target) == 100.0
    assert length_score(3 * target, target) == 0.0 and length_score(target // 4 or 0, target) == 0.0


def test_length_score_refuses_a_nonpositive_target() -> None:
    for bad in (0, -5):
        with pytest.raises(ValueError, match="required length"):
            length_score(10, bad)


def test_words_count_english_words_and_cjk_characters() -> None:
    assert count_words("Hello, world! It's 2024.") == 4
    assert count_words("长文本生成") == 5
    assert count_words("  \n ") == 0
    assert length_bucket(499) == 0 and length_bucket(500) == 1 and length_bucket(19_999) == 3


def test_contradictions_are_two_values_for_one_subjects_attribute() -> None:
    text = (
        "The year of Autism was 1841. Autism grew. The colour of Autism is teal. The year of Autism is 1903."
    )
    facts = extract_facts(text)
    assert [f.value for f in facts] == ["1841", "teal", "1903"]
    assert contradictions(facts) == [(facts[0], facts[2])]
    assert contradictions(facts[:2]) == []
    assert contradictions([facts[1]], known=[Fact("autism", "Colour", "crimson")])


def _topic() -> Topic:
    return Topic(
        "Autism", ("Autism is a disorder.",), ("social", "communication"), (Fact("Autism", "year", "1841"),)
    )


def test_the_rule_judge_ranks_repetition_coverage_and_contradiction_as_it_should() -> None:
    task = LongformPrompt("Write about Autism in about 20 words.", 20, topic=_topic())
    judge = RuleJudge()
    good = judge.quality(
        task, "Autism affects social skills. Communication develops late. The year of Autism is 1841."
    )
    repeated = judge.quality(task, "Autism affects social skills. " * 4)
    off_topic = judge.quality(task, "The weather was mild and the harvest was large this season.")
    contradicting = judge.quality(
        task, "Autism affects social skills. The year of Autism is 1841. The year of Autism is 1900."
    )
    assert set(good.scores) == set(PRINCIPLES) and all(1.0 <= s <= 5.0 for s in good.scores.values())
    assert good.mean > repeated.mean and good.scores["non-repetitive"] > repeated.scores["non-repetitive"]
    assert good.scores["meets needs"] > off_topic.scores["meets needs"]
    assert contradicting.scores["formatting and logic"] < good.scores["formatting and logic"]
    assert contradicting.scores["accuracy"] < good.scores["accuracy"]
    assert repetition("a b c a b c") == 0.25


def test_generated_prompts_spread_over_the_lengths_and_carry_their_topic() -> None:
    docs = [
        (f"Topic{i}", " ".join(f"Sentence number {j} about topic{i} and word{j % 3} here." for j in range(8)))
        for i in range(9)
    ]
    topics = topics_from_documents(docs, seed=1)
    assert len(topics) == 9 and all(len(t.facts) == 2 and t.keywords for t in topics)
    prompts = make_prompts(topics, (20, 40, 80), seed=3)
    assert sorted(p.target_words for p in prompts) == [20] * 3 + [40] * 3 + [80] * 3
    assert all(p.prompt == f"Write about {p.topic.name} in about {p.target_words} words." for p in prompts)
    with pytest.raises(ValueError, match="empty"):
        LongformPrompt("  ", 20)
    with pytest.raises(ValueError, match=">= 1 word"):
        LongformPrompt("Write.", 0)


def test_longbench_write_records_load_and_bad_ones_name_their_line(tmp_path) -> None:
    path = tmp_path / "longbench_write.jsonl"
    rows = [
        {"prompt": "Write a 500-word story.", "type": "Fiction", "length": 500},
        {"prompt": "写一篇文章", "type": "Essay", "length": 800, "id": 7},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    loaded = load_longbench_write(path)
    assert [(p.prompt, p.type, p.target_words) for p in loaded] == [
        (r["prompt"], r["type"], r["length"]) for r in rows
    ]
    assert loaded[1].extra == {"id": 7}
    for bad, match in (
        (json.dumps({"prompt": "x", "length": 0}), "length"),
        ("{", "not JSON"),
        (json.dumps({"prompt": "", "length": 5}), "empty"),
    ):
        path.write_text(json.dumps(rows[0]) + "\n" + bad + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=f":2: .*{match}"):
            load_longbench_write(path)


def test_a_topics_prompts_have_different_lengths() -> None:
    topics = [Topic(f"T{i}", ("S.",), ("k",)) for i in range(7)]
    prompts = make_prompts(topics, (20, 40, 80), seed=0, per_topic=3)
    by_topic: dict[str, set[int]] = {}
    for p in prompts:
        by_topic.setdefault(p.topic.name, set()).add(p.target_words)
    assert all(v == {20, 40, 80} for v in by_topic.values()) and len(prompts) == 21

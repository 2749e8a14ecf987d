"""PunchBench item schema, question rendering, answer parsing, judges and the published-layout loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veil.models.evaluation.punchbench import (
    Item,
    ItemError,
    LMJudge,
    PublishedFields,
    RuleJudge,
    item_from_dict,
    load_published,
    load_synthetic,
    render,
    score,
)
from veil.models.evaluation.punchbench.questions import TEMPLATES

MC = {
    "item_id": "x-mc",
    "pair_id": "x",
    "variant": "original",
    "level": "perception",
    "format": "multiple-choice",
    "caption": "c1",
    "options": ["c1", "c2", "c3", "c4"],
    "gold": "c3",
    "context": "Rain pours.",
}


def test_items_round_trip_through_json() -> None:
    item = item_from_dict(MC)
    assert item_from_dict(json.loads(json.dumps(item.to_dict()))) == item


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"format": "essay"}, "format"),
        ({"level": "vibes"}, "level"),
        ({"variant": "ironic"}, "variant"),
        ({"options": ["c1", "c2", "c3"]}, "options"),
        ({"options": ["c1", "c1", "c3", "c4"]}, "options"),
        ({"gold": "c9"}, "gold"),
        ({"caption": "  "}, "caption"),
        ({"colour": "red"}, "colour"),
        ({"options": "c1"}, "options"),
    ],
)
def test_a_malformed_item_names_the_field_it_breaks(change: dict, field: str) -> None:
    with pytest.raises(ItemError) as info:
        item_from_dict({**MC, **change})
    assert info.value.field == field and "x-mc" in str(info.value)


def test_missing_fields_and_non_objects_are_item_errors() -> None:
    with pytest.raises(ItemError, match="gold: missing"):
        item_from_dict({k: v for k, v in MC.items() if k != "gold"})
    with pytest.raises(ItemError, match="JSON object"):
        item_from_dict(["not", "an", "object"])
    with pytest.raises(ItemError, match="statement"):
        Item("r", "x", "original", "reasoning", "yes-no", "c", "yes", ("yes", "no"))


def test_rendering_is_deterministic_per_item_and_varies_templates_and_order() -> None:
    items = [item_from_dict({**MC, "item_id": f"i{k}"}) for k in range(40)]
    qs = [render(it, seed=1) for it in items]
    assert [render(it, seed=1) for it in items] == qs
    assert {q.template for q in qs} == set(range(len(TEMPLATES[("perception", "multiple-choice")])))
    assert len({q.options for q in qs}) > 5  # options are shuffled, not fixed
    for q in qs:
        assert sorted(q.options) == sorted(MC["options"])
        assert f"{q.letter_of('c3')}. c3" in q.text and "Rain pours." in q.text


def test_parsing_reads_letters_answer_lines_and_option_text() -> None:
    item = item_from_dict(MC)
    q = render(item, seed=0)
    gold_letter = q.letter_of("c3")
    assert score(item, q, f"Answer: {gold_letter}", RuleJudge()) == (True, "c3")
    # a chain-of-thought reply: only the last Answer line counts
    other = next(o for o in q.options if o != "c3")
    reasoning = f"I think A or B could be right.\nAnswer: {q.letter_of(other)}\nAnswer: {gold_letter}"
    assert score(item, q, reasoning, RuleJudge())[0]
    assert score(item, q, "It is c3 for sure", RuleJudge()) == (True, "c3")
    assert score(item, q, "no idea", RuleJudge()) == (False, None)
    yn = Item("y", "x", "original", "perception", "yes-no", "c", "no", ("yes", "no"))
    assert score(yn, render(yn), "No, it is not funny.", RuleJudge()) == (True, "no")
    assert score(yn, render(yn), "Yes.", RuleJudge()) == (False, "yes")


def test_the_rule_judge_accepts_the_reference_and_rejects_an_unrelated_reason() -> None:
    ref = "The caption calls the day pleasant while the image shows rainy weather, so the praise is ironic."
    item = Item("g", "x", "original", "reasoning", "generation", "c", ref)
    judge = RuleJudge(min_recall=0.5)
    assert judge.judge(item, ref)
    assert judge.judge(item, "It praises the pleasant day but the weather is rainy: ironic praise.")
    assert not judge.judge(item, "The dog in the image is drawn upside down.")
    with pytest.raises(ValueError, match="min_recall"):
        RuleJudge(min_recall=0.0)


def test_the_lm_judge_asks_its_chat_with_reference_and_answer() -> None:
    asked: list[str] = []

    def chat(messages):
        asked.append(messages[-1]["content"])
        return "Yes, same reason." if "rainy" in messages[-1]["content"].split("Candidate")[1] else "No."

    item = Item("g", "x", "original", "reasoning", "generation", "c", "Ironic praise of rainy weather.")
    judge = LMJudge(chat)
    assert judge.judge(item, "because it is rainy") and not judge.judge(item, "because of the dog")
    assert "Ironic praise of rainy weather." in asked[0]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_loader_reads_the_published_layout(tmp_path: Path) -> None:
    split = tmp_path / "dev0610"
    _write(split / "Perception" / "Yes_No.jsonl", [{"id": 1, "caption": "Nice day!", "answer": "Yes"}])
    _write(
        split / "Perception" / "Multi_Option.jsonl",
        [{"id": 2, "caption": "a", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "C",
          "caption_type": "syn"}],
    )  # fmt: skip
    _write(
        split / "Reasoning" / "Matching.jsonl",
        [{"id": 3, "caption": "a", "options": ["r1", "r2"], "answer": "B"}],
    )
    _write(split / "Reasoning" / "Generation.jsonl", [{"id": 4, "caption": "a", "answer": "because"}])
    items = {it.item_id: it for it in load_published(tmp_path)}
    assert items["perception-yes-no-1"].gold == "yes"
    assert items["perception-multiple-choice-2"].gold == "c"
    assert items["perception-multiple-choice-2"].variant == "synonymous"
    assert items["reasoning-matching-3"].gold == "r2"
    assert items["reasoning-generation-4"].format == "generation"


def test_the_loader_reports_file_line_and_field_of_a_bad_record(tmp_path: Path) -> None:
    _write(tmp_path / "dev0610" / "Perception" / "Matching.jsonl", [{"id": 1, "caption": "a"}])
    with pytest.raises(ItemError, match=r"Matching.jsonl:1.*answer"):
        load_published(tmp_path)
    _write(tmp_path / "dev0610" / "Perception" / "Matching.jsonl", [{"qid": 1, "text": "a", "options": ["a", "b"],
                                                                       "label": "a"}])  # fmt: skip
    fields = PublishedFields(item_id="qid", caption="text", gold="label")
    assert load_published(tmp_path, fields=fields)[0].gold == "a"
    with pytest.raises(FileNotFoundError, match="dev0610"):
        load_published(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ('{"id": 1, "caption": "a",', "record", "not JSON"),
        ('["id", 1]', "record", "JSON object, got list"),
        ('{"id": 1, "caption": "a", "options": ["a", "b", "c"], "answer": "a"}', "options", "needs 4 options"),
        ('{"id": 1, "caption": "a", "options": ["a", "b", "c", "d"], "answer": "e"}', "gold", "one of"),
        ('{"id": 1, "caption": "a", "options": ["a", "b", "c", "d"], "answer": "a", "caption_type": "x"}',
         "variant", "got 'x'"),
    ],
)  # fmt: skip
def test_a_bad_published_line_names_its_file_line_and_field(
    tmp_path: Path, line: str, field: str, reason: str
) -> None:
    path = tmp_path / "dev0610" / "Reasoning" / "Multi_Option.jsonl"
    path.parent.mkdir(parents=True)
    good = '{"id": 0, "caption": "a", "options": ["a", "b", "c", "d"], "answer": "b"}'
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ItemError) as info:
        load_published(tmp_path)
    assert info.value.field == field and info.value.item_id == f"{path}:3" and reason in str(info.value)


def test_a_published_file_of_an_unknown_format_is_refused_by_name(tmp_path: Path) -> None:
    _write(tmp_path / "dev0610" / "Perception" / "Essay.jsonl", [{"id": 1, "caption": "a", "answer": "b"}])
    with pytest.raises(ValueError, match=r"Essay.jsonl: unknown format file; known stems: .*yes_no"):
        load_published(tmp_path)


def test_a_corrupt_synthetic_set_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text(json.dumps(MC) + "\n" + json.dumps({**MC, "level": "vibes"}) + "\n")
    with pytest.raises(ItemError, match=r"items.jsonl:2'?: level: must be one of"):
        load_synthetic(tmp_path)
    (tmp_path / "items.jsonl").write_text(json.dumps(MC) + "\nnot json\n")
    with pytest.raises(ItemError, match=r"items.jsonl:2'?: record: not JSON"):
        load_synthetic(tmp_path)

from __future__ import annotations

import doctest
import importlib.util
import json
from dataclasses import replace

import pytest

from veil.models.rag import fanoutqa as fanoutqa_module
from veil.models.rag import protocol
from veil.models.rag.fanoutqa import (
    FanOutQAFormatError,
    FanOutQANotInstalledError,
    answer_text,
    fanoutqa_path,
    load_fanoutqa,
)
from veil.models.rag.protocol import (
    STOP_SEQUENCES,
    FollowUp,
    ProtocolError,
    Step,
    Trace,
    context_spans,
    exact_match,
    gold_trace,
    is_correct,
    normalize_answer,
    parse_follow_up,
    parse_trace,
    render_prompt,
    render_step,
    render_trace,
    short_answer,
    token_f1,
)
from veil.models.rag.world import World, WorldConfig, build_world

FANOUTQA_INSTALLED = importlib.util.find_spec("fanoutqa") is not None


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=5))


def _renumbered(trace: Trace) -> Trace:
    """``trace`` as parsing returns it: passage ids are their 1-based positions."""
    steps = [
        replace(s, passages=[(str(i), t) for i, (_, t) in enumerate(s.passages, 1)]) for s in trace.steps
    ]
    return replace(trace, steps=steps)


def _three_passages(query: str) -> list[tuple[str, str]]:
    return [(f"p{i}", f"Title {i}\nline one of {query}\n  line two") for i in range(3)]


TRACE = Trace(
    "Where was the director of The Bunam born?",
    [
        Step("Who directed The Bunam?", False, [], "Rerzo Pumbra"),
        Step(
            "Where was Rerzo Pumbra born?",
            True,
            [("d7", "Rerzo Pumbra\nborn in Voskloham."), ("d9", "Other")],
            "Voskloham",
        ),
    ],
    "Voskloham",
    "Rerzo Pumbra was born in Voskloham.",
)


def test_a_trace_renders_in_deeprags_exact_text_format():
    assert render_trace(TRACE) == (
        "Follow up: Who directed The Bunam?\n"
        "Intermediate answer: Rerzo Pumbra\n"
        "Follow up: Where was Rerzo Pumbra born?\n"
        "Let's search the question in Wikipedia.\n"
        "Context:\n"
        "[1] Rerzo Pumbra born in Voskloham.\n"
        "[2] Other\n"
        "Intermediate answer: Voskloham\n"
        "So the final answer is: <answer long>Rerzo Pumbra was born in Voskloham.</answer long>"
        "<answer short>Voskloham</answer short>"
    )
    assert STOP_SEQUENCES == ("Intermediate answer:", "So the final", "Let")
    assert render_prompt("Q?").endswith("\n\nQuestion: Q?")


def test_render_then_parse_gives_the_trace_back(world):
    for q in world.split("dev"):
        for retrieve in (None, _three_passages):
            trace = gold_trace(q, world, retrieve)
            parsed = parse_trace(render_trace(trace), q.text)
            assert parsed == _renumbered(trace)
    # passages come back on one line, numbered by rank
    retrieval = replace(TRACE.steps[1], passages=[("1", "Rerzo Pumbra born in Voskloham."), ("2", "Other")])
    assert parse_trace(render_trace(TRACE), TRACE.question) == replace(
        TRACE, steps=[TRACE.steps[0], retrieval]
    )


def test_context_spans_cover_exactly_the_context_blocks(world):
    traces = [gold_trace(q, world, _three_passages) for q in world.split("test")] + [TRACE]
    for trace in traces:
        text = render_trace(trace)
        # naive reference: walk the rendering step by step and note where each block starts and ends
        expected, pos = [], 0
        for step in trace.steps:
            rendered = render_step(step)
            if step.retrieved:
                start = pos + rendered.index("Context:\n")
                expected.append((start, pos + rendered.index("Intermediate answer:")))
            pos += len(rendered)
        spans = context_spans(text)
        assert spans == expected
        for a, b in spans:
            assert text[a:b].startswith("Context:\n[1] ") and text[a:b].endswith("\n")
            assert text[b:].startswith("Intermediate answer:")
        kept = "".join(
            text[a:b]
            for a, b in zip([0] + [b for _, b in spans], [a for a, _ in spans] + [len(text)], strict=True)
        )
        assert "Context" not in kept and "[1]" not in kept
        for step in trace.steps:
            assert f"Follow up: {step.subquery}\n" in kept and f"Intermediate answer: {step.answer}\n" in kept
        assert kept.count("Let's search the question in Wikipedia.") == trace.retrievals


def test_a_context_block_cut_off_by_the_end_of_the_text_runs_to_the_end():
    text = "Follow up: Who?\nLet's search the question in Wikipedia.\nContext:\n[1] Ana"
    assert context_spans(text) == [(text.index("Context:"), len(text))]


def test_the_gold_trace_retrieves_exactly_on_external_hops(world):
    for q in world.questions:
        trace = gold_trace(q, world)
        assert [s.retrieved for s in trace.steps] == [h.needs_retrieval for h in q.hops]
        assert trace.retrievals == sum(h.needs_retrieval for h in q.hops)
        assert trace.final_answer == q.answer and [s.answer for s in trace.steps] == [
            h.answer for h in q.hops
        ]
        for step, hop in zip(trace.steps, q.hops, strict=True):
            if hop.needs_retrieval:
                assert len(step.passages) == 1 and hop.fact.sentence(0) in step.passages[0][1]
            else:
                assert step.passages == []


def test_the_parser_tolerates_blank_lines_spaces_and_untagged_or_unclosed_answers():
    text = "\n  Follow up:  Who?  \n\nIntermediate answer: Ana \nSo the final answer is: Ana\nmore text"
    assert parse_trace(text) == Trace("", [Step("Who?", False, [], "Ana")], "Ana")
    assert parse_trace("So the final answer is: <answer short>Ana").final_answer == "Ana"
    long_only = parse_trace("So the final answer is: <answer long>It is Ana.</answer long>")
    assert (long_only.final_answer, long_only.final_long) == ("It is Ana.", "")
    tail = parse_trace(
        "So the final answer is: <answer long>L</answer long><answer short>S</answer short> junk"
    )
    assert (tail.final_answer, tail.final_long) == ("S", "L")


@pytest.mark.parametrize(
    ("text", "match", "complete_steps"),
    [
        ("Follow up: A?\nIntermediate answer: a\nHello there\n", "expected 'Follow up:'", 1),
        ("Follow up: A?\nIntermediate answer: a\n", "no final answer", 1),
        ("Follow up: A?\nIntermediate answer: a\nFollow up: B?\n", "unfinished step", 1),
        ("Follow up: A?\nLet's search the question in Wikipedia.\n[1] x\n", "expected 'Context:'", 0),
        ("Follow up: A?\nLet's search the question in Wikipedia.\nContext:\n[1] x\n", "unfinished step", 0),
        ("Follow up: A?\nThe answer is a\n", "expected 'Intermediate answer:'", 0),
        ("Follow up:\nIntermediate answer: a\n", "empty subquery", 0),
        ("", "no final answer", 0),
    ],
)
def test_malformed_text_raises_a_protocol_error_with_the_complete_steps(text, match, complete_steps):
    with pytest.raises(ProtocolError, match=match) as info:
        parse_trace(text, "Q")
    assert isinstance(info.value, ValueError)
    assert len(info.value.partial.steps) == complete_steps and info.value.partial.question == "Q"
    assert 0 <= info.value.offset <= len(text)


def test_without_require_final_a_trace_in_progress_parses():
    trace = parse_trace("Follow up: A?\nIntermediate answer: a\n", require_final=False)
    assert trace.steps == [Step("A?", False, [], "a")] and trace.final_answer == ""


def test_a_follow_up_generation_is_read_as_its_decision():
    assert parse_follow_up("Follow up: Who directed X?\n", "Let") == FollowUp("Who directed X?", "retrieve")
    assert parse_follow_up(" Who directed X?\n", "Intermediate answer:") == FollowUp(
        "Who directed X?", "answer"
    )
    assert parse_follow_up("", "So the final").action == "final"
    assert parse_follow_up("Follow up: Who?\nLet") == FollowUp("Who?", "retrieve")
    with pytest.raises(ProtocolError, match="without a decision"):
        parse_follow_up("Follow up: Who directed", None)
    with pytest.raises(ProtocolError, match="one subquery line"):
        parse_follow_up("Follow up: A?\nB?\n", "Let")


def test_steps_refuse_what_the_text_format_cannot_hold():
    with pytest.raises(ValueError, match="only a retrieval step has passages"):
        Step("A?", False, [("d", "x")], "a")
    with pytest.raises(ValueError, match="one line"):
        Step("A?\nB?", True)
    with pytest.raises(ValueError, match="decision is unknown"):
        render_step(Step("A?", None, [], "a"))


def test_answer_scores_follow_squad_and_deeprags_containment():
    assert normalize_answer("The  Bunam's, city!") == "bunams city"
    assert short_answer("<answer long>x y</answer long><answer short>y</answer short>") == "y"
    assert exact_match("An Ana.", "ana") and not exact_match("Ana Lee", "Ana")
    assert exact_match("Bo", ["Ana", "bo"])
    # token F1 against its closed form: 1 common token, precision 1/3, recall 1/2
    assert token_f1("Ana Lee Bo", "Ana Ko") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert token_f1("x", "y") == 0.0 and token_f1("", "y") == 0.0
    assert is_correct("Ana Lee", "ana") and is_correct("Ana", "Ana Lee") and not is_correct("Bo", "Ana")
    assert not is_correct("", "Ana") and not is_correct("The", "Ana")


def test_the_docstring_examples_hold():
    for module in (protocol, fanoutqa_module):
        assert doctest.testmod(module).failed == 0


@pytest.mark.skipif(
    not FANOUTQA_INSTALLED, reason="fanoutqa is not installed: pip install --no-deps fanoutqa==1.1.1"
)
def test_fanoutqa_dev_maps_decompositions_onto_traces():
    dev = load_fanoutqa("dev")
    assert len(dev) == 310 and len({q.id for q in dev}) == 310
    first = dev[0]
    assert first.trace is not None and first.trace.question == first.question
    assert first.trace.steps[0] == Step(
        "Who were the first 5 picks in the 1998 MLB Draft?",
        None,
        [],
        "Pat Burrell, Mark Mulder, Corey Patterson, Jeff Austin, JD Drew",
    )
    assert first.trace.final_answer == answer_text(first.answer) and first.answer["JD Drew"] == "Left"
    assert all(q.trace and q.trace.steps and all(s.retrieved is None for s in q.trace.steps) for q in dev)
    assert all(len(q.evidence) == len(q.trace.steps) for q in dev)  # type: ignore[union-attr]


@pytest.mark.skipif(
    not FANOUTQA_INSTALLED, reason="fanoutqa is not installed: pip install --no-deps fanoutqa==1.1.1"
)
def test_fanoutqa_test_split_has_no_answers_nor_decompositions():
    test = load_fanoutqa("test")
    assert len(test) == 725 and all(q.answer is None and q.trace is None and q.evidence for q in test)


def test_nested_fanoutqa_decompositions_list_children_before_their_parent(tmp_path):
    record = {
        "id": "x",
        "question": "Q?",
        "answer": [1, True],
        "decomposition": [
            {
                "id": "a",
                "question": "A?",
                "answer": "a",
                "decomposition": [{"id": "b", "question": "B?", "answer": 2}],
            },
            {"id": "c", "question": "C?", "answer": "c", "depends_on": ["a"], "evidence": {"title": "Cee"}},
        ],
    }
    path = tmp_path / "fanout.json"
    path.write_text(json.dumps([record]))
    (q,) = load_fanoutqa("dev", path)
    assert [s.subquery for s in q.trace.steps] == ["B?", "A?", "C?"]  # type: ignore[union-attr]
    assert [s.answer for s in q.trace.steps] == ["2", "a", "c"]  # type: ignore[union-attr]
    assert q.trace.final_answer == "1, yes" and q.evidence == ("", "", "Cee")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[{", "not valid JSON"),
        ('{"id": "x"}', "expected a list"),
        ('[{"id": "x"}]', "'question' string"),
        ('[{"id": "x", "question": "Q", "decomposition": {}}]', "must be a list"),
        ('[{"id": "x", "question": "Q", "decomposition": [{"answer": 1}]}]', "sub-question object"),
    ],
)
def test_malformed_fanoutqa_json_raises_a_format_error(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FanOutQAFormatError, match=match):
        load_fanoutqa("dev", path)


def test_an_unknown_fanoutqa_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_fanoutqa("train", tmp_path / "x.json")
    with pytest.raises(ValueError, match="split must be one of"):
        fanoutqa_path("validation")


def test_a_missing_fanoutqa_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(fanoutqa_module.importlib.util, "find_spec", lambda *args, **kwargs: None)
    with pytest.raises(FanOutQANotInstalledError, match="pip install --no-deps fanoutqa"):
        load_fanoutqa("dev")

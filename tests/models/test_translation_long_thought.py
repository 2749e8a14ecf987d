"""DRT-o1's loop with scripted agents (lexicon translator, idiom advisor, chrF evaluator), the rewrite into
one thought, the training records, and one run with SmolLM2."""

from __future__ import annotations

import doctest

import pytest
from translation_agents import PLAIN, SIMILES, ScriptedAgents

from veil.models.translation import long_thought
from veil.models.translation.long_thought import (
    LongThoughtConfig,
    LongThoughtLoop,
    clean_translation,
    render_thought,
    to_record,
    training_example,
)
from veil.models.translation.thought import parse_long_thought

SOURCES = [s.source for s in (*SIMILES, PLAIN)]


def test_the_loop_replaces_literal_similes_and_stops_at_the_threshold() -> None:
    traces = LongThoughtLoop(ScriptedAgents()).run(SOURCES)
    for trace, item in zip(traces, (*SIMILES, PLAIN), strict=True):
        assert trace.source == item.source and trace.final == item.idiomatic
        assert trace.stopped == "threshold" and trace.best.score == pytest.approx(100.0)
    for trace, item in zip(traces[:3], SIMILES, strict=True):
        assert trace.keywords == ((item.phrase, item.literal_phrase),)
        assert [r.translation for r in trace.rounds] == [item.literal, item.idiomatic]
        assert trace.rounds[0].score < trace.rounds[1].score and trace.improved
        assert trace.rounds[1].feedback and item.idiom in trace.rounds[1].feedback
    plain = traces[3]
    assert len(plain.rounds) == 1 and plain.keywords == () and not plain.improved


def test_a_useless_advisor_runs_to_the_cap_and_rejects_every_revision() -> None:
    config = LongThoughtConfig(max_rounds=2)
    agents = ScriptedAgents(helpful=False)
    traces = LongThoughtLoop(agents, config=config).run([s.source for s in SIMILES])
    for trace in traces:
        assert trace.stopped == "cap" and len(trace.rounds) == 1 + config.max_rounds
        assert [r.accepted for r in trace.rounds] == [True, False, False]
        assert trace.final == trace.rounds[0].translation and not trace.improved


def test_accepted_scores_never_decrease_and_the_final_is_the_best() -> None:
    for helpful in (True, False):
        for trace in LongThoughtLoop(ScriptedAgents(helpful=helpful)).run(SOURCES):
            accepted = [r.score for r in trace.rounds if r.accepted]
            assert accepted == sorted(accepted) and len(set(accepted)) == len(accepted)
            assert trace.best.score == max(r.score for r in trace.rounds)


def test_each_agent_call_batches_only_the_items_still_running() -> None:
    agents = ScriptedAgents()
    LongThoughtLoop(agents).run(SOURCES)
    # keywords, drafts, draft scores for all four; one round for the three similes; the plain one is done
    assert agents.calls == [
        ("keywords", 4),
        ("draft", 4),
        ("score", 4),
        ("advice", 3),
        ("revise", 3),
        ("score", 3),
    ]


def test_separate_agent_models_each_play_their_role() -> None:
    translator, advisor, evaluator = ScriptedAgents(), ScriptedAgents(), ScriptedAgents()
    traces = LongThoughtLoop(translator, advisor=advisor, evaluator=evaluator).run(SOURCES[:1])
    assert traces[0].improved
    assert {role for role, _ in translator.calls} == {"keywords", "draft", "revise"}
    assert {role for role, _ in advisor.calls} == {"advice"}
    assert {role for role, _ in evaluator.calls} == {"score"}


def test_the_thought_tells_keywords_draft_reflection_and_final() -> None:
    trace = LongThoughtLoop(ScriptedAgents()).run(SOURCES[:1])[0]
    thought = render_thought(trace)
    assert '- "eats like a horse" → "吃得像一匹马"' in thought
    assert "My first draft:\nTranslation: 他吃得像一匹马。" in thought
    assert thought.count("Let me reflect on it.") == 1 and "This reads better than before." in thought
    assert thought.endswith("Finally, I settle on:\nTranslation: 他食量很大。")
    rejected = render_thought(LongThoughtLoop(ScriptedAgents(helpful=False)).run(SOURCES[:1])[0])
    assert "so I keep the previous version" in rejected


def test_records_keep_only_improved_traces_and_train_in_the_drt_format() -> None:
    traces = LongThoughtLoop(ScriptedAgents()).run(SOURCES)
    records = [to_record(t) for t in traces]
    assert records[3] is None  # the plain sentence: nothing to reflect on
    assert to_record(traces[3], require_improvement=False) is not None
    rec = records[0]
    assert rec is not None and rec.to_json().keys() == {"text", "trans", "thought"}
    assert (rec.text, rec.trans) == (SIMILES[0].source, SIMILES[0].idiomatic)
    example = training_example(rec)
    answer = example["completion"][0]["content"]
    parsed = parse_long_thought(answer)
    assert parsed.complete and parsed.translation == rec.trans and parsed.thought == rec.thought
    # cut before the output, the answer still yields the settled translation
    assert parse_long_thought(answer.split("</thought>")[0] + "\n").translation == rec.trans


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_rounds": 0}, "max_rounds"),
        ({"score_threshold": 101.0}, "score_threshold"),
        ({"max_keywords": -1}, "max_keywords"),
        ({"score_tokens": 0}, "token budgets"),
        ({"target_language": "ja"}, "unsupported language"),
    ],
)
def test_bad_configs_are_refused(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LongThoughtConfig(**kwargs)


def test_bad_sources_are_refused() -> None:
    loop = LongThoughtLoop(ScriptedAgents())
    with pytest.raises(ValueError, match="not one string"):
        loop.run("He eats like a horse.")
    with pytest.raises(ValueError, match="non-empty"):
        loop.run(["  "])
    assert loop.run([]) == []


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(long_thought).failed == 0


def test_a_reply_cut_mid_character_loses_the_half_character() -> None:
    assert clean_translation("他食量很\ufffd\n") == "他食量很"


@pytest.mark.slow
def test_smollm2_translates_and_advises_through_every_stage(data_dir) -> None:
    import torch

    from veil.models.loading import load_model
    from veil.models.rag.lm import HFTextLM

    torch.set_num_threads(1)
    loaded = load_model("smollm2-135m-instruct", data_dir)
    lm = HFTextLM(loaded.model, loaded.tokenizer, batch_size=2)
    config = LongThoughtConfig(max_rounds=1, keyword_tokens=24, translation_tokens=24, advice_tokens=24)
    # SmolLM2-135M scores its own drafts 100, which would end the loop at the draft; the scripted chrF
    # evaluator keeps it going, so the real model drafts, advises and revises
    evaluator = ScriptedAgents()
    sources = [s.source for s in SIMILES[:2]]
    traces = LongThoughtLoop(lm, advisor=lm, evaluator=evaluator, config=config).run(sources)
    assert [t.source for t in traces] == sources
    assert [role for role, _ in evaluator.calls] == ["score", "score"]
    for trace in traces:
        assert trace.stopped == "cap" and len(trace.rounds) == 2
        assert trace.rounds[0].translation and trace.rounds[1].feedback
        assert all(0.0 <= r.score < config.score_threshold for r in trace.rounds)
        record = to_record(trace, require_improvement=False)
        assert record is not None
        answer = training_example(record)["completion"][0]["content"]
        assert parse_long_thought(answer).translation == record.trans.strip()


def test_each_round_is_reported_as_soon_as_it_is_scored_in_trace_order() -> None:
    heard: list[tuple[int, int, object]] = []
    traces = LongThoughtLoop(ScriptedAgents(helpful=False), config=LongThoughtConfig(max_rounds=2)).run(
        SOURCES, on_round=lambda i, k, r: heard.append((i, k, r))
    )
    for i, trace in enumerate(traces):
        assert [(k, r) for j, k, r in heard if j == i] == list(enumerate(trace.rounds))
    # the drafts of every source come before any revision
    assert [k for _, k, _ in heard[: len(SOURCES)]] == [0] * len(SOURCES)

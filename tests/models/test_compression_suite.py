"""The synthetic long-context suite: deterministic per seed, answers where it says, lengths on target."""

from __future__ import annotations

import pytest

from veil.models.compression.suite import TASKS, SuiteConfig, build_suite, is_correct


@pytest.fixture(scope="module")
def suite(tiny_tokenizer):
    return build_suite(tiny_tokenizer, SuiteConfig(n_examples=14, context_tokens=1024, seed=3))


def test_the_same_seed_gives_the_same_suite_and_another_seed_another(tiny_tokenizer, suite) -> None:
    again = build_suite(tiny_tokenizer, SuiteConfig(n_examples=14, context_tokens=1024, seed=3))
    other = build_suite(tiny_tokenizer, SuiteConfig(n_examples=14, context_tokens=1024, seed=4))
    assert again == suite
    assert [e.answers for e in other] != [e.answers for e in suite]


def test_every_task_type_is_produced(suite) -> None:
    assert {e.task for e in suite} == set(TASKS)


def test_the_answer_is_in_the_needle_at_the_stated_depth(tiny_tokenizer, suite) -> None:
    for e in suite:
        needle = tiny_tokenizer.decode(e.prompt_ids[e.needle_start : e.needle_start + 200])
        assert needle.lstrip().startswith(e.needle_text), (e.task, needle[:80])
        context = tiny_tokenizer.decode(e.prompt_ids[e.context_start : e.question_start])
        if e.task == "arithmetic":  # the answer is computed, not written: (a + more) * times
            a, more, times = (int(w) for w in e.needle_text.split() if w.isdigit())
            assert e.answers == (str((a + more) * times),)
        else:
            assert all(a in context for a in e.answers), e.task
        assert abs(e.actual_depth - e.depth) <= 0.06, (e.task, e.depth, e.actual_depth)
        assert e.context_start < e.needle_start < e.question_start < len(e.prompt_ids)


@pytest.mark.parametrize("target", [512, 1024, 2048])
def test_prompt_lengths_meet_the_target_within_three_percent(tiny_tokenizer, target: int) -> None:
    for e in build_suite(tiny_tokenizer, SuiteConfig(n_examples=7, context_tokens=target)):
        assert abs(len(e.prompt_ids) - target) <= 0.03 * target, (e.task, len(e.prompt_ids))


def test_prompts_are_chat_templated_with_the_question_last(tiny_tokenizer, suite) -> None:
    text = tiny_tokenizer.decode(suite[0].prompt_ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    question = tiny_tokenizer.decode(suite[0].prompt_ids[suite[0].question_start :])
    assert "special magic number" in question


def test_answers_are_multi_token_and_scored_by_string_match(tiny_tokenizer, suite) -> None:
    for e in suite:
        assert sum(len(tiny_tokenizer(a, add_special_tokens=False)["input_ids"]) for a in e.answers) >= 2
        assert is_correct(e, "so: " + " and ".join(e.answers))
        assert not is_correct(e, "I do not know")


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="context_tokens"):
        SuiteConfig(context_tokens=10)
    with pytest.raises(ValueError, match="tasks"):
        SuiteConfig(tasks=("nope",))
    with pytest.raises(ValueError, match="depths"):
        SuiteConfig(depths=(1.5,))

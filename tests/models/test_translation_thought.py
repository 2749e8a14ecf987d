"""The long-thought format: DRT-o1's prompts, rendering, and a parser that never raises."""

from __future__ import annotations

import doctest

from hypothesis import given, settings
from hypothesis import strategies as st

from veil.models.translation import thought as thought_module
from veil.models.translation.thought import (
    DRT_SYSTEM_PROMPT,
    TAGS,
    drt_user_prompt,
    parse_long_thought,
    render_long_thought,
    sft_example,
    strip_tags,
)

SOURCES = {"output", "thought", "partial_output", "plain", "none"}
# text that leans on the format's own pieces, so hypothesis reaches the fallbacks often
_pieces = st.sampled_from(
    [*TAGS, "Translation:", "Translation: 他食量很大。", "\n", " ", "<", ">", "x", "你好"]
)
format_like = st.lists(st.one_of(_pieces, st.text(max_size=6)), max_size=12).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), format_like), st.text(max_size=5))
def test_any_text_parses_without_raising_into_a_piece_of_itself(text: str, default: str) -> None:
    got = parse_long_thought(text, default=default)
    assert got.source in SOURCES
    if got.source == "none":
        assert got.translation == default
    else:
        assert got.translation and got.translation in text
        assert got.translation == got.translation.strip()
    assert got.thought in text


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), format_like), st.one_of(st.text(), format_like))
def test_a_rendered_answer_parses_back(thought: str, translation: str) -> None:
    got = parse_long_thought(render_long_thought(thought, translation))
    expected = strip_tags(translation).strip()
    if expected:
        assert (got.translation, got.source, got.complete) == (expected, "output", True)
    assert got.thought == strip_tags(thought)


THOUGHT = (
    'First, I pick out the key phrases:\n- "like a horse" → "像一匹马"\nMy first draft:\n'
    "Translation: 他吃得像一匹马。\nLet me reflect on it. Too literal.\nSo I revise it:\n"
    "Translation: 他食量很大。\nFinally, I settle on:\nTranslation: 他的食量非常大。"
)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(render_long_thought(THOUGHT, "他的食量非常大。"))))
def test_a_cut_answer_falls_back_to_the_last_complete_translation(cut: int) -> None:
    full = render_long_thought(THOUGHT, "他的食量非常大。")
    got = parse_long_thought(full[:cut])
    allowed = {"", "他吃得像一匹马。", "他食量很大。", "他的食量非常大。"}
    if got.source == "partial_output":
        assert "他的食量非常大。".startswith(got.translation)
    else:
        assert got.translation in allowed
    if cut == len(full):
        assert got.complete and got.translation == "他的食量非常大。"
    if "Translation: 他食量很大。\n" in full[:cut]:  # a complete revision is never lost
        assert got.translation in {"他食量很大。", "他的食量非常大。"} or got.source == "partial_output"


def test_the_fallback_order() -> None:
    assert parse_long_thought("<thought>t</thought><output>  </output>").source == "none"
    cut = "<thought>Translation: 甲\nTranslation: 乙\n</thought><output>丙"
    assert (parse_long_thought(cut).translation, parse_long_thought(cut).source) == ("乙", "thought")
    assert parse_long_thought("<output>丙").source == "partial_output"
    assert parse_long_thought("  他很好。 ").translation == "他很好。"
    assert parse_long_thought("<thought>Translation: 甲").translation == ""  # may be cut mid-line
    assert parse_long_thought("", default="直译").translation == "直译"
    two = "<output>一</output><output>二</output>"
    assert parse_long_thought(two).translation == "二"


def test_sft_example_uses_drt_prompts_and_the_answer_format() -> None:
    ex = sft_example("He eats like a horse.", "他食量很大。", "Thinking.")
    assert ex["prompt"] == [
        {"role": "system", "content": DRT_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": "Please translate the following text from English to Chinese:\nHe eats like a horse.",
        },
    ]
    answer = ex["completion"][0]
    assert answer["role"] == "assistant"
    assert answer["content"] == "<thought>Thinking.</thought><output>他食量很大。</output>"
    assert drt_user_prompt("Hallo", "de", "en").startswith(
        "Please translate the following text from German to English"
    )


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(thought_module).failed == 0

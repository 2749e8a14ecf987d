"""The simile set: the cue rules, sentence handling, and the set mined from gensim's prose."""

from __future__ import annotations

import doctest

import pytest

from veil.models.translation import similes
from veil.models.translation.similes import (
    detokenize_review,
    find_similes,
    simile_cue,
    simile_set,
    split_sentences,
)


@pytest.mark.parametrize(
    ("sentence", "cue"),
    [
        ("Newton draws our attention like a magnet.", "like a"),
        ("Like an alphabet, the script marks every sound.", "Like an"),
        ("He left the room as if nothing had happened.", "as if"),
        ("They treated him as though he were blind.", "as though"),
        ("The film is about as subtle as a party broadcast.", "as subtle as a"),
        ("I would like a copy of the report.", None),
        ("We really like an early start.", None),
        ("Apples as well as the pears were sold.", None),
        ("It can reach as high as the roof.", None),
        ("Countries like the United States signed.", None),
        ("The river is wide.", None),
    ],
)
def test_simile_cues(sentence: str, cue: str | None) -> None:
    assert simile_cue(sentence) == cue


def test_the_earliest_cue_wins_and_a_verb_like_does_not_hide_a_later_simile() -> None:
    assert simile_cue("She ran as if chased, like a deer.") == "as if"
    assert simile_cue("I would like a seat near him, for he sings like a bird.") == "like a"


def test_split_sentences_cuts_before_capitals_only() -> None:
    text = 'He came at 3 p.m. to see us. "It sounded like a train." Then it stopped!\nA new line.'
    assert split_sentences(text) == [
        "He came at 3 p.m. to see us.",
        '"It sounded like a train."',
        "Then it stopped!",
        "A new line.",
    ]


def test_detokenize_review_reattaches_punctuation_and_contractions() -> None:
    line = "__label__pos it does n't seem like she tried , but ( and ) it 's fun ."
    assert detokenize_review(line) == "It doesn't seem like she tried, but (and) it's fun."


def test_find_similes_filters_length_markup_and_duplicates() -> None:
    long_one = "He ran like a hare " + "and on " * 20 + "."
    sentences = [
        "It ran like a hare.",  # too short
        "The old engine roared like a lion across the silent valley.",
        "The old engine roared like a lion across the silent valley.",
        "The {{cite}} table is like a grid | of cells and more.",
        long_one,
        "The committee met on Tuesday to discuss the annual budget.",
    ]
    got = list(find_similes(sentences, "lee"))
    assert [(s.id, s.cue, s.source) for s in got] == [("lee-1", "like a", "lee")]


def test_the_news_and_review_sources_give_similes_with_their_cues() -> None:
    got = simile_set(("lee", "reviews"))
    texts = [s.text for s in got]
    assert "Stinks from start to finish, like a wet burlap sack of gloom." in texts
    assert {s.source for s in got} == {"lee", "reviews"} and len(got) >= 10
    for s in got:
        assert s.cue in s.text and 8 <= len(s.text.split()) <= 40
    assert len({s.id for s in got}) == len(got)


def test_unknown_sources_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty subset"):
        simile_set(("gutenberg",))
    with pytest.raises(ValueError, match="non-empty subset"):
        simile_set(())


@pytest.mark.slow
def test_the_full_set_includes_the_wikipedia_sample() -> None:
    got = simile_set()
    wiki = [s for s in got if s.source == "wikipedia"]
    assert len(wiki) >= 15 and len(got) >= 30
    assert any("like a skipping stone" in s.text for s in wiki)


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(similes).failed == 0

"""Synthetic populations on the gensim Lee corpus: determinism, sizes, balance and the personalisation gap."""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict

import pytest

pytest.importorskip("gensim")

from veil.simulation.data import Population, PopulationConfig, make_population, topic_of  # noqa: E402
from veil.simulation.data.synthetic import CUE_SLOTS, TOPIC_KEYWORDS, lee_sentences  # noqa: E402

TASKS = ["classification", "next_word"]


def _item(pop: Population, text: str) -> str:
    """What the label depends on, read off the text alone: the topic, or the cue the prompt ends with."""
    if pop.task == "classification":
        return topic_of(text)
    return next(cue for cue in CUE_SLOTS if text.endswith(" " + cue))


def _accuracies(pop: Population) -> dict[str, float]:
    """Test accuracy of the best non-personalised rule (per-item majority over all users' train
    labels) against oracles that know the user's latent type or the user's own preference."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for e in pop.train:
        counts[_item(pop, e.text)][e.label] += 1
    types, type_prefs = pop.meta["user_types"], pop.meta["type_preferences"]
    user_prefs = pop.meta["user_preferences"]
    hits: Counter = Counter()
    for e in pop.test:
        item = _item(pop, e.text)
        hits["majority"] += counts[item].most_common(1)[0][0] == e.label
        hits["type_oracle"] += type_prefs[types[e.user]][item] == e.label
        hits["user_oracle"] += user_prefs[e.user][item] == e.label
    return {k: v / len(pop.test) for k, v in hits.items()}


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_for_a_seed(task: str) -> None:
    a, b = make_population(task=task, seed=3), make_population(PopulationConfig(task=task, seed=3))
    assert a.train == b.train and a.test == b.test and a.labels == b.labels and a.meta == b.meta
    c = make_population(task=task, seed=4)
    assert c.train != a.train


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(
    ("n_users", "n_train", "n_test", "n_types"), [(40, 48, 16, 4), (7, 10, 5, 3), (3, 1, 1, 16)]
)
def test_sizes_types_and_time_split(task: str, n_users: int, n_train: int, n_test: int, n_types: int) -> None:
    pop = make_population(
        task=task, n_users=n_users, train_per_user=n_train, test_per_user=n_test, n_types=n_types
    )
    assert (
        len(pop.users) == n_users
        and len(pop.train) == n_users * n_train
        and len(pop.test) == n_users * n_test
    )
    assert all(len(v) == n_train for v in pop.by_user("train").values())
    assert all(len(v) == n_test for v in pop.by_user("test").values())
    type_sizes = Counter(pop.meta["user_types"].values())
    assert max(type_sizes.values()) - min(type_sizes.values()) <= 1
    assert set(pop.meta["user_types"]) == set(pop.users)
    split = pop.meta["split_time"]
    assert max(e.time for e in pop.train) < split < min(e.time for e in pop.test)
    json.dumps(pop.meta)
    assert pop.meta["generator"]["config"]["n_types"] == n_types
    assert pop.meta["generator"]["source_file"] == "lee_background.cor"


@pytest.mark.parametrize("task", TASKS)
def test_no_sentence_in_both_splits_of_a_user(task: str) -> None:
    pop = make_population(task=task)
    train, test = pop.by_user("train"), pop.by_user("test")

    def sentence(text: str) -> str:  # next_word: drop the cue after the sentence
        return text if task == "classification" else text[: -len(_item(pop, text)) - 1]

    for user in pop.users:
        train_texts = {sentence(e.text) for e in train[user]}
        test_texts = {sentence(e.text) for e in test[user]}
        assert len(train_texts) == len(train[user]) and len(test_texts) == len(test[user])
        assert not train_texts & test_texts


@pytest.mark.parametrize("task", TASKS)
def test_personalisation_gap_at_defaults(task: str) -> None:
    acc = _accuracies(make_population(task=task))
    assert acc["user_oracle"] > 0.85
    assert acc["type_oracle"] > 0.75
    assert acc["majority"] < (0.6 if task == "classification" else 0.4)
    assert acc["type_oracle"] - acc["majority"] > 0.25


@pytest.mark.parametrize("task", TASKS)
def test_noiseless_labels_follow_preferences(task: str) -> None:
    pop = make_population(task=task, type_noise=0.0, label_noise=0.0)
    acc = _accuracies(pop)
    assert acc["user_oracle"] == 1.0 and acc["type_oracle"] == 1.0
    assert pop.meta["user_preferences"]["user00"] == pop.meta["type_preferences"][0]


def test_classification_topics_are_balanced_and_decidable() -> None:
    pop = make_population(n_types=4)
    prefs = pop.meta["type_preferences"]
    for topic in TOPIC_KEYWORDS:
        assert sum(p[topic] == "like" for p in prefs) == 2  # half of the types like every topic
    assert all(Counter(p.values())["like"] == len(TOPIC_KEYWORDS) // 2 for p in prefs)
    assert len({json.dumps(p, sort_keys=True) for p in prefs}) == 4
    assert pop.labels == ["dislike", "like"]
    for e in pop.train + pop.test:
        assert topic_of(e.text) == pop.meta["text_topic"][e.text]
    for user_examples in pop.by_user("train").values():  # every user sees every topic
        assert {topic_of(e.text) for e in user_examples} == set(TOPIC_KEYWORDS)


def test_next_word_prompts_and_balanced_words() -> None:
    pop = make_population(task="next_word", n_types=4, max_words=8)
    assert sorted(pop.labels) == sorted(w for alts in CUE_SLOTS.values() for w in alts)
    for e in pop.train + pop.test:
        cue = _item(pop, e.text)
        assert e.label in CUE_SLOTS[cue] and not e.text.endswith(" ")
        assert len(e.text[: -len(cue)].split()) <= 8
    prefs = pop.meta["type_preferences"]
    for cue, alternatives in CUE_SLOTS.items():  # each completion is one type's choice
        assert sorted(p[cue] for p in prefs) == sorted(alternatives)


@pytest.mark.parametrize("task", TASKS)
def test_sixteen_types_are_distinct(task: str) -> None:
    pop = make_population(task=task, n_types=16, n_users=16, train_per_user=8, test_per_user=2)
    assert len({json.dumps(p, sort_keys=True) for p in pop.meta["type_preferences"]}) == 16


def test_corpus_sentences() -> None:
    sentences = lee_sentences()
    assert len(sentences) > 1500 and len(set(sentences)) == len(sentences)
    assert all(6 <= len(s.split()) <= 30 for s in sentences)
    assert all(s.count('"') % 2 == 0 for s in sentences)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"task": "regression"}, "task must be one of"),
        ({"n_users": 0}, "n_users"),
        ({"train_per_user": 2.5}, "train_per_user"),
        ({"test_per_user": True}, "test_per_user"),
        ({"n_types": 17}, "at most 16"),
        ({"type_noise": 1.0}, "type_noise"),
        ({"label_noise": -0.1}, "label_noise"),
        ({"seed": -1}, "seed"),
        ({"max_words": 0}, "max_words"),
    ],
)
def test_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PopulationConfig(**kw)
    with pytest.raises(ValueError, match=match):
        make_population(**kw)


@pytest.mark.parametrize("task", TASKS)
def test_too_many_examples_per_user(task: str) -> None:
    with pytest.raises(ValueError, match="sentences, a user needs"):
        make_population(task=task, n_users=1, train_per_user=3000)


def test_missing_gensim_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    lee_sentences.cache_clear()
    monkeypatch.setitem(sys.modules, "gensim.test.utils", None)
    try:
        with pytest.raises(ImportError, match="pip install gensim"):
            lee_sentences()
    finally:
        lee_sentences.cache_clear()

from __future__ import annotations

import re
from collections import Counter

import pytest

from veil.models.rag.world import (
    QUESTION_TEMPLATES,
    RELATIONS,
    SPLITS,
    World,
    WorldConfig,
    build_world,
)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=3))


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text) is not None


def _sentences(texts: list[str]) -> list[str]:
    return [s for t in texts for s in re.split(r"(?<=\.)\s|\n", t)]


def _states(sentences: list[str], subject: str, obj: str) -> bool:
    """Whether one of ``sentences`` names both ``subject`` and ``obj``."""
    return any(subject in s and obj in s and _mentions(s, subject) and _mentions(s, obj) for s in sentences)


def _near_homonym(a: str, b: str) -> bool:
    """``a`` is ``b`` with one letter of its last word changed."""
    if len(a) != len(b):
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return len(diff) == 1 and diff[0] > b.rfind(" ")


def test_the_default_world_has_about_200_entities_with_unique_names(world):
    names = [e.name for e in world.entities]
    assert len(names) == 200
    assert len(set(names)) == 200
    assert Counter(e.type for e in world.entities) == {"film": 80, "person": 60, "city": 45, "country": 15}
    assert {f.relation for f in world.facts} == set(RELATIONS)


def test_the_same_seed_builds_the_same_world_and_another_seed_another():
    a, b, c = (
        build_world(WorldConfig(seed=7)),
        build_world(WorldConfig(seed=7)),
        build_world(WorldConfig(seed=8)),
    )
    assert a.facts == b.facts and a.questions == b.questions
    assert a.corpus() == b.corpus() and a.training_text() == b.training_text()
    assert a.facts != c.facts and a.corpus() != c.corpus() and a.questions != c.questions


def test_each_relation_splits_its_facts_by_the_external_fraction(world):
    for rel in RELATIONS:
        facts = [f for f in world.facts if f.relation == rel]
        assert sum(f.external for f in facts) == round(0.5 * len(facts))
    assert set(world.parametric_facts()).isdisjoint(world.external_facts())
    assert len(world.parametric_facts()) + len(world.external_facts()) == len(world.facts)


def test_parametric_facts_live_in_the_training_text_only(world):
    text = world.training_text()
    corpus = _sentences([r["contents"] for r in world.corpus()])
    for fact in world.parametric_facts():
        assert all(fact.sentence(p) in text for p in range(3))
        assert not _states(corpus, fact.subject, fact.object), fact


def test_external_facts_live_in_the_corpus_only(world):
    text = world.training_text()
    for fact in world.external_facts():
        article = world.article(fact.subject)
        assert article is not None and fact.sentence(0) in article["contents"]
        assert not _states(text, fact.subject, fact.object), fact


def test_the_corpus_has_one_article_per_entity_and_near_homonym_distractors(world):
    corpus = world.corpus()
    assert len({r["id"] for r in corpus}) == len(corpus) == 2 * len(world.entities)
    titles = [r["contents"].split("\n", 1)[0] for r in corpus]
    names = {e.name for e in world.entities}
    distractors = [t for t in titles if t not in names]
    assert len(distractors) == len(world.entities) and len(set(titles)) == len(titles)
    for e in world.entities:
        twin = next(t for t in distractors if _near_homonym(t, e.name))
        doc = next(r["contents"] for r in corpus if r["contents"].startswith(twin + "\n"))
        # the twin states every relation of the type, each with another value than the entity's
        facts = [f for f in world.facts if f.subject == e.name]
        assert doc.count(".") == 1 + len(facts)
        for fact in facts:
            assert fact.sentence(0).replace(e.name, twin) not in doc


def test_every_answer_follows_from_its_hops_facts(world):
    for q in world.questions:
        assert len(q.hops) in (2, 3)
        assert q.relations in QUESTION_TEMPLATES
        subject = q.hops[0].fact.subject
        assert _mentions(q.text, subject)
        for hop in q.hops:
            assert hop.fact.subject == subject
            assert world.fact(subject, hop.fact.relation) == hop.fact
            assert _mentions(hop.subquery, subject)
            subject = hop.answer
        assert q.answer == subject == q.hops[-1].answer


def test_each_hops_label_matches_where_its_fact_lives(world):
    text = world.training_text()
    corpus = _sentences([r["contents"] for r in world.corpus()])
    labels = Counter()
    for q in world.questions:
        for hop in q.hops:
            s, o = hop.fact.subject, hop.fact.object
            in_text, in_corpus = _states(text, s, o), _states(corpus, s, o)
            assert (in_text, in_corpus) == (not hop.needs_retrieval, hop.needs_retrieval), hop
            labels[hop.needs_retrieval] += 1
    assert labels[True] > 0 and labels[False] > 0


def test_questions_split_deterministically_into_disjoint_train_dev_test(world):
    parts = {s: world.split(s) for s in SPLITS}
    ids = [q.id for s in SPLITS for q in parts[s]]
    assert sorted(ids) == sorted(q.id for q in world.questions) and len(set(ids)) == len(ids)
    n = len(world.questions)
    assert abs(len(parts["train"]) - 0.8 * n) <= 1 and abs(len(parts["dev"]) - 0.1 * n) <= 1
    assert Counter(len(q.hops) for q in world.questions).keys() == {2, 3}
    assert [q.id for q in build_world(WorldConfig(seed=3)).split("dev")] == [q.id for q in parts["dev"]]


def test_unknown_split_is_refused(world):
    with pytest.raises(ValueError, match="split must be one of"):
        world.split("validation")


def test_all_parametric_and_all_external_worlds_label_every_hop_alike():
    closed = build_world(WorldConfig(seed=1, external_fraction=0.0, distractors_per_entity=0))
    assert not closed.external_facts() and all(
        not h.needs_retrieval for q in closed.questions for h in q.hops
    )
    assert len(closed.corpus()) == len(closed.entities)
    open_ = build_world(WorldConfig(seed=1, external_fraction=1.0, phrasings=1))
    assert open_.training_text() == [] and all(h.needs_retrieval for q in open_.questions for h in q.hops)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("cities", 1, "cities must be >= 2"),
        ("external_fraction", 1.5, "external_fraction"),
        ("distractors_per_entity", -1, "distractors_per_entity"),
        ("phrasings", 4, "phrasings"),
        ("split_fractions", (0.5, 0.5, 0.5), "split_fractions"),
        ("last_year", 1800, "last_year"),
    ],
)
def test_bad_configs_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**{field: value})

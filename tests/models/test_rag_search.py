"""DeepRAG's training data: the cheapest-path search, imitation masks and calibration pairs, on the
generated world with real BM25 and the scripted world reader."""

from __future__ import annotations

import pytest
from rag_world_reader import WorldReader

from veil.models.rag.experiment import bm25_retriever
from veil.models.rag.protocol import CONTEXT, INTERMEDIATE, SEARCH, render_trace
from veil.models.rag.search import SearchConfig, calibration_pairs, find_paths, gold_writer, imitation_example
from veil.models.rag.world import World, WorldConfig, build_world


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=4))


@pytest.fixture(scope="module")
def retrieve(world: World):
    return bm25_retriever(world)


def _questions(world: World, n: int = 16) -> list:
    return world.split("train")[:n]


def test_the_search_finds_the_path_that_retrieves_exactly_on_external_hops(world: World, retrieve) -> None:
    qs = _questions(world)
    results = find_paths(WorldReader(world), [(q.text, q.answer) for q in qs], gold_writer(world), retrieve)
    for q, r in zip(qs, results, strict=True):
        assert r.correct and not r.fallback
        assert [s.retrieved for s in r.trace.steps] == [h.needs_retrieval for h in q.hops]
        assert r.retrievals == sum(h.needs_retrieval for h in q.hops) <= len(q.hops)
        assert r.trace.final_answer == q.answer  # gold overwrites the short answer
    # a reader that knows every fact needs no retrieval at all
    know_all = find_paths(WorldReader(world, knows_external=True), [(q.text, q.answer) for q in qs],
                          gold_writer(world), retrieve)  # fmt: skip
    assert all(r.correct and r.retrievals == 0 for r in know_all)


def test_without_useful_passages_the_search_falls_back_to_the_gold_articles(world: World) -> None:
    qs = [q for q in _questions(world, 60) if q.hops[-1].needs_retrieval][:5]

    def useless(query: str, k: int) -> list[tuple[str, str]]:
        return [("x", "Nothing here.")] * k

    def gold(question: str, subquery: str) -> list[tuple[str, str]]:
        q = next(q for q in qs if q.text == question)
        hop = next(h for h in q.hops if h.subquery == subquery)
        doc = world.article(hop.fact.subject)
        return [(doc["id"], doc["contents"])] if doc else []

    pairs = [(q.text, q.answer) for q in qs]
    cfg = SearchConfig(max_expansions=12)
    failed = find_paths(WorldReader(world), pairs, gold_writer(world), useless, cfg)
    assert not any(r.correct for r in failed) and all(r.expansions <= 12 for r in failed)
    rescued = find_paths(WorldReader(world), pairs, gold_writer(world), useless, cfg, gold_passages=gold)
    assert all(r.correct and r.fallback for r in rescued)


def test_imitation_masks_the_prompt_and_the_passages(world: World, retrieve, tiny_tokenizer) -> None:
    q = next(q for q in _questions(world, 60) if any(h.needs_retrieval for h in q.hops))
    (r,) = find_paths(WorldReader(world), [(q.text, q.answer)], gold_writer(world), retrieve)
    ex = imitation_example(WorldReader(world), tiny_tokenizer, r.trace)
    ids, mask = ex["input_ids"], ex["completion_mask"]
    assert len(ids) == len(mask) and 0 < sum(mask) < len(mask)
    learned = tiny_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    hidden = tiny_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    for step in r.trace.steps:
        assert step.subquery in learned and step.answer in learned
        for _, passage in step.passages:
            assert passage[:30] in hidden and passage[:30] not in learned
    assert SEARCH in learned and CONTEXT in hidden and q.text in hidden
    assert learned.rstrip().endswith(tiny_tokenizer.eos_token)
    assert render_trace(r.trace).count(INTERMEDIATE) == len(r.trace.steps)


def test_calibration_pairs_differ_only_in_the_decision_marker(world: World, retrieve) -> None:
    q = next(q for q in _questions(world, 60) if len({h.needs_retrieval for h in q.hops}) == 2)
    (r,) = find_paths(WorldReader(world), [(q.text, q.answer)], gold_writer(world), retrieve)
    pairs = calibration_pairs(WorldReader(world), r.trace)
    assert len(pairs) == len(q.hops)
    for pair, hop in zip(pairs, q.hops, strict=True):
        assert pair["prompt"].endswith(f"Follow up: {hop.subquery}\n")
        assert {pair["chosen"], pair["rejected"]} == {SEARCH, INTERMEDIATE}
        assert (pair["chosen"] == SEARCH) == hop.needs_retrieval
    assert pairs[1]["prompt"].startswith(pairs[0]["prompt"])


def test_bad_search_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="max_expansions"):
        SearchConfig(max_expansions=0)

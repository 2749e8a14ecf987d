"""LongDPO's step search with scripted policies: pairs, the memory pool's veto, critique refinement,
MCTS, and a search cut short."""

from __future__ import annotations

import dataclasses
import random
import time

import pytest

from veil.models.longform.critique import SUGGESTION_HEADER, CritiqueConfig
from veil.models.longform.data import LongformPrompt, Topic
from veil.models.longform.facts import Fact
from veil.models.longform.judge import LMJudge, RuleJudge
from veil.models.longform.length import count_words, length_score
from veil.models.longform.memory import MemoryConfig, MemoryPool
from veil.models.longform.policy import Step
from veil.models.longform.search import StepSearchConfig, collect_pairs, search, swap_adjacent

TOPIC = Topic(
    "Autism",
    ("Autism affects social skills.",),
    ("social", "communication", "children"),
    (Fact("Autism", "year", "1841"), Fact("Autism", "colour", "teal")),
)
TASK = LongformPrompt("Write about Autism in about 20 words.", 20, topic=TOPIC)


class ScriptedPolicy:
    """Returns, for the n-th call, the scripted candidates (cycled to ``n``); records every prompt."""

    end_text = "</s>"

    def __init__(self, script) -> None:
        self.script, self.prompts = script, []

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return f"U: {user}\nA: {assistant_prefix}"

    def steps(self, prompts, n, *, separator, max_new_tokens, temperature, top_p, seed, **_sampling):
        out = []
        for p in prompts:
            self.prompts.append(p)
            cands = self.script(p)
            out.append([cands[i % len(cands)] for i in range(n)])
        return out


def _by_depth(levels):
    """Candidates by how many steps the prompt's response holds (counted by '\\n')."""

    def script(prompt: str):
        return levels[min(prompt.split("\nA: ", 1)[1].count("\n"), len(levels) - 1)]

    return script


LEVELS = [
    [Step("Autism affects social skills.\n", False), Step("Weather is nice today.\n", False)],
    [
        Step("Communication develops late in children.\n", False),
        Step("Autism is Autism Autism Autism.\n", False),
    ],
    [
        Step("It is studied.", True),
        Step("Autism affects social skills and communication and more and more and more things here.", True),
    ],
]


def test_pairs_have_the_prompt_plus_chosen_prefix_and_one_step_each() -> None:
    policy = ScriptedPolicy(_by_depth(LEVELS))
    cfg = StepSearchConfig(width=2, depth=4, memory=None, critique=None)
    r = search(policy, RuleJudge(), TASK, cfg)
    assert len(r.steps) == 3 and r.steps[-1].final and len(r.pairs) == 3
    prefix = ""
    for depth, (pair, step) in enumerate(zip(r.pairs, r.steps, strict=True)):
        assert pair["prompt"] == policy.chat_prompt(TASK.prompt, prefix) and pair["depth"] == depth
        assert pair["chosen"] == step.text + ("</s>" if step.final else "")
        assert pair["rejected"] != pair["chosen"] and not pair["rejected"].endswith("</s>") or step.final
        prefix += step.text
    assert r.steps[0].text == "Autism affects social skills.\n"  # on topic beats off topic
    assert r.values == sorted(r.values) or len(set(r.values)) > 1


def test_a_step_without_a_sibling_gets_the_released_word_swap_fallback() -> None:
    policy = ScriptedPolicy(lambda p: [Step("Autism affects social skills of many children.", True)])
    r = search(policy, RuleJudge(), TASK, StepSearchConfig(width=3, memory=None, critique=None, swap_p=0.3))
    (pair,) = r.pairs
    assert pair["fallback"] == 1 and pair["chosen"].endswith("</s>")
    assert (
        sorted(pair["rejected"].split()) == sorted(pair["chosen"].split())
        and pair["rejected"] != pair["chosen"]
    )
    assert swap_adjacent("a b c d", 0.0, random.Random(0)) == "a b c d"


@pytest.fixture(scope="module")
def encoder():
    from veil.models.rag.dense import load_minilm

    return load_minilm()


def test_the_memory_pool_vetoes_a_top_scoring_contradicting_candidate(encoder) -> None:
    contradicting = Step("The year of Autism is 1903. Social communication in children.\n", False)
    consistent = Step("Autism is studied.\n", False)
    levels = [[Step("The year of Autism is 1841.\n", False)], [contradicting, consistent]]
    judge = RuleJudge()
    free = search(
        ScriptedPolicy(_by_depth(levels)),
        judge,
        TASK,
        StepSearchConfig(width=2, depth=2, memory=None, critique=None),
    )
    assert free.steps[1] == contradicting  # the top-valued candidate (keywords) without the pool
    pooled = search(
        ScriptedPolicy(_by_depth(levels)), judge, TASK,
        StepSearchConfig(width=2, depth=2, memory=MemoryConfig(chunk_words=8), critique=None), encoder=encoder,
    )  # fmt: skip
    assert pooled.steps[1] == consistent and pooled.vetoes == 1
    pool = MemoryPool(judge, encoder, MemoryConfig(chunk_words=8))
    pool.add("The year of Autism is 1841. The colour of Autism is teal. The origin of Autism is Quenby.")
    assert len(pool.facts) == 2  # the first two facts of a step join the pool
    # below the cosine threshold the judge is not asked: MiniLM puts "teal" and "violet" at 0.76 < 0.8
    assert not pool.contradicted("The colour of Autism is violet.") and pool.checks == 0
    assert pool.contradicted(
        "Trees grow tall in the wet north. The year of Autism is 1903."
    ) and not pool.contradicted("The year of Autism is 1841.")
    with pytest.raises(ValueError, match="encoder"):
        search(ScriptedPolicy(_by_depth(levels)), judge, TASK, StepSearchConfig())


def test_the_pool_comparison_pairs_each_task_and_seed_with_and_without_the_pool(encoder) -> None:
    from veil.models.longform.experiment import LongformExperimentConfig, compare_memory_pool

    contradicting = Step("The year of Autism is 1903. Social communication in children.\n", False)
    levels = [
        [Step("The year of Autism is 1841.\n", False)],
        [contradicting, Step("Autism is studied.\n", False)],
    ]
    search_cfg = StepSearchConfig(width=2, depth=2, memory=MemoryConfig(chunk_words=8))
    cfg = LongformExperimentConfig(search=search_cfg, pool_value_sees_facts=False, pool_seeds=(0, 1, 2))
    pool = compare_memory_pool(ScriptedPolicy(_by_depth(levels)), [TASK, TASK], cfg, encoder)
    assert pool["responses"] == 6 and pool["seeds"] == [0, 1, 2]
    # without the pool every response states 1841 then 1903; with it none does
    assert (pool["contradiction_rate_without"], pool["contradiction_rate_with"]) == (1.0, 0.0)
    assert (pool["only_without"], pool["only_with"], pool["vetoes"]) == (6, 0, 6)
    assert pool["mcnemar_p"] == pytest.approx(2 * 0.5**6)  # exact two-sided binomial, 6 of 6 discordant
    assert pool["cross_step_rate_without"] == 1.0 and pool["cross_step_rate_with"] == 0.0
    with pytest.raises(ValueError, match="pool_seeds"):
        LongformExperimentConfig(pool_seeds=())


def test_critique_refinement_with_a_suggestion_following_policy_improves_a_weak_step() -> None:
    weak = Step("Weather is nice today and nice today.", True)

    def scripted():
        calls = []

        def script(prompt: str):
            calls.append(prompt)
            if SUGGESTION_HEADER in prompt:  # follows the suggestion: mentions what it was told to
                told = prompt.split("Mention ", 1)[1].split(".", 1)[0]
                return [Step(f"Autism shapes {told} for many people over years.", True)]
            # the search's candidates, then the refinement's extra samples (one mentions a keyword)
            return [weak] if len(calls) == 1 else [Step("Autism in children.", True)]

        return ScriptedPolicy(script)

    plain = search(
        scripted(), RuleJudge(), TASK, StepSearchConfig(width=2, depth=1, memory=None, critique=None)
    )
    policy = scripted()
    cfg = StepSearchConfig(width=2, depth=1, memory=None, critique=CritiqueConfig(threshold=14.0))
    refined = search(policy, RuleJudge(), TASK, cfg)
    assert plain.steps == [weak] and refined.refined == 1 and refined.values[0] > plain.values[0]
    assert "social" in refined.steps[0].text and SUGGESTION_HEADER in policy.prompts[-1]
    assert refined.pairs[0]["prompt"] == policy.chat_prompt(TASK.prompt, "")  # trained without the advice
    assert refined.pairs[0]["chosen"] == refined.steps[0].text + "</s>"
    # above the threshold nothing is refined
    calm = search(
        scripted(),
        RuleJudge(),
        TASK,
        StepSearchConfig(width=2, depth=1, memory=None, critique=CritiqueConfig(threshold=1.0)),
    )
    assert calm.refined == 0


def test_critique_top_k_reaches_the_extra_samples_only() -> None:
    seen: list[tuple[float, int | None]] = []

    class Recording(ScriptedPolicy):
        def steps(self, prompts, n, *, top_k=None, **kw):
            seen.append((kw["temperature"], top_k))
            return super().steps(prompts, n, **kw)  # the script ignores top-k

    weak = Step("Weather is nice today and nice today.", True)
    policy = Recording(lambda p: [weak] if not seen[1:] else [Step("Autism in children.", True)])
    crit = CritiqueConfig(threshold=14.0)
    assert crit.top_k == 50  # the paper's
    search(policy, RuleJudge(), TASK, StepSearchConfig(width=2, depth=1, memory=None, critique=crit))
    # the search's candidates at 0.7 without top-k; the extra samples at 1.0 with it; the regenerations
    # (if any) at the search's temperature again
    assert seen[0] == (0.7, None) and seen[1] == (1.0, 50) and all(k is None for _, k in seen[2:])
    with pytest.raises(ValueError, match="top_k"):
        CritiqueConfig(top_k=-1)


def test_mcts_back_propagates_and_returns_a_path_with_pairs() -> None:
    policy = ScriptedPolicy(_by_depth(LEVELS))
    r = search(
        policy,
        RuleJudge(),
        TASK,
        StepSearchConfig(width=2, depth=4, mode="mcts", simulations=6, memory=None, critique=None),
    )
    assert r.steps and len(r.pairs) == len(r.steps) and r.steps[0].text == "Autism affects social skills.\n"
    assert r.generated_steps >= 6  # every simulation expanded a leaf or re-valued a final one


def test_tree_pairs_add_a_pair_at_every_node_the_simulations_expanded_off_the_path() -> None:
    # a large exploration constant: the simulations expand nodes off the chosen path too
    cfg = StepSearchConfig(
        width=2, depth=4, mode="mcts", simulations=10, exploration=10.0, memory=None, critique=None
    )
    path_only = search(ScriptedPolicy(_by_depth(LEVELS)), RuleJudge(), TASK, cfg)
    policy = ScriptedPolicy(_by_depth(LEVELS))
    tree = search(policy, RuleJudge(), TASK, dataclasses.replace(cfg, pairs="tree"))
    expanded = len(policy.prompts)  # one sampling call per expanded node (cumulative value: no rollouts)
    assert tree.steps == path_only.steps and tree.pairs[: len(path_only.pairs)] == path_only.pairs
    off = tree.pairs[len(path_only.pairs) :]
    assert len(tree.pairs) == expanded and off and all(p["on_path"] == 0 for p in off)
    assert all(p["on_path"] == 1 for p in path_only.pairs)
    assert all(p["chosen"] != p["rejected"] and str(p["prompt"]).startswith("U: ") for p in off)
    assert {p["prompt"] for p in off}.isdisjoint(p["prompt"] for p in path_only.pairs)
    greedy = dataclasses.replace(cfg, mode="greedy")
    assert search(ScriptedPolicy(_by_depth(LEVELS)), RuleJudge(), TASK, dataclasses.replace(greedy, pairs="tree")).pairs \
        == search(ScriptedPolicy(_by_depth(LEVELS)), RuleJudge(), TASK, greedy).pairs  # fmt: skip
    with pytest.raises(ValueError, match="pairs must be"):
        StepSearchConfig(pairs="all")  # type: ignore[arg-type]


def test_a_search_cut_short_keeps_the_pairs_it_finished() -> None:
    calls = {"n": 0}

    def script(prompt: str):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return [Step("Autism affects social skills.", True), Step("Autism.", True)]

    tasks = [TASK] * 5
    done, cut = collect_pairs(
        ScriptedPolicy(script), RuleJudge(), tasks, StepSearchConfig(width=2, memory=None, critique=None)
    )
    assert cut and len(done) == 3 and all(len(r.pairs) == 1 for r in done)
    done, cut = collect_pairs(ScriptedPolicy(lambda p: [Step("x y.", True)]), RuleJudge(), tasks,
                              StepSearchConfig(width=2, memory=None, critique=None), deadline=time.monotonic() - 1)  # fmt: skip
    assert cut and done == []


class _Scorer:
    def __init__(self, probs, parsed) -> None:
        self.probs, self.parsed = probs, parsed

    def choice_probs(self, prompt, options):
        return (self.probs[: len(options)], self.parsed)


def test_the_lm_judge_takes_the_soft_expectation_and_scores_unparsable_answers_2_5() -> None:
    gen = ScriptedPolicy(lambda p: [Step("", True)])
    sure = LMJudge(_Scorer([0.0, 0.0, 0.0, 0.2, 0.6], True), gen).quality(TASK, "text")
    assert sure.unparsable == 0 and sure.mean == pytest.approx((4 * 0.2 + 5 * 0.6) / 0.8)
    bad = LMJudge(_Scorer([0.1] * 5, False), gen).quality(TASK, "text")
    assert bad.unparsable == 7 and bad.mean == 2.5
    with pytest.raises(ValueError, match="unknown principle"):
        LMJudge(_Scorer([], True), gen, principles=("wit",))


def test_search_config_refuses_bad_values() -> None:
    for kwargs in ({"width": 0}, {"depth": 0}, {"mode": "beam"}, {"temperature": 0.0}, {"swap_p": 2.0}):
        with pytest.raises(ValueError):
            StepSearchConfig(**kwargs)


def test_cross_step_contradictions_count_a_later_step_against_an_earlier_one_only() -> None:
    from veil.models.longform.search import SearchResult, cross_step_contradiction_rate

    def result(*texts: str) -> SearchResult:
        return SearchResult(TASK, [Step(t, False) for t in texts], [], [])

    across = result("The year of Autism is 1841.\n", "The year of Autism is 1903.\n")
    within = result("The year of Autism is 1841. The year of Autism is 1903.\n", "Autism grows.\n")
    consistent = result("The year of Autism is 1841.\n", "The year of Autism is 1841.\n")
    assert cross_step_contradiction_rate([across, within, consistent, result()]) == 0.25


def test_a_target_past_the_context_is_refused_before_any_search_starts() -> None:
    policy = ScriptedPolicy(lambda p: [Step("Autism affects social skills.", True)])
    policy.context_length = 64
    fits = LongformPrompt("Write about Autism in about 63 words.", 63, topic=TOPIC)
    past = LongformPrompt("Write about Autism in about 64 words.", 64, topic=TOPIC)
    cfg = StepSearchConfig(width=2, memory=None, critique=None)
    with pytest.raises(ValueError, match=r"task 1: the required length \(64 words\) cannot fit .* 64 tokens"):
        collect_pairs(policy, RuleJudge(), [fits, past], cfg)
    assert policy.prompts == []  # refused up front, not half-way
    with pytest.raises(ValueError, match="cannot fit"):
        search(policy, RuleJudge(), past, cfg)
    assert search(policy, RuleJudge(), fits, cfg).pairs
    for bad in (0, -5):
        with pytest.raises(ValueError, match=">= 1 word"):
            LongformPrompt("Write about Autism.", bad)
    with pytest.raises(ValueError, match="empty"):
        LongformPrompt("   ", 20)


def test_a_judge_answering_unparsable_text_scores_2_5_is_counted_and_the_search_keeps_its_pairs() -> None:
    gen = ScriptedPolicy(lambda p: [Step("", True)])
    judge = LMJudge(_Scorer([0.1] * 5, False), gen)
    policy = ScriptedPolicy(_by_depth(LEVELS))
    r = search(policy, judge, TASK, StepSearchConfig(width=2, depth=4, memory=None, critique=None))
    assert len(r.steps) == 3 and len(r.pairs) == 3
    # every candidate judged (2 per node, 3 nodes) on all 7 principles, each counted as unparsable
    assert r.unparsable == 2 * 3 * 7
    words = 0
    for step, v in zip(r.steps, r.values, strict=True):
        words += count_words(step.text)
        assert v == pytest.approx(2.5 + 0.1 * length_score(words, TASK.target_words))

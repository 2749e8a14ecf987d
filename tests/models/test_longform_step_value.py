"""What a step's length score is taken of (cumulative as released, look-ahead, greedy rollout), which
sibling a pair rejects, the memory pool's within-step check, and DPO with an added NLL term."""

from __future__ import annotations

import pytest
import torch

from veil.models.dpo import PairDPOConfig, prefix_dpo
from veil.models.longform.data import LongformPrompt
from veil.models.longform.facts import Fact, extract_facts
from veil.models.longform.judge import PRINCIPLES, Quality, RuleJudge
from veil.models.longform.length import length_score, reachable_length_score
from veil.models.longform.memory import MemoryConfig, MemoryPool
from veil.models.longform.policy import Step
from veil.models.longform.search import StepSearchConfig, search

SHORT_END = Step("one two three four five six seven eight nine ten eleven twelve.", True)  # 12 words
GO_ON = Step("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen.\n", False)  # fmt: skip
REST = " ".join(["word"] * 30) + "."


class FlatJudge(RuleJudge):
    """Every text has the same quality, so the length score alone ranks candidates."""

    def quality(self, task, text):
        return Quality(dict.fromkeys(PRINCIPLES, 3.0))


class RollingPolicy:
    """Samples the given candidates; a greedy call with no separator (a rollout) writes ``REST`` and
    ends. Records the rollouts' prompts."""

    end_text = "</s>"

    def __init__(self, candidates) -> None:
        self.candidates, self.rollout_prompts = candidates, []

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return f"U: {user}\nA: {assistant_prefix}"

    def steps(self, prompts, n, *, separator, max_new_tokens, temperature, top_p, seed, **_sampling):
        if temperature == 0.0 and separator == "":
            self.rollout_prompts += prompts
            return [[Step(REST, True)] for _ in prompts]
        return [[self.candidates[i % len(self.candidates)] for i in range(n)] for _ in prompts]


def _first_pair(step_value: str, target: int, **kwargs):
    policy = RollingPolicy([SHORT_END, GO_ON])
    task = LongformPrompt(f"Write about Autism in about {target} words.", target)
    cfg = StepSearchConfig(width=2, depth=1, memory=None, critique=None, step_value=step_value, **kwargs)
    r = search(policy, FlatJudge(), task, cfg)
    return r, policy


def test_the_released_cumulative_value_prefers_going_on_even_when_the_answer_would_overshoot() -> None:
    r, policy = _first_pair("cumulative", 20)
    # 16 words so far scores closer to 20 than 12 do, though going on leads to 46 words
    assert r.steps == [GO_ON] and r.pairs[0]["rejected"] == SHORT_END.text + "</s>"
    assert r.rollouts == 0 and policy.rollout_prompts == []


def test_a_rollout_values_a_step_by_the_length_of_the_response_it_leads_to() -> None:
    short, policy = _first_pair("rollout", 20)
    assert short.steps == [SHORT_END] and short.pairs[0]["rejected"] == GO_ON.text
    # only the step that goes on is completed, after the prompt plus that step
    assert short.rollouts == 1 and policy.rollout_prompts == [
        policy.chat_prompt(short.task.prompt, GO_ON.text)
    ]
    assert short.values[0] == pytest.approx(3.0 + 0.1 * length_score(12, 20))
    long, _ = _first_pair("rollout", 80)  # 46 words are closer to 80 than 12: going on wins there
    assert long.steps == [GO_ON] and long.values[0] == pytest.approx(3.0 + 0.1 * length_score(46, 80))


def test_the_lookahead_value_scores_a_continuing_step_on_the_length_it_can_still_reach() -> None:
    r, _ = _first_pair("lookahead", 20)
    assert r.steps == [GO_ON] and r.values[0] == pytest.approx(3.0 + 10.0) and r.rollouts == 0
    assert reachable_length_score(16, 20, final=False) == 100.0
    assert reachable_length_score(30, 20, final=False) == length_score(31, 20) < length_score(30, 20)
    assert reachable_length_score(12, 20, final=True) == length_score(12, 20)


def test_the_worst_sibling_is_rejected_when_asked() -> None:
    mid = Step("one two three four five six seven eight nine ten.", True)  # 10 words
    tiny = Step("one two.", True)
    task = LongformPrompt("Write about Autism in about 12 words.", 12)
    for seed in range(5):
        cfg = StepSearchConfig(width=3, depth=1, memory=None, critique=None, rejected="worst", seed=seed)
        r = search(RollingPolicy([SHORT_END, mid, tiny]), FlatJudge(), task, cfg)
        assert r.steps == [SHORT_END] and r.pairs[0]["rejected"] == tiny.text + "</s>"
    drawn = {
        search(RollingPolicy([SHORT_END, mid, tiny]), FlatJudge(), task,
               StepSearchConfig(width=3, depth=1, memory=None, critique=None, seed=s)).pairs[0]["rejected"]
        for s in range(12)
    }  # fmt: skip
    assert len(drawn) == 2  # "random" (released) draws either sibling


def test_step_value_and_rejected_refuse_unknown_names() -> None:
    for kwargs in ({"step_value": "oracle"}, {"rejected": "best"}, {"rollout_tokens": 0}):
        with pytest.raises(ValueError):
            StepSearchConfig(**kwargs)


@pytest.fixture(scope="module")
def encoder():
    from veil.models.rag.dense import load_minilm

    return load_minilm()


def test_the_within_step_check_catches_a_step_that_contradicts_itself(encoder) -> None:
    judge = RuleJudge()
    selfish = "The year of Autism is 1841. Trees grow tall. The year of Autism is 1903."
    paper = MemoryPool(judge, encoder, MemoryConfig(chunk_words=8))
    assert not paper.contradicted(selfish)  # the paper's pool sees only earlier steps' facts
    pool = MemoryPool(judge, encoder, MemoryConfig(chunk_words=8, within_step=True))
    assert pool.contradicted(selfish) and pool.checks >= 1
    assert not pool.contradicted("The year of Autism is 1841. Trees grow tall. The year of Autism is 1841.")
    # one chunk holding both values: the fact is checked against its own chunk too
    assert MemoryPool(judge, encoder, MemoryConfig(chunk_words=96, within_step=True)).contradicted(selfish)
    # the cosine gate still applies: MiniLM puts two patrons below 0.8, so the judge is not asked
    patrons = "The patron of Autism is Ada Brun. Trees grow tall. The patron of Autism is Iris Vale."
    gated = MemoryPool(judge, encoder, MemoryConfig(chunk_words=8, within_step=True))
    assert not gated.contradicted(patrons)
    assert MemoryPool(
        judge, encoder, MemoryConfig(chunk_words=8, within_step=True, threshold=0.6)
    ).contradicted(patrons)


def test_the_search_vetoes_a_self_contradicting_first_step_with_the_within_step_check(encoder) -> None:
    bad = Step("The year of Autism is 1841. The year of Autism is 1903.", True)
    good = Step("The year of Autism is 1841. Autism is studied.", True)
    task = LongformPrompt("Write about Autism in about 12 words.", 12)
    base = StepSearchConfig(width=2, depth=1, critique=None, memory=MemoryConfig(chunk_words=8))
    assert search(RollingPolicy([bad, good]), FlatJudge(), task, base, encoder=encoder).steps == [bad]
    within = StepSearchConfig(
        width=2, depth=1, critique=None, memory=MemoryConfig(chunk_words=8, within_step=True)
    )
    r = search(RollingPolicy([bad, good]), FlatJudge(), task, within, encoder=encoder)
    assert r.steps == [good] and r.vetoes == 1
    assert extract_facts(bad.text)[0] == Fact("Autism", "year", "1841")


def test_an_nll_term_on_the_chosen_completion_raises_its_likelihood_beyond_plain_dpo() -> None:
    from veil.models.longform.experiment import LongformExperimentConfig, _scratch_model, _tokenizer
    from veil.models.longform.policy import HFStepPolicy

    texts = ["Write about Autism in about 20 words.\nAutism affects social skills.\nSnow is white."] * 30
    tok = _tokenizer(texts, 300)
    prompt = HFStepPolicy(
        _scratch_model(tok, LongformExperimentConfig(hidden=32, layers=1)), tok
    ).chat_prompt("Write about Autism in about 20 words.")
    pairs = [
        {"prompt": prompt, "chosen": "Autism affects social skills.\n", "rejected": "Snow is white.\n"}
    ] * 8

    def chosen_logp(sft_weight: float) -> float:
        torch.manual_seed(0)
        model = _scratch_model(tok, LongformExperimentConfig(hidden=32, layers=1)).train()
        cfg = PairDPOConfig(lr=3e-3, epochs=2, batch_size=4, warmup_ratio=0.0, sft_weight=sft_weight)
        prefix_dpo(model, tok, pairs, cfg)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(pairs[0]["chosen"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1], -1)
        return float(lp.gather(1, torch.tensor(c)[:, None]).sum())

    assert chosen_logp(5.0) > chosen_logp(0.0) + 0.5
    with pytest.raises(ValueError, match="sft_weight"):
        PairDPOConfig(sft_weight=-1.0)


def test_a_judge_blind_to_facts_scores_a_contradiction_as_a_consistent_text() -> None:
    from veil.models.longform.data import Topic

    task = LongformPrompt(
        "Write about Autism in about 12 words.",
        12,
        topic=Topic("Autism", (), (), (Fact("Autism", "year", "1841"),)),
    )
    contradicting = "The year of Autism is 1841. The year of Autism is 1903."
    consistent = "The year of Autism is 1841. The year of Autism is 1841."
    seeing, blind = RuleJudge(), RuleJudge(sees_facts=False)
    assert seeing.quality(task, contradicting).mean < seeing.quality(task, consistent).mean
    for text in (contradicting, consistent):
        scores = blind.quality(task, text).scores
        assert (scores["accuracy"], scores["formatting and logic"]) == (3.0, 5.0)
    assert seeing.quality(task, contradicting).scores["formatting and logic"] == 1.0
    assert blind.contradicts(
        Fact("Autism", "year", "1841"), "The year of Autism is 1903."
    )  # the pool still sees

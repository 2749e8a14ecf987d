"""The long-thought loop's evaluators: the logit-based scores equal a naive one-sequence-at-a-time
computation, batching does not change them, the loop uses a given scorer, and bad names are refused."""

from __future__ import annotations

import math

import pytest
import torch

from veil.models.rag.lm import HFTextLM
from veil.models.translation.evaluators import (
    EVALUATORS,
    ExpectedRatingScorer,
    LikelihoodScorer,
    RatingScorer,
    RoundTripScorer,
    make_scorer,
    rating_prompt,
    target_share,
)
from veil.models.translation.grounded_translate import translation_prompt
from veil.models.translation.long_thought import LongThoughtConfig, LongThoughtLoop
from veil.models.translation.scratch import ScratchConfig, build_model, build_tokenizer

SOURCES = ["He eats like a horse.", "The news spread like wildfire across the town."]
TRANSLATIONS = ["他食量很大。", "消息迅速传开了。"]


@pytest.fixture(scope="module")
def tiny():
    texts = SOURCES + TRANSLATIONS + [rating_prompt(s, t, "en", "zh", 9) + " Score: 0 1 2 3 4 5 6 7 8 9"
                                      for s, t in zip(SOURCES, TRANSLATIONS, strict=True)]  # fmt: skip
    texts += [translation_prompt(s, [], "en", "zh") for s in SOURCES]
    texts += [translation_prompt(t, [], "zh", "en") for t in TRANSLATIONS]
    tok = build_tokenizer(texts, [], ScratchConfig(vocab_size=330, entity_tokens=False))
    model = build_model(tok, ScratchConfig(vocab_size=330, hidden=32, layers=1, seed=3)).eval()
    return model, tok


def _chat(tok, user: str) -> str:
    return tok.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )


def test_likelihood_is_the_geometric_mean_token_probability(tiny) -> None:
    model, tok = tiny
    got = LikelihoodScorer(model, tok, batch_size=2).score(SOURCES, TRANSLATIONS)
    for s, t, g in zip(SOURCES, TRANSLATIONS, got, strict=True):
        prompt = tok(_chat(tok, translation_prompt(s, [], "en", "zh")), add_special_tokens=False)["input_ids"]
        answer = tok(t, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0]
        lps = [torch.log_softmax(logits[len(prompt) - 1 + k], -1)[a].item() for k, a in enumerate(answer)]
        assert g == pytest.approx(100 * math.exp(sum(lps) / len(lps)), rel=1e-4)
    assert LikelihoodScorer(model, tok).score(SOURCES[:1], ["  "]) == [0.0]


def test_expected_rating_weights_the_digits_by_their_probability(tiny) -> None:
    model, tok = tiny
    scorer = ExpectedRatingScorer(model, tok, batch_size=1)
    assert sorted(set(scorer._digits.values())) == list(range(10))
    got = scorer.score(SOURCES, TRANSLATIONS)
    for s, t, g in zip(SOURCES, TRANSLATIONS, got, strict=True):
        ids = tok(_chat(tok, rating_prompt(s, t, "en", "zh", 9)) + "Score:", add_special_tokens=False)[
            "input_ids"
        ]
        with torch.no_grad():
            p = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        if not tok.decode([int(p.argmax())]).strip() and int(p.argmax()) not in scorer._digits:
            with torch.no_grad():
                p = torch.softmax(model(torch.tensor([ids + [int(p.argmax())]])).logits[0, -1], -1)
        mass = {d: 0.0 for d in range(10)}
        for i, d in scorer._digits.items():
            mass[d] += p[i].item()
        assert g == pytest.approx(
            sum(d * m for d, m in mass.items()) / sum(mass.values()) * 100 / 9, rel=1e-4
        )
        assert 0.0 <= g <= 100.0


def test_round_trip_is_the_sources_likelihood_given_the_translation_back(tiny) -> None:
    model, tok = tiny
    got = RoundTripScorer(model, tok, batch_size=2).score(SOURCES, TRANSLATIONS)
    for s, t, g in zip(SOURCES, TRANSLATIONS, got, strict=True):
        prompt = tok(_chat(tok, translation_prompt(t, [], "zh", "en")), add_special_tokens=False)["input_ids"]
        answer = tok(s, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0]
        lps = [torch.log_softmax(logits[len(prompt) - 1 + k], -1)[a].item() for k, a in enumerate(answer)]
        assert g == pytest.approx(100 * math.exp(sum(lps) / len(lps)), rel=1e-4)
        assert g > 0.0


def test_round_trip_scores_an_echoed_source_or_an_empty_translation_zero(tiny) -> None:
    model, tok = tiny
    scorer = RoundTripScorer(model, tok)
    # the echo would be the likeliest "translation" to translate back into the source
    assert scorer.score(SOURCES, [SOURCES[0], "  "]) == [0.0, 0.0]
    mixed = "他食量 like a horse"  # 3 of 13 letters Chinese
    assert target_share(mixed, "zh") == pytest.approx(3 / 13)
    assert RoundTripScorer(model, tok, min_target_share=0.2).score(SOURCES[:1], [mixed])[0] > 0.0
    assert target_share("123。", "zh") == 1.0
    # between two languages of one script only the exact echo is caught
    en_de = RoundTripScorer(model, tok, "en", "de")
    assert en_de.score(SOURCES[:1], [" " + SOURCES[0].upper()]) == [0.0]
    assert en_de.score(SOURCES[:1], ["Er isst wie ein Pferd."])[0] > 0.0
    with pytest.raises(ValueError, match="min_target_share"):
        RoundTripScorer(model, tok, min_target_share=1.5)


def test_batching_does_not_change_a_score(tiny) -> None:
    model, tok = tiny
    for cls in (LikelihoodScorer, ExpectedRatingScorer, RoundTripScorer):
        one = cls(model, tok, batch_size=1).score(SOURCES, TRANSLATIONS)
        both = cls(model, tok, batch_size=2).score(SOURCES, TRANSLATIONS)
        assert both == pytest.approx(one, rel=1e-4, abs=1e-6)


class Reverser:
    """A translator whose revision appends a character; counts the prompts it is asked."""

    def __init__(self) -> None:
        self.calls = 0

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return user

    def complete(self, prompts, stop, max_new_tokens):
        from veil.models.rag.lm import Completion

        self.calls += len(prompts)
        return [Completion("好" * (1 + p.count("Improve")), None) for p in prompts]


class LengthScorer:
    def score(self, sources, translations):
        return [10.0 * len(t) for t in translations]


def test_the_loop_scores_with_the_given_scorer_and_never_asks_the_evaluator() -> None:
    lm = Reverser()
    (trace,) = LongThoughtLoop(lm, config=LongThoughtConfig(max_rounds=2), scorer=LengthScorer()).run(
        SOURCES[:1]
    )
    assert [r.score for r in trace.rounds] == [10.0, 20.0, 20.0]
    assert lm.calls == 1 + 1 + 2 * 2  # keywords, draft, then advice and revision per round: no rating


class Sampler:
    """A "sampling" translator: its k-th revision appends k characters (the k-th draw differs)."""

    def __init__(self) -> None:
        self.calls = 0

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return user

    def complete(self, prompts, stop, max_new_tokens):
        from veil.models.rag.lm import Completion

        out = []
        for _ in prompts:
            self.calls += 1
            out.append(Completion("好" * (1 + self.calls % 4), None))
        return out


def test_a_round_keeps_the_best_scored_of_its_sampled_revisions() -> None:
    translator, sampler = Reverser(), Sampler()
    config = LongThoughtConfig(max_rounds=1, revision_samples=4)
    (trace,) = LongThoughtLoop(translator, config=config, scorer=LengthScorer(), sampler=sampler).run(
        SOURCES[:1]
    )
    # draws 1..4 give 2, 3, 4, 1 characters: the round keeps the 4-character one
    assert [r.translation for r in trace.rounds] == ["好", "好好好好"]
    assert [r.score for r in trace.rounds] == [10.0, 40.0] and trace.rounds[1].accepted
    assert sampler.calls == 4 and translator.calls == 1 + 1 + 1  # keywords, draft, advice
    with pytest.raises(ValueError, match="needs a sampler"):
        LongThoughtLoop(translator, config=config)
    with pytest.raises(ValueError, match="revision_samples"):
        LongThoughtConfig(revision_samples=0)


def test_make_scorer_refuses_unknown_names_and_logit_evaluators_without_a_model(tiny) -> None:
    model, tok = tiny
    assert isinstance(make_scorer("rating", HFTextLM(model, tok)), RatingScorer)
    assert set(EVALUATORS) == {"rating", "expected_rating", "likelihood", "round_trip"}
    assert isinstance(make_scorer("round_trip", HFTextLM(model, tok), model, tok), RoundTripScorer)
    with pytest.raises(ValueError, match="evaluator must be one of"):
        make_scorer("bleu", HFTextLM(model, tok))
    with pytest.raises(ValueError, match="logits"):
        make_scorer("likelihood", HFTextLM(model, tok))

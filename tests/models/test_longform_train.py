"""LongDPO's training: the shared prefix DPO on step pairs (no EOS unless the step is final), SFT
examples from chosen paths, outcome pairs, and the config's paper defaults."""

from __future__ import annotations

import pytest
import torch

from veil.models.dpo import PairDPOConfig, prefix_dpo
from veil.models.longform.data import LongformPrompt, Topic
from veil.models.longform.experiment import LongformExperimentConfig, _scratch_model, _tokenizer
from veil.models.longform.judge import RuleJudge
from veil.models.longform.policy import HFStepPolicy, Step, end_of_turn
from veil.models.longform.search import SearchResult, StepSearchConfig
from veil.models.longform.train import (
    LongDPOConfig,
    cap_first_step_pairs,
    outcome_pairs,
    sft_examples,
    step_pairs,
)

TEXTS = [
    "Write about Autism in about 20 words.\nAutism affects social skills.\nIt starts early in children.",
    "Write about Albedo in about 40 words.\nAlbedo measures reflected light.\nSnow has a high albedo.",
] * 20


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = _tokenizer(TEXTS, 320)
    cfg = LongformExperimentConfig(hidden=32, layers=1)
    return _scratch_model(tok, cfg), tok


def _logp(model, tok, prompt: str, completion: str) -> float:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1], -1)
    return float(lp.gather(1, torch.tensor(c)[:, None]).sum())


def test_the_config_defaults_are_the_papers() -> None:
    cfg = LongDPOConfig()
    assert (cfg.beta, cfg.lr, cfg.epochs, cfg.batch_size, cfg.warmup_ratio) == (0.1, 1e-6, 2.0, 1, 0.1)
    assert (cfg.loss_type, cfg.label_smoothing, cfg.weight_decay, cfg.max_grad_norm) == (
        "sigmoid",
        0.0,
        0.0,
        1.0,
    )
    for bad in ({"beta": 0}, {"lr": 0}, {"max_steps": 0}, {"label_smoothing": 0.5}, {"warmup_ratio": 1.0}):
        with pytest.raises(ValueError):
            PairDPOConfig(**bad)


def test_the_end_of_turn_is_read_from_the_chat_template(tiny) -> None:
    _, tok = tiny
    assert end_of_turn(tok) == "</s>"
    assert tok("Snow.</s>", add_special_tokens=False)["input_ids"][-1] == tok.eos_token_id


def test_step_dpo_raises_the_chosen_steps_margin_and_adds_no_eos_to_a_middle_step(tiny) -> None:
    model, tok = tiny
    model = _scratch_model(tok, LongformExperimentConfig(hidden=32, layers=1))
    policy = HFStepPolicy(model, tok)
    prompt = policy.chat_prompt("Write about Autism in about 20 words.")
    pairs = [
        {"prompt": prompt, "chosen": "Autism affects social skills.\n", "rejected": "Snow has a high albedo.\n"},
        {"prompt": prompt + "Autism affects social skills.\n", "chosen": "It starts early.</s>", "rejected": "It starts early.\n"},
    ]  # fmt: skip
    before = [
        _logp(model, tok, p["prompt"], p["chosen"]) - _logp(model, tok, p["prompt"], p["rejected"])
        for p in pairs
    ]
    prefix_dpo(
        model.train(), tok, pairs * 4, LongDPOConfig(lr=3e-3, epochs=4, batch_size=4, warmup_ratio=0.0)
    )
    after = [
        _logp(model, tok, p["prompt"], p["chosen"]) - _logp(model, tok, p["prompt"], p["rejected"])
        for p in pairs
    ]
    assert all(a > b + 0.5 for a, b in zip(after, before, strict=True))
    # the middle step was trained without an end of turn: after it the model still prefers continuing
    with torch.no_grad():
        ids = tok(pairs[1]["prompt"], add_special_tokens=False)["input_ids"]
        nxt = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    assert float(nxt[tok.eos_token_id]) < float(nxt.max())


def test_sft_examples_mask_the_prompt_and_end_a_finished_path(tiny) -> None:
    model, tok = tiny
    policy = HFStepPolicy(model, tok)
    task = LongformPrompt("Write about Autism in about 20 words.", 20)
    done = SearchResult(
        task, [Step("Autism affects social skills.\n", False), Step("It starts early.", True)], [1, 2], []
    )
    open_ended = SearchResult(task, [Step("Autism affects social skills.\n", False)], [1], [])
    ex, ex2 = sft_examples(policy, tok, [done, open_ended])
    n_prompt = len(tok(policy.chat_prompt(task.prompt), add_special_tokens=False)["input_ids"])
    assert ex["completion_mask"] == [0] * n_prompt + [1] * (len(ex["input_ids"]) - n_prompt)
    assert ex["input_ids"][-1] == tok.eos_token_id and ex2["input_ids"][-1] != tok.eos_token_id


class _Fixed:
    end_text = "</s>"

    def chat_prompt(self, user, assistant_prefix=""):
        return f"U: {user}\nA: {assistant_prefix}"

    def steps(self, prompts, n, **_):
        cands = [Step("Autism affects social skills in children early on here.", True), Step("Snow.", True),
                 Step("Autism " * 60, False)]  # fmt: skip
        return [[cands[i % 3] for i in range(n)] for _ in prompts]


def test_outcome_pairs_take_the_best_and_the_worst_whole_response() -> None:
    topic = Topic("Autism", (), ("social", "children"))
    tasks = [LongformPrompt("Write about Autism in about 10 words.", 10, topic=topic)]
    pairs, generated = outcome_pairs(_Fixed(), RuleJudge(), tasks, StepSearchConfig(width=3, memory=None))
    assert generated == 3 and len(pairs) == 1
    assert pairs[0]["chosen"].startswith("Autism affects") and pairs[0]["chosen"].endswith("</s>")
    assert pairs[0]["rejected"].startswith("Autism Autism") and not pairs[0]["rejected"].endswith("</s>")
    assert step_pairs([]) == []


def test_a_copy_of_a_trained_model_runs_its_own_weights_once_trained(tiny) -> None:
    import copy

    from veil.models.rag.train import ImitationConfig, imitate

    _, tok = tiny
    model = _scratch_model(tok, LongformExperimentConfig(hidden=32, layers=1))
    prompt = HFStepPolicy(model, tok).chat_prompt("Write about Autism in about 20 words.")
    pair = {"prompt": prompt, "chosen": "Autism affects social skills.\n", "rejected": "Snow is white.\n"}
    pairs = [pair] * 4
    cfg = LongDPOConfig(lr=3e-3, batch_size=4, warmup_ratio=0.0, max_steps=2)
    prefix_dpo(model.train(), tok, pairs, cfg)
    assert "forward" not in model.__dict__  # TRL's patched forward is gone
    twin = copy.deepcopy(model)
    prefix_dpo(twin.train(), tok, pairs, cfg)
    ids = torch.tensor([tok(prompt + pairs[0]["chosen"], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        own = twin.lm_head(twin.model(ids).last_hidden_state)
        assert torch.allclose(twin(ids).logits, own, atol=1e-5)
        assert not torch.allclose(twin(ids).logits, model(ids).logits, atol=1e-3)

    # SFT (TRL's SFTTrainer) patches the same way, and imitate restores the model after it too
    base = _scratch_model(tok, LongformExperimentConfig(hidden=32, layers=1))
    ids_only = tok(prompt + pairs[0]["chosen"], add_special_tokens=False)["input_ids"]
    example = {"input_ids": ids_only, "completion_mask": [1] * len(ids_only)}
    sft_cfg = ImitationConfig(lr=3e-3, epochs=1, batch_size=4, grad_accum=1, max_length=128, max_steps=2)
    imitate(base.train(), tok, [example] * 4, sft_cfg)
    assert "forward" not in base.__dict__
    twin = copy.deepcopy(base)
    imitate(twin.train(), tok, [example] * 4, sft_cfg)
    with torch.no_grad():
        assert torch.allclose(twin(ids).logits, twin.lm_head(twin.model(ids).last_hidden_state), atol=1e-5)
        assert not torch.allclose(twin(ids).logits, base(ids).logits, atol=1e-3)


def test_balancing_keeps_as_many_end_here_as_go_on_pairs_and_every_two_sided_one() -> None:
    from veil.models.longform.train import balance_end_pairs

    def pair(i: int, chosen_ends: bool, rejected_ends: bool) -> dict[str, str]:
        return {
            "prompt": f"p{i}",
            "chosen": "a" + "</s>" * chosen_ends,
            "rejected": "b" + "</s>" * rejected_ends,
        }

    pairs = [pair(i, c, r) for i, (c, r) in enumerate([(True, False)] * 2 + [(False, True)] * 5 + [(True, True), (False, False)])]  # fmt: skip
    kept = balance_end_pairs(pairs, "</s>", seed=1)
    kinds = [(p["chosen"].endswith("</s>"), p["rejected"].endswith("</s>")) for p in kept]
    assert kinds.count((True, False)) == kinds.count((False, True)) == 2
    assert (True, True) in kinds and (False, False) in kinds and len(kept) == 6
    assert [p["prompt"] for p in kept] == sorted((p["prompt"] for p in kept), key=lambda s: int(s[1:]))
    assert balance_end_pairs(pairs, "</s>", seed=1) == kept  # seeded


def test_capping_keeps_every_later_step_pair_and_as_many_first_step_ones_in_order() -> None:
    task = LongformPrompt("Write about Autism in about 20 words.", 20)

    def result(tag: str, depths: list[int]) -> SearchResult:
        pairs = [
            {"prompt": f"{tag}{i}", "chosen": "a", "rejected": "b", "depth": d} for i, d in enumerate(depths)
        ]
        return SearchResult(task, [], [], pairs)  # type: ignore[arg-type]

    results = [result("x", [0, 1, 2]), result("y", [0]), result("z", [0, 1]), result("w", [0])]
    kept = cap_first_step_pairs(results, seed=3)
    prompts = [p["prompt"] for p in kept]
    assert {"x1", "x2", "z1"} <= set(prompts) and len(prompts) == 6
    assert prompts == [p["prompt"] for p in step_pairs(results) if p["prompt"] in prompts]
    assert set(kept[0]) == {"prompt", "chosen", "rejected"} and cap_first_step_pairs(results, seed=3) == kept
    assert len(cap_first_step_pairs(results[1:2])) == 0  # no later pairs: no first-step pair either


def test_the_policy_passes_top_k_and_the_repetition_penalty_to_the_sampler(tiny) -> None:
    model, tok = tiny
    policy = HFStepPolicy(model, tok)
    prompt = [policy.chat_prompt("Write about Autism in about 20 words.")]
    kw = {"separator": "", "max_new_tokens": 12, "seed": 0}
    greedy = policy.steps(prompt, 1, temperature=0.0, top_p=1.0, **kw)[0][0]
    assert policy.steps(prompt, 1, temperature=0.0, top_p=1.0, repetition_penalty=1.0, **kw)[0][0] == greedy
    assert policy.steps(prompt, 1, temperature=0.0, top_p=1.0, repetition_penalty=50.0, **kw)[0][0] != greedy
    # top-k 1 samples the greedy answer whatever the temperature
    assert policy.steps(prompt, 3, temperature=2.0, top_p=1.0, top_k=1, **kw)[0] == [greedy] * 3

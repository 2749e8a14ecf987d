"""RAGtrans's multi-task examples, their tokenization for TRL, and one SFT run on a tiny Llama over a tiny
BPE: the completion mask covers the answer only, and training lowers the loss on it."""

from __future__ import annotations

import doctest
import random

import pytest

from veil.models.translation import multitask
from veil.models.translation.grounded import GroundedSetConfig, grounded_records, grounded_set
from veil.models.translation.grounded_translate import relevance_prompt, translation_prompt
from veil.models.translation.multitask import (
    MASK,
    MultiTaskConfig,
    ParallelText,
    mask_span,
    multitask_examples,
)

EXAMPLES = grounded_set(GroundedSetConfig(n_examples=12, seed=4))
PARALLEL = [ParallelText(e.entity.document_en, e.entity.document_zh, "en", "zh") for e in EXAMPLES]


def _user(example) -> str:
    return example["prompt"][0]["content"]


def _answer(example) -> str:
    return example["completion"][0]["content"]


def test_doctests() -> None:
    assert doctest.testmod(multitask).failed == 0


def test_every_objective_is_built_in_the_documented_numbers() -> None:
    records = grounded_records(EXAMPLES, "clean") + grounded_records(EXAMPLES, "irrelevant")
    out = multitask_examples(records, PARALLEL, config=MultiTaskConfig(negatives=2))
    counts = {o: sum(e["objective"] == o for e in out) for o in multitask.OBJECTIVES}
    n = len(PARALLEL) * 2  # both directions
    assert counts == {"translation": len(records), "completion": n, "self_knowledge": n, "relevance": 3 * n}
    assert multitask_examples(records, PARALLEL, config=MultiTaskConfig(negatives=2)) == out  # seeded


def test_noisy_records_still_teach_the_reference() -> None:
    records = grounded_records(EXAMPLES, "irrelevant")
    out = multitask_examples(records, [], config=MultiTaskConfig(objectives=("translation",)))
    assert {(_user(e), _answer(e)) for e in out} == {
        (translation_prompt(r.src, [r.doc], "en", "zh"), r.tgt) for r in records
    }


@pytest.mark.parametrize("language", ["en", "zh"])
def test_a_masked_span_put_back_gives_the_text(language: str) -> None:
    rng = random.Random(1)
    for p in PARALLEL:
        text = p.a if language == "en" else p.b
        masked, span = mask_span(text, language, 0.3, rng)
        joiner = " " if language == "en" else ""
        assert masked.count(MASK) == 1 and span
        restored = masked.replace(MASK, span)
        assert restored == (joiner.join(text.split()) if language == "en" else "".join(text.split()))


def test_completion_gives_the_other_language_as_document() -> None:
    out = multitask_examples([], PARALLEL[:1], config=MultiTaskConfig(objectives=("completion",)))
    by_lang = {("English" in _user(e)): e for e in out}
    assert PARALLEL[0].b in _user(by_lang[True]) and PARALLEL[0].a in _user(by_lang[False])
    assert MASK in _user(by_lang[True]).split("English text:")[1]


def test_self_knowledge_is_translation_without_documents() -> None:
    out = multitask_examples([], PARALLEL[:1], config=MultiTaskConfig(objectives=("self_knowledge",)))
    pair = PARALLEL[0]
    assert {(_user(e), _answer(e)) for e in out} == {
        (translation_prompt(pair.a, [], "en", "zh"), pair.b),
        (translation_prompt(pair.b, [], "zh", "en"), pair.a),
    }


def test_relevance_pairs_a_text_with_its_own_and_another_pairs_side() -> None:
    out = multitask_examples([], PARALLEL, config=MultiTaskConfig(objectives=("relevance",), negatives=1))
    docs_of = {p.a: p.b for p in PARALLEL} | {p.b: p.a for p in PARALLEL}
    for e in out:
        text = _user(e).split(" text: ")[1].split("\nIs the document")[0]
        doc = _user(e).removeprefix("Document: ").split("\n\n")[0]
        assert _answer(e) == ("yes" if doc == docs_of[text] else "no")
        assert _user(e) == relevance_prompt(text, doc, "en" if text in {p.a for p in PARALLEL} else "zh")
        if _answer(e) == "no":  # the negative is in the positive's language
            assert (doc in {p.b for p in PARALLEL}) == (text in {p.a for p in PARALLEL})


@pytest.mark.parametrize(
    "kwargs", [{"objectives": ()}, {"objectives": ("glossing",)}, {"mask_fraction": 1.0}, {"negatives": -1}]
)
def test_the_config_refuses_bad_settings(kwargs) -> None:
    with pytest.raises(ValueError):
        MultiTaskConfig(**kwargs)


@pytest.fixture(scope="module")
def tiny():
    import torch
    from transformers import AutoModelForCausalLM

    from veil.models.distillation.students import train_metaspace_bpe
    from veil.models.loading import tiny_llama_config

    records = grounded_records(EXAMPLES, "clean")
    examples = multitask_examples(records, PARALLEL, config=MultiTaskConfig(seed=1))
    texts = [_user(e) + _answer(e) for e in examples]
    tok = train_metaspace_bpe(texts, vocab_size=600)
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(tok), bos_token_id=1, eos_token_id=1, pad_token_id=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # more threads than the 2 shared cores make TRL's steps 10x slower
    yield AutoModelForCausalLM.from_config(config), tok, examples
    torch.set_num_threads(threads)


def test_tokenized_examples_learn_the_answer_only(tiny) -> None:
    from veil.models.translation.sft import tokenize_examples

    _, tok, examples = tiny
    (one,) = tokenize_examples(tok, examples[:1])
    prompt = tok.apply_chat_template(examples[0]["prompt"], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert one["completion_mask"] == [0] * n_prompt + [1] * (len(one["input_ids"]) - n_prompt)
    learned = [t for t, m in zip(one["input_ids"], one["completion_mask"], strict=True) if m]
    assert tok.decode(learned, skip_special_tokens=True).strip() == _answer(examples[0])
    assert learned[-1] == tok.eos_token_id  # the answer ends the turn
    assert tokenize_examples(tok, examples, max_length=20) == []  # too long: dropped, not cut


def _answer_nll(model, tok, examples) -> float:
    import torch

    from veil.models.translation.sft import tokenize_examples

    total, count = 0.0, 0
    with torch.no_grad():
        for e in tokenize_examples(tok, examples):
            ids = torch.tensor([e["input_ids"]])
            nll = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")
            mask = torch.tensor(e["completion_mask"][1:], dtype=torch.bool)
            total, count = total + float(nll[mask].sum()), count + int(mask.sum())
    return total / count


@pytest.mark.slow  # TRL's trainer: about 15 s on 2 cores
def test_multitask_fine_tuning_lowers_the_answer_loss(tiny) -> None:
    import math

    from veil.models.translation.sft import TranslationSFTConfig, fine_tune

    model, tok, examples = tiny
    subset = examples[:24]
    before = _answer_nll(model.eval(), tok, subset)
    metrics = fine_tune(
        model.train(), tok, subset, TranslationSFTConfig(lr=3e-3, epochs=2, grad_accum=1, warmup_ratio=0.0)
    )
    assert _answer_nll(model, tok, subset) < before - 0.5 and math.isfinite(metrics["train_loss"])


def test_fine_tuning_prints_nothing_on_stdout(capsys) -> None:
    # a --json run's stdout holds only its result; the Trainer prints its logs there unless told not to
    from veil.models.translation.scratch import ScratchConfig, build_model, build_tokenizer
    from veil.models.translation.sft import TranslationSFTConfig, fine_tune

    cfg = ScratchConfig(vocab_size=320, hidden=32, layers=1)
    tok = build_tokenizer(["hello world"] * 20, [], cfg, [])
    one = {
        "prompt": [{"role": "user", "content": "hello"}],
        "completion": [{"role": "assistant", "content": "world"}],
    }
    sft = TranslationSFTConfig(lr=1e-3, epochs=1, batch_size=4, grad_accum=1, max_length=64)
    metrics = fine_tune(build_model(tok, cfg).train(), tok, [one] * 8, sft)
    assert "train_loss" in metrics and capsys.readouterr().out == ""


def test_the_sft_config_refuses_bad_settings() -> None:
    from veil.models.translation.sft import TranslationSFTConfig

    with pytest.raises(ValueError):
        TranslationSFTConfig(lr=0.0)


def test_term_masking_hides_the_term_the_document_gives() -> None:
    pair = ParallelText(
        "Tavreno River (Chinese: 索卡河) is a river.",
        "【索卡河】索卡河（Tavreno River）是一条河流。",
        "en",
        "zh",
        ("Tavreno River", "索卡河"),
    )
    plain = ParallelText("I like tea.", "我喜欢茶。", "en", "zh")
    config = MultiTaskConfig(objectives=("completion",), completion_mask="term")
    examples = multitask_examples([], [pair, plain], config=config)
    by_answer = {e["completion"][0]["content"]: e["prompt"][0]["content"] for e in examples}
    assert "【[MASK]】[MASK]（Tavreno River）" in by_answer["索卡河"]
    assert "[MASK] (Chinese: 索卡河)" in by_answer["Tavreno River"]
    assert len(examples) == 4  # the plain pair keeps its random span, both ways
    assert sum("[MASK]" in p and "茶" not in a for a, p in by_answer.items()) >= 2
    with pytest.raises(ValueError, match="must occur"):
        ParallelText("a river", "一条河", "en", "zh", ("Tavreno River", "索卡河"))
    with pytest.raises(ValueError, match="completion_mask"):
        MultiTaskConfig(completion_mask="words")

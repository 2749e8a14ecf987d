from __future__ import annotations

import math

import pytest
import torch

from veil.models.distillation.data import (
    DistillDataConfig,
    Example,
    build_dataset,
    encode_example,
    lee_documents,
)
from veil.models.distillation.metrics import (
    NLLReport,
    SFTConfig,
    bits_per_char,
    evaluate,
    exact_match,
    kl_from_truth,
    kl_to_truth,
    response_nll,
    rouge_l,
    train_sft,
)
from veil.models.distillation.students import train_metaspace_bpe
from veil.models.loading import tiny_llama_config


def tiny_model(vocab_size: int, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=vocab_size)).eval()


@pytest.fixture(scope="module")
def metaspace():
    return train_metaspace_bpe(lee_documents()[:80], vocab_size=1500)


def test_rouge_l_of_identical_strings_is_one_and_of_disjoint_ones_zero() -> None:
    refs = ["The early bird catches the worm.", "saves nine"]
    assert rouge_l(refs, refs) == pytest.approx(1.0)
    assert rouge_l(["lorem ipsum", "dolor"], refs) == 0.0
    assert 0.0 < rouge_l(["the early bird sleeps"], refs[:1]) < 1.0


def test_kl_from_truth_has_its_closed_form() -> None:
    assert kl_from_truth([0.5, 0.5], [math.log(0.25)] * 2) == pytest.approx(math.log(2))
    assert kl_from_truth([1.0, 0.0], [0.0, -math.inf]) == 0.0
    # sub-normalised q (mass on other strings) keeps it positive
    assert kl_from_truth([0.7, 0.3], [math.log(0.35), math.log(0.15)]) == pytest.approx(math.log(2))


def test_exact_match_ignores_case_space_and_a_final_period() -> None:
    ex = Example(
        "Complete the proverb: A stitch in time ...",
        "saves nine.",
        "proverb",
        ("saves nine.", "A stitch in time saves nine."),
        (0.6, 0.4),
        True,
    )
    word = Example("Which word fits the blank? The ___ barked.", "dog", "word", ("dog", "puppy"), (0.6, 0.4))
    assert exact_match(["  Saves nine", "dog"], [ex, word]) == 1.0
    assert exact_match(["saves ten."], [ex]) == 0.0
    assert exact_match(["dog"], [word]) is None


@pytest.mark.parametrize("alphabet", [64, 256])
def test_bits_per_char_of_a_character_uniform_model_is_the_same_for_any_tokenizer(
    alphabet, tiny_tokenizer, metaspace
) -> None:
    # A model-free baseline that gives every character probability 1/A gives a token of c characters
    # probability A^-c under any tokenizer, so its bits per character must be log2(A) for both.
    responses = [
        "Hundreds of people have been forced to vacate their homes.",
        "A new blaze near Goulburn, south-west of Sydney, has forced the closure of the Hume Highway.",
        "The answer is 7.",
    ]
    results = []
    for tok in (tiny_tokenizer, metaspace):
        total, tokens = 0.0, 0
        for r in responses:
            enc = encode_example(tok, "Continue this text:", r)
            ids = [t for t, m in zip(enc.input_ids, enc.response_mask, strict=True) if m][
                :-1
            ]  # eos: no characters
            # characters each token adds (byte pieces of one character share it; the sum is exact)
            lengths = [len(tok.decode(ids[: k + 1])) - len(tok.decode(ids[:k])) for k in range(len(ids))]
            total += sum(lengths) * math.log(alphabet)
            tokens += len(ids)
        report = NLLReport(total, tokens, sum(len(r) for r in responses))
        results.append((report.bits_per_char, report.nll_per_token))
    (bpc_a, per_token_a), (bpc_b, per_token_b) = results
    assert bpc_a == pytest.approx(math.log2(alphabet), rel=1e-9) and bpc_b == pytest.approx(bpc_a, rel=1e-9)
    assert per_token_a != pytest.approx(per_token_b, rel=0.05)  # per token it is not comparable


def test_response_nll_matches_a_token_by_token_reference(tiny_tokenizer) -> None:
    model = tiny_model(len(tiny_tokenizer))
    examples = [
        Example("Pick one: a, b or c.", "a", "choice"),
        Example("Say more.", "The answer is 12, I think.", "x"),
    ]
    report = response_nll(model, tiny_tokenizer, examples, batch_size=2)
    total = 0.0
    with torch.no_grad():
        for e in examples:
            enc = encode_example(tiny_tokenizer, e.instruction, e.response)
            for t, m in enumerate(enc.response_mask):
                if m:
                    logits = model(torch.tensor([enc.input_ids[:t]])).logits[0, -1]
                    total -= float(torch.log_softmax(logits, -1)[enc.input_ids[t]])
    assert report.total_nats == pytest.approx(total, rel=1e-4)
    assert report.n_chars == 1 + len("The answer is 12, I think.")
    assert report.bits_per_char == pytest.approx(bits_per_char(total, report.n_chars), rel=1e-4)


def test_kl_to_truth_is_positive_and_none_without_known_answers(tiny_tokenizer) -> None:
    model = tiny_model(len(tiny_tokenizer))
    data = build_dataset(DistillDataConfig(n_train=0, n_heldout=8, corpus_fraction=0.0))
    assert kl_to_truth(model, tiny_tokenizer, data.heldout) > 0.0
    assert kl_to_truth(model, tiny_tokenizer, [Example("Say more.", "ok", "continue")]) is None


def test_sft_lowers_heldout_nll_of_a_tiny_student_within_seconds(tiny_tokenizer) -> None:
    data = build_dataset(DistillDataConfig(seed=0, n_train=64, n_heldout=24, corpus_fraction=0.0))
    student = tiny_model(len(tiny_tokenizer))
    before = response_nll(student, tiny_tokenizer, data.heldout)
    kl_before = kl_to_truth(student, tiny_tokenizer, data.heldout)
    losses = train_sft(student, tiny_tokenizer, data.train, SFTConfig(steps=30, batch_size=8, lr=3e-3))
    after = response_nll(student, tiny_tokenizer, data.heldout)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    assert after.bits_per_char < 0.7 * before.bits_per_char
    assert kl_to_truth(student, tiny_tokenizer, data.heldout) < kl_before


def test_sft_is_deterministic_per_seed(tiny_tokenizer) -> None:
    data = build_dataset(DistillDataConfig(seed=0, n_train=16, n_heldout=0, corpus_fraction=0.0))
    cfg = SFTConfig(steps=3, batch_size=4, seed=5)
    runs = [train_sft(tiny_model(len(tiny_tokenizer)), tiny_tokenizer, data.train, cfg) for _ in range(2)]
    assert runs[0] == runs[1]


def test_evaluate_reports_every_metric(metaspace) -> None:
    data = build_dataset(DistillDataConfig(n_train=0, n_heldout=8, corpus_fraction=0.0))
    report = evaluate(tiny_model(len(metaspace)), metaspace, data.heldout, max_new_tokens=3)
    assert report.bits_per_char > 0 and report.nll_per_token > 0 and 0 <= report.rouge_l <= 1
    assert report.exact_match is not None and report.kl_to_truth is not None


def test_sft_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="steps and batch_size"):
        SFTConfig(steps=0)
    with pytest.raises(ValueError, match="lr > 0"):
        SFTConfig(lr=0.0)

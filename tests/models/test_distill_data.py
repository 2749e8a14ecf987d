from __future__ import annotations

import random
from collections import Counter

import pytest

from veil.models.distillation.data import (
    CORPUS_TASKS,
    PLAIN_PROMPT,
    TEMPLATED_TASKS,
    DistillDataConfig,
    build_dataset,
    collate,
    encode_example,
    greedy_generate,
    lee_documents,
    prompt_text,
    teacher_cache_path,
    templated_examples,
)
from veil.models.distillation.students import train_metaspace_bpe


class EchoTeacher:
    """Answers with the instruction's last three words and counts the instructions it was asked."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, instructions):
        self.asked += len(instructions)
        return [" ".join(i.split()[-3:]) for i in instructions]


@pytest.fixture(scope="module")
def metaspace():
    return train_metaspace_bpe(lee_documents()[:80], vocab_size=1500)


def test_the_same_seed_gives_the_same_splits_and_another_seed_other_ones() -> None:
    cfg = DistillDataConfig(seed=3, n_train=300, n_heldout=50, n_teacher=200, corpus_fraction=0.0)
    a, b = build_dataset(cfg), build_dataset(cfg)
    assert a == b
    assert (len(a.train), len(a.heldout), len(a.teacher)) == (300, 50, 200)
    other = build_dataset(DistillDataConfig(seed=4, n_train=300, n_heldout=50, corpus_fraction=0.0))
    assert other.train != a.train


def test_templated_responses_are_samples_of_their_known_distribution() -> None:
    rows = templated_examples(8000, random.Random(0))
    assert {r.task for r in rows} == set(TEMPLATED_TASKS)
    for r in rows:
        assert r.response in r.answers
        assert sum(r.probs) == pytest.approx(1.0)
        assert r.single_answer == (r.task in ("proverb", "arithmetic"))
    # "pick one" prefers positions 0.5 / 0.3 / 0.2
    choice = [r for r in rows if r.task == "choice"]
    freq = Counter(r.answers.index(r.response) for r in choice)
    assert [freq[i] / len(choice) for i in range(3)] == pytest.approx([0.5, 0.3, 0.2], abs=0.04)


def test_arithmetic_answers_are_correct_in_every_format() -> None:
    for r in templated_examples(400, random.Random(1)):
        if r.task == "arithmetic":
            bare = r.answers[0]
            expr = r.answers[1].split(" = ")[0]
            assert int(bare) == eval(expr)  # noqa: S307 - a generated "a + b" of small integers
            assert all(bare in a for a in r.answers)


def test_corpus_responses_come_from_the_teacher_once_and_are_cached(tmp_path) -> None:
    cfg = DistillDataConfig(seed=0, n_train=40, n_heldout=20, corpus_fraction=0.5)
    cache = teacher_cache_path(tmp_path, "HuggingFaceTB/SmolLM2", cfg.seed, 48)
    assert cache.name == "HuggingFaceTB_SmolLM2-seed0-n48.jsonl"
    teacher = EchoTeacher()
    first = build_dataset(cfg, teacher, cache)
    assert teacher.asked == 30
    second = build_dataset(cfg, teacher, cache)
    assert teacher.asked == 30 and second == first
    corpus = [e for e in first.train if e.task in CORPUS_TASKS]
    assert len(corpus) == 20 and all(not e.probs for e in corpus)
    assert all(e.response == " ".join(e.instruction.split()[-3:]) for e in corpus)


def test_heldout_sentences_come_from_other_documents() -> None:
    cfg = DistillDataConfig(seed=1, n_train=200, n_heldout=200, corpus_fraction=1.0)
    data = build_dataset(cfg, EchoTeacher())

    def sentence(instruction: str) -> str:
        return instruction.split(": ", 1)[1]

    assert not {sentence(e.instruction) for e in data.train} & {sentence(e.instruction) for e in data.heldout}


def test_corpus_tasks_without_a_teacher_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a teacher"):
        build_dataset(DistillDataConfig(n_train=10, n_heldout=4, corpus_fraction=0.5))
    with pytest.raises(ValueError, match="corpus_fraction"):
        DistillDataConfig(corpus_fraction=1.5)


@pytest.mark.parametrize("which", ["smollm2", "metaspace"])
def test_the_response_mask_covers_exactly_the_response_and_its_eos(which, tiny_tokenizer, metaspace) -> None:
    tok = tiny_tokenizer if which == "smollm2" else metaspace
    enc = encode_example(tok, "What is 3 + 4?", "The answer is 7.")
    resp = [t for t, m in zip(enc.input_ids, enc.response_mask, strict=True) if m]
    prompt = [t for t, m in zip(enc.input_ids, enc.response_mask, strict=True) if not m]
    assert enc.response_mask == sorted(enc.response_mask)  # prompt first, then the response
    assert resp[-1] == tok.eos_token_id
    assert tok.decode(resp[:-1]) == "The answer is 7."
    assert tok.decode(prompt) == prompt_text(tok, "What is 3 + 4?")


def test_tokenizers_without_a_template_get_the_plain_prompt(metaspace, tiny_tokenizer) -> None:
    assert prompt_text(metaspace, "Hi") == PLAIN_PROMPT.format(instruction="Hi")
    assert prompt_text(tiny_tokenizer, "Hi").startswith("<|im_start|>")

    class NoTemplate:
        chat_template = None

    assert prompt_text(NoTemplate(), "Hi") == "Instruction:\nHi\nResponse:\n"


def test_collate_pads_right_and_masks_the_padding(tiny_tokenizer) -> None:
    rows = [
        encode_example(tiny_tokenizer, "Pick one: a, b or c.", "a"),
        encode_example(tiny_tokenizer, "Hi", "Hello there, friend."),
    ]
    batch = collate(rows, pad_id=tiny_tokenizer.pad_token_id)
    for b, r in enumerate(rows):
        n = len(r.input_ids)
        assert batch["input_ids"][b, :n].tolist() == r.input_ids
        assert batch["attention_mask"][b].sum() == n
        assert batch["response_mask"][b].tolist() == r.response_mask + [0] * (batch["input_ids"].shape[1] - n)


def test_greedy_generate_gives_one_string_per_instruction(tiny_tokenizer) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from veil.models.loading import tiny_llama_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=len(tiny_tokenizer)))
    out = greedy_generate(
        model, tiny_tokenizer, ["Hi", "What is 1 + 2?", "Pick one: a, b or c."], 4, batch_size=2
    )
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    # left padding must not change a row's greedy output
    assert greedy_generate(model, tiny_tokenizer, ["Hi"], 4) == out[:1]


@pytest.mark.slow
def test_smollm2_writes_the_corpus_responses_once(data_dir, tmp_path) -> None:
    from functools import partial

    from veil.models.loading import load_model

    smol = load_model("smollm2-135m-instruct", data_dir)
    calls = []

    def teacher(instructions):
        calls.append(len(instructions))
        return greedy_generate(smol.model, smol.tokenizer, instructions, max_new_tokens=24)

    cfg = DistillDataConfig(seed=0, n_train=3, n_heldout=3, corpus_fraction=1.0)
    cache = teacher_cache_path(tmp_path, smol.name, cfg.seed, 24)
    data = build_dataset(cfg, teacher, cache)
    assert calls == [3, 3] and len(cache.read_text().splitlines()) == 6
    assert all(len(e.response.split()) >= 2 for e in data.train + data.heldout)
    assert build_dataset(cfg, partial(pytest.fail, "the cache must answer"), cache) == data

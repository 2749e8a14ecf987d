from __future__ import annotations

import pytest
import torch

from veil.models.distillation.data import PLAIN_PROMPT, lee_documents, prompt_text
from veil.models.distillation.students import (
    OtherTokenizerStudentConfig,
    StudentConfig,
    other_tokenizer_student,
    same_tokenizer_student,
    train_metaspace_bpe,
)
from veil.models.loading import load_model, tiny_llama_config


@pytest.fixture(scope="module")
def teacher():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = tiny_llama_config(
        vocab_size=256, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2, hidden_size=96
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return lee_documents()[:100] + [PLAIN_PROMPT.format(instruction="What is 3 + 4?") + "7"]


def test_a_full_depth_student_initialised_from_the_teacher_is_the_teacher(teacher) -> None:
    student = same_tokenizer_student(teacher.config, scale=1.0, teacher=teacher)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(student(ids).logits, teacher(ids).logits)


def test_a_shallow_student_copies_the_first_layers(teacher) -> None:
    student = same_tokenizer_student(teacher.config, scale=0.5, teacher=teacher)
    assert student.config.num_hidden_layers == 2 and student.config.vocab_size == teacher.config.vocab_size
    for i in range(2):
        for (name, p), (_, q) in zip(
            student.model.layers[i].named_parameters(),
            teacher.model.layers[i].named_parameters(),
            strict=True,
        ):
            assert torch.equal(p, q), name
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_a_narrow_random_student_keeps_the_head_size_and_grouping(teacher) -> None:
    cfg = StudentConfig(scale=0.25, width_scale=0.5, init="random")
    student = same_tokenizer_student(teacher.config, cfg=cfg)
    c = student.config
    assert (c.num_hidden_layers, c.num_key_value_heads, c.num_attention_heads, c.hidden_size) == (1, 1, 3, 48)
    assert not torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, :48])
    again = same_tokenizer_student(teacher.config, cfg=cfg)
    assert torch.equal(again.model.embed_tokens.weight, student.model.embed_tokens.weight)


def test_student_configs_refuse_impossible_settings(teacher) -> None:
    with pytest.raises(ValueError, match="width_scale must be 1"):
        StudentConfig(width_scale=0.5, init="teacher")
    with pytest.raises(ValueError, match="scale must be in"):
        StudentConfig(scale=0.0)
    with pytest.raises(ValueError, match="needs the teacher model"):
        same_tokenizer_student(teacher.config)
    with pytest.raises(ValueError, match="num_kv_heads"):
        OtherTokenizerStudentConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="vocab_size must exceed"):
        train_metaspace_bpe(["a b c"], vocab_size=200)


@pytest.mark.parametrize(
    "text",
    [
        "Hundreds of people have been forced to vacate their homes, at about 4:00pm AEDT.",
        "Instruction:\nWhat is 3 + 4?\nResponse:\n7",
        "café ☃ naïve  two  spaces, émigrés; 東京",
    ],
)
def test_the_trained_tokenizer_round_trips_text(texts, text) -> None:
    tok = train_metaspace_bpe(texts, vocab_size=2000)
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_the_trained_tokenizer_differs_from_smollm2(texts, tiny_tokenizer) -> None:
    tok = train_metaspace_bpe(texts, vocab_size=2000)
    assert len(tok) == 2000 != len(tiny_tokenizer)
    sentence = "The Federal Government says it should be safe for asylum seekers to return."
    ours = tok.convert_ids_to_tokens(tok(sentence, add_special_tokens=False)["input_ids"])
    theirs = tiny_tokenizer.convert_ids_to_tokens(
        tiny_tokenizer(sentence, add_special_tokens=False)["input_ids"]
    )
    assert ours[0] == "\u2581The" and theirs[0] == "The" and ours != theirs
    assert (tok.pad_token_id, tok.eos_token_id, tok.convert_ids_to_tokens(2)) == (0, 1, "<0x00>")


def test_the_other_tokenizer_student_reloads_from_its_directory(texts, tmp_path) -> None:
    cfg = OtherTokenizerStudentConfig(
        vocab_size=1500, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128
    )
    model, tok = other_tokenizer_student(texts, cfg, tmp_path / "student")
    loaded = load_model(tmp_path / "student", tmp_path)
    assert loaded.model.config.vocab_size == len(tok) == 1500
    assert (loaded.model.config.eos_token_id, loaded.model.config.pad_token_id) == (1, 0)
    assert prompt_text(loaded.tokenizer, "Hi") == PLAIN_PROMPT.format(instruction="Hi")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert (
        loaded.tokenizer.apply_chat_template(chat, tokenize=False)
        == "Instruction:\nHi\nResponse:\nHello.</s>\n"
    )
    ids = torch.tensor([tok("Instruction:\nHi", add_special_tokens=False)["input_ids"]])
    torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits)


@pytest.mark.slow
def test_a_smollm2_student_is_a_fifth_of_its_depth_and_still_writes_words(data_dir) -> None:
    from veil.models.distillation.data import greedy_generate

    smol = load_model("smollm2-135m-instruct", data_dir)
    student = same_tokenizer_student(smol.model.config, teacher=smol.model)
    assert student.config.num_hidden_layers == 6 and student.config.hidden_size == 576
    assert sum(p.numel() for p in student.parameters()) < 0.5 * sum(
        p.numel() for p in smol.model.parameters()
    )
    (out,) = greedy_generate(smol.model, smol.tokenizer, ["What is the capital of France?"], 12)
    assert "Paris" in out
    (mine,) = greedy_generate(student, smol.tokenizer, ["What is the capital of France?"], 12)
    assert isinstance(mine, str)


@pytest.mark.slow
def test_the_other_tokenizer_student_exports_as_the_phone_lm(texts, tmp_path) -> None:
    import json

    from veil.models.onnx.lm import export_lm

    cfg = OtherTokenizerStudentConfig(
        vocab_size=1500, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128
    )
    other_tokenizer_student(texts, cfg, tmp_path / "student")
    export_lm(tmp_path / "student", tmp_path / "onnx", tmp_path)
    (entry,) = json.loads((tmp_path / "onnx" / "manifest.json").read_text())["entries"]
    assert entry["extra"]["vocab_size"] == 1500 and entry["extra"]["eos_token_ids"] == [1]
    assert entry["extra"]["export_max_rel_error"] < 1e-4

from __future__ import annotations

import pytest
import torch

from veil.models.loading import ModelLoadError, load_model, resolve_model_dir, tiny_llama_config


def test_unknown_name_is_one_clear_line(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'") as err:
        resolve_model_dir("no-such-model", tmp_path)
    assert "\n" not in str(err.value)


def test_directory_without_config_is_rejected(tmp_path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_dir(tmp_path, tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        resolve_model_dir(tmp_path / "file.txt", tmp_path)


def test_corrupt_model_directory_is_a_load_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(tmp_path, tmp_path)


def test_any_local_directory_loads(tmp_path, tiny_tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=len(tiny_tokenizer)))
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m", tmp_path)
    assert loaded.model.config.num_hidden_layers == 2
    assert loaded.tokenizer.padding_side == "left"


def test_tiny_llama_is_built_once_and_is_deterministic(data_dir) -> None:
    first = load_model("tiny-llama", data_dir)
    second = load_model("tiny-llama", data_dir)
    assert first.path == second.path and (first.path / ".veil-complete").is_file()
    w1 = first.model.get_input_embeddings().weight
    assert torch.equal(w1, second.model.get_input_embeddings().weight)


@pytest.mark.slow
def test_default_smollm2_converts_once_and_answers(data_dir) -> None:
    loaded = load_model("smollm2-135m-instruct", data_dir)
    assert sum(p.numel() for p in loaded.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = loaded.model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0, ids.shape[1] :])

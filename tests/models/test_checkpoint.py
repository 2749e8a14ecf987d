from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from veil.models.checkpoint import (
    CHECKPOINT_FILE,
    HEAD_FILE,
    is_personalized_checkpoint,
    load_personalized,
    save_personalized,
)
from veil.models.loading import ModelLoadError
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask
from veil.models.training import LoraSettings, TrainConfig, apply_lora, fit


def _inputs(
    n_tokens: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (5, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # ragged, left-padded rows
    mask[3, :2] = 0
    emb = torch.randn(5, n_tokens, 64, generator=g)
    has = torch.tensor([True, False, True, False, True])  # mixed personalised and population rows
    return ids, mask, emb, has


def _assert_same_outputs(a: PersonalizedLM, b: PersonalizedLM, tol: float = 0.0) -> None:
    """Same logits; ``tol`` > 0 where LoRA was merged (W + BA rounds differently from W x + B A x)."""
    ids, mask, emb, has = _inputs(a.config.n_tokens)
    a.eval()
    b.eval()
    with torch.no_grad():
        for e, h in ((emb, has), (emb, None), (None, None)):
            if a.head is not None:
                torch.testing.assert_close(
                    a.classify(ids, mask, e, h), b.classify(ids, mask, e, h), atol=tol, rtol=tol
                )
            torch.testing.assert_close(
                a.next_token_logits(ids, mask, e, h), b.next_token_logits(ids, mask, e, h), atol=tol, rtol=tol
            )


@pytest.mark.parametrize("lora", [False, True])
def test_save_load_gives_identical_logits(tiny_base, tiny_tokenizer, tmp_path, lora: bool) -> None:
    model = PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1, placement="suffix", num_labels=3))
    if lora:
        apply_lora(model, LoraSettings(r=4))
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; make the adapters change the function
                torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        model.head.weight.normal_()  # type: ignore[union-attr]
    path = save_personalized(model, tiny_tokenizer, tmp_path / "ckpt", {"run": 7}, classes=["a", "b", "c"])
    assert is_personalized_checkpoint(path)
    loaded, tokenizer, meta = load_personalized(path)
    assert meta == {"run": 7, "classes": ["a", "b", "c"]}
    assert tokenizer.padding_side == "left" and len(tokenizer) == len(tiny_tokenizer)
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    assert any("lora_" in n for n, _ in model.named_parameters()) == lora  # the saved model is untouched
    _assert_same_outputs(model, loaded, tol=1e-4 if lora else 0.0)
    if lora:  # the merge matters: without the adapters the outputs differ
        plain = PersonalizedLM(type(tiny_base)(tiny_base.config), model.config)
        assert not torch.allclose(
            plain.next_token_logits(*_inputs()[:2]), loaded.next_token_logits(*_inputs()[:2])
        )


def test_checkpoint_loads_with_plain_transformers(tiny_base, tiny_tokenizer, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=2, placement="prefix"))
    data = TokenizedTask("next_word", [[5, 6, 7], [8, 9]] * 4, np.array([10, 11] * 4), pad_id=2)
    fit(model, data, np.arange(8), TrainConfig(epochs=1, batch_size=4, lr=1e-2, lora=LoraSettings(r=2)))
    path = save_personalized(model, tiny_tokenizer, tmp_path / "gen", {})
    plain, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    loaded, _, meta = load_personalized(path)
    assert loaded.config == model.config and loaded.head is None and meta == {"classes": None}
    _assert_same_outputs(model, loaded, tol=1e-4)


def test_bad_arguments_write_nothing(tiny_base, tiny_tokenizer, tmp_path) -> None:
    model = PersonalizedLM(tiny_base, PersonalizationConfig(num_labels=2))
    with pytest.raises(ValueError, match="2 labels needs as many class names"):
        save_personalized(model, tiny_tokenizer, tmp_path / "x", {}, classes=["only"])
    with pytest.raises(ValueError, match="JSON"):
        save_personalized(model, tiny_tokenizer, tmp_path / "x", {"bad": float("nan")}, classes=["a", "b"])
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no leftover temporary directory
    save_personalized(model, tiny_tokenizer, tmp_path / "x", {"v": 1}, classes=["a", "b"])
    with pytest.raises(FileExistsError):
        save_personalized(model, tiny_tokenizer, tmp_path / "x", {"v": 2}, classes=["a", "b"])
    save_personalized(model, tiny_tokenizer, tmp_path / "x", {"v": 2}, classes=["a", "b"], overwrite=True)
    assert load_personalized(tmp_path / "x")[2]["v"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_corrupt_or_partial_checkpoints_are_load_errors(tiny_base, tiny_tokenizer, tmp_path) -> None:
    model = PersonalizedLM(tiny_base, PersonalizationConfig(num_labels=2))
    good = save_personalized(model, tiny_tokenizer, tmp_path / "good", {}, classes=["a", "b"])
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_personalized(tmp_path / "missing")
    assert not is_personalized_checkpoint(tmp_path / "missing")

    def broken(name: str, damage) -> str:
        import shutil

        path = tmp_path / name
        shutil.copytree(good, path)
        damage(path)
        with pytest.raises(ModelLoadError) as err:
            load_personalized(path)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "incomplete" in broken("nomarker", lambda p: (p / ".veil-complete").unlink())
    assert "no veil-checkpoint.json" in broken("nojson", lambda p: (p / CHECKPOINT_FILE).unlink())
    assert "unreadable" in broken("badjson", lambda p: (p / CHECKPOINT_FILE).write_text("{not json"))

    def future(p):
        manifest = json.loads((p / CHECKPOINT_FILE).read_text())
        manifest["format_version"] = 99
        (p / CHECKPOINT_FILE).write_text(json.dumps(manifest))

    assert "version 99" in broken("future", future)
    assert "head" in broken("nohead", lambda p: (p / HEAD_FILE).unlink())

    def truncate(p):
        weights = p / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    assert "cannot load" in broken("truncated", truncate)

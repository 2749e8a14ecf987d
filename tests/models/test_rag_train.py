"""DeepRAG's two training stages with TRL on a real (tiny, random) Llama and the world's paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rag_world_reader import WorldReader

from veil.models.rag.experiment import bm25_retriever
from veil.models.rag.lm import HFTextLM
from veil.models.rag.protocol import INTERMEDIATE, SEARCH
from veil.models.rag.search import calibration_pairs, find_paths, gold_writer, imitation_example
from veil.models.rag.train import CalibrationConfig, ImitationConfig, calibrate, imitate
from veil.models.rag.world import WorldConfig, build_world


@pytest.fixture(scope="module")
def paths():
    world = build_world(WorldConfig(seed=5))
    retrieve = bm25_retriever(world)

    qs = world.split("train")[:6]
    return find_paths(WorldReader(world), [(q.text, q.answer) for q in qs], gold_writer(world), retrieve)


def _tiny(data_dir):
    from veil.models.loading import load_model

    loaded = load_model("tiny-llama", data_dir)
    return loaded.model.train(), loaded.tokenizer


def _masked_nll(model, examples) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e["input_ids"]])
            logits = model(ids).logits[0, :-1]
            mask = torch.tensor(e["completion_mask"][1:], dtype=torch.bool)
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total, count = total + float(nll[mask].sum()), count + int(mask.sum())
    return total / count


def _margin(model, tokenizer, pairs) -> float:
    """Mean log p(chosen) - log p(rejected) of the pairs' markers."""
    out = []
    with torch.no_grad():
        for p in pairs:
            prompt = tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]
            scores = []
            for side in ("chosen", "rejected"):
                comp = tokenizer(p[side], add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + comp])
                lp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1], -1)
                scores.append(float(lp.gather(1, torch.tensor(comp)[:, None]).sum()))
            out.append(scores[0] - scores[1])
    return float(np.mean(out))


@pytest.mark.slow  # TRL's trainer on a 49k-vocabulary model: about 1-2 minutes on 2 cores
def test_imitation_lowers_the_loss_on_the_learned_tokens(paths, data_dir) -> None:
    model, tok = _tiny(data_dir)
    lm = HFTextLM(model, tok)
    examples = [imitation_example(lm, tok, r.trace) for r in paths]
    before = _masked_nll(model, examples)
    metrics = imitate(
        model, tok, examples, ImitationConfig(lr=3e-3, epochs=3, grad_accum=1, warmup_ratio=0.0)
    )
    assert _masked_nll(model, examples) < before - 0.5 and np.isfinite(metrics["train_loss"])


@pytest.mark.slow
def test_calibration_raises_the_chosen_markers_margin_without_an_eos(paths, data_dir) -> None:
    model, tok = _tiny(data_dir)
    lm = HFTextLM(model, tok)
    pairs = [p for r in paths for p in calibration_pairs(lm, r.trace)]
    assert {p["chosen"] for p in pairs} == {SEARCH, INTERMEDIATE}
    before = _margin(model, tok, pairs)
    calibrate(model, tok, pairs, CalibrationConfig(lr=1e-3, epochs=2, grad_accum=1, warmup_ratio=0.0))
    assert _margin(model, tok, pairs) > before + 1.0


def test_training_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        imitate(None, None, [])
    with pytest.raises(ValueError, match="same length"):
        imitate(None, None, [{"input_ids": [1, 2], "completion_mask": [1]}])
    with pytest.raises(ValueError, match="non-empty"):
        calibrate(None, None, [{"prompt": "p", "chosen": "", "rejected": "r"}])
    with pytest.raises(ValueError, match="beta"):
        CalibrationConfig(beta=0)

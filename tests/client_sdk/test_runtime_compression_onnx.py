"""KV-cache compression on the exported on-device LM, against the cloud's on the same weights.

One compressible export (``query_window=8``) and one plain export of a 4-layer tiny Llama (DBudgetKV
never prunes layers 0 and 1, so two layers would test nothing) with its weights redrawn at std 0.2 (at
the stock 0.02 the random model repeats its last token and every comparison would hold trivially);
about 25 s on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from veil.client_sdk.batching import left_pad
from veil.client_sdk.runtime import compression as device
from veil.client_sdk.runtime.generate import OnnxLM, SamplingParams
from veil.models import compression as cloud
from veil.models import generation
from veil.models.loading import tiny_llama_config
from veil.models.onnx.lm import export_causal_lm
from veil.models.personalization import PersonalizationConfig, PersonalizedLM

N_SOFT = 2
WINDOW = 8
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=())
# pruning specs that drop tokens on this model, with the query windows the graph gives
SPECS = [
    {"method": "dbudgetkv", "threshold": 0.05},
    {"method": "dbudgetkv", "threshold": 0.02, "norm_scope": "non_sink", "head_agg": "mean_of_head_norms"},
    {"method": "dbudgetkv", "threshold": 0.05, "ranking": "snapkv"},
    {"method": "streaming_llm", "budget": 0.4},
    {"method": "snapkv", "budget": 0.5, "window_size": WINDOW},
    {"method": "h2o", "budget": 0.5, "obs_window": WINDOW},
    {"method": "pyramidkv", "budget": 0.5, "window_size": WINDOW, "beta": 4.0},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, OnnxLM, OnnxLM]:
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(
        tiny_llama_config(vocab_size=128, num_hidden_layers=4), attn_implementation="sdpa"
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    compressible, plain = tmp_path_factory.mktemp("lm-compressible"), tmp_path_factory.mktemp("lm-plain")
    export_causal_lm(lm, compressible, query_window=WINDOW)
    export_causal_lm(lm, plain)
    return lm, OnnxLM(compressible, threads=2), OnnxLM(plain, threads=2)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = np.random.default_rng(1)
    return [rng.integers(3, 128, size=n).tolist() for n in (30, 19, 26)]


def _soft(hidden: int) -> list[np.ndarray | None]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(N_SOFT, hidden)).astype(np.float32), None, rng.normal(size=(N_SOFT, hidden))]


def _device_keep(model: OnnxLM, prompts, soft, config) -> tuple[list[np.ndarray], list]:
    """The prefill and selection of ``generate_batch``, stopped before the cache is compacted."""
    ids, text_mask = left_pad(prompts, model.spec.pad_token_id)
    soft_arr, soft_mask = model._stack_prefixes(soft)
    mask = np.concatenate([soft_mask, text_mask], axis=1)
    out = model.step(ids, mask, np.clip(np.cumsum(mask, axis=1) - 1, 0, None), None, soft_arr)
    configs = [config] * len(prompts)
    protected = np.concatenate([soft_mask, np.zeros_like(text_mask)], axis=1).astype(bool)
    window = device.query_window(configs, mask.shape[1])
    prefill, _ = device.prefill_of(
        out.present, out.queries, mask.astype(bool), protected, model.spec.attention_scaling, window
    )
    return device.keep_masks(configs, prefill)  # in the cloud's layout, left padding only


def test_the_manifest_declares_the_compressible_graph(models) -> None:
    _, lm, plain = models
    assert (lm.spec.query_window, lm.spec.n_heads, lm.spec.attention_scaling) == (WINDOW, 4, 0.25)
    assert lm.spec.compressible and not plain.spec.compressible
    names = [t.name for t in lm.entry.inputs]
    assert names[2:7] == [*(f"attention_mask.{i}" for i in range(4)), "position_ids"]
    assert [t.name for t in lm.entry.outputs][-4:] == [f"query.{i}" for i in range(4)]
    assert [t.name for t in plain.entry.inputs][
        2
    ] == "attention_mask" and "query_window" not in plain.entry.extra
    assert lm.entry.extra["export_max_rel_error"] < 1e-5


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_on_device_compression_keeps_what_the_cloud_keeps_and_generates_the_same(
    models, prompts, spec
) -> None:
    torch_lm, lm, _ = models
    soft = _soft(lm.spec.hidden_size)
    plm = PersonalizedLM(torch_lm, PersonalizationConfig(n_tokens=N_SOFT, placement="prefix")).eval()
    compressor = cloud.from_spec(spec)
    cloud_kept: list = []
    want = generation.generate_batch(
        plm,
        prompts,
        soft,
        [generation.SamplingParams(max_new_tokens=12, temperature=0.0)] * 3,
        pad_id=lm.spec.pad_token_id,
        compression=compressor,
        on_kv_kept=cloud_kept.extend,
    )
    keep, _ = _device_keep(lm, prompts, soft, device.from_spec(spec))
    for layer, (got, ref) in enumerate(zip(keep, compressor.last_keep, strict=True)):
        assert np.array_equal(got, ref.numpy()), f"layer {layer}"
    assert any(not k.all() for k in keep[2:])  # positions were dropped: the comparison can fail
    kept: list = []
    assert lm.generate_batch(prompts, soft, GREEDY, compression=spec, on_kv_kept=kept.extend) == want
    for ours, theirs in zip(kept, cloud_kept, strict=True):
        assert ours.per_layer == pytest.approx(theirs.per_layer) and ours.mean < 1.0


CONFIGS_KEEPING_ALL = [
    device.DBudgetKVConfig(threshold=0.0),
    device.StreamingLLMConfig(budget=1.0),
    device.SnapKVConfig(budget=1.0, window_size=WINDOW),
    device.H2OConfig(budget=1.0, obs_window=WINDOW),
    device.PyramidKVConfig(budget=1.0, window_size=WINDOW),
]


@pytest.mark.parametrize("config", CONFIGS_KEEPING_ALL, ids=lambda c: type(c).__name__)
def test_keeping_everything_generates_exactly_the_uncompressed_tokens(models, prompts, config) -> None:
    _, lm, plain = models
    soft = _soft(lm.spec.hidden_size)
    full = plain.generate_batch(prompts, soft, GREEDY)
    assert lm.generate_batch(prompts, soft, GREEDY) == full
    kept: list = []
    assert lm.generate_batch(prompts, soft, GREEDY, compression=config, on_kv_kept=kept.extend) == full
    assert [k.per_layer for k in kept] == [(1.0,) * 4] * 3
    assert len({t for toks, _ in full for t in toks}) > 10  # the model does not just repeat a token


def test_compression_shrinks_the_cache_and_keeps_layers_0_and_1(models, prompts) -> None:
    _, lm, _ = models
    ids, mask = left_pad(prompts, lm.spec.pad_token_id)
    out = lm.step(ids, mask, np.clip(np.cumsum(mask, axis=1) - 1, 0, None))
    configs = [device.DBudgetKVConfig(threshold=0.05)] * 3
    cache, masks, kept = device.compress_prefill(
        configs,
        out.present,
        out.queries,
        mask.astype(bool),
        np.zeros_like(mask, bool),
        lm.spec.attention_scaling,
    )
    assert sum(a.nbytes for a in cache) < sum(a.nbytes for a in out.present)
    assert all(cache[i] is out.present[i] for i in range(4))  # layers 0 and 1: untouched arrays
    assert [m.shape[1] for m in masks[2:]] == [c.shape[2] for c in cache[4::2]]
    assert all(m.sum(axis=1).tolist() == [round(f * n) for f, n in zip(fr, map(len, prompts), strict=True)]
               for m, fr in zip(masks, zip(*(k.per_layer for k in kept), strict=True), strict=True))  # fmt: skip
    # the next token of each row still sits at its prompt length: positions are the original ones
    step = lm.step(np.array([[5], [6], [7]]), [np.concatenate([m, np.ones((3, 1), np.int64)], 1) for m in masks],
                   np.array([[len(p)] for p in prompts]), cache)  # fmt: skip
    assert [c.shape[2] for c in step.present[::2]] == [m.shape[1] + 1 for m in masks]


def test_compressed_greedy_generation_is_deterministic(models, prompts) -> None:
    _, lm, _ = models
    spec = {"method": "dbudgetkv", "threshold": 0.1}
    first = lm.generate_batch(prompts, params=GREEDY, compression=spec)
    assert lm.generate_batch(prompts, params=GREEDY, compression=spec) == first


def test_rows_may_use_different_methods_or_none(models, prompts) -> None:
    _, lm, _ = models
    full = lm.generate_batch(prompts, params=GREEDY)
    kept: list = []
    mixed = [None, {"method": "dbudgetkv", "threshold": 0.05}, device.StreamingLLMConfig(budget=1.0)]
    got = lm.generate_batch(prompts, params=GREEDY, compression=mixed, on_kv_kept=kept.extend)
    assert got[0] == full[0] and got[2] == full[2]  # uncompressed and keep-all rows are unchanged
    assert kept[0] is None and kept[1].mean < 1.0 and kept[2].mean == 1.0
    alone = lm.generate_batch([prompts[1]], params=GREEDY, compression=mixed[1])
    assert alone[0] == got[1]  # a row's compression does not depend on its batch


def test_streaming_llm_runs_on_a_plain_graph(models, prompts) -> None:
    _, lm, plain = models
    config = device.StreamingLLMConfig(budget=0.4)
    assert plain.generate_batch(prompts, params=GREEDY, compression=config) == lm.generate_batch(
        prompts, params=GREEDY, compression=config
    )


def test_bad_compression_is_a_value_error(models, prompts) -> None:
    _, lm, plain = models
    with pytest.raises(ValueError, match="graph gives 0"):
        plain.generate_batch(prompts, params=GREEDY, compression=device.DBudgetKVConfig())
    with pytest.raises(ValueError, match="needs the last 30 prompt queries"):
        lm.generate_batch(prompts, params=GREEDY, compression=device.H2OConfig())  # all queries: 30 > 8
    with pytest.raises(ValueError, match="unknown compression method"):
        lm.generate_batch(prompts, params=GREEDY, compression={"method": "tova"})
    with pytest.raises(ValueError, match="threshold must be in"):
        lm.generate(prompts[0], params=GREEDY, compression={"method": "dbudgetkv", "threshold": 0})
    with pytest.raises(ValueError, match="one compression .* per row"):
        lm.generate_batch(prompts, params=GREEDY, compression=[None, None])
    with pytest.raises(ValueError, match="compression must be a config"):
        lm.generate_batch(prompts, params=GREEDY, compression="dbudgetkv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one attention mask for all layers"):
        ids, mask = left_pad(prompts, 2)
        other = mask.copy()
        other[0, -1] = 0
        plain.forward(ids, [mask, other, mask, mask], np.zeros_like(ids))

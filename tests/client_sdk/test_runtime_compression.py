"""The phone's KV-cache compression (numpy) against the cloud's (torch) on random prefills, and its
pieces against naive references; the end-to-end runs on an exported model are in
``test_runtime_compression_onnx.py``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from veil.client_sdk.runtime import compression as device
from veil.models import compression as cloud
from veil.models.compression import scoring as cloud_scoring

SPECS = [
    {"method": "dbudgetkv"},
    {"method": "dbudgetkv", "threshold": 0.05},
    {"method": "dbudgetkv", "threshold": 0.02, "norm_scope": "non_sink", "head_agg": "mean_of_head_norms"},
    {"method": "dbudgetkv", "threshold": 0.05, "ranking": "snapkv", "score_window": 6},
    {"method": "dbudgetkv", "threshold": 0.05, "ranking": "h2o", "k_rows": 3, "skip_layers": [0]},
    {"method": "streaming_llm", "budget": 0.4},
    {"method": "streaming_llm", "budget": 9, "n_sink": 2},
    {"method": "snapkv", "budget": 0.5, "window_size": 6},
    {"method": "snapkv", "budget": 11, "window_size": 4, "kernel_size": 3, "pooling": "maxpool"},
    {"method": "h2o", "budget": 0.5},
    {"method": "h2o", "budget": 0.3, "recent_fraction": 0.25, "obs_window": 5},
    {"method": "pyramidkv", "budget": 0.5, "window_size": 6, "beta": 4.0},
]
BAD_SPECS = [
    {},
    {"method": "tova"},
    {"method": "dbudgetkv", "threshold": 0},
    {"method": "dbudgetkv", "threshold": 1.5},
    {"method": "dbudgetkv", "bogus": 1},
    {"method": "dbudgetkv", "ranking": "random"},
    {"method": "dbudgetkv", "k_rows": 0},
    {"method": "dbudgetkv", "head_agg": "max"},
    {"method": "streaming_llm", "budget": 0.0},
    {"method": "streaming_llm", "budget": True},
    {"method": "streaming_llm", "budget": "half"},
    {"method": "streaming_llm", "n_sink": -1},
    {"method": "snapkv", "kernel_size": 4},
    {"method": "snapkv", "pooling": "median"},
    {"method": "h2o", "recent_fraction": 1.5},
    {"method": "h2o", "obs_window": 0},
    {"method": "pyramidkv", "beta": 0.5},
]


def _prefill(seed: int, n: int = 37, window: int | None = None) -> device.Prefill:
    """Three rows: one unpadded, one left-padded by 9, one padded by 4 with 2 protected soft tokens."""
    rng = np.random.default_rng(seed)
    b, h, h_kv, d = 3, 4, 2, 8
    keys = [(rng.normal(size=(b, h_kv, n, d)) * 1.5).astype(np.float32) for _ in range(4)]
    w = n if window is None else window
    queries = [(rng.normal(size=(b, h, w, d)) * 1.5).astype(np.float32) for _ in range(4)]
    valid = np.ones((b, n), bool)
    valid[1, :9] = False
    valid[2, :4] = False
    protected = np.zeros((b, n), bool)
    protected[2, 4:6] = True
    return device.Prefill(keys, queries, valid, protected, d**-0.5)


def _to_torch(p: device.Prefill) -> cloud.Prefill:
    t = torch.from_numpy
    return cloud.Prefill(
        [t(k) for k in p.keys], [t(q) for q in p.queries], t(p.valid), t(p.protected), p.scaling
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_selection_keeps_the_same_positions_as_the_cloud(spec: dict) -> None:
    for seed in range(3):
        prefill = _prefill(seed)
        compressor = cloud.from_spec(spec)
        want = compressor.compress(_to_torch(prefill))
        config = device.from_spec(spec)
        got, kept = device.keep_masks([config] * 3, prefill)
        for layer, (g, w) in enumerate(zip(got, want, strict=True)):
            assert np.array_equal(g, w.numpy()), f"layer {layer}, seed {seed}"
        for k, c in zip(kept, compressor.last_kept, strict=True):
            assert k is not None and np.allclose(k.per_layer, c.per_layer)
    assert any(not np.array_equal(g, prefill.valid) for g in got)  # something was pruned


SHARED = [
    "BudgetConfig",
    "ObservationWindowConfig",
    "KVKept",
    *(c.__name__ for c, _ in device.METHODS.values()),
]


@pytest.mark.parametrize("name", SHARED)
def test_the_cloud_reexports_the_sdk_definitions(name: str) -> None:
    assert getattr(cloud, name) is getattr(device, name)
    assert name in cloud.__all__


def test_the_cloud_builds_a_compressor_for_every_sdk_method_with_its_config() -> None:
    assert list(cloud.METHODS) == list(device.METHODS)
    for name, (config_cls, _) in device.METHODS.items():
        compressor_cls, cloud_config_cls = cloud.METHODS[name]
        assert cloud_config_cls is config_cls
        assert type(cloud.from_spec({"method": name})) is compressor_cls, name


@pytest.mark.parametrize("spec", SPECS + BAD_SPECS, ids=repr)
def test_specs_are_accepted_or_refused_alike(spec: dict) -> None:
    try:
        want = dataclasses.asdict(cloud.from_spec(spec).config)
    except ValueError:
        with pytest.raises(ValueError):
            device.from_spec(spec)
    else:
        assert dataclasses.asdict(device.from_spec(spec)) == want


def test_as_config_refuses_what_is_not_a_config() -> None:
    with pytest.raises(ValueError, match="compression must be a config"):
        device.as_config(cloud.DBudgetKV())  # the cloud's compressor, not a config
    assert device.as_config(device.SnapKVConfig()) == device.SnapKVConfig()


def test_query_attention_matches_a_naive_softmax() -> None:
    p = _prefill(7, n=13, window=5)
    q, k = p.queries[0], p.keys[0]
    got = device.scoring.query_attention(q, k, p.valid, p.scaling)
    for b in range(3):
        for h in range(4):
            for i in range(5):
                seen = [j for j in range(13) if p.valid[b, j] and j <= 13 - 5 + i]
                if not p.valid[b, 13 - 5 + i]:
                    assert not got[b, h, i].any()
                    continue
                logits = np.array([q[b, h, i] @ k[b, h // 2, j] * p.scaling for j in seen], np.float64)
                probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
                np.testing.assert_allclose(got[b, h, i, seen], probs, rtol=1e-5, atol=1e-7)
                assert got[b, h, i].sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("pooling", ["avgpool", "maxpool"])
def test_pooling_and_budgets_match_the_cloud(pooling: str) -> None:
    scores = np.random.default_rng(1).random((2, 11)).astype(np.float32)
    for k in (1, 3, 5):
        want = cloud_scoring.pool_scores(torch.from_numpy(scores), k, pooling).numpy()
        np.testing.assert_allclose(device.scoring.pool_scores(scores, k, pooling), want, rtol=1e-6)
    lengths = np.array([7, 30, 100])
    for budget in (0.1, 0.5, 1.0, 7):
        want = cloud_scoring.budget_tokens(budget, torch.from_numpy(lengths))
        assert device.scoring.budget_tokens(budget, lengths).tolist() == want.tolist()
        for beta in (1.0, 2.0, 20.0):
            want_p = cloud.pyramid_budgets(want, 5, beta, torch.from_numpy(lengths))
            got_p = device.pyramid_budgets(device.scoring.budget_tokens(budget, lengths), 5, beta, lengths)
            assert got_p.tolist() == want_p.tolist()
    with pytest.raises(ValueError, match="exceeds the prompt"):
        device.scoring.budget_tokens(8, np.array([7]))


def test_compact_packs_kept_slots_in_order_and_masks_the_rest() -> None:
    # rows [pad t1 t2 t3] keeping t1 t3 and [s1 s2 s3 s4] keeping s2 -> slots [t1 t3], [s4 s2]
    keys = np.arange(8, dtype=np.float32).reshape(2, 1, 4, 1)  # row 0: 0..3, row 1: 4..7
    keep = np.array([[False, True, False, True], [False, True, False, False]])
    everything = np.ones((2, 4), bool)
    cache, masks = device.compact([keys, -keys, keys, -keys], [keep, everything])
    assert cache[0][:, 0, :, 0].tolist() == [[1, 3], [7, 5]]
    assert cache[1][:, 0, :, 0].tolist() == [[-1, -3], [-7, -5]]
    assert masks[0].tolist() == [[1, 1], [0, 1]] and masks[0].dtype == np.int64
    assert cache[2] is keys and masks[1].tolist() == everything.astype(int).tolist()  # unpruned: untouched
    with pytest.raises(ValueError, match="key and a value"):
        device.compact([keys], [keep])


def test_dbudgetkv_threshold_zero_keeps_everything_and_never_touches_layers_0_and_1() -> None:
    prefill = _prefill(3, window=1)
    keep, kept = device.keep_masks([device.DBudgetKVConfig(threshold=0.0)] * 3, prefill)
    assert all(np.array_equal(k, prefill.valid) for k in keep)
    keep, kept = device.keep_masks([device.DBudgetKVConfig(threshold=0.5)] * 3, prefill)
    assert all(np.array_equal(k, prefill.valid) for k in keep[:2])
    assert all(r is not None and r.per_layer[:2] == (1.0, 1.0) and r.mean < 1.0 for r in kept)


def test_missing_queries_are_a_clear_error() -> None:
    p = _prefill(0, window=4)
    cache = [a for k in p.keys for a in (k, k)]
    with pytest.raises(ValueError, match="needs the last 6 prompt queries, the model's graph gives 4"):
        device.compress_prefill(
            [device.SnapKVConfig(window_size=6)] * 3, cache, p.queries, p.valid, p.protected, 1.0
        )
    with pytest.raises(ValueError, match="graph gives 0"):
        device.compress_prefill([device.DBudgetKVConfig()] * 3, cache, None, p.valid, p.protected, 1.0)
    new, masks, kept = device.compress_prefill(
        [device.StreamingLLMConfig(budget=0.5), None, None], cache, None, p.valid, p.protected, 1.0
    )
    assert (
        kept[1] is None and kept[0] is not None and kept[0].per_layer == (18 / 37,) * 4
    )  # round(18.5) = 18, half to even
    assert sum(a.nbytes for a in new) < sum(a.nbytes for a in cache)


def test_the_package_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, veil.client_sdk.runtime.compression, veil.client_sdk.runtime.generate\n"
        "print(sorted(k for k in ('torch', 'transformers') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"

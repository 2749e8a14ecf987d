"""KV compression maths without a model: the norm criterion against a naive loop, the masks, the budgets,
the configs' and the factory's refusals."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from veil.models.compression import (
    H2O,
    DBudgetKV,
    DBudgetKVConfig,
    Prefill,
    PyramidKV,
    SnapKV,
    StreamingLLM,
    from_spec,
    norm_loss_curve,
    pyramid_budgets,
)
from veil.models.compression.scoring import accumulated_attention, budget_tokens, query_attention


@pytest.mark.parametrize("name", ["scoring", "dbudgetkv", "pyramidkv", "registry"])
def test_module_examples_hold(name: str) -> None:
    module = importlib.import_module(f"veil.models.compression.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("head_agg", ["joint_frobenius", "mean_of_head_norms"])
def test_norm_loss_curve_matches_the_naive_norms_of_every_cut(head_agg: str) -> None:
    torch.manual_seed(0)
    a = torch.rand(2, 3, 7)  # (B, H, n) ranked attention
    full = (a**2).sum(-1) + torch.rand(2, 3)  # sinks carry extra mass
    got = norm_loss_curve(a**2, full, head_agg)
    for b in range(2):
        for k in range(8):
            kept = full[b] - (a[b, :, k:] ** 2).sum(-1)  # (H,)
            if head_agg == "joint_frobenius":
                want = 1 - kept.sum().sqrt() / full[b].sum().sqrt()
            else:
                want = 1 - kept.sqrt().mean() / full[b].sqrt().mean()
            assert got[b, k] == pytest.approx(float(want), abs=1e-6)


def test_query_attention_is_softmax_over_visible_keys_with_gqa_groups() -> None:
    torch.manual_seed(1)
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 6, 8)  # 4 query heads, 2 KV heads
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    got = query_attention(q, k, valid, 0.5)
    for b in range(2):
        for h in range(4):
            for i in range(3):
                pos = 3 + i
                logits = (q[b, h, i] @ k[b, h // 2].T) * 0.5
                vis = valid[b] & (torch.arange(6) <= pos)
                want = torch.softmax(logits.masked_fill(~vis, float("-inf")), -1)
                torch.testing.assert_close(got[b, h, i], want)
    acc = accumulated_attention(q, k, valid, 0.5, chunk=2)
    torch.testing.assert_close(acc, got.sum(dim=(1, 2)))


def _prefill(n: int = 40, pad: int = 0, layers: int = 4, seed: int = 0) -> Prefill:
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, 2, n, 16, generator=g) for _ in range(layers)]
    queries = [torch.randn(1, 4, n, 16, generator=g) for _ in range(layers)]
    valid = torch.arange(n)[None] >= pad
    return Prefill(keys, queries, valid, torch.zeros_like(valid), 16**-0.5)


@pytest.mark.parametrize(
    "compressor",
    [
        StreamingLLM(budget=12),
        SnapKV(budget=12, window_size=4),
        H2O(budget=12),
        SnapKV(budget=0.3, window_size=4),
    ],
    ids=["streaming", "snapkv", "h2o", "snapkv-fraction"],
)
def test_baselines_keep_exactly_their_budget_per_layer(compressor) -> None:
    prefill = _prefill(pad=5)  # 35 real tokens after 5 padding slots
    want = 12 if compressor.config.budget == 12 else round(35 * 0.3)
    for keep in compressor.compress(prefill):
        assert int(keep.sum()) == want
        assert not bool(keep[0, :5].any())  # padding is never kept


def test_streaming_llm_keeps_sinks_and_the_most_recent_tokens() -> None:
    (keep, *_) = StreamingLLM(budget=10).compress(_prefill(pad=5))
    assert keep[0].nonzero().flatten().tolist() == [5, 6, 7, 8, 34, 35, 36, 37, 38, 39]


def test_pyramidkv_gives_what_capped_layers_cannot_keep_to_the_others() -> None:
    full = pyramid_budgets(torch.tensor([40, 30]), 2, 20.0, torch.tensor([40, 40]))
    assert full.tolist() == [[40, 40], [40, 20]]  # budget = prompt: every layer whole; 30 of 40: mean 30
    deep = pyramid_budgets(torch.tensor([90]), 6, 20.0, torch.tensor([100]))[0]
    assert int(deep.sum()) == 6 * 90 and int(deep.max()) <= 100
    assert deep.tolist() == sorted(deep.tolist(), reverse=True)  # still a pyramid


def test_pyramidkv_budgets_decrease_with_depth_and_average_the_budget() -> None:
    comp = PyramidKV(budget=10, window_size=4, beta=2.0)
    counts = [int(k.sum()) for k in comp.compress(_prefill())]
    assert counts == pyramid_budgets(torch.tensor([10]), 4, 2.0, torch.tensor([40]))[0].tolist()
    assert counts == sorted(counts, reverse=True) and sum(counts) == 40


def test_huge_threshold_keeps_only_sinks_and_the_last_token_above_layer_1() -> None:
    prefill = _prefill(pad=3)
    keep = DBudgetKV(threshold=0.999).compress(prefill)
    assert bool(keep[0][0, 3:].all()) and bool(keep[1][0, 3:].all())
    for k in keep[2:]:
        assert k[0].nonzero().flatten().tolist() == [3, 4, 5, 6, 39]


@pytest.mark.parametrize("ranking", ["position", "snapkv", "h2o"])
@pytest.mark.parametrize("scope", ["full_row", "non_sink"])
@pytest.mark.parametrize("agg", ["joint_frobenius", "mean_of_head_norms"])
def test_kept_fraction_never_grows_with_the_threshold(ranking: str, scope: str, agg: str) -> None:
    prefill = _prefill(n=64)
    fractions = []
    for t in (0.0, 0.001, 0.01, 0.05, 0.2, 0.5, 0.9):
        comp = DBudgetKV(threshold=t, ranking=ranking, norm_scope=scope, head_agg=agg)
        comp.compress(prefill)
        fractions.append(comp.last_kept[0].mean)
    assert fractions[0] == 1.0
    assert fractions == sorted(fractions, reverse=True)
    assert comp.last_kept[0].per_layer[:2] == (1.0, 1.0) and max(comp.last_kept[0].per_layer[2:]) < 0.5


def test_non_sink_norm_is_stricter_than_the_full_row() -> None:
    prefill = _prefill(n=64)
    full, non_sink = DBudgetKV(threshold=0.05), DBudgetKV(threshold=0.05, norm_scope="non_sink")
    full.compress(prefill)
    non_sink.compress(prefill)
    assert non_sink.last_kept[0].mean >= full.last_kept[0].mean


def test_protected_positions_are_always_kept() -> None:
    p = _prefill(pad=2)
    protected = torch.zeros_like(p.valid)
    protected[0, 10:13] = True
    prefill = Prefill(p.keys, p.queries, p.valid, protected, p.scaling)
    for comp in (
        DBudgetKV(threshold=0.999),
        StreamingLLM(budget=6),
        SnapKV(budget=6, window_size=2),
        H2O(budget=6),
    ):
        for keep in comp.compress(prefill):
            assert bool(keep[0, 10:13].all()), type(comp).__name__


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "kvzip"}, "unknown compression method 'kvzip'"),
        ({"method": "dbudgetkv", "threshold": 0.0}, r"threshold must be in \(0, 1\)"),
        ({"method": "dbudgetkv", "threshold": 1.5}, r"threshold must be in \(0, 1\)"),
        ({"method": "dbudgetkv", "budget": 0.5}, "unknown field"),
        ({"method": "snapkv", "budget": 1.5}, r"fractional budget must be in \(0, 1\]"),
        ({"method": "h2o", "budget": 0}, "token budget must be >= 1"),
        ({"method": "dbudgetkv", "ranking": "random"}, "ranking must be"),
        ({"threshold": 0.01}, "with a 'method'"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_spec(spec)


def test_specs_build_each_method_with_its_fields() -> None:
    comp = from_spec({"method": "dbudgetkv", "threshold": 0.05, "skip_layers": [0]})
    assert isinstance(comp, DBudgetKV) and comp.config == DBudgetKVConfig(threshold=0.05, skip_layers=(0,))
    assert isinstance(from_spec({"method": "pyramidkv", "budget": 64}), PyramidKV)


def test_a_budget_larger_than_the_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match="budget of 50 tokens exceeds the prompt of 35 tokens"):
        budget_tokens(50, torch.tensor([40, 35]))
    with pytest.raises(ValueError, match="exceeds the prompt"):
        StreamingLLM(budget=41).compress(_prefill())


@pytest.mark.parametrize("ranking", ["position", "snapkv", "h2o"])
@pytest.mark.parametrize("k_rows", [1, 3])
def test_scoring_layers_in_groups_keeps_what_scoring_each_layer_alone_keeps(
    ranking: str, k_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import veil.models.compression.dbudgetkv as dbk

    p = _prefill(n=48, layers=7, seed=5)
    valid = torch.cat([p.valid, torch.arange(48)[None] >= 9])  # a second row, left-padded
    prefill = Prefill(
        [torch.cat([k, k.flip(2)]) for k in p.keys],
        [torch.cat([q, q.roll(3, 2)]) for q in p.queries],
        valid,
        torch.zeros_like(valid),
        p.scaling,
    )
    runs = []
    for elements in (1, 4 * 2 * 48 * 3, dbk.GROUP_ELEMENTS):  # one layer per group, three, all
        monkeypatch.setattr(dbk, "GROUP_ELEMENTS", elements)
        runs.append(DBudgetKV(threshold=0.02, ranking=ranking, k_rows=k_rows).compress(prefill))
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run, strict=True))
    assert min(int(k.sum()) for k in runs[0][2:]) < int(valid.sum())  # something was pruned

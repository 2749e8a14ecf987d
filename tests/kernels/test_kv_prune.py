"""``veil.kernels.kv_prune``: the references against naive maths, the Triton kernels against the references.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, in a subprocess, since
the variable must be set before Triton is imported); the GPU test is skipped with its reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from veil.kernels import compact_kv, last_query_attention
from veil.kernels.kv_prune import compact_kv_reference, last_query_attention_reference, triton_available


def _inputs(seed: int, b: int = 3, h: int = 6, h_kv: int = 2, n: int = 77, d: int = 24):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, d, generator=g)
    keys = torch.randn(b, h_kv, n, d, generator=g)
    values = torch.randn(b, h_kv, n, d, generator=g)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, :9] = False  # a left-padded row
    valid[2, -1] = False  # a row whose last position is padding: no query
    return q, keys, values, valid


def test_the_attention_reference_is_softmax_over_repeated_keys_and_hides_padding() -> None:
    q, keys, _, valid = _inputs(0)
    scale = 24**-0.5
    probs = last_query_attention_reference(q, keys, valid, scale)
    rep = keys.repeat_interleave(3, dim=1)  # (B, H, n, d): what GQA attention computes
    naive = torch.softmax(torch.einsum("bhd,bhnd->bhn", q, rep) * scale, dim=-1)
    torch.testing.assert_close(probs[0], naive[0])
    assert torch.all(probs[1, :, :9] == 0) and torch.allclose(probs[1].sum(-1), torch.ones(6))
    assert torch.all(probs[2] == 0)


def test_compaction_keeps_the_indexed_positions_and_pads_with_zeros() -> None:
    _, keys, values, _ = _inputs(1)
    index = torch.tensor([[0, 1, 2, 76], [-1, 5, 6, 7], [-1, -1, 3, 4]])
    k, v = compact_kv_reference(keys, values, index)
    assert k.shape == (3, 2, 4, 24) and k.is_contiguous()
    torch.testing.assert_close(k[0, :, 3], keys[0, :, 76])
    torch.testing.assert_close(v[1, :, 1:], values[1, :, 5:8])
    assert torch.all(k[2, :, :2] == 0) and torch.all(v[1, :, 0] == 0)
    with pytest.raises(ValueError, match="points past"):
        compact_kv_reference(keys, values, torch.tensor([[77], [0], [0]]))
    with pytest.raises(ValueError, match="index must be"):
        compact_kv_reference(keys, values, torch.tensor([0, 1]))


def test_dispatch_uses_the_reference_on_cpu_and_refuses_bad_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    q, keys, values, valid = _inputs(2)
    torch.testing.assert_close(
        last_query_attention(q, keys, valid, 0.2), last_query_attention_reference(q, keys, valid, 0.2)
    )
    assert compact_kv(keys, values, torch.zeros(3, 2, dtype=torch.long))[0].shape == (3, 2, 2, 24)
    monkeypatch.setenv("VEIL_KERNELS", "fast")
    with pytest.raises(ValueError, match="VEIL_KERNELS must be"):
        last_query_attention(q, keys, valid, 0.2)
    monkeypatch.setenv("VEIL_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET|does not import"):
        last_query_attention(q, keys, valid, 0.2)
    with pytest.raises(ValueError, match="does not fit"):
        last_query_attention_reference(q[:, :5], keys, valid, 0.2)


_COMPARE = textwrap.dedent(
    """
    import torch
    from veil.kernels import compact_kv, last_query_attention
    from veil.kernels.kv_prune import compact_kv_reference, last_query_attention_reference
    worst = 0.0
    for seed, (b, h, h_kv, n, d) in enumerate([(3, 6, 2, 77, 24), (1, 9, 3, 300, 64), (2, 4, 4, 5, 8)]):
        g = torch.Generator().manual_seed(100 + seed)
        q, keys = torch.randn(b, h, d, generator=g), torch.randn(b, h_kv, n, d, generator=g) * 2
        values = torch.randn(b, h_kv, n, d, generator=g)
        valid = torch.rand(b, n, generator=g) > 0.2
        valid[0, -1] = True
        got = last_query_attention(q, keys, valid, d ** -0.5)
        want = last_query_attention_reference(q, keys, valid, d ** -0.5)
        worst = max(worst, float((got - want).abs().max()))
        m = max(1, n // 3)
        index = torch.randint(-1, n, (b, m), generator=g)
        for got_t, want_t in zip(compact_kv(keys, values, index), compact_kv_reference(keys, values, index)):
            assert torch.equal(got_t, want_t), "compaction differs"
    assert worst < 1e-5, worst
    print("ok", worst)
    """
)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed (the dev extra installs it)")
def test_the_triton_kernels_match_the_references_under_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "VEIL_KERNELS": "triton"}
    out = subprocess.run(
        [sys.executable, "-c", _COMPARE], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr[-3000:]


def _poison_the_allocator() -> None:
    """Leave NaN in the caching allocator's free blocks, so an output element no kernel writes shows up."""
    torch.empty(1 << 28, device="cuda").fill_(float("nan"))  # 1 GiB, freed into the cache at once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the kernels' GPU check needs one")
def test_the_triton_kernels_match_the_references_on_a_gpu() -> None:
    shapes = [(2, 32, 8, 8192, 128), (1, 9, 3, 1000, 64), (3, 4, 4, 77, 24), (1, 32, 8, 40_000, 128)]
    for seed, (b, h, h_kv, n, d) in enumerate(shapes):
        g = torch.Generator(device="cuda").manual_seed(seed)
        q = torch.randn(b, h, d, device="cuda", generator=g, dtype=torch.bfloat16)
        keys = torch.randn(b, h_kv, n, d, device="cuda", generator=g, dtype=torch.bfloat16) * 2
        valid = torch.rand(b, n, device="cuda", generator=g) > 0.1
        valid[0, : n // 5] = False  # a left-padded row
        valid[:, -1] = True
        if b > 1:
            valid[-1, -1] = False  # a row whose last position is padding: all zeros
        _poison_the_allocator()
        got = last_query_attention(q, keys, valid, d**-0.5)
        assert torch.isfinite(got).all(), "an element of the row was not written"
        rep = keys.double().repeat_interleave(h // h_kv, dim=1)
        logits = torch.einsum("bhd,bhnd->bhn", q.double(), rep) * d**-0.5
        want = torch.softmax(logits.masked_fill(~valid[:, None], float("-inf")), dim=-1) * valid[:, None, -1:]
        rel = float((got.double() - want).norm() / want.norm())
        assert rel < 1e-5, (b, h, h_kv, n, d, rel)
        torch.testing.assert_close(
            got, last_query_attention_reference(q, keys, valid, d**-0.5), atol=1e-5, rtol=1e-3
        )
        index = torch.randint(-1, n, (b, n // 2), device="cuda", generator=g)
        _poison_the_allocator()
        for got_t, want_t in zip(
            compact_kv(keys, keys * 3, index), compact_kv_reference(keys, keys * 3, index), strict=True
        ):
            assert torch.equal(got_t, want_t)

"""HBM bandwidth share of ``veil.kernels``' pruning kernels, and what a smaller cache buys one decode step.

Issue 13's kernel target: each kernel moves its bytes at 80 % or more of the device's measured memory
bandwidth. On one CUDA device, for Llama-3-8B's attention shape (32 query heads, 8 key heads, d = 128,
bfloat16):

* **copy**: the ceiling, a device-to-device copy of ``--copy-gib`` GiB (bytes read plus bytes written);
* **row**: :func:`veil.kernels.last_query_attention`, the last query's fp32 attention row over ``n``
  keys, for each ``--block-n`` x ``--chunk-blocks`` x ``--warps`` variant; its *minimum* bytes are the keys, the queries and
  the padding flags read once and the row written once; achieved bandwidth = minimum bytes / median
  time. Checked against a float64 reference (relative error) on fresh random inputs first; the
  plain-torch reference's time is printed beside it;
* **compact**: :func:`veil.kernels.compact_kv` keeping ``--kept`` of the positions: the kept keys and
  values read once and written once;
* **decode attention**: one decode step's attention (``scaled_dot_product_attention``, one query, GQA)
  over the full cache and over a cache of ``--kept`` of it: the speed-up against the bound ``1 / kept``,
  the part of decode that pruning shortens.

Times are medians of ``triton.testing.do_bench`` (CUDA events), rotating over enough input sets to
exceed the L2 cache. Prints one table; ``--out`` appends one JSON line per measurement.

Usage (on the GPU machine)::

    python benchmarks/kv_kernel_bandwidth.py --out kv_kernel_bandwidth_h200.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
from pathlib import Path
from typing import Any

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3-8B
L2_BYTES = 64 << 20


def _bench(fn: Any, sets: int) -> float:
    """Median seconds of ``fn(i)``, ``i`` cycling over ``sets`` input sets."""
    from triton.testing import do_bench

    state = {"i": 0}

    def step() -> None:
        fn(state["i"] % sets)
        state["i"] += 1

    return do_bench(step, warmup=50, rep=300, return_mode="median") / 1e3


def _sets(one_set_bytes: int) -> int:
    return max(2, min(16, -(-4 * L2_BYTES // max(one_set_bytes, 1))))


def copy_bandwidth(gib: float) -> float:
    import torch

    n = int(gib * (1 << 30)) // 2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = _bench(lambda _i: dst.copy_(src), 1)
    return 2 * src.numel() * 2 / t


def _rel_err(got: Any, want: Any) -> float:
    return float((got.double() - want).norm() / want.norm().clamp(min=1e-300))


def row(
    batch: int,
    n: int,
    block_ns: list[int],
    chunks: list[int],
    warps: list[int],
    stages: list[int],
    copy_bw: float,
) -> list[dict[str, Any]]:
    import torch

    from veil.kernels._triton_kv import last_query_attention_triton
    from veil.kernels.kv_prune import last_query_attention_reference

    keys_bytes = batch * KV_HEADS * n * HEAD_DIM * 2
    sets = _sets(keys_bytes)
    g = torch.Generator(device="cuda").manual_seed(batch * 1_000_003 + n)
    qs = [
        torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in range(sets)
    ]
    ks = [torch.randn(batch, KV_HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g) * 2 for _ in range(sets)]  # fmt: skip
    valid = torch.ones(batch, n, dtype=torch.bool, device="cuda")
    valid[0, : n // 10] = False  # a left-padded row
    scale = HEAD_DIM**-0.5
    want = torch.softmax(
        (torch.einsum("bhd,bhnd->bhn", qs[0].double(), ks[0].double().repeat_interleave(HEADS // KV_HEADS, 1)) * scale)
        .masked_fill(~valid[:, None], float("-inf")), dim=-1,
    )  # fmt: skip
    min_bytes = keys_bytes + batch * HEADS * HEAD_DIM * 2 + batch * n + batch * HEADS * n * 4
    t_ref = _bench(lambda i: last_query_attention_reference(qs[i], ks[i], valid, scale), sets)
    rows = []
    for block_n, chunk, nw, st in itertools.product(block_ns, chunks, warps, stages):
        kw = {"block_n": block_n, "chunk_blocks": chunk, "num_warps": nw, "num_stages": st}
        got = last_query_attention_triton(qs[0], ks[0], valid, scale, **kw)
        err = _rel_err(got, want)
        if not err < 1e-4 or not torch.isfinite(got).all():
            raise AssertionError(f"row kernel {kw}: relative error {err}")
        t = _bench(lambda i, kw=kw: last_query_attention_triton(qs[i], ks[i], valid, scale, **kw), sets)
        rows.append({
            "kernel": "row", "batch": batch, "n": n, **kw, "seconds": t,
            "min_bytes": min_bytes, "bandwidth": min_bytes / t, "share_of_copy": min_bytes / t / copy_bw,
            "rel_err": err, "reference_seconds": t_ref, "speedup_over_reference": t_ref / t,
        })  # fmt: skip
    return rows


def compact(batch: int, n: int, kept: float, copy_bw: float) -> dict[str, Any]:
    import torch

    from veil.kernels._triton_kv import compact_kv_triton
    from veil.kernels.kv_prune import compact_kv_reference

    m = int(n * kept)
    one = 2 * batch * KV_HEADS * n * HEAD_DIM * 2
    sets = _sets(one)
    g = torch.Generator(device="cuda").manual_seed(n + 7)
    kv = [
        (torch.randn(batch, KV_HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g),
         torch.randn(batch, KV_HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g))
        for _ in range(sets)
    ]  # fmt: skip
    index = torch.stack(
        [torch.randperm(n, device="cuda", generator=g)[:m].sort().values for _ in range(batch)]
    )
    got = compact_kv_triton(*kv[0], index)
    for a, b in zip(got, compact_kv_reference(*kv[0], index), strict=True):
        if not torch.equal(a, b):
            raise AssertionError("compaction differs from the reference")
    t = _bench(lambda i: compact_kv_triton(*kv[i], index), sets)
    t_ref = _bench(lambda i: compact_kv_reference(*kv[i], index), sets)
    nbytes = 2 * 2 * batch * KV_HEADS * m * HEAD_DIM * 2  # keys and values, read and written
    return {
        "kernel": "compact", "batch": batch, "n": n, "kept": kept, "seconds": t, "min_bytes": nbytes,
        "bandwidth": nbytes / t, "share_of_copy": nbytes / t / copy_bw, "reference_seconds": t_ref,
        "speedup_over_reference": t_ref / t,
    }  # fmt: skip


def decode_attention(batch: int, n: int, kept: float) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    out: dict[str, Any] = {"kernel": "decode_attention", "batch": batch, "n": n, "kept": kept}
    for name, length in (("full", n), ("kept", int(n * kept))):
        one = 2 * batch * KV_HEADS * length * HEAD_DIM * 2
        sets = _sets(one)
        q = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        kv = [
            (torch.randn(batch, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16),
             torch.randn(batch, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16))
            for _ in range(sets)
        ]  # fmt: skip
        t = _bench(lambda i, kv=kv, q=q: F.scaled_dot_product_attention(q, *kv[i], enable_gqa=True), sets)
        out[f"{name}_seconds"] = t
        out[f"{name}_bandwidth"] = one / t
        del kv
    out["speedup"] = out["full_seconds"] / out["kept_seconds"]
    out["bound"] = n / int(n * kept)
    out["speedup_of_bound"] = out["speedup"] / out["bound"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["1x32768", "8x32768", "1x131072", "4x8192"],
                        help="BATCHxN: rows and keys per layer")  # fmt: skip
    parser.add_argument("--block-n", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument(
        "--chunk-blocks", type=int, nargs="+", default=[1, 4, 16], help="loop steps per program"
    )
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument(
        "--stages", type=int, nargs="+", default=[3], help="loads in flight (software pipelining)"
    )
    parser.add_argument("--kept", type=float, default=0.479)
    parser.add_argument("--copy-gib", type=float, default=4.0)
    parser.add_argument("--machine", default=f"{platform.machine()} {platform.node()}")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("kv_kernel_bandwidth: needs a CUDA device", file=sys.stderr)
        return 2
    try:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes]
    except ValueError:
        print("kv_kernel_bandwidth: --shapes takes BATCHxN, e.g. 8x32768", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    copy_bw = copy_bandwidth(args.copy_gib)
    records: list[dict[str, Any]] = [{"kernel": "copy", "bandwidth": copy_bw}]
    print(f"{device}: device-to-device copy {copy_bw / 1e12:.2f} TB/s (read + written)", flush=True)
    print(
        f"{'kernel':<17} {'shape':>10} {'variant':>10} {'time us':>9} {'TB/s':>6} {'of copy':>8} {'vs torch':>9}"
    )
    for batch, n in shapes:
        variants = row(batch, n, args.block_n, args.chunk_blocks, args.warps, args.stages, copy_bw)
        records += variants
        for r in variants:
            variant = f"{r['block_n']}x{r['chunk_blocks']}/{r['num_warps']}w/{r['num_stages']}s"
            print(f"{'row':<17} {f'{batch}x{n}':>10} {variant:>10} {r['seconds'] * 1e6:>9.1f} "
                  f"{r['bandwidth'] / 1e12:>6.2f} {r['share_of_copy']:>8.1%} {r['speedup_over_reference']:>8.1f}x",
                  flush=True)  # fmt: skip
        c = compact(batch, n, args.kept, copy_bw)
        records.append(c)
        print(f"{'compact':<17} {f'{batch}x{n}':>10} {f'kept {args.kept:.2f}':>10} {c['seconds'] * 1e6:>9.1f} "
              f"{c['bandwidth'] / 1e12:>6.2f} {c['share_of_copy']:>8.1%} {c['speedup_over_reference']:>8.1f}x",
              flush=True)  # fmt: skip
        a = decode_attention(batch, n, args.kept)
        records.append(a)
        print(f"{'decode attention':<17} {f'{batch}x{n}':>10} {f'kept {args.kept:.2f}':>10} "
              f"{a['full_seconds'] * 1e6:>9.1f} -> {a['kept_seconds'] * 1e6:.1f} us: {a['speedup']:.2f}x "
              f"of bound {a['bound']:.2f} ({a['speedup_of_bound']:.0%})", flush=True)  # fmt: skip
    if args.out:
        with args.out.open("a") as fh:
            for r in records:
                fh.write(json.dumps({"device": device, "machine": args.machine, **r}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

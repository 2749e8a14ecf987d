"""What KV-cache pruning buys at decode time, and what it costs at prefill (issue 13's speed targets).

A Llama-shaped model with random weights (speed does not depend on the weights' values) decodes greedily
after a prompt of ``--contexts`` tokens, three ways, on one device:

* ``full``: the whole cache;
* ``dbudgetkv``: DBudgetKV (arXiv:2502.16886) at ``--threshold``: its *pruning overhead* is the extra
  time from the call to the first logits (query capture during prefill, the attention row and the cut
  of every layer, the compaction), against ``full``'s prefill; the kept fraction it reaches on random
  weights is reported but not used for speed (random attention is near uniform, so it keeps almost all);
* ``budget``: SnapKV at ``--kept`` (default 0.479, DBudgetKV's mean kept fraction on SmolLM2 in
  ``kv_compression.py``): a cache of that size, the decode speed DBudgetKV would reach at that fraction.

Per context it prints prefill seconds, the overhead as a share of prefill (target < 2 %), decode
tokens/s of each way, the speed-up of ``budget`` over ``full`` against the bound ``1 / kept``
(target: within 10 % at 32k on the GPU), the KV cache's bytes (``(1 - pruned) x full``, from the per-layer
kept fractions) and, on CUDA, peak memory. Times are medians over ``--repeats``; every way runs once
before timing (warm-up).

Usage::

    .venv/bin/python benchmarks/kv_decode_speed.py --preset cpu-small --contexts 2048 8192 \\
        --out benchmarks/results/kv_decode_speed_2core.jsonl
    # on the GPU machine (issue 13's setting: 8k and 32k, a Llama-3-8B shape in bfloat16):
    python benchmarks/kv_decode_speed.py --preset llama3-8b --device cuda --contexts 8192 32768
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": {
        "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 2, "vocab_size": 8192, "dtype": "float32",
    },
    "llama3-8b": {  # Llama-3-8B's shape (random weights)
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0, "dtype": "bfloat16",
    },
}  # fmt: skip
"""Model shapes; ``dtype`` is the weights' and the cache's."""


def _model(preset: str, context: int, device: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from veil.models.personalization import PersonalizationConfig, PersonalizedLM

    shape = dict(PRESETS[preset])
    dtype = getattr(torch, shape.pop("dtype"))
    config = LlamaConfig(
        **shape, max_position_embeddings=max(8192, 2 * context), tie_word_embeddings=False, pad_token_id=0,
        attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        base = LlamaForCausalLM(config).to(dtype).eval()
    return PersonalizedLM(base, PersonalizationConfig(n_tokens=1, placement="prefix")).eval(), dtype


def _one(lm: Any, prompts: list[list[int]], new: int, compression: Any, device: str) -> dict[str, Any]:
    """One greedy generation: seconds to the first logits, each decode step's seconds, kept fractions."""
    import torch

    from veil.models.generation import SamplingParams, generate_batch

    stamps: list[float] = []
    resident: list[int] = []
    kept: list[Any] = []

    def on_logits(_logits: Any) -> None:  # the logits are copied to the CPU: the device is synced
        stamps.append(time.perf_counter())
        if (
            device == "cuda" and len(stamps) == 2
        ):  # after the first decode step: the cache as decoding holds it
            resident.append(int(torch.cuda.memory_allocated()))

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.inference_mode():
        generate_batch(
            lm, prompts, [None] * len(prompts), [SamplingParams(max_new_tokens=new, temperature=0.0)] * len(prompts),
            pad_id=0,
            on_logits=on_logits,
            compression=compression, on_kv_kept=kept.extend,
        )  # fmt: skip
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    out = {"first_s": stamps[0] - start, "step_s": statistics.median(steps) if steps else float("nan")}
    rows = [k for k in kept if k is not None]
    if rows:
        out["kept_mean"] = statistics.fmean(float(k.mean) for k in rows)
        out["kept_per_layer"] = [
            statistics.fmean(float(k.per_layer[i]) for k in rows) for i in range(len(rows[0].per_layer))
        ]
    if device == "cuda":
        out["peak_bytes"] = int(torch.cuda.max_memory_allocated())
        out["resident_bytes"] = resident[0]
    return out


def _way(
    lm: Any, prompts: list[list[int]], new: int, compression: Any, device: str, repeats: int
) -> dict[str, Any]:
    _one(lm, prompts, new, compression, device)  # warm-up
    runs = [_one(lm, prompts, new, compression, device) for _ in range(repeats)]
    out = dict(runs[-1])
    out["first_s"] = statistics.median(r["first_s"] for r in runs)
    out["step_s"] = statistics.median(r["step_s"] for r in runs)
    out["tokens_per_s"] = 1.0 / out["step_s"]
    return out


def measure(lm: Any, dtype: Any, preset: str, context: int, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from veil.models.compression import from_spec

    cfg = lm.base.config
    rng = np.random.default_rng(context)
    prompt = [rng.integers(3, cfg.vocab_size, size=context).tolist() for _ in range(args.batch)]
    full = _way(lm, prompt, args.new_tokens, None, args.device, args.repeats)
    dbk = _way(lm, prompt, args.new_tokens, from_spec({"method": "dbudgetkv", "threshold": args.threshold}),
               args.device, args.repeats)  # fmt: skip
    budget = _way(lm, prompt, args.new_tokens, from_spec({"method": "snapkv", "budget": args.kept}),
                  args.device, args.repeats)  # fmt: skip
    per_token = (
        2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    )
    full_bytes = per_token * context * args.batch * (2 if str(dtype).endswith(("bfloat16", "float16")) else 4)
    kept = budget.get("kept_mean", args.kept)
    bound = 1.0 / kept
    speedup = full["step_s"] / budget["step_s"]
    return {
        "preset": preset, "context": context, "batch": args.batch, "device": args.device, "machine": args.machine,
        "new_tokens": args.new_tokens, "repeats": args.repeats, "threshold": args.threshold,
        "prefill_s": full["first_s"],
        "overhead_s": dbk["first_s"] - full["first_s"],
        "overhead_of_prefill": (dbk["first_s"] - full["first_s"]) / full["first_s"],
        "dbudgetkv_kept_random_weights": dbk.get("kept_mean"),
        "budget_kept": kept,
        "tokens_per_s": {"full": full["tokens_per_s"], "dbudgetkv": dbk["tokens_per_s"], "budget": budget["tokens_per_s"]},
        "speedup": speedup, "bound": bound, "speedup_of_bound": speedup / bound,
        "kv_bytes": {"full": full_bytes, "budget": round(full_bytes * kept)},
        **({"peak_bytes": {"full": full["peak_bytes"], "budget": budget["peak_bytes"]},
            "resident_bytes": {"full": full["resident_bytes"], "budget": budget["resident_bytes"]}}
           if "peak_bytes" in full else {}),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.01, help="DBudgetKV's T (overhead run)")
    parser.add_argument("--kept", type=float, default=0.479, help="kept fraction of the budget run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=1, help="rows decoded together (distinct random prompts)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--machine", default=f"{platform.machine()} {platform.node()}", help="for the record")
    parser.add_argument("--out", type=Path, help="append one JSON line per context")
    args = parser.parse_args(argv)
    if not 0 < args.kept <= 1 or not 0 < args.threshold < 1:
        print("kv_decode_speed: --kept must be in (0, 1] and --threshold in (0, 1)", file=sys.stderr)
        return 2
    if min(args.contexts) < 16 or args.new_tokens < 2 or args.repeats < 1 or args.batch < 1:
        print(
            "kv_decode_speed: need contexts >= 16, --new-tokens >= 2, --repeats >= 1, --batch >= 1",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("kv_decode_speed: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
    from veil.models.loading import quiet_transformers

    quiet_transformers()
    print(f"{'context':>8} {'prefill s':>10} {'overhead':>9} {'full tok/s':>11} {'budget tok/s':>13} "
          f"{'speed-up':>9} {'1/kept':>7} {'of bound':>9} {'GiB peak/decoding: full -> budget':>34}")  # fmt: skip
    lm, dtype = _model(args.preset, max(args.contexts), args.device)
    for context in args.contexts:
        row = measure(lm, dtype, args.preset, context, args)
        t = row["tokens_per_s"]
        peak, res = row.get("peak_bytes"), row.get("resident_bytes")
        peak_s = (
            f"{peak['full'] / 2**30:.1f}/{res['full'] / 2**30:.1f} -> {peak['budget'] / 2**30:.1f}/{res['budget'] / 2**30:.1f}"
            if peak else "-"
        )  # fmt: skip
        print(f"{context:>8} {row['prefill_s']:>10.3f} {row['overhead_of_prefill']:>9.1%} {t['full']:>11.1f} "
              f"{t['budget']:>13.1f} {row['speedup']:>9.2f} {row['bound']:>7.2f} {row['speedup_of_bound']:>9.1%} "
              f"{peak_s:>34}", flush=True)  # fmt: skip
        if args.out:
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""On-device LM speed: the exported ONNX model on onnxruntime against the same model in torch, same CPU.

Both sides run the same greedy, step-wise loop with a KV cache (``veil.models.generation.generate_batch``
for torch, ``veil.client_sdk.runtime.generate.OnnxLM.generate_batch`` for onnxruntime) on one prompt,
single-threaded and with each library's default thread count; runs are interleaved so that drifts in
machine load hit both alike. Reported per setting: time to first token (the prompt's prefill, ms) and
decode speed (tokens/s over the remaining tokens), medians over ``--repeats``, with onnxruntime/torch
ratios, and whether both produced the same tokens.

Usage::

    .venv/bin/python benchmarks/onnx_lm_speed.py                                  # tiny-llama
    .venv/bin/python benchmarks/onnx_lm_speed.py --model smollm2-135m-instruct --json

The export is cached in ``<data_dir>/onnx/<model>`` (``--onnx-dir`` to choose) and redone when its
manifest has no ``lm`` entry of this model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from lm_timing import PROMPT, ensure_lm_export, machine, timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", help="tiny-llama, smollm2-135m-instruct or a path")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--onnx-dir", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)
    if args.new_tokens < 2 or args.prompt_tokens < 1 or args.repeats < 1:
        parser.error("need --new-tokens >= 2, --prompt-tokens >= 1, --repeats >= 1")

    import torch

    from veil.client_sdk.runtime.generate import OnnxLM, SamplingParams
    from veil.models import generation
    from veil.models.loading import load_model, quiet_transformers
    from veil.models.personalization import PersonalizationConfig, PersonalizedLM

    quiet_transformers()
    loaded = load_model(args.model, args.data_dir)
    if args.onnx_dir:
        onnx_dir = Path(args.onnx_dir)
    else:
        from veil.settings import get_settings

        root = Path(args.data_dir).expanduser() if args.data_dir else get_settings().resolved_data_dir()
        onnx_dir = root / "onnx" / loaded.name
    export_s = ensure_lm_export(args.model, onnx_dir, args.data_dir, loaded.name)
    graph_mb = sum(f.stat().st_size for f in onnx_dir.glob("lm.onnx*")) / 2**20

    ids = loaded.tokenizer(PROMPT * 8, add_special_tokens=False)["input_ids"][: args.prompt_tokens]
    plm = PersonalizedLM(loaded.model, PersonalizationConfig(n_tokens=0, placement="prefix")).eval()
    torch_params = [generation.SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)]
    ort_params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0, stop_token_ids=())
    default_threads = torch.get_num_threads()
    results: dict[str, Any] = {}
    same = True
    for label, threads in (("1 thread", 1), (f"default ({default_threads} threads)", None)):
        torch.set_num_threads(threads or default_threads)
        ort_lm = OnnxLM(onnx_dir, threads=threads)
        rows: dict[str, list[tuple[float, float]]] = {"torch": [], "onnxruntime": []}
        for rep in range(args.repeats + 1):  # the first round warms both up and is dropped
            t_ttft, t_rate, t_tok = timed(
                lambda cb: generation.generate_batch(plm, [ids], [None], torch_params, pad_id=0, on_step=cb)
            )
            o_ttft, o_rate, o_tok = timed(
                lambda cb, m=ort_lm: m.generate_batch([ids], None, ort_params, on_step=cb)
            )
            same = same and t_tok == o_tok
            if rep > 0:
                rows["torch"].append((t_ttft, t_rate))
                rows["onnxruntime"].append((o_ttft, o_rate))
        med = {
            k: (float(np.median([r[0] for r in v])), float(np.median([r[1] for r in v])))
            for k, v in rows.items()
        }
        results[label] = {
            "torch": {"first_token_ms": med["torch"][0], "decode_tokens_per_s": med["torch"][1]},
            "onnxruntime": {
                "first_token_ms": med["onnxruntime"][0],
                "decode_tokens_per_s": med["onnxruntime"][1],
            },
            "decode_speedup_ort_over_torch": med["onnxruntime"][1] / med["torch"][1],
            "prefill_speedup_ort_over_torch": med["torch"][0] / med["onnxruntime"][0],
        }
    torch.set_num_threads(default_threads)
    out = {
        "model": loaded.name,
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "greedy_tokens_identical": same,
        "export_seconds": export_s,
        "graph_mib": graph_mb,
        "results": results,
        "machine": machine(),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{loaded.name}: {len(ids)} prompt tokens, {args.new_tokens} new, greedy, median of {args.repeats}")
    exported = "cached" if export_s is None else f"exported in {export_s:.0f} s"
    print(f"  {out['machine']['cpu']}, {os.cpu_count()} CPUs, load {out['machine']['load_average'][0]:.2f}")
    print(f"  graph {graph_mb:.1f} MiB ({exported})")
    print(f"  {'setting':<24}{'path':<13}{'first token ms':>15}{'decode tok/s':>14}")
    for label, r in results.items():
        for path in ("torch", "onnxruntime"):
            ttft, rate = r[path]["first_token_ms"], r[path]["decode_tokens_per_s"]
            print(f"  {label:<24}{path:<13}{ttft:>15.1f}{rate:>14.1f}")
        print(
            f"  {'':<24}{'ratio':<13}{r['prefill_speedup_ort_over_torch']:>14.2f}x"
            f"{r['decode_speedup_ort_over_torch']:>13.2f}x  (onnxruntime over torch)"
        )
    print(f"  greedy tokens identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

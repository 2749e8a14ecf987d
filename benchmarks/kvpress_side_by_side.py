"""Veil's KV-cache compression next to kvpress 0.5.5's presses, on the same token ids.

kvpress pins ``transformers>=4.56,<5.3`` while Veil runs transformers 5.2x, so kvpress lives in its own
virtual environment and this script drives it in a subprocess (the same file, run with
``--kvpress-side``; that half imports only torch, transformers and kvpress, never ``veil``):

1. With Veil's environment: build the synthetic suite (``veil.models.compression.suite``, seed 0) with
   Veil's tokenizer and chat template, and decode every example greedily with Veil's full cache
   (``veil.models.generation.generate_batch``) in both regimes; the prompt ids, the index where the
   question starts, the answers and Veil's full-cache tokens go to ``<workdir>/inputs.jsonl``.
2. With kvpress's environment: load the same converted checkpoint from disk
   (``AutoModelForCausalLM.from_pretrained``, fp32, SDPA) and decode the same ids greedily, with no press
   and with each press at ``compression_ratio = 1 - kept``, where ``kept`` is the mean kept fraction Veil's
   recorded run matched its baselines to. The press hooks compress during the prefill (kvpress's
   ``with press(model):``); the loop here feeds the prompt, then decodes one token at a time with the
   original positions (``n + t``), as kvpress's pipeline does.

   - ``question_before``: the whole prompt (context, question, generation prompt) is prefilled under the
     press, the regime of arXiv:2502.16886.
   - ``question_after``: the context (``prompt_ids[:question_start]``) is prefilled under the press, then
     the question on top of the compressed cache, which is what kvpress's own pipeline does
     (``pipe(context, question=...)``: context prefill under the press, question after). kvpress's
     pipeline would apply the chat template itself and tokenize context and question apart; the ids are
     fed directly here so both sides see the same tokens.

   Press per Veil method: ``streaming_llm`` -> ``StreamingLLMPress`` (4 sinks), ``snapkv`` ->
   ``SnapKVPress`` (its defaults: window 64, kernel 5, per-KV-head selection), ``pyramidkv`` ->
   ``PyramidKVPress`` (window 64, beta 20), ``h2o`` -> ``ObservedAttentionPress`` (mean attention each
   key received over the whole prefill, H2O's accumulated score without its recent half; needs eager
   attention, so a second, eager model runs it, and its own full cache is recorded as ``full_eager``).
   kvpress has no DBudgetKV press; its ``DMSPress`` thresholds per-token scores rather than a norm loss,
   so it is not run.
3. Veil's compressed rows are read from its recorded results (``benchmarks/kv_compression.py`` outputs);
   the table puts, per regime and method, Veil's and kvpress's exact agreement with their own full
   cache, task accuracy and kept fraction side by side, and counts the examples where both sides' outputs
   are the same text. Veil's full-cache tokens are compared with kvpress's token for token.

PyramidKV leaves layers with different cache lengths; transformers sizes one attention mask from layer
0's cache, so the kvpress side registers an SDPA attention that keeps the mask's last ``k_len`` columns.

Usage::

    VEIL_DATA_DIR=/tmp/vd .venv/bin/python benchmarks/kvpress_side_by_side.py \\
        --kvpress-python /tmp/kvpress-venv/bin/python --out benchmarks/results/kvpress_side_by_side_2core.jsonl
    # the kvpress environment: python3.11 -m venv /tmp/kvpress-venv
    #   /tmp/kvpress-venv/bin/pip install torch==2.13.0 kvpress==0.5.5 "transformers<5.3"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PRESSES", "main"]

PRESSES = {
    "streaming_llm": "StreamingLLMPress",
    "snapkv": "SnapKVPress",
    "pyramidkv": "PyramidKVPress",
    "h2o": "ObservedAttentionPress",
}
"""Veil's baseline name -> the kvpress press run in its place."""
REGIMES = ("question_before", "question_after")
RESULTS = {
    "question_before": "benchmarks/results/kv_compression_2core.jsonl",
    "question_after": "benchmarks/results/kv_compression_2core_question_after.jsonl",
}


# --------------------------------------------------------------------------------------------------
# kvpress side: runs in kvpress's environment (torch, transformers < 5.3, kvpress; no veil)
# --------------------------------------------------------------------------------------------------


def _register_sliced_sdpa() -> str:
    """SDPA that trims the mask to each layer's key length (layers of different lengths after PyramidKV)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def sliced(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        if attention_mask is not None and attention_mask.shape[-1] != key.shape[-2]:
            # one mask for all layers, sized from layer 0; a layer's kept keys are its last k_len columns
            attention_mask = attention_mask[..., -key.shape[-2] :]
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("sdpa_sliced", sliced)
    # and SDPA's mask builder under the same name: without one transformers builds no mask, and SDPA's
    # is_causal aligns a multi-token forward on top of a cache to the top left (the question of the
    # question-after regime would then not see the context)
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionMaskInterface.register("sdpa_sliced", sdpa_mask)
    return "sdpa_sliced"


def _kv_decode(
    model: Any, ids: Sequence[int], question_start: int, press: Any, regime: str, new: int, stop: set[int]
) -> tuple[list[int], float]:
    """Greedy tokens (stop token not included) and the mean kept fraction over layers."""
    import contextlib

    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    first = list(ids) if regime == "question_before" else list(ids[:question_start])
    with torch.no_grad():
        with press(model) if press is not None else contextlib.nullcontext():
            out = model(input_ids=torch.tensor([first]), past_key_values=cache, use_cache=True)
        kept = sum(layer.keys.shape[-2] for layer in cache.layers) / (len(cache.layers) * len(first))
        n = len(first)
        if regime == "question_after":
            rest = list(ids[question_start:])
            pos = torch.arange(n, n + len(rest))[None]
            out = model(
                input_ids=torch.tensor([rest]), past_key_values=cache, position_ids=pos, use_cache=True
            )
            n += len(rest)
        tokens: list[int] = []
        nxt = int(out.logits[0, -1].argmax())
        while nxt not in stop:
            tokens.append(nxt)
            if len(tokens) == new:
                break
            # kept keys carry their original RoPE positions, so a new token sits at n, not at the cache length
            out = model(
                input_ids=torch.tensor([[nxt]]),
                past_key_values=cache,
                position_ids=torch.tensor([[n]]),
                use_cache=True,
            )
            n += 1
            nxt = int(out.logits[0, -1].argmax())
    return tokens, kept


def kvpress_side(job_path: str, out_path: str) -> None:
    """Decode every input with no press and each press; one JSON line per (regime, method, example)."""
    import kvpress
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    job = json.loads(Path(job_path).read_text())
    examples = [json.loads(line) for line in Path(job["inputs"]).read_text().splitlines()]
    stop = set(job["stop"])
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    load = {"dtype": torch.float32}
    models = {
        "sdpa": AutoModelForCausalLM.from_pretrained(
            job["model_dir"], **load, attn_implementation=_register_sliced_sdpa()
        ).eval()
    }
    if "h2o" in job["methods"]:
        models["eager"] = AutoModelForCausalLM.from_pretrained(
            job["model_dir"], **load, attn_implementation="eager"
        ).eval()
    with open(out_path, "w") as f:
        for regime, ratio in job["ratios"].items():
            runs: list[tuple[str, str, Any]] = [("full", "sdpa", None)]
            if "eager" in models:
                runs.append(("full_eager", "eager", None))
            for method in job["methods"]:
                press = getattr(kvpress, PRESSES[method])(compression_ratio=ratio)
                runs.append((method, "eager" if method == "h2o" else "sdpa", press))
            for method, attn, press in runs:
                for ex in examples:
                    t = time.perf_counter()
                    tokens, kept = _kv_decode(
                        models[attn],
                        ex["prompt_ids"],
                        ex["question_start"],
                        press,
                        regime,
                        job["max_new_tokens"],
                        stop,
                    )
                    row = {
                        "kind": "row", "side": "kvpress", "regime": regime, "method": method,
                        "press": None if press is None else type(press).__name__,
                        "compression_ratio": None if press is None else ratio, "attn": attn,
                        "example": ex["example"], "task": ex["task"], "tokens": tokens,
                        "output": tok.decode(tokens, skip_special_tokens=True), "kept": kept,
                        "seconds": time.perf_counter() - t,
                    }  # fmt: skip
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(f"{regime} {method} #{ex['example']} kept {kept:.3f}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Veil side: runs in Veil's environment
# --------------------------------------------------------------------------------------------------


def dump_inputs(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Suite ids, answers and Veil's full-cache greedy tokens per regime to ``path``; returns model facts."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from veil.models.compression.suite import SuiteConfig, build_suite
    from veil.models.generation import SamplingParams, generate_batch
    from veil.models.loading import load_model, load_tokenizer, quiet_transformers, resolve_model_dir
    from veil.models.personalization import PersonalizationConfig, PersonalizedLM

    quiet_transformers()
    _, model_dir = resolve_model_dir(args.model)
    tok = load_tokenizer(args.model)
    lm = None
    if args.veil_decode:
        lm = PersonalizedLM(load_model(args.model).model, PersonalizationConfig(n_tokens=0)).eval()
    suite = build_suite(tok, SuiteConfig(args.examples, args.context_tokens, args.seed))
    stop = sorted(
        {int(s) for s in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if s is not None}
    )
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens, stop_token_ids=tuple(stop))
    with open(path, "w") as f:
        for i, ex in enumerate(suite):
            full = {}
            for regime in args.regimes if lm is not None else ():
                question = [len(ex.prompt_ids) - ex.question_start] if regime == "question_after" else None
                [(tokens, _)] = generate_batch(
                    lm, [list(ex.prompt_ids)], [None], [params], stop[0], question_lengths=question
                )
                full[regime] = tokens
            row = {
                "example": i, "task": ex.task, "depth": ex.depth, "prompt_ids": list(ex.prompt_ids),
                "question_start": ex.question_start, "answers": list(ex.answers),
                "prompt": tok.decode(ex.prompt_ids), "veil_full_tokens": full,
                "veil_full_output": {r: tok.decode(t, skip_special_tokens=True) for r, t in full.items()},
            }  # fmt: skip
            f.write(json.dumps(row) + "\n")
            print(
                f"veil input #{i} ({ex.task}), full-cache decodes: {len(full)}", file=sys.stderr, flush=True
            )
    import transformers

    return {"model_dir": str(model_dir), "stop": stop, "transformers": transformers.__version__}


def _veil_recorded(path: str) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, Any]]:
    rows, summary = {}, {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "row":
            rows[(r["method"], r["example"])] = r
        elif r["kind"] == "summary":
            summary = r
    return rows, summary


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def compare(
    inputs: list[dict[str, Any]],
    kv_rows: list[dict[str, Any]],
    veil: dict[str, tuple[dict[tuple[str, int], dict[str, Any]], dict[str, Any]]],
    methods: Sequence[str],
) -> dict[str, Any]:
    """Per regime: cross-side full-cache checks and, per method, both sides' agreement/accuracy/kept."""
    kv = {(r["regime"], r["method"], r["example"]): r for r in kv_rows}
    out: dict[str, Any] = {}
    for regime, (vrows, vsummary) in veil.items():
        # a run cut short leaves some (regime, method) cells partial: compare the examples kvpress finished
        by_ex = {ex["example"]: ex for ex in inputs if (regime, "full", ex["example"]) in kv}
        if not by_ex:
            continue
        full_tok = [
            kv[(regime, "full", i)]["tokens"] == ex["veil_full_tokens"][regime]
            for i, ex in by_ex.items()
            if regime in ex["veil_full_tokens"]
        ]
        full_txt = [kv[(regime, "full", i)]["output"] == vrows[("full", i)]["output"] for i in by_ex]
        eager = [
            kv[(regime, "full_eager", i)]["tokens"] == kv[(regime, "full", i)]["tokens"]
            for i in by_ex
            if (regime, "full_eager", i) in kv
        ]
        table = {}
        for method in ("full", *methods):
            kv_ok, kv_agree, kv_kept, v_ok, v_agree, v_kept, same = [], [], [], [], [], [], []
            for i, ex in by_ex.items():
                if (regime, method, i) not in kv:
                    continue
                k, v = kv[(regime, method, i)], vrows[(method, i)]
                kv_ok.append(all(a in k["output"] for a in ex["answers"]))
                kv_agree.append(k["tokens"] == kv[(regime, "full", i)]["tokens"])
                kv_kept.append(k["kept"])
                v_ok.append(bool(v["correct"]))
                v_agree.append(bool(v["agree"]))
                v_kept.append(float(v["kept"]))
                same.append(k["output"] == v["output"])
            table[method] = {
                "press": PRESSES.get(method), "n": len(kv_ok),
                "veil": {"agreement": _mean(v_agree), "accuracy": _mean(v_ok), "kept_mean": _mean(v_kept)},
                "kvpress": {"agreement": _mean(kv_agree), "accuracy": _mean(kv_ok), "kept_mean": _mean(kv_kept)},
                "same_output": _mean(same),
            }  # fmt: skip
        out[regime] = {
            "veil_matched_budget": vsummary.get("matched_budget"),
            "compression_ratio": 1.0 - vsummary["matched_budget"],
            "full_cache_tokens_equal": sum(full_tok) if full_tok else None,
            "full_cache_text_equal_recorded": sum(full_txt),
            "full_eager_equals_sdpa": sum(eager) if eager else None,
            "n_eager": len(eager),
            "n": len(by_ex),
            "methods": table,
        }
    return out


def render(result: dict[str, Any]) -> str:
    lines = []
    for regime, r in result.items():
        lines.append(
            f"{regime}: compression_ratio {r['compression_ratio']:.3f} (Veil's kept {r['veil_matched_budget']:.3f}); "
            f"full cache, Veil vs kvpress tokens equal {r['full_cache_tokens_equal']}/{r['n']}, "
            f"text equal to Veil's recorded output {r['full_cache_text_equal_recorded']}/{r['n']}, "
            f"kvpress eager vs SDPA full equal {r['full_eager_equals_sdpa']}/{r['n_eager']}"
        )
        lines.append(
            f"  {'method':<14}{'kvpress press':<24}{'Veil agree':>11}{'kvp agree':>10}{'Veil acc':>9}"
            f"{'kvp acc':>8}{'Veil kept':>10}{'kvp kept':>9}{'same out':>9}"
        )
        for m, s in r["methods"].items():
            if not s["n"]:
                continue
            v, k = s["veil"], s["kvpress"]
            lines.append(
                f"  {m:<14}{s['press'] or '(no press)':<24}{v['agreement']:>11.2f}{k['agreement']:>10.2f}"
                f"{v['accuracy']:>9.2f}{k['accuracy']:>8.2f}{v['kept_mean']:>10.3f}{k['kept_mean']:>9.3f}"
                f"{s['same_output']:>9.2f}" + ("" if s["n"] == r["n"] else f"  (n={s['n']})")
            )
    return "\n".join(lines)


def _run(
    args: argparse.Namespace,
    methods: list[str],
    veil: dict[str, Any],
    inputs_path: Path,
    kv_path: Path,
    job_path: Path,
) -> dict[str, Any]:
    """Dump the inputs with Veil, then decode them in kvpress's environment; returns the job."""
    facts = dump_inputs(args, inputs_path)
    job = {
        "inputs": str(inputs_path), "model_dir": facts["model_dir"], "stop": facts["stop"], "methods": methods,
        "max_new_tokens": args.max_new_tokens, "veil_transformers": facts["transformers"],
        "ratios": {r: 1.0 - veil[r][1]["matched_budget"] for r in args.regimes},
    }  # fmt: skip
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run(
        [args.kvpress_python, os.path.abspath(__file__), "--kvpress-side", str(job_path), str(kv_path)],
        check=True,
        env=env,
    )
    return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvpress-python", default="/tmp/kvpress-venv/bin/python")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=7)
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--methods", default=",".join(PRESSES), help=f"comma-separated, from {', '.join(PRESSES)}"
    )
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--veil-results", default=RESULTS["question_before"])
    parser.add_argument("--veil-results-question-after", default=RESULTS["question_after"])
    parser.add_argument("--workdir", default="/tmp/kvpress_side_by_side")
    parser.add_argument("--out", help="write kvpress's rows and the summary as JSON lines")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    parser.add_argument(
        "--no-veil-decode",
        dest="veil_decode",
        action="store_false",
        help="skip Veil's full-cache decode (compare kvpress's full cache with Veil's recorded text only)",
    )
    parser.add_argument(
        "--from-workdir", action="store_true", help="compare the inputs and kvpress rows already in --workdir"
    )
    parser.add_argument("--kvpress-side", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kvpress_side:
        kvpress_side(*args.kvpress_side)
        return 0

    args.regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in PRESSES] + [r for r in args.regimes if r not in REGIMES]
    if bad or not methods or not args.regimes:
        print(
            f"error: unknown method or regime {bad}; methods {list(PRESSES)}, regimes {REGIMES}",
            file=sys.stderr,
        )
        return 2
    probe = "import kvpress, transformers; print(transformers.__version__)"
    try:
        subprocess.run([args.kvpress_python, "-c", probe], check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        print(
            f"error: no kvpress environment at {args.kvpress_python} (python3.11 -m venv DIR; "
            'DIR/bin/pip install torch==2.13.0 kvpress==0.5.5 "transformers<5.3")',
            file=sys.stderr,
        )
        return 2
    paths = {"question_before": args.veil_results, "question_after": args.veil_results_question_after}
    veil = {r: _veil_recorded(paths[r]) for r in args.regimes}
    for regime, (_, summary) in veil.items():
        rec = (summary.get("examples"), summary.get("context_tokens"), summary.get("model"))
        if rec != (args.examples, args.context_tokens, args.model):
            print(f"error: {paths[regime]} records {rec}, not this run's settings", file=sys.stderr)
            return 2

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    inputs_path, kv_path, job_path = work / "inputs.jsonl", work / "kvpress_rows.jsonl", work / "job.json"
    if args.from_workdir:
        job = json.loads(job_path.read_text())
        facts = {"transformers": job.get("veil_transformers")}
    else:
        job = _run(args, methods, veil, inputs_path, kv_path, job_path)
        facts = {"transformers": job["veil_transformers"]}
    freeze = subprocess.run(
        [args.kvpress_python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout.split()
    inputs = [json.loads(line) for line in inputs_path.read_text().splitlines()]
    kv_rows = [json.loads(line) for line in kv_path.read_text().splitlines()]
    result = compare(inputs, kv_rows, veil, methods)
    summary = {
        "kind": "summary", "model": args.model, "examples": args.examples, "context_tokens": args.context_tokens,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed, "veil_results": {r: paths[r] for r in veil},
        "veil_transformers": facts["transformers"], "kvpress_env": [p for p in freeze if "==" in p],
        "machine": f"{platform.machine()} CPU x{os.cpu_count()} threads (2-core VM, shared)",
        "regimes": result,
    }  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            for ex in inputs:
                row = {"kind": "veil_full", "example": ex["example"], "task": ex["task"],
                       "tokens": ex["veil_full_tokens"], "output": ex["veil_full_output"]}  # fmt: skip
                f.write(json.dumps(row) + "\n")
            for row in kv_rows:
                f.write(json.dumps(row) + "\n")
            f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary, indent=1) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

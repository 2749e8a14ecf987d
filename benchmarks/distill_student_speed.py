"""Distillation: the on-device student (ONNX, onnxruntime) against the cloud teacher (torch), same CPU.

The student is a directory written by ``veil.models.distillation.students.save_student`` (a
same-tokenizer student of the teacher, e.g. the first layers of it, arXiv:1910.01108, trained by KD or
Warmup-Distill, arXiv:2502.11766). It is exported with ``export_lm`` into a cache folder, as
``veil export-onnx --lm DIR`` does for the client SDK, and runs on onnxruntime through
``veil.client_sdk.runtime.generate.OnnxLM``, as on the phone. The teacher (a model directory or a
registered name) runs as the service serves it: torch, ``veil.models.generation.generate_batch``.

Both decode greedily and step-wise with a KV cache, the same prompt text cut to ``--prompt-tokens`` of
each model's tokenizer, exactly ``--new-tokens`` tokens (no stop token), single-threaded and with each
library's default thread count. Repeats are interleaved (the order alternates) so that drifts in machine
load hit both alike; the first round warms both up and is dropped. Reported per setting: time to first
token (the prefill, ms) and decode tokens/s, medians over ``--repeats``, and the student/teacher ratios
measured in the same run. The student also runs in torch, interleaved with the others, so the ratio
splits into what onnxruntime buys over torch and what the smaller model buys.

With ``--results`` (the JSON of ``veil experiment distillation --json``) the held-out quality of one
method's student (``--method``; default: the lowest bits/char among the same-tokenizer methods) and of
the teacher is printed next to the speeds. Speed depends on the student's shape only, so a student cut
from the teacher at the experiment's ``student_scale`` stands in for the trained one.

Usage::

    .venv/bin/python benchmarks/distill_student_speed.py --student DIR --teacher smollm2-135m-instruct
    .venv/bin/python benchmarks/distill_student_speed.py --student DIR --teacher TEACHER_DIR \\
        --results benchmarks/results/distillation_quick_2core.json --json

The export is cached in ``<data_dir>/onnx/students/<digest of the student's weights>`` (``--onnx-dir``
to choose).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lm_timing import PROMPT, ensure_lm_export, machine, timed

__all__ = ["measure", "quality"]


def _weights_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _interleaved(runs: dict[str, Callable[[Any], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """Median first-token ms and decode tokens/s of each generator (see ``lm_timing.timed``), the runs
    interleaved in alternating order; round 0 warms every run up and is dropped."""
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    names = list(runs)
    for rep in range(repeats + 1):
        for name in names if rep % 2 else names[::-1]:
            ttft, rate, _ = timed(runs[name])
            if rep > 0:
                rows[name].append((ttft, rate))
    return {
        k: {
            "first_token_ms": float(np.median([r[0] for r in v])),
            "decode_tokens_per_s": float(np.median([r[1] for r in v])),
        }
        for k, v in rows.items()
    }


def measure(
    student: str | Path,
    teacher: str | Path,
    data_dir: str | None = None,
    onnx_dir: str | Path | None = None,
    prompt_tokens: int = 32,
    new_tokens: int = 64,
    repeats: int = 3,
    threads: Sequence[int | None] = (1, None),
) -> dict[str, Any]:
    """Time the student on onnxruntime against the teacher in torch; the JSON-ready result.

    Parameters
    ----------
    student: a ``save_student`` directory.
    teacher: a model directory or a registered name (``smollm2-135m-instruct``).
    onnx_dir: where the student's export is cached (default: see the module docstring).
    threads: the settings to time; an int is that many threads for both libraries, ``None`` each
        library's default.

    Raises
    ------
    ValueError
        ``new_tokens < 2`` (no decode step to time), ``prompt_tokens < 1``, ``repeats < 1`` or no
        ``threads`` settings.
    """
    if new_tokens < 2 or prompt_tokens < 1 or repeats < 1 or not threads:
        raise ValueError(
            "need new_tokens >= 2, prompt_tokens >= 1, repeats >= 1 and a threads setting, got "
            f"{new_tokens}, {prompt_tokens}, {repeats}, {list(threads)}"
        )
    import torch

    from veil.client_sdk.runtime.generate import OnnxLM, SamplingParams
    from veil.models import generation
    from veil.models.loading import load_model, quiet_transformers
    from veil.models.personalization import PersonalizationConfig, PersonalizedLM

    quiet_transformers()
    student_loaded = load_model(student, data_dir)
    student_params, s_cfg = _params(student_loaded.model), student_loaded.model.config
    if onnx_dir is None:
        from veil.settings import get_settings

        root = Path(data_dir).expanduser() if data_dir else get_settings().resolved_data_dir()
        onnx_dir = root / "onnx" / "students" / _weights_digest(student_loaded.path)
    onnx_dir = Path(onnx_dir)
    export_s = ensure_lm_export(student, onnx_dir, data_dir, student_loaded.name)
    graph_mib = sum(f.stat().st_size for f in onnx_dir.glob("lm.onnx*")) / 2**20

    teacher_loaded = load_model(teacher, data_dir)
    text = PROMPT * (prompt_tokens // 4 + 1)
    t_ids = teacher_loaded.tokenizer(text, add_special_tokens=False)["input_ids"][:prompt_tokens]
    # the service's population path: no user embedding, so no soft tokens
    no_soft = PersonalizationConfig(n_tokens=0, placement="prefix")
    plm = PersonalizedLM(teacher_loaded.model, no_soft).eval()
    # the student in torch too: splits the ratio into the runtime's share and the smaller model's
    s_plm = PersonalizedLM(student_loaded.model, no_soft).eval()
    t_params = [generation.SamplingParams(max_new_tokens=new_tokens, temperature=0.0)]
    s_params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=())

    s_ids = OnnxLM(onnx_dir, threads=1).encode(text)[:prompt_tokens]  # the phone's own tokenizer
    default_threads = torch.get_num_threads()
    results: dict[str, Any] = {}
    for n in threads:
        label = f"{n} thread{'s' * (n != 1)}" if n else f"default ({default_threads} threads)"
        torch.set_num_threads(n or default_threads)
        s_lm = OnnxLM(onnx_dir, threads=n)
        med = _interleaved(
            {
                "teacher": lambda cb: generation.generate_batch(
                    plm, [t_ids], [None], t_params, 0, on_step=cb
                ),
                "student": lambda cb, m=s_lm: m.generate_batch([s_ids], None, s_params, on_step=cb),
                "student_torch": lambda cb: generation.generate_batch(
                    s_plm, [s_ids], [None], t_params, 0, on_step=cb
                ),
            },
            repeats,
        )
        results[label] = {
            "teacher_torch": med["teacher"],
            "student_onnxruntime": med["student"],
            "student_torch": med["student_torch"],
            "decode_speedup_student_over_teacher": med["student"]["decode_tokens_per_s"]
            / med["teacher"]["decode_tokens_per_s"],
            "first_token_speedup_student_over_teacher": med["teacher"]["first_token_ms"]
            / med["student"]["first_token_ms"],
            "decode_speedup_onnxruntime_over_torch_student": med["student"]["decode_tokens_per_s"]
            / med["student_torch"]["decode_tokens_per_s"],
        }
    torch.set_num_threads(default_threads)
    cfg = teacher_loaded.model.config
    return {
        "student": {
            "path": str(Path(student).expanduser().resolve()),
            "params": student_params,
            "layers": s_cfg.num_hidden_layers,
            "hidden_size": s_cfg.hidden_size,
            "graph_mib": graph_mib,
            "onnx_dir": str(onnx_dir),
            "export_seconds": export_s,
            "prompt_tokens": len(s_ids),
        },
        "teacher": {
            "name": teacher_loaded.name,
            "params": _params(teacher_loaded.model),
            "layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "prompt_tokens": len(t_ids),
        },
        "new_tokens": new_tokens,
        "repeats": repeats,
        "results": results,
        "machine": machine(),
    }


def quality(results: dict[str, Any], method: str | None = None) -> dict[str, Any]:
    """Held-out quality of one method's student and of the teacher from ``veil experiment distillation --json``.

    ``method=None`` picks the same-tokenizer method with the lowest mean bits/char.

    Raises
    ------
    ValueError
        ``method`` is not in the results, or no same-tokenizer method is.
    """
    from veil.models.distillation.experiment import SAME_TOKENIZER_METHODS

    methods = results["methods"]
    if method is None:
        same = [m for m in SAME_TOKENIZER_METHODS if m in methods]
        if not same:
            raise ValueError(f"no same-tokenizer method in the results, got {sorted(methods)}")
        method = min(same, key=lambda m: methods[m]["bits_per_char"])
    elif method not in methods:
        raise ValueError(f"method {method!r} is not in the results, which have {sorted(methods)}")
    keys = ("bits_per_char", "rouge_l", "accuracy", "nll")
    pick = {k: methods[method].get(k, math.nan) for k in keys}
    return {
        "method": method,
        "student_scale": results.get("config", {}).get("student_scale"),
        "student": pick,
        "teacher": {k: results.get("teacher", {}).get(k, math.nan) for k in keys},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="a save_student directory")
    parser.add_argument("--teacher", required=True, help="a model directory or a registered name")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--onnx-dir", default=None, help="where the student's export is cached")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=None, help="JSON of veil experiment distillation")
    parser.add_argument("--method", default=None, help="default: the best same-tokenizer bits/char")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)
    try:
        qual = quality(json.loads(args.results.read_text()), args.method) if args.results else None
        out = measure(args.student, args.teacher, args.data_dir, args.onnx_dir, args.prompt_tokens,
                      args.new_tokens, args.repeats)  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    out["quality"] = qual
    if args.json:
        print(json.dumps(out))
        return 0
    s, t, m = out["student"], out["teacher"], out["machine"]
    exported = "cached" if s["export_seconds"] is None else f"exported in {s['export_seconds']:.0f} s"
    print(
        f"student {s['layers']} x {s['hidden_size']}, {s['params'] / 1e6:.1f} M params "
        f"(ONNX {s['graph_mib']:.1f} MiB, {exported}) "
        f"vs teacher {t['name']} {t['layers']} x {t['hidden_size']}, {t['params'] / 1e6:.1f} M params"
    )
    print(
        f"  {s['prompt_tokens']}/{t['prompt_tokens']} prompt tokens, {out['new_tokens']} new, greedy, "
        f"median of {out['repeats']}; {m['cpu']}, {m['cpus']} CPUs, load {m['load_average'][0]:.2f}"
    )
    print(f"  {'setting':<24}{'model':<30}{'first token ms':>15}{'decode tok/s':>14}")
    for label, r in out["results"].items():
        for key, name in (
            ("teacher_torch", "teacher (cloud, torch)"),
            ("student_onnxruntime", "student (phone, ORT)"),
            ("student_torch", "student in torch (reference)"),
        ):
            print(
                f"  {label:<24}{name:<30}{r[key]['first_token_ms']:>15.1f}{r[key]['decode_tokens_per_s']:>14.1f}"
            )
        print(
            f"  {'':<24}{'student ORT / teacher':<30}{r['first_token_speedup_student_over_teacher']:>14.2f}x"
            f"{r['decode_speedup_student_over_teacher']:>13.2f}x"
        )
        print(
            f"  {'':<24}{'(of which ORT / torch)':<30}{'':>15}"
            f"{r['decode_speedup_onnxruntime_over_torch_student']:>13.2f}x"
        )
    if qual:
        print(f"  held-out quality ({args.results}; student = {qual['method']}):")
        for who in ("student", "teacher"):
            q = qual[who]
            print(
                f"    {who:<8} bits/char {q['bits_per_char']:.3f}  ROUGE-L {q['rouge_l']:.3f}  "
                f"accuracy {q['accuracy']:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the LM speed benchmarks (``onnx_lm_speed.py``, ``distill_student_speed.py``).

Timing one greedy generation through its ``on_step`` callback, the cached ONNX export of a model, and
the machine a figure was measured on.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PROMPT", "cpu_name", "ensure_lm_export", "machine", "timed"]

PROMPT = "Explain in a few sentences why the sky is blue, and what changes at sunset. "
"""Repeated and cut to the wanted number of prompt tokens."""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU name, logical CPUs, load average and library versions, for the JSON of a run."""
    import onnxruntime
    import torch

    return {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def timed(run: Callable[[Callable[[Any], None]], Any]) -> tuple[float, float, list[int]]:
    """Run a generator taking ``on_step``; return (first-token ms, decode tokens/s, tokens).

    The first token ends the prompt's prefill; the decode rate counts the tokens after it over the time
    between the first and the last step.
    """
    stamps: list[float] = []
    start = time.perf_counter()
    out = run(lambda step: stamps.append(time.perf_counter()))
    tokens = out[0][0]
    ttft = (stamps[0] - start) * 1e3
    rate = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)
    return ttft, rate, tokens


def ensure_lm_export(model: str | Path, onnx_dir: Path, data_dir: str | None, source: str) -> float | None:
    """Export ``model`` with ``export_lm`` into ``onnx_dir`` unless its manifest already has an ``lm``
    entry whose source is ``source``; the export's seconds, or ``None`` when the cache was used."""
    from veil.models.onnx.lm import LM_ENTRY, export_lm
    from veil.models.onnx.manifest import ModelFileError, read_manifest

    try:
        cached = read_manifest(onnx_dir).entry(LM_ENTRY).extra.get("source") == source
    except (ModelFileError, KeyError):
        cached = False
    if cached:
        return None
    t = time.perf_counter()
    export_lm(model, onnx_dir, data_dir)
    return time.perf_counter() - t

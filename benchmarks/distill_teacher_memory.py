"""Memory of cached teacher signals: full logits against top-k (``TopKTeacher``), SmolLM2's vocabulary.

For ``--sequences`` N x ``--tokens`` T positions of random teacher logits over ``--vocab`` ids (49,152,
SmolLM2's), it builds a :class:`veil.models.distillation.TopKTeacher` per ``k`` and prints, per format,
the bytes a token costs by formula (full float32: ``4 V``; top-k: ``k`` int64 ids + ``k`` float32
log-probabilities + one float32 tail log-mass, ``12 k + 4``), the bytes measured in memory (the tensors'
``nbytes``) and on disk (``.safetensors`` and ``.npz`` files written to a temporary folder), the ratio
of full logits' measured bytes to each, and the time ``from_logits`` took. The values of the logits do
not matter for memory. A last table scales the formula to ``--corpus`` sequences of T tokens.

Usage::

    .venv/bin/python benchmarks/distill_teacher_memory.py --sequences 4 --tokens 256 --ks 8 32 100
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from veil.models.distillation import TopKTeacher

SMOLLM2_VOCAB = 49_152


def topk_bytes_per_token(k: int) -> int:
    """int64 ids and float32 log-probabilities for k ids, plus one float32 tail log-mass."""
    return k * (8 + 4) + 4


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=4, help="N sequences held in memory")
    parser.add_argument("--tokens", type=int, default=256, help="T tokens per sequence")
    parser.add_argument("--vocab", type=int, default=SMOLLM2_VOCAB, help="vocabulary size V")
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32, 100], help="top-k sizes")
    parser.add_argument("--corpus", type=int, default=10_000, help="sequences in the scaled table")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    n, t, v = args.sequences, args.tokens, args.vocab
    positions = n * t
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"{n} sequences x {t} tokens = {positions} positions, vocabulary {v}")
    gen = torch.Generator().manual_seed(args.seed)
    logits = torch.randn(n, t, v, generator=gen)  # float32, as a teacher's forward pass returns them
    full = logits.nbytes
    if full != positions * 4 * v:
        raise RuntimeError(f"full logits hold {full} bytes, expected {positions * 4 * v}")

    header = (
        f"{'format':<14}{'bytes/token':>12}{'computed':>15}{'measured':>15}"
        f"{'.safetensors':>15}{'.npz':>15}{'full/measured':>15}{'build s':>9}"
    )
    print(header)
    print(f"{'full fp32':<14}{4 * v:>12,}{positions * 4 * v:>15,}{full:>15,}{'':>15}{'':>15}{1.0:>15.1f}")
    print(f"{'full bf16':<14}{2 * v:>12,}{positions * 2 * v:>15,}{'':>15}{'':>15}{'':>15}{2.0:>15.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.ks:
            start = time.perf_counter()
            teacher = TopKTeacher.from_logits(logits, k)
            seconds = time.perf_counter() - start
            on_disk = []
            for suffix in (".safetensors", ".npz"):
                path = Path(tmp) / f"top{k}{suffix}"
                teacher.save(path)
                on_disk.append(path.stat().st_size)
            per_token = topk_bytes_per_token(k)
            print(
                f"{f'top-{k}':<14}{per_token:>12,}{positions * per_token:>15,}{teacher.nbytes:>15,}"
                f"{on_disk[0]:>15,}{on_disk[1]:>15,}{full / teacher.nbytes:>15.1f}{seconds:>9.2f}"
            )

    print(f"\nscaled by formula to {args.corpus:,} sequences x {t} tokens:")
    corpus_positions = args.corpus * t
    print(f"{'full fp32':<14}{corpus_positions * 4 * v / 2**30:>12.1f} GiB")
    for k in args.ks:
        print(f"{f'top-{k}':<14}{corpus_positions * topk_bytes_per_token(k) / 2**30:>12.2f} GiB")


if __name__ == "__main__":
    main()

"""Alignment throughput of CDM's entropy-weighted DTW (arXiv:2502.11104): vectorised vs a per-cell loop.

Two BPE tokenizers are trained here on the gensim Lee corpus (a byte-level BPE of 512 tokens, the
teacher's, and a Metaspace BPE of 300 tokens, the student's). Consecutive sentences are joined into
passages whose student tokenisation has 128-512 tokens; each passage gives one (teacher, student) pair
of stripped token strings, with random entropy weights in {3, 4, 5} (the weights do not change the work).

* ``naive``: the straightforward per-sample DTW of the CDM ports: one Python iteration per cell
  (rapidfuzz's Levenshtein distance of the two strings, the weighted cost, the three-way min), then the
  greedy backtrace;
* ``vectorised``: :func:`veil.models.distillation.align.align_batch` on all pairs, swept ``--batch``
  pairs at a time (one ``process.cdist`` per pair over its distinct strings, the recursion over
  anti-diagonals vectorised over cells and pairs).

Both produce the same paths (checked on every pair timed by both). Prints pairs/s of each and the ratio
measured in the same run, on the pairs both aligned (target: 20x).

Usage::

    .venv/bin/python benchmarks/cdm_alignment.py --pairs 64 --naive-pairs 8 --batch 16
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np


def train_tokenizers():  # noqa: ANN201 (transformers types are imported lazily)
    from gensim.test.utils import datapath
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with open(datapath("lee_background.cor"), encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    byte = Tokenizer(models.BPE())
    byte.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte.decoder = decoders.ByteLevel()
    byte.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    meta = Tokenizer(models.BPE(unk_token="<unk>"))
    meta.pre_tokenizer = pre_tokenizers.Metaspace()
    meta.decoder = decoders.Metaspace()
    meta.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>", "<unk>"]))
    teacher = PreTrainedTokenizerFast(tokenizer_object=byte, eos_token="<|im_end|>")
    student = PreTrainedTokenizerFast(tokenizer_object=meta, eos_token="</s>")
    return teacher, student, lines


def passages(lines: list[str], student, lo: int, hi: int, count: int, rng: np.random.Generator) -> list[str]:  # noqa: ANN001
    sentences = [s.strip() + "." for line in lines for s in line.split(". ") if s.strip()]
    out = []
    while len(out) < count:
        start, text = int(rng.integers(len(sentences))), ""
        target = int(rng.integers(lo, hi + 1))
        for s in sentences[start:]:
            text = f"{text} {s}".strip()
            if len(student(text)["input_ids"]) >= target:
                break
        n = len(student(text)["input_ids"])
        if lo <= n <= hi:
            out.append(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="pairs aligned by the vectorised DTW")
    parser.add_argument("--naive-pairs", type=int, default=8, help="the first pairs, also aligned naively")
    parser.add_argument(
        "--batch", type=int, default=16, help="pairs per vectorised sweep (align_batch's chunk)"
    )
    parser.add_argument("--min-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from veil.models.distillation.align import align_batch, dtw_path_reference, vocab_strings

    rng = np.random.default_rng(args.seed)
    teacher, student, lines = train_tokenizers()
    texts = passages(lines, student, args.min_tokens, args.max_tokens, args.pairs, rng)
    t_str, s_str = vocab_strings(teacher).stripped, vocab_strings(student).stripped
    pairs = [(list(t_str[teacher(x)["input_ids"]]), list(s_str[student(x)["input_ids"]])) for x in texts]
    weights = [(rng.integers(3, 6, size=len(t)), rng.integers(3, 6, size=len(s))) for t, s in pairs]
    t_len = [len(t) for t, _ in pairs]
    s_len = [len(s) for _, s in pairs]
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    )
    print(f"pairs: {len(pairs)}; teacher tokens {min(t_len)}-{max(t_len)} (mean {np.mean(t_len):.0f}), "
          f"student tokens {min(s_len)}-{max(s_len)} (mean {np.mean(s_len):.0f})")  # fmt: skip

    start = time.perf_counter()
    fast = align_batch(
        [t for t, _ in pairs],
        [s for _, s in pairs],
        [x for x, _ in weights],
        [y for _, y in weights],
        args.batch,
    )
    fast_s = time.perf_counter() - start
    fast_rate = len(pairs) / fast_s

    k = min(args.naive_pairs, len(pairs))
    start = time.perf_counter()
    slow = [dtw_path_reference(t, s, wt, ws) for (t, s), (wt, ws) in zip(pairs[:k], weights[:k], strict=True)]
    slow_s = time.perf_counter() - start
    slow_rate = k / slow_s
    start = time.perf_counter()
    subset = align_batch(
        [t for t, _ in pairs[:k]], [s for _, s in pairs[:k]], [x for x, _ in weights[:k]],
        [y for _, y in weights[:k]], args.batch,
    )  # fmt: skip
    subset_rate = k / (time.perf_counter() - start)
    same = all(np.array_equal(a.path, p) for a, p in zip(fast[:k], slow, strict=True))
    same &= all(np.array_equal(a.path, p) for a, p in zip(subset, slow, strict=True))
    print(f"naive per-cell DTW: {k} pairs in {slow_s:.2f} s = {slow_rate:.2f} pairs/s")
    print(f"vectorised DTW (sweeps of {args.batch}): {len(pairs)} pairs in {fast_s:.2f} s = {fast_rate:.1f} pairs/s; "
          f"on the naive run's {k} pairs: {subset_rate:.1f} pairs/s")  # fmt: skip
    print(f"speed-up on the same {k} pairs: {subset_rate / slow_rate:.1f}x, over all pairs: "
          f"{fast_rate / slow_rate:.1f}x (target 20x); identical paths: {same}")  # fmt: skip


if __name__ == "__main__":
    main()

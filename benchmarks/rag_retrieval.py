"""What RAG retrieval costs per 10,000 passages: index build, and query latency in each mode.

Passages come from gensim's Wikipedia sample (``veil.models.rag.wikipedia_sample_documents``, 106
articles, ~5,100 passages of 100 words), topped up to ``--passages`` with varied copies (copy ``c`` of a
passage drops every ``(c + 2)``-th word, so term statistics and lengths differ from the original).

Measured in the same run:

* **BM25** (``veil.models.rag.BM25Index``, bm25s' precomputed sparse scores) against the baseline, a
  plain-Python Okapi BM25 in the style of ``rank-bm25`` (one term-frequency dict per passage, every
  passage scored per query) with the same Lucene formula; both build times, p50/p95 per query and the
  ratios, and the check that both return the same top 10.
* **Dense**: all-MiniLM-L6-v2 throughput on ``--encode-sample`` passages, extrapolated to the whole set
  (encoding them all takes tens of minutes on 2 cores); the search matrix of ``--passages`` rows is the
  sample's real vectors tiled with small noise and re-normalised, which costs the same to multiply. A dense
  query's latency = encoding the query + the ``(n, 384) @ (384,)`` product + top-k.
* **Hybrid**: both, fused by reciprocal rank (``Collection.search(mode="hybrid")``).
* **Adding** 1 % more passages to the built collection (BM25 rebuilds its matrix, dense embeds only the
  new ones), and saving/loading it.

    .venv/bin/python benchmarks/rag_retrieval.py --passages 10000 --queries 50 --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from veil.models.rag import (
    MODES,
    Collection,
    Document,
    IndexConfig,
    chunk_documents,
    load_minilm,
    tokenize,
    top_k,
    wikipedia_sample_documents,
)


class NaiveBM25:
    """The baseline: Lucene BM25 (k1 1.2, b 0.75) in plain Python, as rank-bm25 structures it."""

    def __init__(self, corpus: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.tf = [Counter(doc) for doc in corpus]
        self.lengths = [len(doc) for doc in corpus]
        self.avgdl = sum(self.lengths) / len(corpus)
        df: Counter[str] = Counter()
        for counts in self.tf:
            df.update(counts.keys())
        n = len(corpus)
        self.idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}

    def scores(self, query: list[str]) -> np.ndarray:
        out = np.zeros(len(self.tf), dtype=np.float64)
        for i, (counts, length) in enumerate(zip(self.tf, self.lengths, strict=True)):
            norm = self.k1 * (1 - self.b + self.b * length / self.avgdl)
            s = 0.0
            for t in query:
                f = counts.get(t)
                if f:
                    s += self.idf[t] * f / (f + norm)
            out[i] = s
        return out


class ReplayEncoder:
    """MiniLM for queries; passages' vectors looked up from what was encoded (or tiled) beforehand."""

    def __init__(self, real, table: dict[str, np.ndarray]) -> None:
        self.real, self.table = real, table
        self.name, self.dim = real.name, real.dim

    def encode(self, texts):
        missing = [t for t in texts if t not in self.table]
        if missing:
            for text, vec in zip(missing, self.real.encode(missing), strict=True):
                self.table[text] = vec
        return np.stack([self.table[t] for t in texts])


def corpus(n: int) -> list[Document]:
    """``n`` passage-sized documents: the Wikipedia sample's passages, then varied copies."""
    base = chunk_documents(wikipedia_sample_documents())
    docs: list[Document] = []
    copy = 0
    while len(docs) < n:
        for p in base:
            if len(docs) == n:
                break
            words = p.text.split()
            if copy:
                words = [w for i, w in enumerate(words) if (i + 1) % (copy + 2)]
            docs.append(Document(id=f"{p.id}~{copy}", text=" ".join(words), title=p.title))
        copy += 1
    return docs


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--encode-sample", type=int, default=256, help="passages MiniLM really encodes")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--machine", default=f"{os.cpu_count()}-core {platform.machine()}")
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per result")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.passages, args.queries, args.encode_sample, args.k) < 1:
        parser.error("--passages, --queries, --encode-sample and --k must be >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(args.seed)
    rows: list[dict] = []

    def report(metric: str, **fields) -> None:
        row = {"bench": "rag_retrieval", "machine": args.machine, "passages": args.passages, "metric": metric}
        row.update(fields)
        rows.append(row)
        print(json.dumps(row))

    docs = corpus(args.passages)
    contents = [f"{d.title}\n{d.text}" for d in docs]
    # queries: an 8-word span of a random passage (known-item search, as a user recalls a fact)
    queries = []
    for i in rng.choice(len(docs), size=args.queries, replace=False):
        words = docs[int(i)].text.split()
        start = int(rng.integers(0, max(1, len(words) - 8)))
        queries.append(" ".join(words[start : start + 8]))

    # -- BM25: baseline against bm25s ---------------------------------------------------------------
    t = time.perf_counter()
    naive = NaiveBM25([tokenize(c) for c in contents])
    naive_build = time.perf_counter() - t
    sparse_only = Collection("bench-sparse", IndexConfig(dense=False))
    t = time.perf_counter()
    sparse_only.add(docs)
    bm25_build = time.perf_counter() - t
    naive_times, fast_times, same = [], [], 0
    for q in queries:
        t = time.perf_counter()
        ref = naive.scores(tokenize(q))
        naive_top = [i for i in np.argsort(-ref, kind="stable")[: args.k] if ref[i] > 0]
        naive_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        hits = sparse_only.search(q, k=args.k, mode="bm25")
        fast_times.append(time.perf_counter() - t)
        same += [h.id for h in hits] == [docs[i].id + "#0" for i in naive_top]
    report("bm25_build", naive_s=naive_build, bm25s_s=bm25_build, speedup=naive_build / bm25_build)
    nq, fq = percentiles(naive_times), percentiles(fast_times)
    report(
        "bm25_query",
        naive=nq,
        bm25s=fq,
        speedup_p50=nq["p50_ms"] / fq["p50_ms"],
        speedup_p95=nq["p95_ms"] / fq["p95_ms"],
        same_top_k=f"{same}/{len(queries)}",
    )

    # -- dense: real encoding of a sample, a full-size matrix from it --------------------------------
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    minilm = load_minilm()
    minilm.encode(["warm up"])
    sample = contents[: args.encode_sample]
    t = time.perf_counter()
    sample_vectors = minilm.encode(sample)
    encode_s = time.perf_counter() - t
    per_passage = encode_s / len(sample)
    report(
        "dense_encode",
        sample=len(sample),
        passages_per_s=1 / per_passage,
        extrapolated_s=per_passage * len(docs),
        threads=_threads(),
    )
    tiled = sample_vectors[np.arange(len(docs)) % len(sample)]
    tiled = tiled + rng.normal(0, 0.01, size=tiled.shape).astype(np.float32)
    tiled /= np.linalg.norm(tiled, axis=1, keepdims=True)
    encoder = ReplayEncoder(minilm, dict(zip(contents, tiled, strict=True)))
    collection = Collection("bench", IndexConfig(dense=True), encoder=encoder)
    t = time.perf_counter()
    collection.add(docs)
    index_s = time.perf_counter() - t  # BM25 build + stacking the precomputed vectors
    report("hybrid_build_without_encoding", seconds=index_s)

    for q in queries[:3]:  # the first queries pay for one-time warm-up, not measured
        collection.search(q, k=args.k, mode="hybrid")
    for mode in MODES:
        times = []
        for q in queries:
            encoder.table.pop(q, None)  # each query is encoded afresh, as a new user query would be
            t = time.perf_counter()
            collection.search(q, k=args.k, mode=mode)
            times.append(time.perf_counter() - t)
        report("query", mode=mode, **percentiles(times))
    q_enc, q_mat = [], []
    for q in queries:
        t = time.perf_counter()
        vec = minilm.encode([q])[0]
        q_enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        top_k(tiled @ vec, args.k)  # the product and the selection alone
        q_mat.append(time.perf_counter() - t)
    report("dense_query_parts", encode=percentiles(q_enc), product_and_top_k=percentiles(q_mat))

    # -- incremental add and persistence -------------------------------------------------------------
    extra = [  # new text, so MiniLM really encodes it
        Document(id=f"extra-{i}", text=f"Addendum {i}: {d.text}", title=d.title)
        for i, d in enumerate(docs[: max(1, len(docs) // 100)])
    ]
    t = time.perf_counter()
    collection.add(extra)  # embeds only the new passages (really, with MiniLM); BM25 rebuilds
    add_s = time.perf_counter() - t
    report(
        "add_one_percent", new_passages=len(extra), seconds=add_s, encode_estimate_s=per_passage * len(extra)
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = collection.save(Path(tmp) / "bench")
        save_s = time.perf_counter() - t
        t = time.perf_counter()
        Collection.load(path, encoder=encoder)
        load_s = time.perf_counter() - t
    report("persist", save_s=save_s, load_s=load_s)

    if args.out:
        with args.out.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()

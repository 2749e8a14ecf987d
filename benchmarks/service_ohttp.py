"""Cost of the anonymous channel: the same service work with and without Oblivious HTTP.

Three measurements, each printed as a ratio to the same run without OHTTP:

1. **uploads**: N uploads from C concurrent phones (asyncio) end to end, on SQLite and on PostgreSQL.
   OHTTP: ``PhoneAPI`` seals each request (BHTTP + HPKE), a ``veil relay`` process forwards it, the
   gateway inside the ``veil serve`` process opens it and the store commits it. Direct: the same
   ``PhoneAPI`` calls sent straight to the API with an API key. Client, relay and API are separate
   processes (``service_stack.py``), and each one's CPU time per upload is reported too. The two
   modes alternate in rounds, and afterwards the script checks that every upload is in the database.
2. **encapsulation**: the phone's CPU cost for one upload, single thread: BHTTP encoding plus
   ``encapsulate_request`` against bare JSON encoding, and opening the encapsulated response against
   bare JSON decoding; for the X25519 suite and the ML-KEM-768+X25519 hybrid.
3. **chat**: ``max_tokens`` 16, temperature 0, sequential requests, with and without ``user_embedding``,
   each direct and through the relay, on the first backend's service (SQLite by default); the four
   kinds of request take turns.

Nothing is written to ``VEIL_DATA_DIR`` except the model cache: the databases, the gateway's key and
the server logs go to a temporary directory.

Usage::

    .venv/bin/python benchmarks/service_ohttp.py --quick
    .venv/bin/python benchmarks/service_ohttp.py --uploads 2000 --concurrency 16 --json
    .venv/bin/python benchmarks/service_ohttp.py --sections chat --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from service_stack import (
    DirectTransport,
    ServiceStack,
    compact_json,
    load_average,
    machine,
    postgres_database,
    summarise,
)

__all__ = ["chat_latency", "encapsulation_cost", "main", "upload_throughput"]

SECTIONS = ("uploads", "encapsulation", "chat")
BACKENDS = ("sqlite", "postgresql")
UPLOAD_TEXT = "the quick brown fox jumps over the lazy dog while the phone learns which word comes next"
CHAT_PROMPT = [{"role": "user", "content": "Suggest a name for a small cafe by the sea, and say why."}]


async def _uploads(stack: ServiceStack, n: int, concurrency: int, rounds: int) -> dict[str, Any]:
    from veil.client_sdk.api import PhoneAPI

    embedding = np.random.default_rng(0).standard_normal(stack.embedding_shape)
    transports = {
        "direct": [DirectTransport(stack.api_url, stack.api_key) for _ in range(concurrency)],
        "ohttp": [stack.ohttp_client() for _ in range(concurrency)],
    }
    phones = {mode: [PhoneAPI(t, stack.model_id) for t in ts] for mode, ts in transports.items()}
    latencies: dict[str, list[float]] = {mode: [] for mode in phones}
    elapsed = dict.fromkeys(phones, 0.0)
    cpu: dict[str, dict[str, float]] = {mode: {} for mode in phones}
    serial = itertools.count()

    async def upload(phone: Any, latency: list[float] | None) -> None:
        started = time.perf_counter()
        out = await phone.upload("next_word", f"{next(serial)} {UPLOAD_TEXT}", "word", embedding)
        if latency is not None:
            latency.append(time.perf_counter() - started)
        if out.get("status") != "created":
            raise RuntimeError(f"upload not created: {out}")

    async def timed(mode: str, count: int) -> float:
        left = iter(range(count))  # shared: each phone takes the next upload when it is free

        async def phone_loop(phone: Any) -> None:
            for _ in left:
                await upload(phone, latencies[mode])

        cpu_before, started = stack.cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(phone_loop(p) for p in phones[mode]))
        wall = time.perf_counter() - started
        for name, seconds in stack.cpu_seconds().items():
            cpu[mode][name] = cpu[mode].get(name, 0.0) + seconds - cpu_before[name]
        return wall

    try:
        for mode in phones:  # warm-up, untimed: connections, key configurations, first commits
            await asyncio.gather(*(upload(p, None) for p in phones[mode]))
        sizes = [n // rounds + (r < n % rounds) for r in range(rounds)]
        for r, size in enumerate(sizes):
            # Alternating which mode goes first spreads drift in machine load over both.
            for mode in list(phones)[:: 1 if r % 2 == 0 else -1]:
                elapsed[mode] += await timed(mode, size)
    finally:
        for t in itertools.chain(*transports.values()):
            await t.aclose()
    out: dict[str, Any] = {"warmup_uploads": 2 * concurrency}
    for mode in phones:
        out[mode] = {"uploads": n, "seconds": elapsed[mode], "uploads_per_s": n / elapsed[mode]}
        out[mode]["latency_ms"] = summarise(latencies[mode])
        # CPU per upload stays meaningful on a shared machine, where wall-clock rates swing with load.
        out[mode]["cpu_ms_per_upload"] = {name: 1e3 * s / n for name, s in cpu[mode].items()}
    return out


def upload_throughput(stack: ServiceStack, n: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """Uploads/s and per-upload latency, direct and through OHTTP, on ``stack``; checks the store after."""
    before, load = stack.count_uploads(), load_average()
    out = asyncio.run(_uploads(stack, n, concurrency, rounds))
    stored = stack.count_uploads() - before
    expected = 2 * n + out["warmup_uploads"]
    if stored != expected:
        raise RuntimeError(f"{stored} uploads stored, expected {expected}")
    out["stored_checked"], out["load_before"] = stored, load
    out["ratio"] = out["ohttp"]["uploads_per_s"] / out["direct"]["uploads_per_s"]
    out["latency_p50_ratio"] = out["ohttp"]["latency_ms"]["p50"] / out["direct"]["latency_ms"]["p50"]
    cpu = {mode: sum(out[mode]["cpu_ms_per_upload"].values()) for mode in ("direct", "ohttp")}
    out["cpu_ratio"] = cpu["ohttp"] / cpu["direct"]
    return out


def _seal_upload(config: Any, body: dict[str, Any]) -> tuple[bytes, Any]:
    """What ``AsyncOHTTPClient`` does for one upload: JSON, BHTTP framing, HPKE seal."""
    from veil.client_sdk.ohttp import BinaryRequest, encapsulate_request

    fields = [("content-type", "application/json"), ("idempotency-key", "k" * 32)]
    inner = BinaryRequest("POST", "https", "veil.invalid", "/v1/uploads", fields, compact_json(body))
    return encapsulate_request(config, inner.encode())


def _open_answer(context: Any, sealed: bytes) -> Any:
    """What the client does with the answer: open, parse BHTTP, parse JSON."""
    from veil.client_sdk.ohttp import BinaryResponse

    return json.loads(BinaryResponse.decode(context.decapsulate_response(sealed)).content)


def encapsulation_cost(repeats: int, embedding_shape: tuple[int, int]) -> list[dict[str, Any]]:
    """Client CPU per upload with vs without OHTTP, per KEM (µs; single thread, interleaved)."""
    from veil.client_sdk.ohttp import BinaryResponse, GatewayKeyPair, decapsulate_request
    from veil.cloud_service.gateway import KEM_NAMES

    embedding = np.random.default_rng(0).standard_normal(embedding_shape).tolist()
    body = {"model": "m", "task": "next_word", "text": UPLOAD_TEXT, "label": "word", "embedding": embedding}
    answer = json.dumps({"id": "3f1c2a9e7b5d4c6a8e0f1b2c3d4e5f60", "status": "created"}).encode()
    rows = []
    for name, kem_id in KEM_NAMES.items():
        keys = GatewayKeyPair.generate(1, kem_id)
        config = keys.config
        times: dict[str, list[float]] = {"json_encode": [], "seal": [], "json_decode": [], "open": []}
        sealed_size = 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            compact_json(body)
            t1 = time.perf_counter()
            sealed, context = _seal_upload(config, body)
            t2 = time.perf_counter()
            json.loads(answer)
            t3 = time.perf_counter()
            # The gateway's side, untimed: a real encapsulated response for this context.
            _, server = decapsulate_request({keys.key_id: keys}, sealed)
            inner = BinaryResponse(201, [("content-type", "application/json")], answer).encode()
            response = server.encapsulate_response(inner)
            t4 = time.perf_counter()
            _open_answer(context, response)
            t5 = time.perf_counter()
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t5 - t4), strict=True):
                times[key].append(dt)
            sealed_size = len(sealed)
        stats = {key: summarise(values, 1e6) for key, values in times.items()}
        plain = stats["json_encode"]["p50"] + stats["json_decode"]["p50"]
        ohttp = stats["seal"]["p50"] + stats["open"]["p50"]
        rows.append(
            {
                "kem": name,
                "request_bytes": {"json": len(compact_json(body)), "ohttp": sealed_size},
                "us": stats,
                "request_ratio": stats["seal"]["p50"] / stats["json_encode"]["p50"],
                "response_ratio": stats["open"]["p50"] / stats["json_decode"]["p50"],
                "round_trip_ratio": ohttp / plain,
                "round_trip_extra_us": ohttp - plain,
            }
        )
    return rows


async def _chat(stack: ServiceStack, repeats: int, warmup: int, max_tokens: int) -> dict[str, Any]:
    transports = {"direct": DirectTransport(stack.api_url, stack.api_key), "ohttp": stack.ohttp_client()}
    embedding = (0.1 * np.random.default_rng(0).standard_normal(stack.embedding_shape)).tolist()
    kinds = [(mode, personal) for mode in transports for personal in (False, True)]
    times: dict[str, list[float]] = {}
    tokens: dict[str, list[int]] = {}
    try:
        for i in range(warmup + repeats):
            for mode, personal in kinds[i % 4 :] + kinds[: i % 4]:  # rotate the order each round
                body = {"model": stack.model_id, "messages": CHAT_PROMPT, "max_tokens": max_tokens}
                body.update(temperature=0, **({"user_embedding": embedding} if personal else {}))
                started = time.perf_counter()
                answer = await transports[mode].request("POST", "/v1/chat/completions", json=body)
                elapsed = time.perf_counter() - started
                if answer.status != 200:
                    raise RuntimeError(f"chat ({mode}) answered {answer.status}: {answer.content[:300]!r}")
                if i >= warmup:
                    key = f"{mode}{'+embedding' if personal else ''}"
                    times.setdefault(key, []).append(elapsed)
                    tokens.setdefault(key, []).append(
                        json.loads(answer.content)["usage"]["completion_tokens"]
                    )
    finally:
        for t in transports.values():
            await t.aclose()
    rows = {}
    for key, seconds in times.items():
        # Per token too: an answer that ends early on EOS is shorter, and faster for that reason alone.
        per_token = [s / max(n, 1) for s, n in zip(seconds, tokens[key], strict=True)]
        rows[key] = {**summarise(seconds), "completion_tokens": float(np.mean(tokens[key]))}
        rows[key]["per_token_p50"] = summarise(per_token)["p50"]
    pairs = {
        "embedding/none, direct": ("direct+embedding", "direct"),
        "embedding/none, ohttp": ("ohttp+embedding", "ohttp"),
        "ohttp/direct, no embedding": ("ohttp", "direct"),
        "ohttp/direct, embedding": ("ohttp+embedding", "direct+embedding"),
    }
    ratios = {name: rows[a]["p50"] / rows[b]["p50"] for name, (a, b) in pairs.items()}
    per_token = {name: rows[a]["per_token_p50"] / rows[b]["per_token_p50"] for name, (a, b) in pairs.items()}
    return {
        "model": stack.model_id,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "ms": rows,
        "ratios": ratios,
        "per_token_ratios": per_token,
    }


def chat_latency(stack: ServiceStack, repeats: int, max_tokens: int = 16, warmup: int = 3) -> dict[str, Any]:
    """Sequential chat latency (ms) with/without a user embedding, each direct and through OHTTP."""
    load = load_average()
    return {**asyncio.run(_chat(stack, repeats, warmup, max_tokens)), "load_before": load}


def _print_uploads(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nuploads end to end: {args.uploads} per mode, {args.concurrency} concurrent phones, {args.rounds} rounds"
    )
    loads = ", ".join(f"{r['backend']} {r['load_before']}" for r in rows if "load_before" in r)
    print(f"model {args.model}; {machine()}; load average before: {loads or '-'}")
    head = f"{'backend':<11}{'direct up/s':>12}{'ohttp up/s':>12}{'ratio':>7}{'direct p50/p99 ms':>20}"
    print(head + f"{'ohttp p50/p99 ms':>19}{'p50 ratio':>10}\n{'-' * (len(head) + 29)}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['backend']:<11}skipped: {r['skipped']}")
            continue
        d, o = r["direct"], r["ohttp"]
        lat = (f"{x['latency_ms']['p50']:.1f} / {x['latency_ms']['p99']:.1f}" for x in (d, o))
        print(
            f"{r['backend']:<11}{d['uploads_per_s']:>12.1f}{o['uploads_per_s']:>12.1f}{r['ratio']:>7.3f}"
            f"{next(lat):>20}{next(lat):>19}{r['latency_p50_ratio']:>10.2f}"
        )
    measured = [r for r in rows if "ratio" in r]
    if measured:
        print(f"\n{'CPU ms per upload':<18}{'client':>8}{'relay':>8}{'api':>8}{'total':>8}{'ratio':>7}")
    for r in measured:
        for mode in ("direct", "ohttp"):
            c = r[mode]["cpu_ms_per_upload"]
            ratio = f"{r['cpu_ratio']:>7.2f}" if mode == "ohttp" else ""
            print(
                f"{r['backend'] + ' ' + mode:<18}{c['client']:>8.2f}{c['relay']:>8.2f}{c['api']:>8.2f}"
                f"{sum(c.values()):>8.2f}{ratio}"
            )
    done = [f"{r['backend']} {r['ratio']:.2f} (CPU {r['cpu_ratio']:.2f})" for r in measured]
    print(f"ratio OHTTP / direct uploads/s: {', '.join(done) or 'none measured'}", flush=True)


def _print_encapsulation(result: dict[str, Any], args: argparse.Namespace) -> None:
    rows = result["suites"]
    print(
        f"\nclient cost per upload (µs, single thread): {args.repeats} repeats, embedding 1x{args.embedding_dim}"
    )
    print(f"{machine()}; load average before: {result['load_before']}")
    head = f"{'kem':<17}{'bytes json/ohttp':>17}{'json enc p50/p99':>18}{'seal p50/p99':>16}{'ratio':>7}"
    print(head + f"{'json dec p50/p99':>18}{'open p50/p99':>15}{'ratio':>7}{'+µs/upload':>11}{'ratio':>7}")
    print("-" * (len(head) + 58))
    for r in rows:
        us = r["us"]
        cell = {k: f"{v['p50']:.1f} / {v['p99']:.1f}" for k, v in us.items()}
        print(
            f"{r['kem']:<17}{r['request_bytes']['json']:>8} / {r['request_bytes']['ohttp']:<6}"
            f"{cell['json_encode']:>18}{cell['seal']:>16}{r['request_ratio']:>7.1f}{cell['json_decode']:>18}"
            f"{cell['open']:>15}{r['response_ratio']:>7.1f}{r['round_trip_extra_us']:>11.1f}{r['round_trip_ratio']:>7.1f}"
        )
    ratios = ", ".join(
        f"{r['kem']} {r['round_trip_ratio']:.1f}x (+{r['round_trip_extra_us']:.0f} µs)" for r in rows
    )
    print(f"ratio (seal + open) / (json encode + decode), p50: {ratios}", flush=True)


def _print_chat(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nchat latency (ms): {result['model']}, max_tokens {result['max_tokens']}, temperature 0, ", end=""
    )
    print(f"{result['repeats']} sequential requests of each kind, {result['backend']} store")
    print(f"{machine()}; load average before: {result['load_before']}")
    head = f"{'request':<18}{'p50':>9}{'p90':>9}{'tokens':>8}{'p50 ms/token':>14}"
    print(f"{head}\n{'-' * len(head)}")
    for name in ("direct", "direct+embedding", "ohttp", "ohttp+embedding"):
        r = result["ms"][name]
        print(
            f"{name:<18}{r['p50']:>9.1f}{r['p90']:>9.1f}{r['completion_tokens']:>8.1f}{r['per_token_p50']:>14.2f}"
        )
    for title, key in (("p50 latency", "ratios"), ("p50 ms/token", "per_token_ratios")):
        print(f"ratios of {title}: " + ", ".join(f"{k} {v:.3f}" for k, v in result[key].items()), flush=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _service_sections(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Uploads on each backend and chat on the first, each against its own ``ServiceStack``."""
    from veil.settings import get_settings

    backends = args.backends if "uploads" in args.sections else args.backends[:1]
    models_dir = get_settings().resolved_data_dir()
    uploads: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp:
        for backend in backends:
            with contextlib.ExitStack() as stack:
                workdir = Path(tmp, backend)
                workdir.mkdir()
                url = f"sqlite:///{workdir / 'veil.sqlite3'}"
                if backend == "postgresql":
                    try:
                        url = stack.enter_context(postgres_database(args.postgres_url))
                    except RuntimeError as exc:
                        print(f"postgresql skipped: {exc}", file=sys.stderr)
                        uploads.append({"backend": backend, "skipped": str(exc)})
                        continue
                print(f"{backend}: starting veil serve and veil relay ...", file=sys.stderr, flush=True)
                service = stack.enter_context(
                    ServiceStack(args.model, url, workdir, models_dir, args.server_threads)
                )
                if "uploads" in args.sections:
                    print(f"{backend}: uploads ...", file=sys.stderr, flush=True)
                    row = upload_throughput(service, args.uploads, args.concurrency, args.rounds)
                    uploads.append({"backend": backend, **row})
                if "chat" in args.sections and "chat" not in result:
                    print(f"{backend}: chat ...", file=sys.stderr, flush=True)
                    chat = chat_latency(service, args.chat_repeats, args.max_tokens)
                    result["chat"] = {"backend": backend, **chat}
    if uploads:
        result["uploads"] = uploads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--model", default="tiny-llama", help="model veil serve loads (e.g. smollm2-135m-instruct)"
    )
    parser.add_argument("--uploads", type=_positive, help="uploads per mode (default 2000, --quick 300)")
    parser.add_argument("--concurrency", type=_positive, default=16, help="concurrent phones")
    parser.add_argument("--rounds", type=_positive, default=2, help="direct/OHTTP alternations")
    parser.add_argument("--repeats", type=_positive, help="encapsulation repeats (default 2000, --quick 300)")
    parser.add_argument(
        "--embedding-dim",
        type=_positive,
        default=576,
        help="encapsulated upload's embedding width (SmolLM2: 576)",
    )
    parser.add_argument(
        "--chat-repeats", type=_positive, help="requests of each kind (default 50, --quick 20)"
    )
    parser.add_argument("--max-tokens", type=_positive, default=16)
    parser.add_argument(
        "--server-threads", type=_positive, help="torch threads of veil serve (default torch's)"
    )
    parser.add_argument("--postgres-url", help="PostgreSQL server whose role may CREATE DATABASE")
    parser.add_argument("--quick", action="store_true", help="small settings for a check run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    args.uploads = args.uploads or (300 if args.quick else 2000)
    args.repeats = args.repeats or (300 if args.quick else 2000)
    args.chat_repeats = args.chat_repeats or (20 if args.quick else 50)

    os.environ["HF_HUB_OFFLINE"] = "1"
    # SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop the servers and PostgreSQL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result: dict[str, Any] = {"machine": machine(), "model": args.model, "quick": args.quick}
    if "encapsulation" in args.sections:
        print("encapsulation ...", file=sys.stderr, flush=True)
        load = load_average()
        suites = encapsulation_cost(args.repeats, (1, args.embedding_dim))
        result["encapsulation"] = {"suites": suites, "load_before": load}
    if "uploads" in args.sections or "chat" in args.sections:
        _service_sections(args, result)
    if args.json:
        print(json.dumps(result))
        return 0
    for section, show in (
        ("uploads", _print_uploads),
        ("encapsulation", _print_encapsulation),
        ("chat", _print_chat),
    ):
        if section in result:
            show(result[section], args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

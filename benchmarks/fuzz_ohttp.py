"""Coverage-guided fuzzing of the OHTTP, BHTTP and key-configuration decoders, then of the real gateway.

Part 1 (in process, ``--messages``, default 100,000): for each public decoder
(:func:`veil.testing.ohttp_fuzz.decoder_targets`, and the gateway's check of the relay's
``Veil-Relay-Auth`` header) a corpus starts from valid encodings; each message is
a corpus entry with 1 to 6 AFL-style mutations, decoded under an edge tracer over the decoder modules;
a message that reaches a new line-to-line edge joins the corpus. Every outcome must be a value or the
decoder's typed error, within a second.

Part 2 (``--http``, default 10,000): the API with ``tiny-llama`` on a loopback port, and fuzzed bodies
POSTed to its ``/ohttp`` (:func:`veil.testing.gateway_fuzz.fuzz_gateway`: random bytes, mutated
encapsulations, correctly encapsulated mutated BHTTP, correctly encapsulated mutated JSON, valid
encapsulations under mutated ``Veil-Relay-Auth`` headers), each signed with the relay secret the gateway
requires; no outer or inner status may be 5xx.

Prints counts by decoder and outcome (typed error names), corpus sizes and edges, the HTTP status
histograms, and every finding with its input in hex; exits 1 when there is one.

Usage::

    VEIL_DATA_DIR=/tmp/vd .venv/bin/python benchmarks/fuzz_ohttp.py
    VEIL_DATA_DIR=/tmp/vd .venv/bin/python benchmarks/fuzz_ohttp.py --messages 20000 --http 2000 --seed 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from random import Random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from service_stack import load_average, machine  # noqa: E402

from veil.cloud_service import relay_auth  # noqa: E402
from veil.testing.gateway_fuzz import relay_auth_target  # noqa: E402
from veil.testing.ohttp_fuzz import (  # noqa: E402
    DECODER_FILES,
    EdgeTracer,
    UnexpectedDecoderError,
    decoder_targets,
    mutate,
    random_mutations,
    run_target,
)

_MAX_CORPUS = 2000
_RELAY_SECRET = bytes(range(32))


def fuzz_decoders(messages: int, seed: int, minutes: float | None, trace: bool) -> dict:
    """Part 1: coverage-guided mutation over every decoder, round robin; returns counts and findings."""
    rng = Random(seed)
    targets = [*decoder_targets(), relay_auth_target()]
    corpora = {t.name: list(t.seeds) for t in targets}
    files = DECODER_FILES | {str(Path(relay_auth.__file__).resolve())}
    tracers = {t.name: EdgeTracer(files) for t in targets}
    outcomes: dict[str, Counter[str]] = {t.name: Counter() for t in targets}
    findings: dict[str, str] = {}
    slowest = 0.0
    started = time.perf_counter()
    sent = 0
    for i in range(messages):
        if minutes is not None and i % 1000 == 0 and time.perf_counter() - started > 60 * minutes:
            break
        target = targets[i % len(targets)]
        corpus, tracer = corpora[target.name], tracers[target.name]
        data = mutate(rng.choice(corpus), random_mutations(rng))
        t0 = time.perf_counter()
        try:
            if trace:
                with tracer:
                    outcome = run_target(target, data)
            else:
                outcome = run_target(target, data)
        except UnexpectedDecoderError as exc:
            outcome = "UNEXPECTED"
            findings.setdefault(f"{target.name}: {exc.problem[:120]}", data.hex())
        slowest = max(slowest, time.perf_counter() - t0)
        outcomes[target.name][outcome] += 1
        sent += 1
        if trace and tracer.novel() and len(corpus) < _MAX_CORPUS:
            corpus.append(data)
    seconds = time.perf_counter() - started
    return {
        "messages": sent,
        "seconds": round(seconds, 1),
        "rate_per_s": round(sent / max(seconds, 1e-9)),
        "slowest_decode_ms": round(slowest * 1e3, 2),
        "outcomes": {name: dict(c.most_common()) for name, c in outcomes.items()},
        "corpus": {name: len(c) for name, c in corpora.items()},
        "edges": {name: len(t.seen) for name, t in tracers.items()},
        "unexpected": sum(c["UNEXPECTED"] for c in outcomes.values()),
        "findings": findings,
    }


def fuzz_http(bodies: int, seed: int, minutes: float | None) -> dict:
    """Part 2: the real API with the tiny model; fuzzed bodies to its ``/ohttp``."""
    import httpx

    from veil.client_sdk.ohttp import decode_key_configs
    from veil.cloud_service.app import create_app, load_served_model
    from veil.cloud_service.background import BackgroundServer
    from veil.cloud_service.config import ServiceConfig
    from veil.cloud_service.engine import EngineConfig
    from veil.settings import get_settings
    from veil.testing.gateway_fuzz import fuzz_gateway

    served = load_served_model(ServiceConfig(data_dir=get_settings().resolved_data_dir(), model="tiny-llama"))
    n_tokens, hidden = served[0].embedding_shape
    with tempfile.TemporaryDirectory(prefix="veil-fuzz-ohttp-") as root:
        config = ServiceConfig(
            data_dir=Path(root),
            model="tiny-llama",
            environment="development",
            relay_secret=_RELAY_SECRET,  # as deployed: only bodies with the relay's HMAC get past auth
            default_max_tokens=4,
            engine=EngineConfig(max_batch=8, batch_window_s=0.002),
        )
        with BackgroundServer(create_app(config, preloaded=served)) as server:
            key = decode_key_configs(httpx.get(server.url + "/.well-known/ohttp-gateway").content)[0]
            report = fuzz_gateway(
                server.url + "/ohttp",
                key,
                bodies,
                seed=seed,
                embedding_size=n_tokens * hidden,
                relay_secret=_RELAY_SECRET,
                deadline_s=None if minutes is None else 60 * minutes,
                progress=lambda r: print(f"  http: {r.sent} bodies, {r.sent / r.seconds:.0f}/s", flush=True),
            )
    return {
        "bodies": report.sent,
        "seconds": round(report.seconds, 1),
        "rate_per_s": round(report.sent / max(report.seconds, 1e-9)),
        "kinds": dict(report.kinds),
        "outer_statuses": dict(sorted(report.statuses.items())),
        "outer_error_types": dict(report.outer_errors.most_common()),
        "inner_statuses": dict(sorted(report.inner_statuses.items())),
        "server_errors": report.server_errors,
        "findings": [
            f"{f.kind} -> {f.status}/{f.inner_status}: {f.problem} body={f.body.hex()}"
            for f in report.findings
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="fuzzed messages into the decoders")
    parser.add_argument("--http", type=int, default=10_000, help="fuzzed bodies POSTed to the gateway")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="time budget for each part")
    parser.add_argument("--no-trace", action="store_true", help="plain mutation, no coverage guidance")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.messages < 0 or args.http < 0:
        print(f"--messages and --http must be >= 0, got {args.messages}, {args.http}", file=sys.stderr)
        return 2
    out: dict = {"machine": machine(), "seed": args.seed}
    out["decoders"] = fuzz_decoders(args.messages, args.seed, args.minutes, not args.no_trace)
    if not args.json:
        _print_decoders(out["decoders"])
    if args.http:
        out["http"] = fuzz_http(args.http, args.seed, args.minutes)
        if not args.json:
            _print_http(out["http"])
    out["load_average"] = load_average()
    out["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    failed = out["decoders"]["unexpected"] or (
        args.http and (out["http"]["findings"] or out["http"]["server_errors"])
    )
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"machine: {out['machine']}; load average {out['load_average']}; max RSS {out['max_rss_mib']} MiB"
        )
        print("RESULT:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


def _print_decoders(d: dict) -> None:
    print(
        f"decoders: {d['messages']} messages in {d['seconds']} s ({d['rate_per_s']}/s), "
        f"slowest decode {d['slowest_decode_ms']} ms, unexpected exceptions: {d['unexpected']}"
    )
    for name, counts in d["outcomes"].items():
        outcome = ", ".join(f"{k} {v}" for k, v in counts.items())
        print(f"  {name:34s} corpus {d['corpus'][name]:5d}  edges {d['edges'][name]:4d}  {outcome}")
    for problem, data in d["findings"].items():
        print(f"FINDING {problem}\n  input={data}")


def _print_http(h: dict) -> None:
    print(
        f"gateway /ohttp: {h['bodies']} bodies in {h['seconds']} s ({h['rate_per_s']}/s), 5xx: {h['server_errors']}"
    )
    print(f"  by kind: {h['kinds']}")
    print(f"  outer statuses: {h['outer_statuses']}; error types: {h['outer_error_types']}")
    print(f"  inner statuses: {h['inner_statuses']}")
    for finding in h["findings"][:20]:
        print(f"FINDING {finding}")


if __name__ == "__main__":
    raise SystemExit(main())

"""Schemathesis against the served OpenAPI document, long run: >= 10,000 generated requests, no 5xx.

The real API (``create_app`` with ``tiny-llama``, SQLite in a temporary directory, an API key) runs on a
loopback port; :func:`veil.testing.api_fuzz.fuzz_api` reads ``/openapi.json`` and fuzzes every operation
with schemathesis' positive and negative generation, half the cases steered past validation. Rounds
with successive seeds run until ``--requests`` have been sent (or ``--minutes`` have passed). Prints
the requests sent, the status histogram, the 5xx count, and every finding with a curl command that
replays it; exits 1 when there is a finding.

Usage::

    VEIL_DATA_DIR=/tmp/vd .venv/bin/python benchmarks/fuzz_api.py                  # 10,000 requests
    VEIL_DATA_DIR=/tmp/vd .venv/bin/python benchmarks/fuzz_api.py --requests 500 --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from service_stack import load_average, machine  # noqa: E402

from veil.cloud_service.app import create_app, load_served_model  # noqa: E402
from veil.cloud_service.background import BackgroundServer  # noqa: E402
from veil.cloud_service.config import ServiceConfig  # noqa: E402
from veil.cloud_service.engine import EngineConfig  # noqa: E402
from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory  # noqa: E402
from veil.settings import get_settings  # noqa: E402
from veil.testing.api_fuzz import APIFuzzReport, fuzz_api  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="stop after this many requests")
    parser.add_argument("--examples", type=int, default=100, help="cases per operation and mode per round")
    parser.add_argument("--seed", type=int, default=0, help="first round's hypothesis seed")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long (rate is printed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.examples < 1:
        print(
            f"--requests and --examples must be >= 1, got {args.requests}, {args.examples}", file=sys.stderr
        )
        return 2

    models_dir = get_settings().resolved_data_dir()
    served = load_served_model(ServiceConfig(data_dir=models_dir, model="tiny-llama"))
    n_tokens, hidden = served[0].embedding_shape
    total = APIFuzzReport()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="veil-fuzz-api-") as root:
        config = ServiceConfig(
            data_dir=Path(root),
            model="tiny-llama",
            environment="development",
            default_max_tokens=4,
            max_body_bytes=256 * 1024,
            engine=EngineConfig(max_batch=8, batch_window_s=0.002),
        )
        db = make_engine(None, Path(root))
        migrate(db)
        key = create_api_key(session_factory(db)(), "fuzz")
        db.dispose()
        rounds = 0
        with BackgroundServer(create_app(config, preloaded=served)) as server:
            while total.requests < args.requests:
                if args.minutes is not None and time.perf_counter() - started > 60 * args.minutes:
                    break
                seed = args.seed + rounds
                report = fuzz_api(
                    server.url,
                    api_key=key,
                    served_model=served[2],
                    embedding_size=n_tokens * hidden,
                    examples_per_operation=args.examples,
                    seed=seed,
                )
                _merge(total, report)
                rounds += 1
                if not args.json:
                    print(
                        f"round {rounds} (seed {seed}): {report.requests} requests, total {total.requests}",
                        flush=True,
                    )
    total.seconds = time.perf_counter() - started
    if args.json:
        out = {
            "requests": total.requests,
            "seconds": round(total.seconds, 1),
            "statuses": dict(sorted(total.statuses.items())),
            "server_errors": total.server_errors,
            "findings": [f.__dict__ for f in total.findings],
            "rounds": rounds,
            "first_seed": args.seed,
            "machine": machine(),
            "load_average": load_average(),
        }
        print(json.dumps(out, indent=1))
    else:
        print(f"machine: {machine()}, load average {load_average()}; rounds {rounds} from seed {args.seed}")
        print(total.summary())
    return 1 if total.findings else 0


def _merge(total: APIFuzzReport, report: APIFuzzReport) -> None:
    total.requests += report.requests
    total.unsendable += report.unsendable
    total.statuses.update(report.statuses)
    total.by_operation.update(report.by_operation)
    total.findings += report.findings


if __name__ == "__main__":
    raise SystemExit(main())

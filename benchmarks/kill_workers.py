"""Durability under SIGKILL: uploads through the relay into ``veil serve --workers N`` while workers die.

Phones (the SDK's requests, as in ``upload_throughput.py``) upload without pause, each retrying an
upload with its idempotency key until it is acknowledged. Every ``--interval`` seconds (jittered) a
random worker gets ``SIGKILL``; uvicorn replaces it. After ``--kills`` kills the phones finish what they
started, and the store is checked against what the phones were told:

* lost: acknowledged uploads missing from the database (must be 0);
* duplicated: idempotency keys stored more than once, or one text stored twice (must be 0);
* wrong id: acknowledged uploads stored under another id than the phone was given (must be 0);
* unacknowledged: stored uploads no phone was told about (0 here: every upload is retried to the end).

Usage::

    .venv/bin/python benchmarks/kill_workers.py                 # 10 kills, 2 workers, SQLite
    .venv/bin/python benchmarks/kill_workers.py --backend postgresql --workers 3 --kills 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from service_stack import machine, postgres_database
from upload_throughput import UPLOAD_TEXT, UploadStack, make_phones, upload_body

__all__ = ["kill_run", "main"]


async def _load_and_kill(stack: UploadStack, args: argparse.Namespace) -> dict[str, Any]:
    sdk, phones = await make_phones(stack, args.concurrency)
    embedding = np.random.default_rng(0).standard_normal((1, args.embedding_dim))
    acked: dict[str, tuple[int, str]] = {}
    retries = 0
    stop = asyncio.Event()
    serial = iter(range(10**9))

    async def phone_loop(phone: Any) -> None:
        nonlocal retries
        while not stop.is_set():
            i = next(serial)
            key, text = secrets.token_urlsafe(24), f"k{i} {UPLOAD_TEXT}"
            body = upload_body(args.model, text, embedding)
            deadline = time.monotonic() + 120
            while True:
                status, answer = await phone.upload(body, key)
                if status in (200, 201):
                    acked[key] = (answer["id"], text)
                    break
                if 400 <= status < 500 and status not in (401, 429) or time.monotonic() > deadline:
                    raise RuntimeError(f"upload {i} answered {status} {answer}")
                retries += 1
                await asyncio.sleep(0.05)

    rng = random.Random(args.seed)
    kills: list[dict[str, Any]] = []
    started = time.perf_counter()
    load = [asyncio.create_task(phone_loop(p)) for p in phones]
    for _ in range(args.kills):
        await asyncio.sleep(args.interval * rng.uniform(0.5, 1.5))
        deadline = time.monotonic() + 120  # each kill hits a full set: uvicorn has replaced the last victim
        while len(workers := stack.worker_pids()) < args.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        victim = rng.choice(workers)
        os.kill(victim, signal.SIGKILL)
        kills.append({"at_s": round(time.perf_counter() - started, 2), "pid": victim, "acked": len(acked)})
        print(f"kill {len(kills)}: worker {victim} ({len(acked)} acknowledged)", file=sys.stderr, flush=True)
    await asyncio.sleep(args.interval)
    stop.set()
    await asyncio.gather(*load)
    wall = time.perf_counter() - started
    for phone in phones:
        await phone.close()
    await sdk.aclose()
    return {"acked": acked, "kills": kills, "retries": retries, "seconds": wall}


def kill_run(stack: UploadStack, args: argparse.Namespace) -> dict[str, Any]:
    """Load, kills, then the store check (see the module doc)."""
    from sqlalchemy import select

    from veil.cloud_service.store.tables import Upload

    out = asyncio.run(_load_and_kill(stack, args))
    acked = out.pop("acked")
    with stack.db.connect() as conn:
        rows = conn.execute(select(Upload.idempotency_key, Upload.id, Upload.text)).all()
    stored: dict[str, list[tuple[int, str]]] = {}
    for key, id_, text in rows:
        stored.setdefault(key, []).append((id_, text))
    texts = [text for _, _, text in rows]
    check = {
        "acknowledged": len(acked),
        "stored": len(rows),
        "lost": sum(1 for key in acked if key not in stored),
        "duplicated": sum(len(v) - 1 for v in stored.values()) + len(texts) - len(set(texts)),
        "wrong_id": sum(1 for key, got in acked.items() if key in stored and stored[key][0] != got),
        "unacknowledged": sum(1 for key in stored if key not in acked),
    }
    return {**out, "uploads_per_s": len(acked) / out["seconds"], "check": check}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--interval", type=float, default=3.0, help="mean seconds between kills")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent phones")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres-url")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.workers < 2 or args.kills < 1:
        parser.error("need --workers >= 2 and --kills >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from veil.settings import get_settings

    with tempfile.TemporaryDirectory(prefix="veil-kill-bench-") as tmp, contextlib.ExitStack() as stack:
        url = f"sqlite:///{Path(tmp) / 'veil.sqlite3'}"
        if args.backend == "postgresql":
            url = stack.enter_context(postgres_database(args.postgres_url))
        print(f"starting {args.workers} workers and the relay ...", file=sys.stderr, flush=True)
        service = stack.enter_context(
            UploadStack(args.model, url, Path(tmp), get_settings().resolved_data_dir(), args.workers)
        )
        result = kill_run(service, args)
    result.update(machine=machine(), backend=args.backend, workers=args.workers, concurrency=args.concurrency)
    if args.json:
        print(json.dumps(result))
    else:
        c = result["check"]
        print(
            f"\nSIGKILL durability: {args.backend}, {args.workers} workers, {args.concurrency} phones; {machine()}"
        )
        print(f"{len(result['kills'])} kills in {result['seconds']:.1f} s; {result['retries']} retried exchanges; "
              f"{result['uploads_per_s']:.0f} acknowledged uploads/s through the kills")  # fmt: skip
        print(f"acknowledged {c['acknowledged']}, stored {c['stored']}: lost {c['lost']}, duplicated "
              f"{c['duplicated']}, wrong id {c['wrong_id']}, unacknowledged {c['unacknowledged']}")  # fmt: skip
    bad = result["check"]["lost"] + result["check"]["duplicated"] + result["check"]["wrong_id"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

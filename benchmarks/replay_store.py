"""What the gateway's replay check costs: one database insert per accepted request, group-committed.

Runs ``concurrency`` requests at a time through :class:`~veil.cloud_service.replay.GroupCommit` on the
real :class:`~veil.cloud_service.gateway_setup.DatabaseReplayStore` (SQLite in a temp dir by default,
``--database-url`` for PostgreSQL) and reports checks per second, the mean batch size, and the CPU time
per check in microseconds (this process: event loop and writer thread). ``--concurrency 1`` is the
worst case, one transaction and one commit per request.

    .venv/bin/python benchmarks/replay_store.py --requests 20000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from veil.cloud_service.gateway_setup import DatabaseReplayStore
from veil.cloud_service.replay import GroupCommit, ReplayVerdict, SeenRequest
from veil.cloud_service.store import add_gateway_key, make_engine, migrate, session_factory


class _Counting(DatabaseReplayStore):
    batches = 0

    def record(self, seen):  # type: ignore[no-untyped-def]
        self.batches += 1
        return super().record(seen)


async def _run(store: _Counting, n: int, concurrency: int) -> None:
    checker = GroupCommit(store)
    queue = iter(range(n))

    async def client() -> None:
        for _ in queue:
            verdict = await checker.check(SeenRequest(os.urandom(16), 1, 1))
            if verdict is not ReplayVerdict.FRESH:
                raise RuntimeError(f"unexpected verdict {verdict}")

    await asyncio.gather(*[client() for _ in range(concurrency)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'veil.sqlite3'}"
        engine = make_engine(url, Path(tmp))
        migrate(engine)
        sessions = session_factory(engine)
        with sessions() as session:
            add_gateway_key(session, 1, 1, b"benchmark key record")
        store = _Counting(sessions)
        wall, cpu = time.perf_counter(), time.process_time()
        asyncio.run(_run(store, args.requests, args.concurrency))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result = {
            "backend": engine.dialect.name,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "checks_per_s": args.requests / wall,
            "mean_batch": args.requests / store.batches,
            "cpu_us_per_check": 1e6 * cpu / args.requests,
        }
        engine.dispose()
    if args.json:
        print(json.dumps(result))
        return
    print("| backend | requests | concurrency | checks/s | mean batch | CPU us/check |")
    print("| --- | --- | --- | --- | --- | --- |")
    r = result
    print(
        f"| {r['backend']} | {r['requests']} | {r['concurrency']} | {r['checks_per_s']:.0f} | "
        f"{r['mean_batch']:.1f} | {r['cpu_us_per_check']:.0f} |"
    )


if __name__ == "__main__":
    main()

"""One round of a Flower fleet at several sizes: phones per minute, memory per phone, where the time goes.

Each size runs ``veil simulate`` (the real relay, gateway, store and ``VeilClient`` per phone; above 32
phones, 32 SuperNodes each hosting a cell of phones) in its own process, so sizes do not share warm caches or Ray workers. The baseline, measured in the same run, is
the smallest size: the ratio column says how the cost per phone grows with the fleet. Memory is the
peak resident memory of the whole process tree (API, relay, Ray driver and workers), sampled from
``/proc`` every half second.

    .venv/bin/python benchmarks/fleet_scale.py --phones 100 1000 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fleet_runs import emit

from veil.simulation.fleet.config import FleetConfig


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every descendant (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def run_size(phones: int, concurrency: int, extra: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"veil-fleet-{phones}-"))
    cmd = [sys.executable, "-m", "veil.cli.main", "simulate", "--json", "--phones", str(phones)]
    cmd += ["--concurrency", str(concurrency), "--out", str(work), *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{phones} phones failed:\n{err[-3000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    (r,) = report["rounds"]
    return {
        "phones": phones,
        "nodes": FleetConfig.from_mapping(report["config"]).resolved_nodes,
        "took_part": r["phones"],
        "wall_s": round(time.perf_counter() - started, 1),
        "setup_s": report["setup_seconds"],
        "choice_s": round(r["seconds_choice"], 1),
        "choice_passes": r["choice_passes"],
        "pass_s": r["seconds_passes"],
        "uploads_and_eval_s": round(r["seconds_uploads"], 1),
        "round_s": round(r["seconds"], 1),
        "phones_per_minute": report["phones_per_minute"],
        "peak_rss_mib": round(peak[0] / 2**20),
        "accuracy": r["accuracy"],
        "attribution": r["attribution"],
        "attribution_floor": r["attribution_floor"],
        "uploads": r["uploads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, help="append each size's row here (JSON lines)")
    args, extra = parser.parse_known_args()
    rows = []
    for phones in args.phones:
        row = run_size(phones, args.concurrency, extra)
        rows.append(row)
        base = rows[0]
        row["seconds_per_phone_vs_smallest"] = round(
            (row["round_s"] / row["phones"]) / (base["round_s"] / base["phones"]), 2
        )
        row["rss_per_phone_kib"] = round(row["peak_rss_mib"] * 1024 / phones, 1)
        emit(row, args.out)


if __name__ == "__main__":
    main()

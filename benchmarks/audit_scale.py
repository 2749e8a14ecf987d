"""How fast ``veil audit`` is on a large population: 10,000 users x 100 uploads, dimension 64.

Builds the population from a generator spec (the same path as ``veil audit --population``), runs the
full audit (Bayes attribution over every user's uploads, linked uploads, distances, Gaussian-DP,
identifiability and attacks on their subsets) and prints the time of each section, the total, and the
throughput of the Bayes attribution stage in users x uploads per second.

Usage::

    .venv/bin/python benchmarks/audit_scale.py                      # 10,000 x 100, dim 64
    .venv/bin/python benchmarks/audit_scale.py --users 1000 --json  # smaller, one JSON object

Target: the whole audit in **< 60 s on 2 CPU cores**.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

TARGET_SECONDS = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--uploads", type=int, default=100, help="Monte-Carlo uploads per user.")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--spread", type=float, default=0.5)
    parser.add_argument("--linked", default="1,2,4,8")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)

    from veil.privacy_analysis.audit import AuditConfig, run_audit
    from veil.privacy_analysis.audit.spec import parse_spec

    start = time.perf_counter()
    spec = parse_spec(
        {
            "family": "gaussian",
            "generator": {"users": args.users, "dim": args.dim, "spread": args.spread, "seed": args.seed},
        },
        source="benchmark",
    )
    build = time.perf_counter() - start
    linked = tuple(int(t) for t in args.linked.split(","))
    cfg = AuditConfig(uploads_per_user=args.uploads, linked=linked, seed=args.seed)
    result = run_audit(spec.distributions, cfg, prior=spec.prior)
    total = time.perf_counter() - start
    rate = args.users * args.uploads / result.seconds["bayes"]
    out = {
        "users": args.users,
        "uploads_per_user": args.uploads,
        "dim": args.dim,
        "bayes_attribution_accuracy": result.bayes["accuracy"],
        "bayes_ci": result.bayes["ci"],
        "chance": result.chance,
        "linked": {str(t): v["accuracy"] for t, v in result.linked.items()},
        "seconds": {"build_population": build, **result.seconds, "wall_total": total},
        "user_uploads_per_second": rate,
        "target_seconds": TARGET_SECONDS,
        "pass": total < TARGET_SECONDS,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"audit of {args.users} users x {args.uploads} uploads, dim {args.dim} "
        f"({platform.machine()}, {os.cpu_count()} CPUs)"
    )
    print(
        f"  Bayes attribution {result.bayes['accuracy']:.4f} "
        f"[{result.bayes['ci'][0]:.4f}, {result.bayes['ci'][1]:.4f}] (chance {result.chance:.2g})"
    )
    for t, v in result.linked.items():
        print(f"  T={t:<3d} linked: {v['accuracy']:.4f}")
    for name, sec in out["seconds"].items():
        if name != "user_uploads_per_second":
            print(f"  {name:<22s} {sec:8.2f} s")
    print(f"  Bayes stage: {rate:,.0f} users x uploads per second")
    verdict = "PASS" if out["pass"] else "FAIL"
    print(f"total {total:.1f} s (target < {TARGET_SECONDS:.0f} s): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

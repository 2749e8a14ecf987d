"""CPU cost of the signed key configuration (RFC 9421 over an RFC 9530 digest), gateway and phone.

Measured, single thread, on a two-key ``application/ohttp-keys`` list:

* ``sign``: the gateway signs a list (Content-Digest, signature base, Ed25519); done again only when the
  list changes or every ``refresh_s`` (10 minutes),
* ``route``: what each ``GET /.well-known/ohttp-gateway`` costs the gateway with the cached signature,
* ``verify``: the phone checks a fetched list against its pinned key (digest, signature base, Ed25519,
  then the list is parsed). Done once per key fetch, not per request: every request afterwards reuses
  the verified configuration, so it adds nothing to the per-request path of ``client_latency.py``.

Both the wall-clock time and the thread's CPU time are reported (on a shared machine the wall-clock p99
mostly measures other processes preempting this one).

Usage::

    .venv/bin/python benchmarks/keysig_cost.py [--repeats 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from veil.client_sdk.ohttp import GatewayKeyPair, GatewayKeyPin, encode_key_configs, sign_key_configs
from veil.client_sdk.ohttp.keysig import public_key_bytes, signing_key_from_seed
from veil.cloud_service.gateway_signing import KeyConfigSigner


def measure(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median and p99 in microseconds, wall clock and thread CPU time."""
    for _ in range(min(100, repeats)):
        fn()
    wall, cpu = np.empty(repeats), np.empty(repeats)
    for i in range(repeats):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpu[i], wall[i] = time.thread_time() - c, time.perf_counter() - w
    us = 1e6
    return {
        "wall_p50_us": float(np.median(wall) * us),
        "wall_p99_us": float(np.quantile(wall, 0.99) * us),
        "cpu_p50_us": float(np.median(cpu) * us),
        "cpu_p99_us": float(np.quantile(cpu, 0.99) * us),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    if args.repeats < 10:
        parser.error(f"--repeats must be >= 10, got {args.repeats}")
    key = signing_key_from_seed(bytes(range(32)))
    body = encode_key_configs([GatewayKeyPair.generate(2).config, GatewayKeyPair.generate(1).config])
    headers = sign_key_configs(body, key)
    signer = KeyConfigSigner(key)
    pin = GatewayKeyPin(public_key_bytes(key))
    results = {
        "sign": measure(lambda: sign_key_configs(body, key), args.repeats),
        "route": measure(lambda: signer.headers(body), args.repeats),
        "verify": measure(lambda: pin.verify(200, headers, body), args.repeats),
    }
    if args.json:
        print(json.dumps({"repeats": args.repeats, "body_bytes": len(body), "results": results}))
        return
    print(f"{'step':<8}{'wall p50':>10}{'wall p99':>10}{'cpu p50':>10}{'cpu p99':>10}   (microseconds)")
    for name, r in results.items():
        print(
            f"{name:<8}{r['wall_p50_us']:>10.1f}{r['wall_p99_us']:>10.1f}"
            f"{r['cpu_p50_us']:>10.1f}{r['cpu_p99_us']:>10.1f}"
        )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Exit 0 when a URL answers 200, else 1: the containers' health checks (``veil-health URL`` in the image).

HTTPS is verified with Python's default context, which reads the CA bundle named by ``SSL_CERT_FILE``
(the deployment's CA in every Veil container), so a probe fails on a certificate the clients would
refuse too. Standard library only: it runs in the image before anything else is imported.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def check(url: str, timeout_s: float = 5.0) -> bool:
    """True when ``GET url`` answers 200 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - operator's URL
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].startswith(("http://", "https://")):
        print("usage: veil-health http(s)://HOST:PORT/health", file=sys.stderr)
        return 2
    ok = check(argv[0])
    if not ok:
        print(f"veil-health: {argv[0]} is not healthy", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

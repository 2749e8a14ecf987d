"""Test tooling shared by ``tests/`` and ``benchmarks/``: fuzzers for the HTTP API and the OHTTP decoders.

Nothing here is imported by the service or the phone SDK. :mod:`~veil.testing.api_fuzz` drives
schemathesis (a dev dependency) against a running server; :mod:`~veil.testing.ohttp_fuzz` mutates valid
OHTTP, BHTTP and key-configuration messages and checks that every decoder fails only with its typed
error; :mod:`~veil.testing.gateway_fuzz` POSTs fuzzed bodies to a running gateway and checks the
statuses outside and inside the encapsulation.
"""

from __future__ import annotations

__all__: list[str] = []

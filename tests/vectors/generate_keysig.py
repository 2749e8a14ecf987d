"""Write the signed key configuration vector (``tests/vectors/keysig.json``).

Usage::

    .venv/bin/python tests/vectors/generate_keysig.py            # (re)write the file
    .venv/bin/python tests/vectors/generate_keysig.py --check    # exit 1 if a fresh run differs

Everything is fixed: the Ed25519 seed is RFC 8032 section 7.1 TEST 1's secret key, the signed body is
the ``application/ohttp-keys`` list holding RFC 9458 appendix A's key configuration, and ``created`` /
``expires`` are constants. Ed25519 signatures are deterministic (RFC 8032 section 5.1.6), so the file
is reproduced byte for byte.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from http_message_signatures import HTTPMessageSigner, algorithms

from veil.client_sdk.ohttp import KeyConfig, encode_key_configs
from veil.client_sdk.ohttp.keysig import (
    COVERED_COMPONENTS,
    SIGNATURE_LABEL,
    SIGNATURE_TAG,
    encode_public_key,
    key_fingerprint,
    public_key_bytes,
    sign_key_configs,
    signing_key_from_seed,
)

PATH = Path(__file__).resolve().parent / "keysig.json"
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
"""RFC 8032 section 7.1, TEST 1: SECRET KEY."""
RFC9458_KEY_CONFIG = bytes.fromhex(
    "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003"
)
"""RFC 9458 appendix A: the example key configuration."""
CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z
EXPIRES = CREATED + 86_400


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.status_code, self.headers, self.request = 200, headers, None


def signature_base(headers: dict[str, str], public_key: bytes) -> str:
    """The RFC 9421 section 2.5 signature base of the signed answer (as the library builds it)."""
    unsigned = {k: v for k, v in headers.items() if k not in ("signature", "signature-input")}
    utc = datetime.UTC
    prepared = HTTPMessageSigner(signature_algorithm=algorithms.ED25519).prepare(
        _Response(unsigned),
        key_id=key_fingerprint(public_key),
        created=datetime.datetime.fromtimestamp(CREATED, utc),
        expires=datetime.datetime.fromtimestamp(EXPIRES, utc),
        label=SIGNATURE_LABEL,
        tag=SIGNATURE_TAG,
        covered_component_ids=COVERED_COMPONENTS,
        use_existing_digest=True,
    )
    return prepared.signature_base.decode("ascii")


def build() -> dict[str, Any]:
    key = signing_key_from_seed(SEED)
    public = public_key_bytes(key)
    body = encode_key_configs([KeyConfig.decode(RFC9458_KEY_CONFIG)])
    headers = sign_key_configs(body, key, created=CREATED, expires=EXPIRES)
    return {
        "description": "A signed application/ohttp-keys answer (RFC 9421 over RFC 9530 Content-Digest)",
        "signing_seed": SEED.hex(),
        "public_key": public.hex(),
        "public_key_b64": encode_public_key(public),
        "key_id": key_fingerprint(public),
        "created": CREATED,
        "expires": EXPIRES,
        "status": 200,
        "body": body.hex(),
        "headers": headers,
        "signature_base": signature_base(headers, public),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from a fresh run")
    args = parser.parse_args()
    text = json.dumps(build(), indent=2) + "\n"
    if args.check:
        current = PATH.read_text(encoding="utf-8") if PATH.exists() else ""
        if current != text:
            print(f"{PATH} differs from a fresh run", file=sys.stderr)
            return 1
        return 0
    PATH.write_text(text, encoding="utf-8")
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Padding of binary HTTP messages to size buckets, so an encapsulated message's length says little.

The relay sees every encapsulated request and response next to the sender's address; without padding
their lengths tell the route, a prompt's length, or a created from a duplicate upload. RFC 9292
section 3.8 lets a binary HTTP message end with any number of zero bytes, and RFC 9458 section 6.7
suggests padding to hide lengths. Both directions are padded here so that the whole encapsulated
message (header, ``enc``, ciphertext and tag for a request; nonce, ciphertext and tag for a response)
is exactly one of a few bucket sizes: the smallest that fits, or past the largest bucket, the next
multiple of it.

>>> bucket_size(300, DEFAULT_PADDING_BUCKETS), bucket_size(1025, DEFAULT_PADDING_BUCKETS)
(1024, 4096)
>>> bucket_size(3 << 20, DEFAULT_PADDING_BUCKETS) == 3 << 20, bucket_size(77, ())
(True, 77)
"""

from __future__ import annotations

from collections.abc import Sequence

from veil.client_sdk.ohttp.hpke import Suite
from veil.client_sdk.ohttp.keys import KeyConfig

__all__ = [
    "DEFAULT_PADDING_BUCKETS",
    "bucket_size",
    "check_buckets",
    "pad_to_bucket",
    "request_overhead",
    "response_overhead",
]

DEFAULT_PADDING_BUCKETS: tuple[int, ...] = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20)
"""1 KiB, 4 KiB, 16 KiB, 64 KiB, 256 KiB, 1 MiB: every encapsulated message is one of these sizes."""

_REQUEST_HEADER = 7  # key_id (1) || kem_id (2) || kdf_id (2) || aead_id (2), RFC 9458 section 4.1


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """The buckets as a tuple; raises ``ValueError`` unless they are strictly increasing positive ints.

    An empty sequence turns padding off.
    """
    out = tuple(buckets)
    if any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in out):
        raise ValueError(f"padding buckets must be positive integers (bytes), got {list(out)}")
    if any(a >= b for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"padding buckets must be strictly increasing, got {list(out)}")
    return out


def bucket_size(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ``>= size``; past the largest, the next multiple of it; ``size`` if none."""
    if not buckets:
        return size
    for bucket in buckets:
        if size <= bucket:
            return bucket
    largest = buckets[-1]
    return -(-size // largest) * largest


def request_overhead(config: KeyConfig) -> int:
    """Bytes an encapsulated request adds to its binary HTTP request, with the suite a client picks.

    Header, the KEM's ``enc`` and the AEAD tag (RFC 9458 section 4.3); the suite is the first
    (KDF, AEAD) pair of ``config`` this package implements, as ``encapsulate_request`` chooses it.
    """
    supported = config.supported_algorithms()
    if not supported:
        raise ValueError(f"key {config.key_id} offers no (KDF, AEAD) pair this client implements")
    suite = Suite(config.kem_id, *supported[0])
    return _REQUEST_HEADER + suite.kem.enc_size + suite.aead.tag_size


def response_overhead(suite: Suite) -> int:
    """Bytes an encapsulated response adds: the ``max(Nn, Nk)`` nonce and the AEAD tag (section 4.4)."""
    aead = suite.aead
    return max(aead.nonce_size, aead.key_size) + aead.tag_size


def pad_to_bucket(message: bytes, overhead: int, buckets: Sequence[int]) -> bytes:
    """``message`` followed by zero bytes (RFC 9292 section 3.8) so that ``len + overhead`` is a bucket.

    Zero bytes after any binary HTTP message, truncated or not, decode as padding or as empty trailing
    sections, so the decoded message is unchanged.
    """
    target = bucket_size(len(message) + overhead, buckets)
    return bytes(message) + bytes(target - overhead - len(message))

"""Which gateway signing key a phone trusts: one shipped with the app, or the first one it verified.

RFC 9458 section 6.1 asks clients to make sure a key configuration is the gateway's; section 7 asks that
every client see the same one. :class:`GatewayKeyPin` holds the trust anchor for
:func:`~veil.client_sdk.ohttp.keysig.verify_key_configs`:

* **pinned**: the raw Ed25519 public key shipped with the app (the ONNX export's manifest, the
  clients' ``gateway_public_key`` argument), or a few (the current key and the next, like a backup
  pin). Only lists signed by one of them are used.
* **trust on first use**: with no shipped key, the first list whose signature verifies under the key it
  announces (``veil-signing-key``, which must match ``keyid``) pins that key, in memory and, with a
  ``path``, in a file (mode 0600, first writer wins). A later list signed by any other key is refused
  with :class:`~veil.client_sdk.ohttp.errors.SigningKeyMismatchError`: the relay that answered the first
  fetch is trusted once, never again without the user's (or app's) say.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from veil.client_sdk.atomic_files import create_once
from veil.client_sdk.ohttp.errors import SigningKeyMismatchError
from veil.client_sdk.ohttp.keysig import (
    VerifiedKeyConfigs,
    decode_public_key,
    encode_public_key,
    key_fingerprint,
    verify_key_configs,
)

__all__ = ["GatewayKeyPin"]


class GatewayKeyPin:
    """The trusted gateway signing key, pinned up front or on first use.

    Parameters
    ----------
    public_key : bytes, str or a sequence of them, optional
        The shipped key (raw 32 bytes or base64), or several: the current key and the next one, so that
        the gateway can move to the next key without breaking this app (a backup pin). ``None``: trust
        on first use.
    path : path-like, optional
        Where a key pinned on first use is kept across runs (ignored when ``public_key`` is given). A
        file already there is the pin.
    """

    def __init__(
        self,
        public_key: bytes | str | Sequence[bytes | str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if public_key is None:
            shipped: tuple[bytes, ...] = ()
        elif isinstance(public_key, bytes | bytearray | str):
            shipped = (decode_public_key(public_key),)
        else:
            shipped = tuple(decode_public_key(k) for k in public_key)
            if not shipped:
                raise ValueError("give at least one shipped public key, or None to pin on first use")
        self.shipped = shipped
        self.path = Path(path) if path is not None and not shipped else None
        self._pinned: bytes | None = None
        self._lock = threading.Lock()

    @property
    def public_key(self) -> bytes | None:
        """The key pinned on first use, or ``None`` while none is (and whenever keys were shipped)."""
        with self._lock:
            if self._pinned is None and self.path is not None and self.path.exists():
                self._pinned = _read(self.path)
            return self._pinned

    @property
    def trusted_keys(self) -> tuple[bytes, ...]:
        """The keys a list may be signed by: the shipped ones, else the pinned one; empty before first use."""
        if self.shipped:
            return self.shipped
        pinned = self.public_key
        return (pinned,) if pinned is not None else ()

    def _pin(self, public_key: bytes) -> None:
        with self._lock:
            if self._pinned is None and self.path is not None:
                _write(self.path, public_key)
                self._pinned = _read(self.path)  # a concurrent first writer (another process) may have won
            elif self._pinned is None:
                self._pinned = public_key
            if self._pinned != public_key:
                raise SigningKeyMismatchError(
                    f"gateway signing key {key_fingerprint(public_key)} differs from the pinned "
                    f"{key_fingerprint(self._pinned)}"
                )

    def verify(
        self,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        *,
        now: float | None = None,
    ) -> VerifiedKeyConfigs:
        """Verify a key configuration response against the pin (pinning its key if none yet).

        Raises the errors of :func:`~veil.client_sdk.ohttp.keysig.verify_key_configs`; a list signed
        by another key than the pinned one raises ``SigningKeyMismatchError``.
        """
        trusted = self.trusted_keys
        verified = verify_key_configs(status, headers, body, public_key=list(trusted) or None, now=now)
        if not trusted:
            self._pin(verified.public_key)
        return verified


def _read(path: Path) -> bytes:
    try:
        return decode_public_key(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SigningKeyMismatchError(f"{path}: unreadable pinned gateway key ({exc})") from exc


def _write(path: Path, public_key: bytes) -> None:
    """Create ``path`` (mode 0600) holding the key's base64, unless it exists: the first writer wins."""
    create_once(path, (encode_public_key(public_key) + "\n").encode("ascii"))

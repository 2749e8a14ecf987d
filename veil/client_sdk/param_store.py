"""The phone's private parameters on disk: one file, mode 0600, replaced atomically, optionally encrypted.

What is kept is a :class:`ClientState`: the user distribution (the private law the phone samples from), the
optimiser's moments and step count, and the model the parameters were learnt for. None of it ever leaves
the device.

File format (version 1), all integers big-endian::

    magic      "VEILPRM1"                       8 bytes
    mode       0x00 plain | 0x01 encrypted      1 byte
    plain:     sha256(payload)                  32 bytes, then the payload
    encrypted: log2(N), r, p                    3 bytes (scrypt cost, RFC 7914)
               salt                             16 bytes
               check                            16 bytes  (bytes 32..47 of the scrypt output)
               nonce                            12 bytes
               AES-256-GCM(payload)             ciphertext || 16-byte tag; AAD = every byte before it

The AES key is bytes 0..31 of ``scrypt(passphrase, salt, N, r, p, 48)``; ``check`` tells a wrong
passphrase (typed :class:`WrongPassphraseError`) from a corrupt file (:class:`CorruptParamFileError`,
the tag fails). The payload is an ``.npz`` archive (no pickles) with ``meta`` (JSON: version, family,
model, optimiser hyper-parameters and step), ``dist.<name>`` (the family's constrained parameters) and
``adam_m.<name>`` / ``adam_v.<name>`` (moment estimates).

Writes go to a fresh temporary file in the same directory (``O_EXCL``, mode 0600), are fsynced, moved
over the old file with :func:`os.replace` and the directory is fsynced: a crash leaves the old file or
the new one, never a mixture.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from veil.client_sdk.atomic_files import atomic_write_bytes
from veil.client_sdk.distributions.base import UserDistribution

__all__ = [
    "ClientState",
    "CorruptParamFileError",
    "FamilyMismatchError",
    "MemoryParamStore",
    "MissingParamFileError",
    "ParamStore",
    "ParamStoreError",
    "PassphraseRequiredError",
    "ScryptCost",
    "WrongPassphraseError",
]

MAGIC = b"VEILPRM1"
_PLAIN, _ENCRYPTED = 0, 1
_FORMAT_VERSION = 1
_SALT, _CHECK, _NONCE, _TAG = 16, 16, 12, 16
_COST = struct.Struct(">BBB")


class ParamStoreError(Exception):
    """The parameter file cannot be read or written."""


class MissingParamFileError(ParamStoreError, FileNotFoundError):
    """There is no parameter file yet (initialise the client with a prior first)."""


class CorruptParamFileError(ParamStoreError):
    """The file is truncated, altered, or not a Veil parameter file."""


class FamilyMismatchError(ParamStoreError):
    """The file holds another distribution family than the one asked for.

    Never converted: a phone that switches family (say from a learnt Gaussian to a prototype choice)
    starts the new family explicitly, it does not resample or reinterpret the old parameters.
    """


class WrongPassphraseError(ParamStoreError):
    """The file is encrypted with another passphrase."""


class PassphraseRequiredError(ParamStoreError):
    """The file is encrypted and no passphrase was given, or a passphrase was given for a plain file."""


@dataclass(frozen=True)
class ScryptCost:
    """scrypt cost parameters (RFC 7914); the defaults need ``128 r N`` bytes = 32 MiB (RFC 7914 section
    2), and their time is in ``benchmarks/README.md``, "Parameter-file encryption".

    Parameters
    ----------
    log2_n : int
        CPU/memory cost ``N = 2**log2_n``, in ``[10, 22]`` (files asking for more are refused as corrupt,
        so a crafted file cannot exhaust memory).
    r : int
        Block size, in ``[1, 32]``.
    p : int
        Parallelisation, in ``[1, 16]``.
    """

    log2_n: int = 15
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not (10 <= self.log2_n <= 22 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError(
                f"scrypt cost must have log2_n in [10, 22], r in [1, 32], p in [1, 16]; got {self}"
            )


@dataclass(frozen=True)
class ClientState:
    """Everything the phone keeps between runs.

    Parameters
    ----------
    distribution : UserDistribution
        The private distribution.
    optimizer : mapping
        Adam state as :meth:`veil.client_sdk.learning.Adam.state_dict` returns it (``lr``, ``betas``,
        ``eps``, ``t``, ``m``, ``v``); empty for a fresh state (the client fills the defaults).
    model : str, optional
        Id of the served model the parameters were learnt for (its ``embedding_shape`` must match).
    """

    distribution: UserDistribution
    optimizer: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.distribution, UserDistribution):
            raise ValueError(
                f"distribution must be a UserDistribution, got {type(self.distribution).__name__}"
            )
        if self.optimizer and not {"lr", "betas", "eps", "t", "m", "v"} <= set(self.optimizer):
            raise ValueError(f"optimizer must be an Adam state_dict, got keys {sorted(self.optimizer)}")

    @property
    def steps(self) -> int:
        """Number of learning steps taken so far."""
        return int(self.optimizer.get("t", 0))


def _encode_payload(state: ClientState) -> bytes:
    opt = state.optimizer
    meta = {
        "version": _FORMAT_VERSION,
        "family": state.distribution.family,
        "model": state.model,
        "optimizer": None if not opt else {k: opt[k] for k in ("lr", "betas", "eps", "t")},
    }
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    arrays.update({f"dist.{k}": np.asarray(v) for k, v in state.distribution._arrays().items()})
    for moment in ("m", "v"):
        arrays.update({f"adam_{moment}.{k}": np.asarray(v) for k, v in opt.get(moment, {}).items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _decode_payload(payload: bytes, source: str) -> ClientState:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("version") != _FORMAT_VERSION:
            raise CorruptParamFileError(f"{source}: unsupported format version {meta.get('version')!r}")
        dist_arrays = {k[5:]: v for k, v in arrays.items() if k.startswith("dist.")}
        dist_arrays["family"] = np.array(meta["family"])
        distribution = UserDistribution._dispatch(dist_arrays, source)
        optimizer: dict[str, Any] = {}
        if meta.get("optimizer"):
            optimizer = dict(meta["optimizer"])
            optimizer["betas"] = tuple(optimizer["betas"])
            for moment in ("m", "v"):
                prefix = f"adam_{moment}."
                optimizer[moment] = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        return ClientState(distribution, optimizer, meta.get("model"))
    except ParamStoreError:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError) as exc:  # np.load raises all of these
        raise CorruptParamFileError(f"{source}: unreadable parameters: {exc}") from exc


def _derive(passphrase: bytes, salt: bytes, cost: ScryptCost) -> tuple[bytes, bytes]:
    out = Scrypt(salt=salt, length=48, n=2**cost.log2_n, r=cost.r, p=cost.p).derive(passphrase)
    return out[:32], out[32:48]


class ParamStore:
    """Reads and writes one parameter file.

    Parameters
    ----------
    path : path-like
        The file (its directory is created with mode 0700 when missing).
    passphrase : str or bytes, optional
        Encrypt at rest with a key derived from it (scrypt + AES-256-GCM). ``None``: plain file (still
        mode 0600 and integrity-checked with SHA-256).
    cost : ScryptCost
        scrypt cost for new files (a file's own cost is read from its header).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes | None = None,
        cost: ScryptCost | None = None,
    ) -> None:
        if passphrase is not None and len(passphrase) == 0:
            raise ValueError("passphrase must not be empty (use None for a plain file)")
        self.path = Path(path)
        self._passphrase = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        self.cost = cost or ScryptCost()

    @property
    def encrypted(self) -> bool:
        return self._passphrase is not None

    def exists(self) -> bool:
        return self.path.exists()

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise MissingParamFileError(f"{self.path}: no parameter file") from None
        except OSError as exc:
            raise ParamStoreError(f"{self.path}: cannot read: {exc}") from exc

    def load(self, family: str | None = None) -> ClientState:
        """Read the state; raises a :class:`ParamStoreError` subclass on any problem.

        Parameters
        ----------
        family : str, optional
            The family the caller expects; another one raises :class:`FamilyMismatchError` naming both
            (exact names: a ``prototype`` file is not a ``gaussian`` one, although its class derives
            from the Gaussian's).
        """
        state = self._load()
        if family is not None and state.distribution.family != family:
            raise FamilyMismatchError(
                f"{self.path}: holds a {state.distribution.family!r} distribution, expected {family!r}"
            )
        return state

    def _load(self) -> ClientState:
        source = str(self.path)
        data = self._read()
        if len(data) < len(MAGIC) + 1 or not data.startswith(MAGIC):
            raise CorruptParamFileError(f"{source}: not a Veil parameter file")
        mode, body = data[len(MAGIC)], data[len(MAGIC) + 1 :]
        if mode == _PLAIN:
            if self.encrypted:
                raise PassphraseRequiredError(
                    f"{source}: the file is not encrypted but a passphrase was given"
                )
            digest, payload = body[:32], body[32:]
            if len(digest) != 32 or not hmac.compare_digest(digest, hashlib.sha256(payload).digest()):
                raise CorruptParamFileError(f"{source}: checksum mismatch (truncated or altered)")
        elif mode == _ENCRYPTED:
            payload = self._decrypt(data, source)
        else:
            raise CorruptParamFileError(f"{source}: unknown mode byte {mode}")
        return _decode_payload(payload, source)

    def _decrypt(self, data: bytes, source: str) -> bytes:
        if self._passphrase is None:
            raise PassphraseRequiredError(f"{source}: the file is encrypted; a passphrase is needed")
        start = len(MAGIC) + 1
        header_end = start + _COST.size + _SALT + _CHECK + _NONCE
        if len(data) < header_end + _TAG:
            raise CorruptParamFileError(f"{source}: truncated encrypted file")
        try:
            cost = ScryptCost(*_COST.unpack_from(data, start))
        except ValueError as exc:
            raise CorruptParamFileError(f"{source}: bad scrypt cost in the header: {exc}") from exc
        pos = start + _COST.size
        salt, check = data[pos : pos + _SALT], data[pos + _SALT : pos + _SALT + _CHECK]
        nonce = data[header_end - _NONCE : header_end]
        key, expected = _derive(self._passphrase, salt, cost)
        if not hmac.compare_digest(check, expected):
            raise WrongPassphraseError(f"{source}: wrong passphrase")
        try:
            return AESGCM(key).decrypt(nonce, data[header_end:], data[:header_end])
        except InvalidTag:
            raise CorruptParamFileError(f"{source}: authentication failed (the file was altered)") from None

    def _encode(self, state: ClientState) -> bytes:
        payload = _encode_payload(state)
        if self._passphrase is None:
            return MAGIC + bytes([_PLAIN]) + hashlib.sha256(payload).digest() + payload
        salt, nonce = secrets.token_bytes(_SALT), secrets.token_bytes(_NONCE)
        key, check = _derive(self._passphrase, salt, self.cost)
        header = (
            MAGIC
            + bytes([_ENCRYPTED])
            + _COST.pack(self.cost.log2_n, self.cost.r, self.cost.p)
            + salt
            + check
            + nonce
        )
        return header + AESGCM(key).encrypt(nonce, payload, header)

    def save(self, state: ClientState) -> None:
        """Write ``state`` atomically (temporary file, fsync, rename, fsync of the directory)."""
        self._write(self._encode(state))

    def _write(self, blob: bytes) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            atomic_write_bytes(self.path, blob, mode=0o600)
        except OSError as exc:
            raise ParamStoreError(f"{self.path}: cannot write: {exc}") from exc


class MemoryParamStore(ParamStore):
    """A :class:`ParamStore` that keeps the file's bytes in memory (simulations and tests).

    The bytes are exactly those :class:`ParamStore` would write, encrypted when a passphrase is given,
    so every load goes through the same decoding and checks.
    """

    def __init__(self, name: str = "memory", **kwargs: Any) -> None:
        super().__init__(f"<{name}>", **kwargs)
        self._blob: bytes | None = None

    def exists(self) -> bool:
        return self._blob is not None

    def _read(self) -> bytes:
        if self._blob is None:
            raise MissingParamFileError(f"{self.path}: no parameter file")
        return self._blob

    def _write(self, blob: bytes) -> None:
        self._blob = blob

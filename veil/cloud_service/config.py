"""Settings of one API process (built from :class:`veil.settings.Settings` or directly in tests)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from veil.client_sdk.ohttp.padding import DEFAULT_PADDING_BUCKETS, check_buckets
from veil.cloud_service.engine import EngineConfig
from veil.cloud_service.gateway_signing import decode_signing_seed
from veil.cloud_service.relay_auth import relay_secret_bytes
from veil.cloud_service.store.group_commit import GroupCommitConfig
from veil.settings import get_settings

__all__ = ["ServiceConfig"]


@dataclass
class ServiceConfig:
    """What ``veil serve`` runs.

    Attributes
    ----------
    data_dir: models, the SQLite database, gateway keys.
    model: registered model name, model directory or personalised checkpoint to serve.
    database_url: SQLAlchemy URL; ``None`` is SQLite in ``data_dir``.
    max_body_bytes: larger request bodies (outer or inside OHTTP) are refused with 413.
    default_max_tokens: completion length when the request gives none.
    engine: batching of model work.
    gateway_kem: KEM of new gateway keys: ``"x25519"`` (default) or ``"mlkem768-x25519"``.
    gateway_kek: 32-byte key-encryption key for gateway keys at rest; ``None`` reads or creates
        ``<data_dir>/gateway.kek`` (mode 0600) in development; production must set it.
    gateway_signing_key: 32-byte Ed25519 seed that signs ``/.well-known/ohttp-gateway`` (RFC 9421);
        ``None`` reads or creates ``<data_dir>/gateway-signing.key`` (mode 0600) in development;
        production must set it.
    environment: ``"development"`` or ``"production"`` (production refuses generated secrets).
    relay_secret: secret shared with the relay (>= 32 bytes): ``POST /ohttp`` is refused (401) without
        the relay's HMAC (:mod:`veil.cloud_service.relay_auth`). ``None`` accepts anyone, with a
        warning, in development; production must set it.
    padding_buckets: sizes (bytes) encapsulated responses are padded to (empty: no padding).
    key_rotation_s: a new gateway key is made when the current one is this old (default daily); every
        API process checks once a minute (:mod:`veil.cloud_service.key_lifecycle`).
    key_grace_s: a rotated-out key keeps working this long, then retires and its replay digests go.
    group_commit: how uploads are grouped into transactions (:mod:`veil.cloud_service.store.group_commit`).
    operator_key: an operator API key the service accepts besides those in its store
        (``VEIL_FLEET_API_KEY``: a deployment provisions it with its other secrets, so the fleet's
        ServerApp can publish codebooks before anyone ran ``veil keys create --operator``).
    """

    data_dir: Path
    model: str = "smollm2-135m-instruct"
    database_url: str | None = None
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 256
    engine: EngineConfig = field(default_factory=EngineConfig)
    gateway_kem: str = "x25519"
    gateway_kek: bytes | None = None
    gateway_signing_key: bytes | None = None
    environment: str = "development"
    key_rotation_s: float = 24 * 3600.0
    key_grace_s: float = 24 * 3600.0
    relay_secret: bytes | None = field(default=None, repr=False)
    padding_buckets: tuple[int, ...] = DEFAULT_PADDING_BUCKETS
    group_commit: GroupCommitConfig = field(default_factory=GroupCommitConfig)
    operator_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")
        if not self.key_rotation_s > 0 or not self.key_grace_s >= 0:
            raise ValueError(
                f"need key_rotation_s > 0 and key_grace_s >= 0, got {self.key_rotation_s}, {self.key_grace_s}"
            )
        if self.environment not in ("development", "production"):
            raise ValueError(f"environment must be 'development' or 'production', got {self.environment!r}")
        if self.gateway_kek is not None and len(self.gateway_kek) != 32:
            raise ValueError(f"gateway_kek must be 32 bytes, got {len(self.gateway_kek)}")
        if self.environment == "production" and self.gateway_kek is None:
            raise ValueError(
                "production needs VEIL_GATEWAY_KEK (base64 of 32 random bytes, e.g. from "
                "'openssl rand -base64 32'); for a local trial set VEIL_ENVIRONMENT=development"
            )
        if self.relay_secret is not None:
            self.relay_secret = relay_secret_bytes(self.relay_secret)
        elif self.environment == "production":
            raise ValueError(
                "production needs VEIL_RELAY_SECRET (>= 32 bytes, shared with the relay); refusing to "
                "accept encapsulated requests from anyone"
            )
        self.padding_buckets = check_buckets(self.padding_buckets)
        if self.operator_key is not None and len(self.operator_key.strip()) < 32:
            raise ValueError(
                "VEIL_FLEET_API_KEY must be at least 32 characters (deploy/bootstrap.py makes one)"
            )
        if self.gateway_signing_key is not None and len(self.gateway_signing_key) != 32:
            raise ValueError(f"gateway_signing_key must be 32 bytes, got {len(self.gateway_signing_key)}")
        if self.environment == "production" and self.gateway_signing_key is None:
            raise ValueError(
                "production needs VEIL_GATEWAY_SIGNING_KEY (32-byte Ed25519 seed, base64); "
                "refusing a generated key"
            )

    @classmethod
    def from_settings(cls) -> ServiceConfig:
        s = get_settings()
        kek = None
        if s.gateway_kek is not None:
            try:
                kek = base64.b64decode(s.gateway_kek.get_secret_value(), validate=True)
            except ValueError as exc:
                raise ValueError("VEIL_GATEWAY_KEK must be base64 of 32 bytes") from exc
        signing = None
        if s.gateway_signing_key is not None:
            signing = decode_signing_seed(s.gateway_signing_key.get_secret_value())
        return cls(
            data_dir=s.resolved_data_dir(),
            model=s.model,
            database_url=s.database_url,
            gateway_kek=kek,
            relay_secret=None if s.relay_secret is None else s.relay_secret.get_secret_value().encode(),
            gateway_signing_key=signing,
            environment=s.environment,
            key_rotation_s=s.gateway_key_rotation_s,
            key_grace_s=s.gateway_key_grace_s,
            group_commit=GroupCommitConfig(s.group_commit_max_batch, s.group_commit_window_ms / 1000.0),
            operator_key=None if s.fleet_api_key is None else s.fleet_api_key.get_secret_value().strip(),
        )

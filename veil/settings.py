"""The one settings class (env prefix ``VEIL_``), shared by the CLI, the models and the service."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


def _default_data_dir() -> Path:
    return Path.home() / ".veil"


class Settings(BaseSettings):
    """Runtime settings, read from ``VEIL_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="VEIL_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where converted models, databases, reports and run outputs live."""

    model: str = "smollm2-135m-instruct"
    """A registered model name (``veil.models.loading.MODEL_REGISTRY``) or a local directory."""

    database_url: str | None = None
    """SQLAlchemy URL; ``None`` means SQLite in ``data_dir``."""

    environment: Literal["development", "production"] = "production"
    """``production`` (the default) refuses secrets the service would otherwise generate for itself, so a
    deployment that forgets a secret fails closed. ``veil demo`` and the test suite run as
    ``development``; set ``VEIL_ENVIRONMENT=development`` for a local trial of ``veil serve``."""

    gateway_kek: SecretStr | None = None
    """Base64 of the 32-byte key that encrypts the OHTTP gateway's private keys at rest."""

    gateway_key_rotation_s: float = 24 * 3600.0
    """Age (seconds) at which the API makes a new OHTTP gateway key (default daily)."""

    gateway_key_grace_s: float = 24 * 3600.0
    """How long (seconds) a rotated-out gateway key keeps working before it retires."""

    relay_secret: SecretStr | None = None
    """Secret (at least 32 bytes) the relay and the gateway share: the gateway answers ``POST /ohttp`` only
    with the relay's HMAC over the body (``veil.cloud_service.relay_auth``). Production requires it."""

    gateway_signing_key: SecretStr | None = None
    """Base64 of the 32-byte Ed25519 seed that signs the gateway's key configurations (RFC 9421)."""

    fleet_api_key: SecretStr | None = None
    """An operator API key (``veil keys create --operator``) of a running API: the fleet's ServerApp
    publishes codebooks with it when the fleet's cloud is ``deployed``."""

    tls_certfile: Path | None = None
    """PEM certificate (chain) that ``veil serve`` and ``veil relay`` present: they serve HTTPS when it and
    ``tls_keyfile`` are set, plain HTTP when neither is. The relay verifies an ``https://`` gateway against
    the system's trust store, or against the file named by OpenSSL's ``SSL_CERT_FILE`` (a private CA)."""

    tls_keyfile: Path | None = None
    """PEM private key of ``tls_certfile``."""

    group_commit_max_batch: int = 512
    """Most uploads an API process commits in one transaction (1: one transaction, one fsync, per upload)."""

    group_commit_window_ms: float = 0.0
    """Extra milliseconds an API process waits to gather uploads into one commit (0: none; under load
    batches form from what arrives during the previous commit)."""

    def resolved_data_dir(self) -> Path:
        path = self.data_dir.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path


def get_settings() -> Settings:
    return Settings()

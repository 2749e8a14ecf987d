"""Durable storage of the cloud service: SQLAlchemy 2 + Alembic, SQLite (WAL) by default, PostgreSQL by URL.

Typical use::

    engine = make_engine(settings.database_url, settings.resolved_data_dir())
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        result = add_upload(session, UploadIn(idempotency_key=..., task="next_word", text=..., model=...))

The schema holds nothing that identifies a person or a device, and no time finer than a UTC day.
"""

from veil.cloud_service.store.db import (
    SQLITE_FILENAME,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    normalise_url,
    safe_url,
    session_factory,
    sqlite_path,
)
from veil.cloud_service.store.errors import IdempotencyConflict, StoreError
from veil.cloud_service.store.keys import hash_api_key
from veil.cloud_service.store.ohttp import (
    GatewayKeyRow,
    add_gateway_key,
    forget_replays,
    load_gateway_keys,
    record_replays,
    retire_gateway_key,
)
from veil.cloud_service.store.repository import (
    API_KEY_PREFIX,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_LABEL_CHARS,
    MAX_TEXT_CHARS,
    ApiKeyInfo,
    StoredUpload,
    TrainingRunInfo,
    UploadIn,
    UploadResult,
    add_upload,
    count_uploads,
    create_api_key,
    create_training_run,
    get_training_run,
    iter_uploads,
    latest_training_run,
    list_api_keys,
    revoke_api_key,
    update_training_run,
    utc_day,
    verify_api_key,
)

__all__ = [
    "API_KEY_PREFIX",
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_LABEL_CHARS",
    "MAX_TEXT_CHARS",
    "SQLITE_FILENAME",
    "ApiKeyInfo",
    "GatewayKeyRow",
    "IdempotencyConflict",
    "StoreError",
    "StoredUpload",
    "TrainingRunInfo",
    "UploadIn",
    "UploadResult",
    "add_gateway_key",
    "add_upload",
    "count_uploads",
    "create_api_key",
    "create_training_run",
    "current_revision",
    "forget_replays",
    "get_training_run",
    "hash_api_key",
    "head_revision",
    "iter_uploads",
    "latest_training_run",
    "list_api_keys",
    "load_gateway_keys",
    "make_engine",
    "migrate",
    "normalise_url",
    "record_replays",
    "retire_gateway_key",
    "revoke_api_key",
    "safe_url",
    "session_factory",
    "sqlite_path",
    "update_training_run",
    "utc_day",
    "verify_api_key",
]

"""A gateway worker process for tests: the real database-backed gateway, served with ``servers.py``.

``python gateway_worker.py DATABASE_URL PORT`` (KEK in ``VEIL_GATEWAY_KEK``, base64): keys and replay
digests in the database, inner requests answered by the echo app. No model, so it starts in a second.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

import uvicorn
from servers import asgi_dispatch, make_echo_app, make_gateway_app

from veil.cloud_service.gateway import Gateway, Keyring
from veil.cloud_service.gateway_setup import DatabaseKeyStorage, DatabaseReplayStore
from veil.cloud_service.store import make_engine, migrate, session_factory


def main(url: str, port: int) -> None:
    engine = make_engine(url, Path(tempfile.gettempdir()))
    migrate(engine)
    sessions = session_factory(engine)
    kek = base64.b64decode(os.environ["VEIL_GATEWAY_KEK"])
    gateway = Gateway(Keyring(DatabaseKeyStorage(sessions), kek), replays=DatabaseReplayStore(sessions))
    app = make_gateway_app(gateway, asgi_dispatch(make_echo_app()), [])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

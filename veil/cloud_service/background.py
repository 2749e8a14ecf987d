"""Run an ASGI app on a real loopback socket in a background thread (demo, tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

__all__ = ["BackgroundServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/health")``.

    uvicorn runs in a daemon thread with its own event loop; ``__enter__`` returns once the app's
    startup (lifespan) has finished, and raises ``RuntimeError`` if it failed or timed out.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 120.0):
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        self.timeout_s = timeout_s
        config = uvicorn.Config(
            app, host=host, port=self.port, access_log=False, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} failed to start (see the log above)")
            if time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError(f"server on port {self.port} did not start within {self.timeout_s} s")
            time.sleep(0.02)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

"""Run an ASGI app on a real loopback socket in a background thread (demo, tests, benchmarks)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

__all__ = ["BackgroundServer", "RelayProcess", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before ``exec`` (Linux): ask the kernel for SIGTERM when the parent dies, so a
    killed ``veil simulate`` or ``veil demo`` leaves no relay behind. The signal follows the thread that
    started the child, so the child must not outlive that thread (a ``with`` block does not)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/health")``.

    uvicorn runs in a daemon thread with its own event loop; ``__enter__`` returns once the app's
    startup (lifespan) has finished, and raises ``RuntimeError`` if it failed or timed out.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 120.0):
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


class RelayProcess:
    """``veil relay`` as a separate process on a free loopback port (the relay never shares the API's
    process: it must not see what the gateway sees). ``with RelayProcess(api.url) as relay: relay.url``.

    ``relay_secret`` reaches the process through ``VEIL_RELAY_SECRET`` (not its command line).
    ``rate_per_s`` defaults to 0 (no per-address limit): every simulated phone here shares 127.0.0.1.
    """

    def __init__(
        self,
        gateway_url: str,
        hold_window_ms: float = 0.0,
        timeout_s: float = 60.0,
        *,
        relay_secret: str | None = None,
        rate_per_s: float = 0.0,
    ) -> None:
        self.gateway_url = gateway_url
        self.hold_window_ms = hold_window_ms
        self.timeout_s = timeout_s
        self.relay_secret = relay_secret
        self.rate_per_s = rate_per_s
        self.port = free_port()
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RelayProcess:
        cmd = [sys.executable, "-m", "veil.cli.main", "relay", "--gateway", self.gateway_url]
        cmd += ["--port", str(self.port), "--hold-window-ms", str(self.hold_window_ms)]
        cmd += ["--rate-per-s", str(self.rate_per_s)]

        env = dict(os.environ)
        env.pop("VEIL_RELAY_SECRET", None)
        if self.relay_secret is not None:
            env["VEIL_RELAY_SECRET"] = self.relay_secret
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509 - no threads in it
        )
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace").strip().splitlines()
                raise RuntimeError(f"relay exited with {self.proc.returncode}: {err[-1] if err else ''}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"relay did not start within {self.timeout_s} s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

"""``veil serve`` and ``veil relay`` over HTTPS (``--tls-certfile``/``--tls-keyfile`` or ``VEIL_TLS_*``),
the relay verifying the gateway against the CA that ``SSL_CERT_FILE`` names, as deploy/ runs them."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_cli import assert_one_line_error, veil

from veil.cloud_service.background import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/bootstrap.py's CA and service certificates (valid for localhost and 127.0.0.1)."""
    spec = importlib.util.spec_from_file_location("veil_deploy_bootstrap", ROOT / "deploy" / "bootstrap.py")
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    out = tmp_path_factory.mktemp("tls") / "local"
    bootstrap.bootstrap(out)
    return out / "certs"


def test_tls_options_are_checked_before_anything_starts(
    certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_crt, api_key = str(certs / "api.crt"), str(certs / "api.key")
    alone = veil(tmp_path, "serve", "--tls-certfile", api_crt)
    assert_one_line_error(alone, "--tls-certfile and --tls-keyfile")
    mismatched = veil(tmp_path, "serve", "--tls-certfile", api_crt, "--tls-keyfile", str(certs / "relay.key"))
    assert_one_line_error(mismatched, "TLS certificate", "api.crt")
    missing = veil(
        tmp_path, "relay", "--gateway", "https://localhost:9", "--tls-certfile", str(tmp_path / "no.crt"),
        "--tls-keyfile", api_key,
    )  # fmt: skip
    assert_one_line_error(missing, "TLS certificate", "no.crt")
    workers = veil(tmp_path, "serve", "--workers", "2", "--tls-certfile", api_crt, "--tls-keyfile", api_key)
    assert_one_line_error(workers, "--workers 1")
    monkeypatch.setenv("VEIL_TLS_KEYFILE", api_key)  # the settings count like the flags
    assert_one_line_error(veil(tmp_path, "relay", "--gateway", "https://localhost:9"), "--tls-certfile")


def _trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, ca: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {proc.stdout.read().decode()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/health", verify=_trusting(ca), timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy")


@contextlib.contextmanager
def _started(args: list[str], env: dict[str, str], url: str, ca: Path) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "veil.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(proc, url, ca)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_relay_reaches_the_gateway_over_verified_tls(certs: Path, data_dir: str, tmp_path: Path) -> None:
    shared = Path(data_dir) / "models"
    shared.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(shared)  # reuse the converted tokenizer and models
    ca = certs / "ca.crt"
    env = {**os.environ, "VEIL_DATA_DIR": str(tmp_path), "VEIL_RELAY_SECRET": secrets.token_urlsafe(32)}
    env.pop("SSL_CERT_FILE", None)
    api_env = {**env, "VEIL_TLS_CERTFILE": str(certs / "api.crt"), "VEIL_TLS_KEYFILE": str(certs / "api.key")}
    api_port, relay_port, untrusting_port, ops_port = free_port(), free_port(), free_port(), free_port()
    api = f"https://localhost:{api_port}"
    relay_tls = ["--tls-certfile", str(certs / "relay.crt"), "--tls-keyfile", str(certs / "relay.key")]
    serve = ["serve", "--model", "tiny-llama", "--port", str(api_port), "--metrics-port", str(ops_port)]
    with _started(serve, api_env, api, ca):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://localhost:{api_port}/health", timeout=5)  # no plain HTTP on a TLS port
        assert httpx.get(f"http://127.0.0.1:{ops_port}/metrics").status_code == 200  # operator port: HTTP
        relay = ["relay", "--gateway", api, "--port", str(relay_port), *relay_tls]
        with _started(relay, {**env, "SSL_CERT_FILE": str(ca)}, f"https://localhost:{relay_port}", ca):
            keys = httpx.get(
                f"https://localhost:{relay_port}/.well-known/ohttp-gateway", verify=_trusting(ca)
            )
            assert keys.status_code == 200 and keys.headers["content-type"] == "application/ohttp-keys"
            assert "signature" in keys.headers  # the gateway's answer, through both TLS hops
            health = [
                sys.executable,
                str(ROOT / "deploy" / "healthcheck.py"),
                f"https://localhost:{relay_port}/health",
            ]
            assert subprocess.run(health, env={**env, "SSL_CERT_FILE": str(ca)}, check=False).returncode == 0
            assert subprocess.run(health, env=env, capture_output=True, check=False).returncode == 1
        # Without SSL_CERT_FILE the relay trusts only the system's CAs, so it refuses the gateway.
        untrusting = ["relay", "--gateway", api, "--port", str(untrusting_port), *relay_tls]
        with _started(untrusting, env, f"https://localhost:{untrusting_port}", ca):
            refused = httpx.get(
                f"https://localhost:{untrusting_port}/.well-known/ohttp-gateway", verify=_trusting(ca)
            )
            assert refused.status_code == 502

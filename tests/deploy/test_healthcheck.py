"""``veil-health`` (deploy/healthcheck.py), the containers' health check, against a real server."""

from __future__ import annotations

import importlib.util

from deploy_files import DEPLOY
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from veil.cloud_service.background import BackgroundServer


def _healthcheck():
    spec = importlib.util.spec_from_file_location("veil_deploy_healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exit_code_follows_the_status() -> None:
    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    app.get("/sick")(lambda: JSONResponse({"status": "down"}, 503))
    health = _healthcheck()
    with BackgroundServer(app) as server:
        assert health.main([server.url + "/health"]) == 0
        assert health.main([server.url + "/sick"]) == 1
        assert health.main([server.url + "/missing"]) == 1
    assert health.main([server.url + "/health"]) == 1  # stopped
    assert health.main(["localhost:1/health"]) == 2

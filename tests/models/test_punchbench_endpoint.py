"""PunchBench over real OpenAI-compatible endpoints on loopback: Veil's own server, and servers that
fail (HTTP 500, too slow, nobody listening)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from veil.cloud_service.background import BackgroundServer
from veil.models.evaluation.punchbench import (
    EndpointError,
    EndpointTimeoutError,
    Item,
    OpenAIChat,
    report,
    run_punchbench,
)

pytestmark = pytest.mark.integration

ITEMS = [
    Item("a-p-yn", "a", "original", "perception", "yes-no", "What pleasant weather!", "yes", ("yes", "no"),
         context="Heavy rain."),
    Item("a-p-match", "a", "original", "perception", "matching", "What pleasant weather!",
         "What pleasant weather!", ("What pleasant weather!", "What nasty weather!"), context="Heavy rain."),
    Item("a-p-mc", "a", "original", "perception", "multiple-choice", "What pleasant weather!", "w1",
         ("w1", "w2", "w3", "w4"), context="Heavy rain."),
]  # fmt: skip


@pytest.mark.slow  # ~50 s on the shared 2-core box, mostly building the tiny model
def test_veils_own_server_answers_every_strategy_through_the_openai_client(keyed_app, tmp_path: Path) -> None:
    app, key = keyed_app(tmp_path)
    with BackgroundServer(app) as server:
        chat = OpenAIChat(server.url + "/v1", key, "tiny-llama", max_tokens=4, timeout_s=60)
        records = run_punchbench(ITEMS, ["zero-shot", "sc-coq"], chat, log_path=tmp_path / "log.jsonl")
    assert len(records) == 6 and all(isinstance(r["reply"], str) for r in records)
    chain = next(r for r in records if r["strategy"] == "sc-coq" and r["item_id"] == "a-p-mc")["transcript"]
    assert [t["item_id"] for t in chain] == ["a-p-yn", "a-p-match", "a-p-mc"]
    out = report(records)
    assert 0.0 <= out["comparisons"]["sc-coq"]["p_value"] <= 1.0


def _app(handler) -> Starlette:
    return Starlette(routes=[Route("/v1/chat/completions", handler, methods=["POST"])])


async def _error(request: Request) -> JSONResponse:
    return JSONResponse({"error": {"type": "server_error", "message": "model crashed", "param": None}}, 500)


async def _slow(request: Request) -> JSONResponse:
    await asyncio.sleep(1)
    return JSONResponse({})


def test_an_endpoint_error_is_a_clear_endpoint_error() -> None:
    with BackgroundServer(_app(_error)) as server:
        chat = OpenAIChat(server.url + "/v1", "k", "m", max_retries=0)
        with pytest.raises(EndpointError, match=r"HTTP 500.*model crashed"):
            run_punchbench(ITEMS, ["zero-shot"], chat)


def test_a_slow_endpoint_times_out_with_the_limit_in_the_message() -> None:
    with BackgroundServer(_app(_slow)) as server:
        chat = OpenAIChat(server.url + "/v1", "k", "m", timeout_s=0.3, max_retries=0)
        with pytest.raises(EndpointTimeoutError, match=r"within 0.3 s"):
            chat([{"role": "user", "content": "hi"}])


def test_nobody_listening_is_an_endpoint_error_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chat = OpenAIChat(f"http://127.0.0.1:{port}/v1", "k", "m", max_retries=0, timeout_s=5)
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}"):
        chat([{"role": "user", "content": "hi"}])

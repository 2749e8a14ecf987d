"""The relay's keep-alive HTTP/1.1 pool against a raw asyncio server on loopback: connection reuse,
framing (content-length, chunked, close-delimited), ``connection: close``, idle expiry and failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from veil.cloud_service.upstream import UpstreamError, UpstreamPool, UpstreamTimeoutError

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


async def _server(answer: Handler) -> tuple[asyncio.AbstractServer, list[int], list[bytes]]:
    """Reads each request (head + content-length body), lets ``answer`` write; False closes the connection."""
    connections, requests = [0], []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.startswith(b"content-length")
                    ),
                    0,
                )
                requests.append(head + await reader.readexactly(length))
                if not await answer(head, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), connections, requests


def _url(server: asyncio.AbstractServer) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _ok(head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: message/ohttp-res\r\ncontent-length: 5\r\n\r\nhello")
    await writer.drain()
    return True


def test_sequential_requests_reuse_one_connection_and_send_only_the_given_headers() -> None:
    async def main() -> None:
        server, connections, requests = await _server(_ok)
        pool = UpstreamPool(_url(server), max_connections=4, timeout_s=5)
        for i in range(5):
            r = await pool.request("POST", "/ohttp", {"content-type": "message/ohttp-req"}, b"x" * i)
            assert (r.status_code, r.content, r.headers["content-type"]) == (
                200,
                b"hello",
                "message/ohttp-res",
            )
        assert connections == [1]
        head, _, body = requests[3].partition(b"\r\n\r\n")
        fields = sorted(line.split(b":")[0] for line in head.split(b"\r\n")[1:])
        assert head.startswith(b"POST /ohttp HTTP/1.1") and body == b"xxx"
        assert fields == [b"content-length", b"content-type", b"host"]
        await pool.aclose()
        server.close()

    asyncio.run(main())


def test_concurrent_requests_open_at_most_max_connections() -> None:
    async def slow_ok(head: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        return await _ok(head, writer)

    async def main() -> None:
        server, connections, _ = await _server(slow_ok)
        pool = UpstreamPool(_url(server), max_connections=3, timeout_s=5)
        answers = await asyncio.gather(*(pool.request("GET", "/k", {}, b"") for _ in range(12)))
        assert all(r.status_code == 200 for r in answers) and connections == [3]
        await pool.aclose()
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("response", "content", "reused"),
    [
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
            b"abcde",
            True,
        ),
        (b"HTTP/1.1 400 Bad\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}", b"{}", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
    ],
)
def test_framings(response: bytes, content: bytes, reused: bool) -> None:
    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(response)
        await writer.drain()
        return b"connection: close" not in response

    async def main() -> None:
        server, connections, _ = await _server(answer)
        pool = UpstreamPool(_url(server), max_connections=2, timeout_s=5)
        for _ in range(2):
            r = await pool.request("POST", "/ohttp", {}, b"body")
            assert r.content == content
        assert connections == [1 if reused else 2]
        await pool.aclose()
        server.close()

    asyncio.run(main())


def test_idle_connections_expire_instead_of_being_reused() -> None:
    async def main() -> None:
        server, connections, _ = await _server(_ok)
        pool = UpstreamPool(_url(server), max_connections=2, timeout_s=5, idle_s=0.05)
        await pool.request("GET", "/a", {}, b"")
        await asyncio.sleep(0.1)
        await pool.request("GET", "/b", {}, b"")
        assert connections == [2]
        await pool.aclose()
        server.close()

    asyncio.run(main())


def test_failures_are_typed_and_never_retried() -> None:
    async def hang_up(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        return False

    async def silent(head: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async def garbage(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        return True

    async def main() -> None:
        for handler, error in (
            (hang_up, UpstreamError),
            (silent, UpstreamTimeoutError),
            (garbage, UpstreamError),
        ):
            server, _, requests = await _server(handler)
            pool = UpstreamPool(_url(server), max_connections=2, timeout_s=0.3)
            with pytest.raises(error):
                await pool.request("POST", "/ohttp", {}, b"sealed")
            assert len(requests) == 1  # sent once: the gateway may already have it
            server.close()
        dead = UpstreamPool("http://127.0.0.1:9", max_connections=1, timeout_s=2)
        with pytest.raises(UpstreamError):
            await dead.request("GET", "/", {}, b"")

    asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "n", "timeout"), [("ftp://x", 1, 1.0), ("http://", 1, 1.0), ("http://h", 0, 1.0)]
)
def test_bad_settings_are_refused(url: str, n: int, timeout: float) -> None:
    with pytest.raises(ValueError):
        UpstreamPool(url, max_connections=n, timeout_s=timeout)

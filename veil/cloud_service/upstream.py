"""The relay's connections to the gateway: a small pool of keep-alive HTTP/1.1 connections (RFC 9112).

The relay sends every request to one origin, with two fixed headers and a body of known length, and
reads answers that carry ``content-length`` (or chunked framing, RFC 9112 section 7.1). A general
client pays for what this does not need: httpx's pool scans every connection (and polls its socket)
for each request, which at 100+ connections costs more CPU than the rest of the relay. Here a request
takes the most recently used idle connection (LIFO: the others expire first) or opens one, up to
``max_connections``; a connection idle longer than ``idle_s`` is closed rather than reused, so none is
sent on while the gateway closes it (uvicorn's keep-alive timeout is 5 s). A failed exchange is never
retried here: the gateway may have received the request (the phone retries with a fresh encapsulation).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["UpstreamError", "UpstreamPool", "UpstreamResponse", "UpstreamTimeoutError"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 << 20


class UpstreamError(Exception):
    """The gateway could not be reached, closed the connection, or answered malformed HTTP."""


class UpstreamTimeoutError(UpstreamError):
    """The gateway did not answer within the timeout."""


@dataclass(frozen=True)
class UpstreamResponse:
    """An answer from the gateway; header names are lower case (repeated fields joined by ``", "``)."""

    status_code: int
    headers: dict[str, str]
    content: bytes


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float

    def usable(self, now: float, idle_s: float) -> bool:
        return now - self.last_used < idle_s and not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to ``base_url`` (``http://`` or ``https://``).

    Parameters
    ----------
    base_url : origin of the gateway; request paths are appended.
    max_connections : most connections open at once (requests beyond wait for one).
    timeout_s : limit for one exchange, connecting included.
    idle_s : an idle connection older than this is closed instead of reused.
    """

    def __init__(self, base_url: str, max_connections: int, timeout_s: float, idle_s: float = 4.0) -> None:
        split = urlsplit(base_url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        if max_connections < 1 or timeout_s <= 0 or idle_s <= 0:
            raise ValueError(f"need max_connections >= 1, timeout_s > 0, idle_s > 0, got {max_connections}, "
                             f"{timeout_s}, {idle_s}")  # fmt: skip
        self.host = split.hostname
        self.port = split.port or (443 if split.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if split.scheme == "https" else None
        self.authority = split.netloc
        self.prefix = split.path.rstrip("/")
        self.timeout_s, self.idle_s = timeout_s, idle_s
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._slots: asyncio.Semaphore | None = None

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> UpstreamResponse:
        """One exchange; raises :class:`UpstreamTimeoutError` or :class:`UpstreamError`."""
        if self._slots is None:  # made here so it belongs to the running loop
            self._slots = asyncio.Semaphore(self.max_connections)
        head = [f"{method} {self.prefix}{path} HTTP/1.1", f"host: {self.authority}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if body or method not in ("GET", "HEAD"):
            head.append(f"content-length: {len(body)}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots:
            conn = None
            try:
                async with asyncio.timeout(self.timeout_s):
                    conn = await self._connection()
                    conn.writer.write(message)
                    response, reusable = await self._read(conn.reader, method)
            except TimeoutError:
                self._discard(conn)
                raise UpstreamTimeoutError("the gateway did not answer in time") from None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                self._discard(conn)
                raise UpstreamError(f"exchange with the gateway failed: {type(exc).__name__}") from None
            if reusable:
                conn.last_used = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
            return response

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self.idle_s):
                return conn
            conn.close()
        reader, writer = await asyncio.open_connection(
            self.host,
            self.port,
            ssl=self.tls,
            server_hostname=self.host if self.tls else None,
            limit=_MAX_HEAD,
        )
        return _Connection(reader, writer, now)

    @staticmethod
    async def _read(reader: asyncio.StreamReader, method: str) -> tuple[UpstreamResponse, bool]:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        version, status_text = lines[0].split(" ", 2)[:2]
        if not version.startswith("HTTP/1.") or not status_text.isdigit():
            raise ValueError("not an HTTP/1.x status line")
        status = int(status_text)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            content = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            content = await UpstreamPool._chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= _MAX_BODY:
                raise ValueError("content-length out of range")
            content = await reader.readexactly(length)
        else:  # delimited by the end of the connection (RFC 9112 section 6.3, rule 8)
            content = await reader.read(_MAX_BODY)
            return UpstreamResponse(status, headers, content), False
        keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        return UpstreamResponse(status, headers, content), keep

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        chunks, total = [], 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailer fields, ignored
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                raise ValueError("chunked body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def _discard(self, conn: _Connection | None) -> None:
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()

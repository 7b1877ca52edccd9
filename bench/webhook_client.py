"""The drill's webhook sender: HTTP/1.1 POSTs on kept-alive connections, written to bytes
once per webhook, so that the load generator spends its CPU on the load, not on itself.

aiohttp's client costs about 300 µs of CPU per request on a 2-core drill machine, about a
third of what ingress spends serving it, on the same two cores as the pipeline. This client
speaks only what the drill needs from ingress: a POST with a body, and an answer with a
Content-Length (aiohttp's server always sends one for a finished response).
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit


class WebhookClientError(Exception):
    """The connection failed or ingress answered with something this client cannot read."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not registered as an asyncio.Transport, but is one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.answer is None or self.answer.done():
            return
        try:
            status = self._take_response()
        except WebhookClientError as exc:
            self.answer.set_exception(exc)
            self.close()
            return
        if status is not None:
            self.answer.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(WebhookClientError(f"connection lost: {exc}"))

    def _take_response(self) -> int | None:
        """The status of the whole response at the front of the buffer, which it removes; None
        while the response is still arriving."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise WebhookClientError(f"not an HTTP/1 status line: {head[0]!r}")
        length = None
        keep_alive = parts[0] == "HTTP/1.1"
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                if not value.strip().isdigit():
                    raise WebhookClientError(f"a malformed Content-Length: {value.strip()!r}")
                length = int(value)
            elif name == "connection":
                keep_alive = value.strip().lower() == "keep-alive"
            elif name == "transfer-encoding":
                raise WebhookClientError("a chunked answer: this client reads Content-Length only")
        if length is None:
            raise WebhookClientError("an answer without Content-Length")
        if len(self.buffer) < end + 4 + length:
            return None
        del self.buffer[: end + 4 + length]
        if not keep_alive:
            self.close()
        return int(parts[1])

    async def exchange(self, request: bytes) -> int:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self.answer
        finally:
            self.answer = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class WebhookClient:
    """POSTs to one URL over a pool of kept-alive connections, as many as requests in flight
    (the caller bounds that)."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL with a host, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        self._head = (
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        ).encode("ascii")
        self._idle: list[_Connection] = []

    def request(self, body: bytes, headers: dict[str, str]) -> bytes:
        """The whole request, written once: the drill builds it before the clock starts."""
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return b"%b%bContent-Length: %d\r\n\r\n%b" % (
            self._head,
            lines.encode("latin-1"),
            len(body),
            body,
        )

    async def post(self, request: bytes) -> int:
        """Send a request from `request()`; its answer's status. Raises WebhookClientError or
        TimeoutError, and then the connection is not reused."""
        connection = await self._connection()
        try:
            async with asyncio.timeout(self.timeout):
                status = await connection.exchange(request)
        except BaseException:
            connection.close()
            raise
        if not connection.closed:
            self._idle.append(connection)
        return status

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise WebhookClientError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return connection

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

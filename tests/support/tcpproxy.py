"""A small in-process TCP proxy that injects network faults between a service and RabbitMQ
or Postgres, as aio-pika's own tests do: cut every connection, black-hole the traffic (no FIN,
packets vanish), or chop a stream mid-frame, then restore.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


@dataclass(eq=False)  # identity: links live in a set
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._chop_after: int | None = None
        self.port = 0
        self.chops = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Close every open connection (both sides see the connection end)."""
        for link in list(self._links):
            self._close(link)

    def refuse(self, refusing: bool = True) -> None:
        """While refusing, new connections are closed as soon as they are accepted."""
        self._refusing = refusing

    def black_hole(self) -> None:
        """Stop forwarding in both directions without closing anything: packets vanish."""
        self._flowing.clear()

    def chop_after(self, nbytes: int) -> None:
        """Forward `nbytes` more bytes (server to client), then cut mid-stream."""
        self._chop_after = nbytes

    def restore(self) -> None:
        self._refusing = False
        self._chop_after = None
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        link = _Link(writer, server_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, server_writer, link, chop=False)),
            asyncio.create_task(self._pump(server_reader, writer, link, chop=True)),
        ]

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: _Link,
        *,
        chop: bool,
    ) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()  # a black hole holds the data forever
                if chop and self._chop_after is not None:
                    if len(data) > self._chop_after:
                        sink.write(data[: self._chop_after])
                        await sink.drain()
                        self._chop_after = None
                        self.chops += 1
                        self._close(link)
                        return
                    self._chop_after -= len(data)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._close(link)

    def _close(self, link: _Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for writer in (link.client, link.server):
            with contextlib.suppress(Exception):
                writer.close()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))

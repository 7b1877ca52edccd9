"""The surge drill's webhook sender (bench/webhook_client.py) against a real aiohttp server:
what ingress receives is the webhook as signed, the answer's status comes back, kept-alive
connections are reused, and a connection that broke or answered oddly is never reused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from webhook_client import WebhookClient, WebhookClientError

from civicline.simulator.signing import SIGNATURE_HEADER

BODY = b'{"object":"whatsapp_business_account","entry":[]}'


@dataclass
class Server:
    url: str
    bodies: list[bytes] = field(default_factory=list)
    signatures: list[str | None] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server("")

    async def webhook(request: web.Request) -> web.StreamResponse:
        state.bodies.append(await request.read())
        state.signatures.append(request.headers.get(SIGNATURE_HEADER))
        assert request.transport is not None
        state.peers.add(request.transport.get_extra_info("peername"))
        if request.query.get("answer") == "close":
            return web.Response(text="bye", headers={"Connection": "close"})
        if request.query.get("answer") == "chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b"partial")
            await response.write_eof()
            return response
        if request.query.get("answer") == "bad-length":
            assert request.transport is not None
            request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n")
            request.transport.close()
            return web.Response()
        if request.query.get("answer") == "slow":
            await asyncio.sleep(1)
        if request.query.get("answer") == "large":
            return web.Response(body=b"x" * 300_000)
        return web.Response(status=200 if state.signatures[-1] == "sha256=ok" else 401)

    app = web.Application()
    app.router.add_post("/webhook", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/webhook"
    yield state
    await runner.cleanup()


async def test_the_webhook_arrives_as_signed_and_its_answer_comes_back(server: Server) -> None:
    client = WebhookClient(server.url)
    signed = client.request(BODY, {SIGNATURE_HEADER: "sha256=ok"})
    unsigned = client.request(BODY, {SIGNATURE_HEADER: "sha256=bad"})

    assert [await client.post(signed), await client.post(unsigned)] == [200, 401]

    assert server.bodies == [BODY, BODY]
    assert server.signatures == ["sha256=ok", "sha256=bad"]
    assert len(server.peers) == 1, "one kept-alive connection carried both"
    client.close()


async def test_as_many_connections_as_requests_in_flight_and_then_reused(server: Server) -> None:
    client = WebhookClient(server.url)
    request = client.request(BODY, {SIGNATURE_HEADER: "sha256=ok"})

    for _ in range(3):
        assert await asyncio.gather(*(client.post(request) for _ in range(4))) == [200] * 4

    assert len(server.bodies) == 12
    assert len(server.peers) == 4
    client.close()


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        # Read whole though it arrives in pieces, so the connection stays usable.
        pytest.param("large", 1, id="large answer: kept"),
        # The server said it closes: never reused.
        pytest.param("close", 2, id="Connection: close: not reused"),
    ],
)
async def test_a_connection_is_reused_only_when_its_answer_allows(
    server: Server, answer: str, connections: int
) -> None:
    client = WebhookClient(f"{server.url}?answer={answer}")
    request = client.request(BODY, {SIGNATURE_HEADER: "sha256=ok"})

    assert [await client.post(request), await client.post(request)] == [200, 200]
    assert len(server.peers) == connections
    client.close()


async def test_an_answer_it_cannot_read_fails_and_its_connection_is_dropped(
    server: Server,
) -> None:
    client = WebhookClient(server.url + "?answer=chunked")
    request = client.request(BODY, {})
    for _ in range(2):
        with pytest.raises(WebhookClientError, match="chunked"):
            await client.post(request)
    assert len(server.peers) == 2, "the second post did not reuse the first's connection"
    client.close()


async def test_an_answer_with_a_malformed_length_is_a_clear_error(server: Server) -> None:
    client = WebhookClient(server.url + "?answer=bad-length")
    with pytest.raises(WebhookClientError, match="Content-Length"):
        await client.post(client.request(BODY, {}))
    client.close()


async def test_a_slow_answer_times_out(server: Server) -> None:
    client = WebhookClient(server.url + "?answer=slow", timeout=0.2)
    with pytest.raises(TimeoutError):
        await client.post(client.request(BODY, {}))
    assert client._idle == []
    client.close()


async def test_nothing_listening_is_a_clear_error() -> None:
    client = WebhookClient("http://127.0.0.1:9/webhook")
    with pytest.raises(WebhookClientError, match=r"cannot connect to 127\.0\.0\.1:9"):
        await client.post(client.request(BODY, {}))


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="http://"):
        WebhookClient("https://example.org/webhook")

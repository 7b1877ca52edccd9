"""The simulator answers accepted messages with status webhooks, as Meta does: sent, then
delivered, then read, each signed with the app secret and retried while the endpoint fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from aiohttp import web

from civicline.ingress.core import verify_signature
from civicline.simulator import Simulator
from civicline.simulator.receipts import Receipts
from support.waiting import eventually

SECRET = "receipts-app-secret"
PNID = "106512349876543"
FAST = (("sent", 0.0), ("delivered", 0.05), ("read", 0.1))


@dataclass
class Endpoint:
    """The business's webhook endpoint: records what arrives, refusing the first few."""

    url: str = ""
    refuse_first: int = 0
    posts: int = 0
    received: list[tuple[str, str, str, bool]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts += 1
        if self.posts <= self.refuse_first:
            return web.Response(status=503)
        signed = verify_signature([SECRET], body, request.headers.get("X-Hub-Signature-256"))
        value = orjson.loads(body)["entry"][0]["changes"][0]["value"]
        for status in value["statuses"]:
            self.received.append((status["id"], status["status"], status["recipient_id"], signed))
        return web.Response(text="ok")


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    receiver = Endpoint()
    app = web.Application()
    app.router.add_post("/webhook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhook"
    yield receiver
    await runner.cleanup()


async def send_text(simulator: Simulator, to: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{simulator.base_url}/v25.0/{PNID}/messages",
            headers={"Authorization": "Bearer token"},
            json={
                "messaging_product": "whatsapp",
                "to": to,
                "type": "text",
                "text": {"body": "hi"},
            },
        ) as answer,
    ):
        assert answer.status == 200
        return str((await answer.json())["messages"][0]["id"])


async def test_each_accepted_message_gets_sent_delivered_read_signed_in_order(
    endpoint: Endpoint,
) -> None:
    receipts = Receipts(endpoint.url, SECRET, schedule=FAST)
    async with Simulator(receipts=receipts) as simulator:
        first = await send_text(simulator, "821052347781")
        second = await send_text(simulator, "447700900321")
        await eventually(lambda: receipts.counts.posted == 6, what="six statuses", timeout=10)
        stats = simulator.stats()["status_webhooks"]
    for wamid, citizen in ((first, "821052347781"), (second, "447700900321")):
        mine = [(status, to, signed) for w, status, to, signed in endpoint.received if w == wamid]
        assert mine == [(s, citizen, True) for s in ("sent", "delivered", "read")]
    assert stats == {"posted": 6, "retried": 0, "undelivered": 0}


async def test_a_refused_status_webhook_is_retried_until_accepted(endpoint: Endpoint) -> None:
    endpoint.refuse_first = 2
    receipts = Receipts(endpoint.url, SECRET, schedule=FAST, first_backoff=0.01)
    async with Simulator(receipts=receipts) as simulator:
        wamid = await send_text(simulator, "821052347781")
        await eventually(lambda: receipts.counts.posted == 3, what="three statuses", timeout=10)
        stats = simulator.stats()["status_webhooks"]
    assert [status for _, status, _, _ in endpoint.received] == ["sent", "delivered", "read"]
    assert {w for w, _, _, _ in endpoint.received} == {wamid}
    assert stats == {"posted": 3, "retried": 2, "undelivered": 0}


async def test_an_endpoint_that_never_answers_is_given_up_on_and_counted() -> None:
    receipts = Receipts(
        "http://127.0.0.1:9/webhook", SECRET, schedule=FAST[:1], attempts=2, first_backoff=0.01
    )
    async with Simulator(receipts=receipts) as simulator:
        await send_text(simulator, "821052347781")
        await eventually(lambda: receipts.counts.undelivered == 1, what="a give-up", timeout=10)
        assert simulator.stats()["status_webhooks"] == {
            "posted": 0,
            "retried": 1,
            "undelivered": 1,
        }


async def test_without_receipts_nothing_is_posted_and_stats_say_so() -> None:
    async with Simulator() as simulator:
        await send_text(simulator, "821052347781")
        assert "status_webhooks" not in simulator.stats()

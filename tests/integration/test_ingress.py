"""ingress against the real RabbitMQ: 200 only once the body is safely in the queues, unchanged;
everything refused (signature, size, empty) publishes nothing; a broker outage answers 503.

The app runs in-process on an ephemeral port and is reached over real HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiohttp import web

from civicline.common.envelope import event_id
from civicline.common.settings import Settings
from civicline.common.topology import AUDIT_EVENTS, ROUTER_INBOUND, declare
from civicline.ingress.app import create_app
from support.amqp_probe import consume_one
from support.isolation import Environment, EnvironmentFactory
from support.waiting import eventually

pytestmark = pytest.mark.integration


SECRETS = ("s1", "s2")
VERIFY_TOKEN = "vt"
MAX_BODY_BYTES = 1024
PUBLISH_TIMEOUT = 2.0
WATCHED_QUEUES = (ROUTER_INBOUND.name, AUDIT_EVENTS.name)

# What Meta sends: compact JSON with non-ASCII escaped as \uXXXX ("투표소 위치").
BODY = (
    b'{"object":"whatsapp_business_account","entry":[{"id":"109384756102938","changes":'
    b'[{"value":{"messaging_product":"whatsapp","messages":[{"from":"821052347781",'
    b'"id":"wamid.ingress-test","timestamp":"1784361600","type":"text",'
    b'"text":{"body":"\\ud22c\\ud45c\\uc18c \\uc704\\uce58"}}]},"field":"messages"}]}]}'
)


def sign(body: bytes, secret: str = SECRETS[0]) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class RunningIngress:
    runner: web.AppRunner
    base_url: str

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/webhook"


async def start_ingress(settings: Settings) -> RunningIngress:
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return RunningIngress(runner, f"http://{host}:{port}")


def ingress_settings(amqp_url: str, **changes: object) -> Settings:
    fields: dict[str, object] = {
        "app_secrets": SECRETS,
        "verify_token": VERIFY_TOKEN,
        "amqp_url": amqp_url,
        "publish_timeout": PUBLISH_TIMEOUT,
        "max_body_bytes": MAX_BODY_BYTES,
        "service_name": "ingress",
    }
    fields.update(changes)
    return Settings(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def environment(environments: EnvironmentFactory) -> Environment:
    return await environments("ingress")


@pytest.fixture(scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


@pytest.fixture(scope="module")
async def broker_channel(environment: Environment) -> AsyncIterator[AbstractChannel]:
    """The test's own view of the vhost, with the topology declared as the services declare it.

    A plain (not robust) connection: a robust channel answers a passive declare from its cache,
    so its message counts would be stale.
    """
    connection: AbstractConnection = await aio_pika.connect(environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        await declare(channel)
        yield channel


@pytest.fixture(scope="module")
async def ingress(
    environment: Environment, session: aiohttp.ClientSession
) -> AsyncIterator[RunningIngress]:
    running = await start_ingress(ingress_settings(environment.amqp_url))
    try:

        async def ready() -> bool:
            async with session.get(f"{running.base_url}/readyz") as answer:
                return answer.status == 200

        await eventually(ready, what="ingress /readyz 200")
        yield running
    finally:
        await running.runner.cleanup()


@pytest.fixture(autouse=True)
async def empty_queues(broker_channel: AbstractChannel) -> None:
    for name in WATCHED_QUEUES:
        queue = await broker_channel.get_queue(name, ensure=False)
        await queue.purge()


async def take(channel: AbstractChannel, queue_name: str) -> AbstractIncomingMessage | None:
    """One message from the queue, acked, or None when the queue is empty."""
    if await ready_count(channel, queue_name) == 0:
        return None
    message = await consume_one(channel, queue_name)
    if message is not None:
        await message.ack()
    return message


async def ready_count(channel: AbstractChannel, queue_name: str) -> int:
    declared = await channel.declare_queue(queue_name, passive=True)
    count = declared.declaration_result.message_count
    assert count is not None
    return count


async def assert_nothing_published(channel: AbstractChannel) -> None:
    for name in WATCHED_QUEUES:
        assert await take(channel, name) is None, f"{name} received a message"


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    signature: str | None,
) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with session.post(url, data=body, headers=headers) as answer:
        return answer.status, await answer.text()


async def test_signed_post_is_in_the_queues_when_answered(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    signature = sign(BODY)
    before = datetime.now(UTC)
    status, text = await post(session, ingress.webhook_url, BODY, signature)
    assert (status, text) == (200, "ok")

    # No waiting: the 200 comes after the broker's confirm, so the message is already queued.
    routed = await take(broker_channel, ROUTER_INBOUND.name)
    assert routed is not None, "answered 200 but router.inbound is empty"
    assert routed.body == BODY
    assert routed.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert routed.routing_key == "inbound.webhook"
    assert routed.headers["x-hub-signature-256"] == signature
    received_at = datetime.fromisoformat(str(routed.headers["x-received-at"]))
    assert before <= received_at <= datetime.now(UTC)
    assert routed.message_id is not None
    raw_event_id = uuid.UUID(routed.message_id)
    # Deterministic: Meta's redelivery of the same bytes yields the same id.
    assert raw_event_id == event_id("webhook", hashlib.sha256(BODY).hexdigest())
    assert routed.correlation_id == routed.message_id

    audited = await take(broker_channel, AUDIT_EVENTS.name)
    assert audited is not None, "answered 200 but audit.events is empty"
    assert audited.body == BODY
    assert audited.message_id == routed.message_id
    assert audited.headers["x-hub-signature-256"] == signature
    assert audited.delivery_mode == aio_pika.DeliveryMode.PERSISTENT

    await assert_nothing_published(broker_channel)


async def test_second_secret_is_accepted_for_rotation(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    status, _ = await post(session, ingress.webhook_url, BODY, sign(BODY, "s2"))
    assert status == 200
    routed = await take(broker_channel, ROUTER_INBOUND.name)
    assert routed is not None
    assert routed.body == BODY


async def test_every_accepted_post_is_queued(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    bodies = [BODY.replace(b"wamid.ingress-test", f"wamid.n{n}".encode()) for n in range(20)]
    answers = await asyncio.gather(
        *(post(session, ingress.webhook_url, body, sign(body)) for body in bodies)
    )
    assert answers == [(200, "ok")] * len(bodies)
    for name in WATCHED_QUEUES:
        assert await ready_count(broker_channel, name) == len(bodies)
        received = [await take(broker_channel, name) for _ in bodies]
        assert sorted(m.body for m in received if m is not None) == sorted(bodies)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(sign(BODY, "not-our-secret"), id="wrong-secret"),
        pytest.param(None, id="missing-header"),
        pytest.param(sign(BODY + b" "), id="signature-of-another-body"),
        pytest.param("", id="empty-header"),
        pytest.param("sha1=" + "0" * 40, id="sha1"),
        pytest.param(sign(BODY)[:40], id="short"),
        pytest.param("sha256=" + "z" * 64, id="non-hex"),
        pytest.param(sign(BODY).replace("sha256=", "sha512="), id="wrong-algorithm"),
    ],
)
async def test_bad_signature_is_401_and_publishes_nothing(
    ingress: RunningIngress,
    session: aiohttp.ClientSession,
    broker_channel: AbstractChannel,
    signature: str | None,
) -> None:
    status, text = await post(session, ingress.webhook_url, BODY, signature)
    assert (status, text) == (401, "bad_signature")
    await assert_nothing_published(broker_channel)


async def test_body_over_the_cap_is_413_and_publishes_nothing(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    large = b'{"pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    status, text = await post(session, ingress.webhook_url, large, sign(large))
    assert (status, text) == (413, "body_too_large")
    await assert_nothing_published(broker_channel)


async def test_chunked_body_over_the_cap_is_413_and_publishes_nothing(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    # Without a Content-Length the cap must still hold while the body is read.
    large = b'{"pad":"' + b"x" * (4 * MAX_BODY_BYTES) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(large), 256):
            yield large[start : start + 256]

    headers = {"X-Hub-Signature-256": sign(large), "Content-Type": "application/json"}
    async with session.post(ingress.webhook_url, data=chunks(), headers=headers) as answer:
        assert answer.status == 413
    await assert_nothing_published(broker_channel)


async def test_body_at_the_cap_is_accepted(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    exact = b'{"pad":"' + b"x" * (MAX_BODY_BYTES - 10) + b'"}'
    assert len(exact) == MAX_BODY_BYTES
    status, _ = await post(session, ingress.webhook_url, exact, sign(exact))
    assert status == 200
    routed = await take(broker_channel, ROUTER_INBOUND.name)
    assert routed is not None
    assert routed.body == exact


async def test_signed_empty_body_is_400_and_publishes_nothing(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    status, text = await post(session, ingress.webhook_url, b"", sign(b""))
    assert (status, text) == (400, "empty_body")
    await assert_nothing_published(broker_channel)


async def test_unsigned_empty_body_is_401(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    status, _ = await post(session, ingress.webhook_url, b"", None)
    assert status == 401
    await assert_nothing_published(broker_channel)


async def test_handshake_echoes_the_challenge(
    ingress: RunningIngress, session: aiohttp.ClientSession
) -> None:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    async with session.get(ingress.webhook_url, params=params) as answer:
        assert answer.status == 200
        assert await answer.text() == "1158201444"
        assert answer.content_type == "text/plain"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(
            {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
            id="wrong-token",
        ),
        pytest.param(
            {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}, id="no-challenge"
        ),
        pytest.param(
            {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
            id="wrong-mode",
        ),
        pytest.param({}, id="no-parameters"),
    ],
)
async def test_handshake_refusals_are_403(
    ingress: RunningIngress, session: aiohttp.ClientSession, params: dict[str, str]
) -> None:
    async with session.get(ingress.webhook_url, params=params) as answer:
        assert answer.status == 403
        assert "1158201444" not in await answer.text()


async def test_wrong_method_is_405_and_unknown_path_is_404(
    ingress: RunningIngress, session: aiohttp.ClientSession, broker_channel: AbstractChannel
) -> None:
    headers = {"X-Hub-Signature-256": sign(BODY)}
    async with session.put(ingress.webhook_url, data=BODY, headers=headers) as answer:
        assert answer.status == 405
    async with session.post(f"{ingress.base_url}/webhooks", data=BODY, headers=headers) as answer:
        assert answer.status == 404
    async with session.get(f"{ingress.base_url}/nowhere") as answer:
        assert answer.status == 404
    await assert_nothing_published(broker_channel)


async def test_health_and_metrics(ingress: RunningIngress, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{ingress.base_url}/healthz") as answer:
        assert answer.status == 200
    async with session.get(f"{ingress.base_url}/readyz") as answer:
        assert answer.status == 200
        assert (await answer.json())["checks"] == {"rabbitmq": True}
    async with session.get(f"{ingress.base_url}/metrics") as answer:
        assert answer.status == 200
        assert "civicline_ingress_webhooks_total" in await answer.text()


async def test_stalled_body_is_408_and_publishes_nothing(
    environment: Environment, broker_channel: AbstractChannel
) -> None:
    # A client that announces a body and stops sending must not hold a worker forever.
    running = await start_ingress(ingress_settings(environment.amqp_url, body_read_timeout=0.3))
    try:
        host, port = running.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                b"POST /webhook HTTP/1.1\r\n"
                b"Host: ingress\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
                b"X-Hub-Signature-256: " + sign(BODY).encode() + b"\r\n"
                b"\r\n" + BODY[:20]
            )
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()
            await writer.wait_closed()
        assert status_line.split()[1] == b"408"
    finally:
        await running.runner.cleanup()
    await assert_nothing_published(broker_channel)


async def test_unreachable_broker_answers_503_quickly(session: aiohttp.ClientSession) -> None:
    # Port 1 on loopback: nothing listens, every connection attempt is refused.
    running = await start_ingress(ingress_settings("amqp://guest:guest@127.0.0.1:1/"))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, text = await post(session, running.webhook_url, BODY, sign(BODY))
        elapsed = loop.time() - started
        assert (status, text) == (503, "broker_unavailable")
        assert elapsed < PUBLISH_TIMEOUT

        # A bad signature is still refused as such, not hidden behind the outage.
        status, _ = await post(session, running.webhook_url, BODY, sign(BODY, "wrong"))
        assert status == 401

        async with session.get(f"{running.base_url}/readyz") as answer:
            assert answer.status == 503
            assert (await answer.json())["checks"] == {"rabbitmq": False}
        # Liveness never depends on the broker.
        async with session.get(f"{running.base_url}/healthz") as answer:
            assert answer.status == 200
    finally:
        await running.runner.cleanup()

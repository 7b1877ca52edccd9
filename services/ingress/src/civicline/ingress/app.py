"""ingress: Meta's webhook endpoint. Answers 200 only once the broker has confirmed the message.

No JSON parsing happens here: the raw body is signature-checked and published unchanged, so
the hot path stays short and the audit log keeps exactly the bytes Meta signed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import structlog
from aiohttp import web
from prometheus_client import Counter, Histogram

from civicline.common.amqp import Broker, Publisher, PublishFailed
from civicline.common.envelope import event_id
from civicline.common.health import add_health_routes, register_readiness
from civicline.common.settings import Settings
from civicline.common.topology import INBOUND_WEBHOOK
from civicline.ingress.core import SIGNATURE_HEADER, handshake_challenge, verify_signature

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
PUBLISHER = web.AppKey("publisher", Publisher)

WEBHOOKS = Counter("civicline_ingress_webhooks_total", "Webhook POSTs by outcome", ["outcome"])
ANSWER_SECONDS = Histogram(
    "civicline_ingress_answer_seconds",
    "Time from request to answer for webhook POSTs",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def create_app(settings: Settings) -> web.Application:
    # aiohttp enforces client_max_size while reading: past it, request.read() raises 413.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    add_health_routes(app)
    app.router.add_get("/webhook", verify_subscription)
    app.router.add_post("/webhook", receive_webhook)
    app.cleanup_ctx.append(_broker)
    return app


async def _broker(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    broker = Broker(settings.amqp_url, connection_name="civicline-ingress")
    broker.start()
    app[PUBLISHER] = Publisher(broker, timeout=settings.publish_timeout)

    async def broker_ready() -> bool:
        return broker.is_ready

    register_readiness(app, "rabbitmq", broker_ready)
    yield
    await broker.close()


async def verify_subscription(request: web.Request) -> web.Response:
    challenge = handshake_challenge(request.query, request.app[SETTINGS].verify_token)
    if challenge is None:
        log.warning("handshake_refused", mode=request.query.get("hub.mode"))
        return web.Response(status=403, text="verification failed")
    return web.Response(text=challenge, content_type="text/plain")


async def receive_webhook(request: web.Request) -> web.Response:
    with ANSWER_SECONDS.time():
        status, reason = await _accept(request)
    WEBHOOKS.labels(reason).inc()
    return web.Response(status=status, text=reason)


async def _accept(request: web.Request) -> tuple[int, str]:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return 413, "body_too_large"
    try:
        async with asyncio.timeout(settings.body_read_timeout):  # no task per request
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return 413, "body_too_large"
    except TimeoutError:
        return 408, "body_timeout"
    signature = request.headers.get(SIGNATURE_HEADER)
    if not verify_signature(settings.app_secrets, body, signature):
        log.warning("webhook_refused", reason="bad_signature", present=signature is not None)
        return 401, "bad_signature"
    if not body:
        return 400, "empty_body"
    assert signature is not None
    raw_event_id = webhook_event_id(body)
    try:
        await publish_webhook(
            request.app[PUBLISHER],
            body,
            raw_event_id,
            signature,
            request.headers.get("Content-Type", "application/json"),
        )
    except PublishFailed as exc:
        # 503 makes Meta retry later: nothing is acknowledged that is not safely in the broker.
        log.error("webhook_not_persisted", error=str(exc), event_id=raw_event_id)
        return 503, "broker_unavailable"
    # Debug, not info: one line per webhook costs ~5 % of ingress at surge rates, and every
    # accepted webhook is in the audit log (and the webhooks counter) anyway.
    log.debug("webhook_accepted", event_id=raw_event_id, bytes=len(body))
    return 200, "ok"


def webhook_event_id(body: bytes) -> str:
    """The raw webhook's event id: the same for the same bytes, so a redelivery is one event."""
    return str(event_id("webhook", hashlib.sha256(body).hexdigest()))


async def publish_webhook(
    publisher: Publisher, body: bytes, raw_event_id: str, signature: str, content_type: str
) -> None:
    """Meta's exact bytes as `inbound.webhook`, confirmed by the broker (docs/events.md);
    raises PublishFailed. Also what the surge drill's route ceiling publishes."""
    received_at = datetime.now(UTC)
    await publisher.publish(
        INBOUND_WEBHOOK,
        body,
        message_id=raw_event_id,
        correlation_id=raw_event_id,
        content_type=content_type,
        headers={
            "x-hub-signature-256": signature,
            "x-received-at": received_at.isoformat(),
        },
        timestamp=received_at,
    )

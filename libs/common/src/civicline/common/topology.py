"""The AMQP topology: the only place where exchange, queue and binding names and arguments live.

`declare()` is idempotent, so every service declares everything it touches at start and any
service may start first. Queues are quorum queues with an explicit delivery limit and
at-least-once dead-lettering: RabbitMQ's defaults (no limit, at-most-once dead-lettering,
`drop-head` on overflow) would lose messages silently, and at-least-once dead-lettering is only
accepted together with `overflow=reject-publish` (RabbitMQ 3.10+).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

EXCHANGE = "civicline"
DEAD_LETTER_EXCHANGE = "civicline.dlx"

# A message that fails this many deliveries (crash, nack) goes to its dead-letter queue
# instead of looping forever.
DELIVERY_LIMIT = 5

INBOUND_WEBHOOK = "inbound.webhook"
INBOUND_REJECTED = "inbound.rejected"
INBOUND_ERROR = "inbound.error"
OUTBOUND_SENT = "outbound.sent"
OUTBOUND_FAILED = "outbound.failed"
OUTBOUND_SUPPRESSED = "outbound.suppressed"
OUTBOUND_IN_DOUBT = "outbound.in_doubt"


def message_key(intent: str) -> str:
    return f"message.{intent}"


def status_key(state: str) -> str:
    return f"status.{state}"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    binding_keys: tuple[str, ...]

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.dead_letter_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


ROUTER_INBOUND = QueueSpec("router.inbound", (INBOUND_WEBHOOK,))
RESPONDER_MESSAGES = QueueSpec("responder.messages", ("message.#",))
AUDIT_EVENTS = QueueSpec("audit.events", ("#",))
QUEUES = (ROUTER_INBOUND, RESPONDER_MESSAGES, AUDIT_EVENTS)


@dataclass(frozen=True, slots=True)
class Declared:
    exchange: AbstractExchange
    queues: dict[str, AbstractQueue]


async def declare(channel: AbstractChannel) -> Declared:
    """Declare exchanges, queues, dead-letter queues and bindings; safe to repeat."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queues: dict[str, AbstractQueue] = {}
    for spec in QUEUES:
        dead_letters = await channel.declare_queue(
            spec.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_letters.bind(dlx, routing_key=spec.dead_letter_queue)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments())
        for key in spec.binding_keys:
            await queue.bind(exchange, routing_key=key)
        queues[spec.name] = queue
        queues[spec.dead_letter_queue] = dead_letters
    return Declared(exchange=exchange, queues=queues)

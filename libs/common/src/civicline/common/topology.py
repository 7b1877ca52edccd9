"""The AMQP topology: the only place where exchange, queue and binding names and arguments live.

`declare()` is idempotent, so every service declares everything it touches at start and any
service may start first. Queues are quorum queues with an explicit delivery limit and
at-least-once dead-lettering: RabbitMQ's defaults (no limit, at-most-once dead-lettering,
`drop-head` on overflow) would lose messages silently, and at-least-once dead-lettering is only
accepted together with `overflow=reject-publish` (RabbitMQ 3.10+).
"""

from __future__ import annotations

from collections.abc import Mapping
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
# Broadcast campaigns (docs/events.md, "Broadcasts").
BROADCAST_JOB = "broadcast.job"
BROADCAST_SENT = "broadcast.sent"
BROADCAST_FAILED = "broadcast.failed"
BROADCAST_IN_DOUBT = "broadcast.in_doubt"
BROADCAST_SKIPPED = "broadcast.skipped"


def campaign_key(change: str) -> str:
    """`broadcast.campaign.<created|scheduled|started|paused|resumed|cancelled|completed>`."""
    return f"broadcast.campaign.{change}"


def broadcast_status_key(state: str) -> str:
    """A delivery status of a campaign message, joined to its campaign and recipient."""
    return f"broadcast.status.{state}"


def message_key(intent: str) -> str:
    return f"message.{intent}"


def status_key(state: str) -> str:
    return f"status.{state}"


def handoff_key(team: str) -> str:
    return f"handoff.{team}"


# The responder sends each campaign message with `biz_opaque_callback_data` naming its
# campaign, and Meta repeats it in that message's statuses. The router publishes those as
# `status.<state>.campaign`: only they go to the responder's status queue, to be joined to
# their recipients; the statuses of replies (three per reply) go to the audit alone.
CAMPAIGN_CALLBACK_PREFIX = "civicline.campaign:"


def campaign_callback(campaign_id: object) -> str:
    """The `biz_opaque_callback_data` of a campaign's messages (Meta allows 512 characters)."""
    return f"{CAMPAIGN_CALLBACK_PREFIX}{campaign_id}"


def event_routing_key(kind: str, payload: Mapping[str, Any]) -> str:
    """Where an event is published: its kind, and for a status of a campaign message
    `<kind>.campaign` (the `#` and `status.#` bindings still match it)."""
    if kind.startswith("status."):
        callback = payload.get("biz_opaque_callback_data")
        if isinstance(callback, str) and callback.startswith(CAMPAIGN_CALLBACK_PREFIX):
            return f"{kind}.campaign"
    return kind


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    binding_keys: tuple[str, ...]
    # Delay queues (seconds) for work to be tried again later, e.g. a Graph API call Meta
    # throttled. A retried message waits there without holding a consumer's prefetch slot,
    # then expires back into this queue; being a new message, it does not burn the delivery
    # limit, which stays reserved for crashes and poison.
    retry_delays: tuple[int, ...] = ()
    # One consumer at a time gets the queue's messages, in order; the others stand by and
    # take over if it goes away.
    single_active_consumer: bool = False
    # Bindings earlier releases made, removed when the topology is declared.
    retired_binding_keys: tuple[str, ...] = ()

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"

    def retry_queue(self, attempt: int) -> str:
        """The delay queue for the `attempt`-th retry (1-based); the last delay repeats."""
        delay = self.retry_delays[min(attempt, len(self.retry_delays)) - 1]
        return f"{self.name}.retry.{delay}s"

    def retry_arguments(self, delay: int) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": delay * 1000,
            # The default exchange delivers straight back to this queue alone, so a retry is
            # not routed (and audited) a second time.
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.dead_letter_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            **({"x-single-active-consumer": True} if self.single_active_consumer else {}),
        }


ROUTER_INBOUND = QueueSpec("router.inbound", (INBOUND_WEBHOOK,), single_active_consumer=True)
# Single active consumer on the router's and the responder's queues: a citizen's messages are
# classified and answered in the order they arrived even with several replicas (the others
# are hot standbys that take over at once). One responder keeps up with Meta's per-number
# ceiling; partitioning the queues into lanes by citizen is the way to scale out past that.
RESPONDER_MESSAGES = QueueSpec(
    "responder.messages",
    ("message.#",),
    retry_delays=(1, 5, 30, 120),
    single_active_consumer=True,
)
# Campaign send jobs (chunks of recipients): every replica takes some, sharing the number's
# send schedule; a paused campaign's jobs and those over the messaging tier wait in the delay
# queues.
RESPONDER_BROADCASTS = QueueSpec("responder.broadcasts", (BROADCAST_JOB,), retry_delays=(5, 15, 60))
# Delivery statuses of campaign messages, joined by wamid to the recipient they are about.
# (Until 2026-11 it took every status, `status.#`: three per reply, none of them its work.)
# Every `failed` status too: Meta documents the callback data on sent, delivered and read
# statuses, and a failure after sending must still reach its recipient's row.
RESPONDER_STATUSES = QueueSpec(
    "responder.statuses",
    ("status.*.campaign", "status.failed"),
    retry_delays=(2,),
    retired_binding_keys=("status.#",),
)
AUDIT_EVENTS = QueueSpec("audit.events", ("#",))
# The inbox of an agency's agent tool or CRM: messages handed to people wait here, durable,
# whether or not the tool is connected.
HANDOFF_REQUESTS = QueueSpec("handoff.requests", ("handoff.#",))
CONSUMED_QUEUES = (
    ROUTER_INBOUND,
    RESPONDER_MESSAGES,
    RESPONDER_BROADCASTS,
    RESPONDER_STATUSES,
    AUDIT_EVENTS,
)
QUEUES = (*CONSUMED_QUEUES, HANDOFF_REQUESTS)


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
        for delay in spec.retry_delays:
            retry = await channel.declare_queue(
                f"{spec.name}.retry.{delay}s", durable=True, arguments=spec.retry_arguments(delay)
            )
            queues[retry.name] = retry
        for key in spec.binding_keys:
            await queue.bind(exchange, routing_key=key)
        for key in spec.retired_binding_keys:
            await queue.unbind(exchange, routing_key=key)  # no error if it is not there
        queues[spec.name] = queue
        queues[spec.dead_letter_queue] = dead_letters
    return Declared(exchange=exchange, queues=queues)

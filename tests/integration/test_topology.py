"""The broker behaviour civicline relies on, pinned on the RabbitMQ we run against.

CI runs RabbitMQ 3.10 and production newer releases; these tests fail if a release changes
what the topology's queue arguments do: a poison message must reach its dead-letter queue
(never be dropped, never loop forever), and declaring the topology twice must be harmless.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from civicline.common.topology import (
    AUDIT_EVENTS,
    DELIVERY_LIMIT,
    EXCHANGE,
    HANDOFF_REQUESTS,
    QUEUES,
    RESPONDER_STATUSES,
    ROUTER_INBOUND,
    declare,
)
from support.amqp_probe import consume_one, probe_channel
from support.isolation import EnvironmentFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def channel(environment_for_test: EnvironmentFactory) -> AsyncIterator[AbstractChannel]:
    environment = await environment_for_test("topology")
    async with probe_channel(environment.amqp_url) as channel:
        yield channel


async def get_one(channel: AbstractChannel, queue_name: str) -> AbstractIncomingMessage:
    message = await consume_one(channel, queue_name)
    assert message is not None, f"nothing arrived in {queue_name}"
    return message


async def publish(channel: AbstractChannel, routing_key: str, body: bytes) -> None:
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    await exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key
    )


async def test_declaring_the_topology_again_is_harmless(channel: AbstractChannel) -> None:
    declared = await declare(channel)
    assert {spec.name for spec in QUEUES} <= set(declared.queues)
    assert {spec.dead_letter_queue for spec in QUEUES} <= set(declared.queues)


async def test_a_rejected_message_goes_to_the_dead_letter_queue_with_its_body(
    channel: AbstractChannel,
) -> None:
    await publish(channel, "inbound.webhook", b"poison")
    message = await get_one(channel, ROUTER_INBOUND.name)
    await message.reject(requeue=False)

    dead = await get_one(channel, ROUTER_INBOUND.dead_letter_queue)
    assert dead.body == b"poison"
    await dead.ack()


async def test_a_message_that_keeps_failing_is_dead_lettered_after_the_delivery_limit(
    channel: AbstractChannel,
) -> None:
    await publish(channel, "inbound.webhook", b"keeps failing")
    # The first delivery plus DELIVERY_LIMIT redeliveries, then the broker gives up on it.
    # Given back as the consumer gives back a failure: basic.reject with requeue, which every
    # release counts (since 4.3 a basic.nack no longer does).
    for _ in range(DELIVERY_LIMIT + 1):
        message = await consume_one(channel, ROUTER_INBOUND.name)
        assert message is not None
        await message.reject(requeue=True)
    assert await consume_one(channel, ROUTER_INBOUND.name, timeout=1.0) is None
    dead = await get_one(channel, ROUTER_INBOUND.dead_letter_queue)
    assert dead.body == b"keeps failing"
    await dead.ack()


async def test_a_conflicting_redeclaration_is_refused_not_silently_accepted(
    channel: AbstractChannel,
) -> None:
    # Someone changing a queue's arguments by hand must hear about it at the next start.
    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
        await channel.declare_queue(
            ROUTER_INBOUND.name, durable=True, arguments={"x-queue-type": "classic"}
        )


async def test_hand_offs_wait_in_their_own_durable_queue(channel: AbstractChannel) -> None:
    await publish(channel, "handoff.protection", b"a citizen reports abuse")
    message = await get_one(channel, HANDOFF_REQUESTS.name)
    assert message.body == b"a citizen reports abuse"
    await message.ack()


async def test_only_statuses_of_campaign_messages_reach_the_responder(
    channel: AbstractChannel,
) -> None:
    # As a release before 2026-11 left it: every status bound to the responder's queue.
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    statuses = await channel.get_queue(RESPONDER_STATUSES.name, ensure=False)
    await statuses.bind(exchange, routing_key="status.#")
    await declare(channel)  # unbinds it; declaring again, with nothing to unbind, is harmless
    await declare(channel)

    await publish(channel, "status.read", b"a reply was read")
    await publish(channel, "status.read.campaign", b"a flood warning was read")
    # Meta may leave the callback data out of a failed status: every failure goes there too.
    await publish(channel, "status.failed", b"a send failed")
    for expected in (b"a flood warning was read", b"a send failed"):
        arrived = await get_one(channel, RESPONDER_STATUSES.name)
        assert arrived.body == expected
        await arrived.ack()
    assert await consume_one(channel, RESPONDER_STATUSES.name, timeout=1.0) is None
    audited = [await get_one(channel, AUDIT_EVENTS.name) for _ in range(3)]
    assert sorted(m.body for m in audited) == [
        b"a flood warning was read",
        b"a reply was read",
        b"a send failed",
    ]
    for message in audited:
        await message.ack()

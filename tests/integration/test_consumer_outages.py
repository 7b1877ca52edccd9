"""Work held through an outage, on the real RabbitMQ: held too long, it is parked in its delay
queue (RabbitMQ's consumer_timeout would otherwise take it back and, before 4.3, count that
toward the delivery limit) and comes back with its retry budget untouched;
and a wait on people outside (a paused sender) leaves the consumer ready."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from civicline.common.amqp import (
    ATTEMPT_HEADER,
    Broker,
    Consumer,
    Publisher,
    delivery_id,
)
from civicline.common.failures import DependencyUnavailable, UpstreamPaused
from civicline.common.topology import EXCHANGE, RESPONDER_STATUSES
from support.amqp_probe import probe_channel
from support.isolation import Environment, EnvironmentFactory, queue_counts
from support.waiting import eventually

pytestmark = pytest.mark.integration

SPEC = RESPONDER_STATUSES  # bound to status.failed, with one delay queue of 2 s


@pytest.fixture
async def environment(environment_for_test: EnvironmentFactory) -> Environment:
    return await environment_for_test("outages")


@pytest.fixture
async def channel(environment: Environment) -> AsyncIterator[AbstractChannel]:
    async with probe_channel(environment.amqp_url) as channel:
        yield channel


@pytest.fixture
async def broker(environment: Environment) -> AsyncIterator[Broker]:
    broker = Broker(environment.amqp_url, connection_name="outages-test")
    broker.start()
    yield broker
    await broker.close()


async def publish(channel: AbstractChannel, body: bytes) -> None:
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    await exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "status.failed"
    )


async def test_work_held_too_long_is_parked_and_comes_back_with_its_budget_untouched(
    environment: Environment, channel: AbstractChannel, broker: Broker
) -> None:
    publisher = Publisher(broker, timeout=5)
    attempts: list[tuple[str, dict[str, Any]]] = []
    done = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        attempts.append((delivery_id.get(), dict(message.headers)))
        # The outage lasts until the message has been parked twice and comes back.
        if len({delivery for delivery, _ in attempts}) < 3:
            raise DependencyUnavailable("postgres is down")
        done.set()

    async def park(message: AbstractIncomingMessage) -> None:
        await publisher.park(message, SPEC)

    consumer = Consumer(
        broker, SPEC, handle, prefetch=5, max_outage_backoff=0.2, park=park, park_after=1.0
    )
    await consumer.start()
    try:
        await publish(channel, b"held through an outage")
        # Held for a second, parked, back after the delay queue's 2 s, and once more.
        await asyncio.wait_for(done.wait(), 20)
    finally:
        await consumer.stop(5)
    deliveries = list(dict.fromkeys(delivery for delivery, _ in attempts))
    # Each copy is a delivery of its own (an id carried in the message could reach two
    # holders at once, each taking the other's claim for its own), retried in place until
    # it was parked.
    assert len(deliveries) == 3
    assert len(attempts) > 4
    first, last = attempts[0], attempts[-1]
    assert first[1].get("x-death") is None
    deaths = last[1]["x-death"]
    assert isinstance(deaths, list)
    # Via the delay queue, once as far as the copy knows: a copy does not carry the broker's
    # headers of the message it copies, so histories do not mix.
    assert [(death["queue"], death["count"]) for death in deaths] == [(SPEC.retry_queue(1), 1)]
    assert ATTEMPT_HEADER not in last[1]  # no retry spent
    assert last[1].get("x-delivery-count") in (None, 0)  # nor any of the delivery limit

    # Each was acked when it was parked, and the last copy when it was done. (The delay
    # queue counts an expired message until its dead-lettered copy is confirmed: a moment.)
    async def all_settled() -> bool:
        counts = await asyncio.to_thread(queue_counts, environment.name)
        queues = (SPEC.name, SPEC.retry_queue(1), SPEC.dead_letter_queue)
        return all(counts[queue] == (0, 0) for queue in queues)

    await eventually(all_settled, what="every copy settled", timeout=10)


@pytest.mark.parametrize(
    ("failure", "ready_while_held"),
    [
        (DependencyUnavailable("postgres is down"), False),
        (UpstreamPaused("Meta refuses the sender's token"), True),
    ],
)
async def test_only_a_wait_on_people_outside_leaves_the_consumer_ready(
    channel: AbstractChannel, broker: Broker, failure: Exception, ready_while_held: bool
) -> None:
    held = asyncio.Event()
    release = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        if not release.is_set():
            held.set()
            raise failure

    consumer = Consumer(broker, SPEC, handle, prefetch=5, max_outage_backoff=0.2)
    await consumer.start()
    try:
        assert consumer.is_consuming
        await publish(channel, b"held")
        await asyncio.wait_for(held.wait(), 10)
        readiness = []
        for _ in range(20):  # over a second of holding it
            readiness.append(consumer.is_consuming)
            await asyncio.sleep(0.05)
        release.set()
    finally:
        await consumer.stop(5)
    if ready_while_held:
        assert all(readiness)
    else:
        assert sum(readiness) <= 2, readiness  # not ready while it waits out the outage

"""The services' Publisher (civicline.common.amqp) against the real broker: a publish that
returns is in every queue bound for it, once, with what it was given; publishes awaited one
after another arrive in that order; a retry waits in its delay queue; and a message the broker
returns (no queue to take it) raises PublishFailed instead of vanishing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from civicline.common.amqp import (
    ATTEMPT_HEADER,
    CORRELATION_HEADER,
    Broker,
    Publisher,
    PublishFailed,
)
from civicline.common.topology import (
    AUDIT_EVENTS,
    INBOUND_WEBHOOK,
    RESPONDER_MESSAGES,
    ROUTER_INBOUND,
)
from support.amqp_probe import consume_one, probe_channel
from support.isolation import Environment, EnvironmentFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def environment(environment_for_test: EnvironmentFactory) -> Environment:
    return await environment_for_test("publisher")


@pytest.fixture
async def publisher(environment: Environment) -> AsyncIterator[Publisher]:
    broker = Broker(environment.amqp_url, connection_name="publisher-test")
    broker.start()
    await broker.connection()
    try:
        yield Publisher(broker, timeout=10.0)
    finally:
        await broker.close()


@pytest.fixture
async def probe(environment: Environment) -> AsyncIterator[AbstractChannel]:
    async with probe_channel(environment.amqp_url) as channel:
        yield channel


async def drain(
    channel: AbstractChannel, queue_name: str, count: int
) -> list[AbstractIncomingMessage]:
    """`count` messages of the queue, acked, in the order they arrived; then nothing more."""
    await channel.set_qos(prefetch_count=count)
    queue = await channel.get_queue(queue_name, ensure=False)
    got: list[AbstractIncomingMessage] = []
    done = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        got.append(message)
        await message.ack()
        if len(got) >= count:
            done.set()

    tag = await queue.consume(on_message)
    try:
        async with asyncio.timeout(30):
            await done.wait()
    finally:
        await queue.cancel(tag)
    assert await consume_one(channel, queue_name, timeout=0.5) is None, f"more in {queue_name}"
    return got


async def test_concurrent_publishes_each_arrive_once_in_every_bound_queue(
    publisher: Publisher, probe: AbstractChannel
) -> None:
    count = 200

    async def one(i: int) -> None:
        await publisher.publish(
            INBOUND_WEBHOOK,
            b'{"n":%d}' % i,
            message_id=f"m{i}",
            correlation_id=f"c{i}",
            content_type="application/json",
            headers={"x-hub-signature-256": f"sha256={i:064x}"},
        )

    await asyncio.gather(*(one(i) for i in range(count)))

    for queue in (ROUTER_INBOUND.name, AUDIT_EVENTS.name):
        messages = await drain(probe, queue, count)
        by_id = {m.message_id: m for m in messages}
        assert set(by_id) == {f"m{i}" for i in range(count)}, queue
        assert len(messages) == count, queue
        sample = by_id["m7"]
        assert sample.body == b'{"n":7}'
        assert sample.correlation_id == "c7"
        assert sample.content_type == "application/json"
        assert sample.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert sample.headers["x-hub-signature-256"] == f"sha256={7:064x}"
        assert sample.headers[CORRELATION_HEADER] == "c7"


async def test_one_after_another_arrive_in_the_order_published(
    publisher: Publisher, probe: AbstractChannel
) -> None:
    # What the router's lanes rely on: a publish awaited before the next is queued before it.
    for i in range(12):
        await publisher.publish(
            INBOUND_WEBHOOK,
            b"%d" % i,
            message_id=f"m{i}",
            correlation_id="lane",
            content_type="application/json",
        )
    messages = await drain(probe, ROUTER_INBOUND.name, 12)
    assert [m.message_id for m in messages] == [f"m{i}" for i in range(12)]


async def test_a_retry_waits_in_its_delay_queue_and_a_queue_that_is_not_there_raises(
    publisher: Publisher, probe: AbstractChannel
) -> None:
    await publisher.publish(
        INBOUND_WEBHOOK,
        b"try me later",
        message_id="m1",
        correlation_id="c1",
        content_type="application/json",
    )
    message = await consume_one(probe, ROUTER_INBOUND.name)
    assert message is not None
    # Every routing key reaches audit.events ("#"), so a publish no queue takes is one sent
    # straight to a queue that does not exist: the broker returns it (mandatory).
    missing = dataclasses.replace(RESPONDER_MESSAGES, name="not.declared")
    with pytest.raises(PublishFailed):
        await publisher.retry_later(message, missing, 1)
    await publisher.retry_later(message, RESPONDER_MESSAGES, 2)
    await message.ack()

    queue = RESPONDER_MESSAGES.retry_queue(2)
    [copy] = await drain(probe, queue, 1)
    assert (copy.body, copy.message_id) == (b"try me later", "m1")
    assert copy.headers[ATTEMPT_HEADER] == 2

"""The consumer acks finished deliveries together (one `multiple` ack for a run of them), on
the real RabbitMQ: every message is settled once, none twice (the broker would close the
channel and redeliver), and a message still at work is never settled by an ack of the
messages after it, so a consumer that stops or dies with it in hand gives it back."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from civicline.common.amqp import Broker, Consumer
from civicline.common.topology import EXCHANGE, HANDOFF_REQUESTS, handoff_key
from support.amqp_probe import consume_one, probe_channel
from support.isolation import Environment, EnvironmentFactory, queue_counts

pytestmark = pytest.mark.integration


@pytest.fixture
async def environment(environment_for_test: EnvironmentFactory) -> Environment:
    return await environment_for_test("acks")


@pytest.fixture
async def channel(environment: Environment) -> AsyncIterator[AbstractChannel]:
    async with probe_channel(environment.amqp_url) as channel:
        yield channel


async def publish(channel: AbstractChannel, bodies: list[bytes]) -> None:
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    for body in bodies:
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            handoff_key("counter"),
        )


async def until_counts(environment: Environment, expected: tuple[int, int]) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    """Poll until the queue holds `expected` (ready, unacknowledged) messages."""
    while (
        counts := (await asyncio.to_thread(queue_counts, environment.name))[HANDOFF_REQUESTS.name]
    ) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{counts}, expected {expected}"
        await asyncio.sleep(0.2)


async def test_every_message_is_acked_once(
    environment: Environment, channel: AbstractChannel
) -> None:
    seen: Counter[bytes] = Counter()
    bodies = [str(n).encode() for n in range(300)]

    async def handle(message: AbstractIncomingMessage) -> None:
        seen[message.body] += 1
        await asyncio.sleep(0.001 * (int(message.body) % 7))  # they finish out of order

    broker = Broker(environment.amqp_url, connection_name="acks-test")
    broker.start()
    consumer = Consumer(broker, HANDOFF_REQUESTS, handle, prefetch=50)
    try:
        await consumer.start()
        await publish(channel, bodies)
        await until_counts(environment, (0, 0))
    finally:
        await consumer.stop(5)
        await broker.close()
    assert seen == Counter(bodies)  # none redelivered: no ack was refused


async def test_a_message_still_at_work_is_given_back_though_those_after_it_were_acked(
    environment: Environment, channel: AbstractChannel
) -> None:
    stuck = asyncio.Event()
    finished: list[bytes] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        if message.body == b"first":
            stuck.set()
            await asyncio.Event().wait()  # at work until the consumer stops
        finished.append(message.body)

    broker = Broker(environment.amqp_url, connection_name="acks-test")
    broker.start()
    consumer = Consumer(broker, HANDOFF_REQUESTS, handle, prefetch=50)
    try:
        await consumer.start()
        await publish(channel, [b"first", *(f"later {n}".encode() for n in range(20))])
        await asyncio.wait_for(stuck.wait(), 10)
        # The 20 after it are acked while it is still in hand: only it stays unacknowledged.
        await until_counts(environment, (0, 1))
        assert len(finished) == 20
    finally:
        await consumer.stop(0.5)  # gives up on it: abandoned, unsettled
        await broker.close()
    await until_counts(environment, (1, 0))
    returned = await consume_one(channel, HANDOFF_REQUESTS.name)
    assert returned is not None
    assert returned.body == b"first"
    await returned.ack()

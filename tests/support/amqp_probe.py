"""Reading a queue from a test. Quorum queues with a single active consumer (router.inbound,
responder.messages) refuse basic.get, so tests subscribe like a consumer would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from civicline.common.topology import declare


@asynccontextmanager
async def probe_channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """A test's own channel on the declared topology, taking one message at a time (for
    `consume_one`)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        await declare(channel)
        yield channel


async def consume_one(
    channel: AbstractChannel, queue_name: str, *, timeout: float = 10.0
) -> AbstractIncomingMessage | None:
    """The next message of the queue, unsettled (the caller acks or rejects it), or None if
    none arrives within `timeout`. Set the channel's prefetch to 1 so nothing else is taken."""
    queue = await channel.get_queue(queue_name, ensure=False)
    arrived: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()

    async def on_message(message: AbstractIncomingMessage) -> None:
        if arrived.done():
            await message.nack(requeue=True)
        else:
            arrived.set_result(message)

    tag = await queue.consume(on_message)
    try:
        return await asyncio.wait_for(arrived, timeout)
    except TimeoutError:
        return None
    finally:
        await queue.cancel(tag)

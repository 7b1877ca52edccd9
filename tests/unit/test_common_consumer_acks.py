"""The consumer's acks in the order they reach the broker, with slow frame writes (a broker
applying flow control, a full socket buffer): no ack may name a tag already settled (RabbitMQ
would close the channel), no multiple ack may settle a message being nacked or still at work,
and everything finished is acked. The broker here is a model of RabbitMQ's channel rules."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika

from civicline.common.amqp import Consumer, PoisonMessage
from civicline.common.topology import HANDOFF_REQUESTS


class Channel:
    """What the broker sees of one channel: frames in the order they were written, each
    making its writer wait while it drains."""

    def __init__(self) -> None:
        self.is_closed = False
        self.outstanding: set[int] = set()
        self.acked: set[int] = set()
        self.nacked: set[int] = set()
        self.settlements: list[tuple[str, int, bool]] = []  # (frame, tag, requeue)
        self.refused: list[str] = []  # frames RabbitMQ would close the channel for

    async def write(self, frame: str, tag: int, *, multiple: bool = False) -> None:
        if frame == "ack" and multiple:
            covered = {t for t in self.outstanding if t <= tag}
            if tag not in covered:
                self.refused.append(f"multiple ack of unknown tag {tag}")
            self.outstanding -= covered
            self.acked |= covered
        elif tag not in self.outstanding:
            self.refused.append(f"{frame} of unknown tag {tag}")
        else:
            self.outstanding.discard(tag)
            (self.acked if frame == "ack" else self.nacked).add(tag)
        await asyncio.sleep(0.02)  # the socket drains slowly


class Message:
    def __init__(self, channel: Channel, tag: int) -> None:
        self.channel = channel
        self.delivery_tag = tag
        self.body = str(tag).encode()
        self.headers: dict[str, Any] = {}
        self.correlation_id = None
        channel.outstanding.add(tag)

    async def ack(self, multiple: bool = False) -> None:
        await self.channel.write("ack", self.delivery_tag, multiple=multiple)

    async def nack(self, requeue: bool = True) -> None:
        self.channel.settlements.append(("nack", self.delivery_tag, requeue))
        await self.channel.write("nack", self.delivery_tag)

    async def reject(self, requeue: bool = False) -> None:
        self.channel.settlements.append(("reject", self.delivery_tag, requeue))
        await self.channel.write("reject", self.delivery_tag)


async def test_slow_frames_never_ack_a_settled_tag_or_one_still_at_work() -> None:
    channel = Channel()
    release = {tag: asyncio.Event() for tag in range(1, 13)}

    async def handle(message: Any) -> None:
        tag = int(message.body)
        await release[tag].wait()
        if tag == 4:
            raise PoisonMessage("dead-lettered, never acked")

    consumer = Consumer(None, HANDOFF_REQUESTS, handle, prefetch=20, retry_pause=0)  # type: ignore[arg-type]
    deliveries = [Message(channel, tag) for tag in range(1, 13)]
    delivering = [
        asyncio.create_task(consumer._deliver(message))  # type: ignore[arg-type]
        for message in deliveries
    ]
    await asyncio.sleep(0)
    # 7 finishes first, then 1-5 (4 is poison), then 6, 8 and 9 while the acks of the
    # earlier ones are still being written; 12 never finishes.
    for wave, pause in (((7,), 0.008), ((1, 2, 3, 4, 5), 0.004), ((6, 8, 9), 0.03)):
        for tag in wave:
            release[tag].set()
        await asyncio.sleep(pause)
    for tag in (10, 11):
        release[tag].set()
    await asyncio.sleep(0.6)
    assert channel.refused == []
    assert channel.acked == {1, 2, 3, 5, 6, 7, 8, 9, 10, 11}
    assert channel.nacked == {4}  # rejected: dead-lettered, not acked by a multiple ack
    assert channel.outstanding == {12}  # still at work: not settled by any multiple ack
    await consumer.stop(0.1)  # 12 is abandoned: given back by the broker, never acked
    assert channel.outstanding == {12}
    assert channel.refused == []
    await asyncio.gather(*delivering, return_exceptions=True)


class ClosedMessage(Message):
    """aio-pika's IncomingMessage.channel raises once its channel has closed."""

    @property
    def channel(self) -> Channel:
        raise aio_pika.exceptions.ChannelInvalidStateError

    @channel.setter
    def channel(self, value: Channel) -> None:
        self._channel = value


async def test_a_handler_finishing_after_its_channel_closed_is_left_to_redelivery() -> None:
    channel = Channel()

    async def handle(message: Any) -> None:
        await asyncio.sleep(0)

    consumer = Consumer(None, HANDOFF_REQUESTS, handle, prefetch=5, retry_pause=0)  # type: ignore[arg-type]
    message = ClosedMessage(channel, 1)
    await consumer._deliver(message)  # type: ignore[arg-type]
    await consumer.stop(0.1)
    assert channel.acked == set()  # not acked on a channel that is gone, and nothing raised
    assert channel.refused == []


async def test_a_failed_message_goes_back_as_a_failure_that_counts_toward_its_delivery_limit() -> (
    None
):
    # RabbitMQ 4.3 counts only basic.reject toward a quorum queue's delivery limit; a message
    # given back with basic.nack after every failure would never be dead-lettered.
    channel = Channel()

    async def handle(message: Any) -> None:
        if message.delivery_tag == 1:
            raise ValueError("a bug")
        raise PoisonMessage("never valid")

    consumer = Consumer(None, HANDOFF_REQUESTS, handle, prefetch=5, retry_pause=0)  # type: ignore[arg-type]
    for tag in (1, 2):
        await consumer._deliver(Message(channel, tag))  # type: ignore[arg-type]
    await consumer.stop(0.1)
    assert channel.settlements == [("reject", 1, True), ("reject", 2, False)]
    assert channel.refused == []

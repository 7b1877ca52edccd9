"""`civicline-dlq` as an operator runs it, on the real RabbitMQ: it lists what waits in the
dead-letter queues, and replays a queue's dead letters into it, each once, as the messages they
were (body, ids, our headers), without the broker's dead-lettering headers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from civicline.common.amqp import own_headers
from civicline.common.topology import EXCHANGE, ROUTER_INBOUND
from support.amqp_probe import consume_one, probe_channel
from support.isolation import Environment, EnvironmentFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def environment(environment_for_test: EnvironmentFactory) -> Environment:
    return await environment_for_test("dlq")


@pytest.fixture
async def channel(environment: Environment) -> AsyncIterator[AbstractChannel]:
    async with probe_channel(environment.amqp_url) as channel:
        yield channel


def run_cli(amqp_url: str, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "civicline.common.dlq", "--amqp-url", amqp_url, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def dlq(environment: Environment, *args: str) -> tuple[int, str]:
    return run_cli(environment.amqp_url, *args)


async def dead_letter(channel: AbstractChannel, count: int) -> None:
    """`count` webhooks the router gave up on, as the consumer does: rejected, not requeued."""
    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
    for n in range(count):
        await exchange.publish(
            aio_pika.Message(
                f"webhook {n}".encode(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"raw-{n}",
                headers={"x-received-at": "2026-11-28T12:00:00+00:00"},
            ),
            "inbound.webhook",
        )
    for _ in range(count):
        message = await consume_one(channel, ROUTER_INBOUND.name)
        assert message is not None
        await message.reject(requeue=False)


async def test_dead_letters_are_listed_and_replayed_into_their_queue(
    environment: Environment, channel: AbstractChannel
) -> None:
    await dead_letter(channel, 3)
    code, listing = await asyncio.to_thread(dlq, environment, "list")
    assert code == 0, listing
    assert f"{ROUTER_INBOUND.dead_letter_queue}\t3" in listing.splitlines()

    replay = ("replay", "router.inbound")
    code, output = await asyncio.to_thread(dlq, environment, *replay, "--limit", "2")
    assert code == 0, output
    assert "replayed 2 from router.inbound.dlq into router.inbound" in output
    code, output = await asyncio.to_thread(dlq, environment, *replay)
    assert code == 0, output
    assert "replayed 1 " in output

    back = []
    for _ in range(3):
        message = await consume_one(channel, ROUTER_INBOUND.name)
        assert message is not None
        back.append(message)
        await message.ack()
    assert await consume_one(channel, ROUTER_INBOUND.name, timeout=1.0) is None  # each once
    assert [m.body for m in back] == [b"webhook 0", b"webhook 1", b"webhook 2"]
    assert [m.message_id for m in back] == ["raw-0", "raw-1", "raw-2"]
    for message in back:
        assert message.headers["x-received-at"] == "2026-11-28T12:00:00+00:00"
        assert "x-death" not in message.headers
    code, listing = await asyncio.to_thread(dlq, environment, "list")
    assert f"{ROUTER_INBOUND.dead_letter_queue}\t0" in listing.splitlines()


def test_a_copy_keeps_our_headers_and_drops_the_brokers() -> None:
    headers = {
        "x-correlation-id": "wamid.1",
        "x-civicline-kind": "inbound.webhook",
        "x-death": [{"queue": "router.inbound", "reason": "rejected"}],
        "x-first-death-queue": "router.inbound",
        "x-last-death-reason": "rejected",
        "x-delivery-count": 5,
    }
    assert own_headers(headers) == {
        "x-correlation-id": "wamid.1",
        "x-civicline-kind": "inbound.webhook",
    }


def test_an_unknown_queue_or_a_bad_limit_is_a_usage_error() -> None:
    for args in (["replay", "no.such.queue"], ["replay", "router.inbound", "--limit", "0"]):
        code, output = run_cli("amqp://guest@127.0.0.1:1/", *args)  # never reached
        assert code == 2, output


async def test_a_replay_of_messages_that_are_still_poison_ends(
    environment: Environment, channel: AbstractChannel
) -> None:
    # The router rejects them again at once, so they are back in the dead-letter queue before
    # the replay has emptied it: each is replayed once, and the replay ends.
    await dead_letter(channel, 3)
    queue = await channel.get_queue(ROUTER_INBOUND.name, ensure=False)

    async def still_poison(message: AbstractIncomingMessage) -> None:
        await message.reject(requeue=False)

    tag = await queue.consume(still_poison)
    try:
        code, output = await asyncio.wait_for(
            asyncio.to_thread(dlq, environment, "replay", "router.inbound"), 30
        )
    finally:
        await queue.cancel(tag)
    assert code == 0, output
    assert "replayed 3 " in output
    code, listing = await asyncio.to_thread(dlq, environment, "list")
    assert f"{ROUTER_INBOUND.dead_letter_queue}\t3" in listing.splitlines()

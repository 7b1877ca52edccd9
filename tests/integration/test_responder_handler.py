"""The responder's handler on the real Postgres and RabbitMQ, with Meta and its send schedule
played by the test: a reply refused with 131047 goes as the template under the same claim,
held live while the send waits for the template's slot (a wait longer than the lease does not
leave it looking abandoned to a redelivery); a paused sender's reply waits with no claim."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from civicline.common.amqp import Broker, Publisher
from civicline.common.envelope import Envelope, event_id, utc_now
from civicline.common.topology import AUDIT_EVENTS
from civicline.responder import adapters
from civicline.responder.adapters import ReplyLedger
from civicline.responder.catalog import load_catalog
from civicline.responder.graph import GraphError, SenderPaused, SendResult
from civicline.responder.handlers import responder_handler
from civicline.responder.throttle import Slot
from support.amqp_probe import consume_one, probe_channel
from support.isolation import Environment, EnvironmentFactory

pytestmark = pytest.mark.integration

NUMBER = "106512349876543"
LEASE = 1  # seconds, for the test (30 in production)


@pytest.fixture
async def environment(environment_for_test: EnvironmentFactory) -> Environment:
    return await environment_for_test("fallback")


@dataclass
class Message:
    """What the handler reads of a delivery."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlowSlots:
    """Meta, behind a schedule that is slow to give the second slot: the free-form reply is
    refused with 131047, and the template's slot comes after longer than the lease."""

    pool: asyncpg.Pool
    wamid: str
    slots: int = 0
    sent: list[Mapping[str, Any]] = field(default_factory=list)
    claim_live_at_send: list[bool] = field(default_factory=list)

    paused_sender: bool = False
    # Run while the template's slot is awaited (another delivery taking the claim over, say).
    meanwhile: Callable[[], Awaitable[object]] | None = None

    def paused(self, phone_number_id: str) -> bool:
        return self.paused_sender

    async def wait_for_slot(self, phone_number_id: str) -> Slot:
        self.slots += 1
        if self.slots == 2:
            if self.meanwhile is not None:
                await self.meanwhile()
            await asyncio.sleep(LEASE * 1.5)
        return Slot(at=0.0, epoch=0, reserved_at=0.0)

    async def send_now(
        self, phone_number_id: str, message: Mapping[str, Any], slot: Slot
    ) -> SendResult:
        self.claim_live_at_send.append(
            await self.pool.fetchval(
                "SELECT updated_at > now() - make_interval(secs => $2) FROM reply_ledger"
                " WHERE inbound_message_id = $1",
                self.wamid,
                float(LEASE),
            )
        )
        self.sent.append(message)
        if message["type"] != "template":
            raise GraphError("Re-engagement message", http_status=400, code=131047)
        return SendResult(wamid="wamid.TEMPLATE", wa_id=str(message["to"]), raw={})

    async def send(self, phone_number_id: str, message: Mapping[str, Any]) -> SendResult:
        return await self.send_now(phone_number_id, message, await self.wait_for_slot(NUMBER))


def classified(wamid: str) -> Message:
    payload = {
        "wamid": wamid,
        "phone_number_id": NUMBER,
        "from": "821012345678",
        "intent": "voting",
        "language": "ko",
        "timestamp": utc_now().isoformat(),
    }
    return Message(
        Envelope(
            event_id=event_id("test", wamid),
            kind="message.voting",
            occurred_at=utc_now(),
            correlation_id=wamid,
            payload=payload,
        ).encode()
    )


@contextlib.asynccontextmanager
async def handler_for(
    environment: Environment, meta: SlowSlots
) -> AsyncIterator[Callable[[Message], Awaitable[None]]]:
    broker = Broker(environment.amqp_url, connection_name="handler-test")
    broker.start()
    ledger = ReplyLedger(meta.pool)
    ledger.start()
    try:
        handle = responder_handler(
            meta.pool, ledger, Publisher(broker, timeout=5), meta, load_catalog(), max_retries=3
        )
        await broker.connection()
        yield handle  # type: ignore[misc]
    finally:
        await ledger.close()
        await broker.close()


@pytest.fixture
async def pool(environment: Environment) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def test_the_template_goes_under_a_claim_held_live_while_it_waits_for_its_slot(
    environment: Environment, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapters, "REPLY_LEASE_SECONDS", LEASE)
    wamid = "wamid.WINDOW"
    meta = SlowSlots(pool, wamid)
    async with handler_for(environment, meta) as handle:
        await handle(classified(wamid))
    state = await pool.fetchrow(
        "SELECT state, wamid FROM reply_ledger WHERE inbound_message_id = $1", wamid
    )
    assert [message["type"] for message in meta.sent] == ["text", "template"]
    assert meta.claim_live_at_send == [True, True]  # the claim was live at both calls
    assert state is not None
    assert dict(state) == {"state": "sent", "wamid": "wamid.TEMPLATE"}


async def test_a_paused_senders_reply_waits_without_a_slot_or_a_claim(
    environment: Environment, pool: asyncpg.Pool
) -> None:
    wamid = "wamid.PAUSED"
    meta = SlowSlots(pool, wamid, paused_sender=True)
    async with handler_for(environment, meta) as handle:
        with pytest.raises(SenderPaused):  # the consumer holds the message, as in an outage
            await handle(classified(wamid))
    assert (meta.slots, meta.sent) == (0, [])
    ledger = await pool.fetchval(
        "SELECT count(*) FROM reply_ledger WHERE inbound_message_id = $1", wamid
    )
    assert ledger == 0


async def test_a_claim_lost_while_the_send_waited_is_reported_in_doubt_never_sent(
    environment: Environment, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While the template's slot is awaited, the claim stops being ours (here: another
    # delivery's id is written on it, as when ours lapsed and a redelivery took the reply up).
    # The renewal finds it so: the template is not sent, and the reply is reported in doubt.
    monkeypatch.setattr(adapters, "REPLY_LEASE_SECONDS", LEASE)
    wamid = "wamid.LOST"

    async def taken_over() -> None:
        await pool.execute(
            "UPDATE reply_ledger SET claimed_by = 'another-delivery' WHERE inbound_message_id = $1",
            wamid,
        )

    meta = SlowSlots(pool, wamid, meanwhile=taken_over)
    async with probe_channel(environment.amqp_url) as channel:
        async with handler_for(environment, meta) as handle:
            await handle(classified(wamid))
        outcomes = []
        while (event := await consume_one(channel, AUDIT_EVENTS.name, timeout=2)) is not None:
            await event.ack()
            outcomes.append(event.headers.get("x-civicline-kind"))
    assert [message["type"] for message in meta.sent] == ["text"]  # the template never went
    assert outcomes == ["outbound.in_doubt"]

"""A reply refused with 131047 goes as the template under the same claim, on the real Postgres
and RabbitMQ: the claim is held live while the send waits for the template's slot, so a wait
longer than the lease does not leave it looking abandoned to a redelivery."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from civicline.common.amqp import Broker, Publisher
from civicline.common.envelope import Envelope, event_id, utc_now
from civicline.responder import adapters
from civicline.responder.adapters import ReplyLedger
from civicline.responder.catalog import load_catalog
from civicline.responder.graph import GraphError, SendResult
from civicline.responder.handlers import responder_handler
from civicline.responder.throttle import Slot
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

    async def wait_for_slot(self, phone_number_id: str) -> Slot:
        self.slots += 1
        if self.slots == 2:
            await asyncio.sleep(LEASE * 1.5)
        return Slot(at=0.0, epoch=0)

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


async def test_the_template_goes_under_a_claim_held_live_while_it_waits_for_its_slot(
    environment: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapters, "REPLY_LEASE_SECONDS", LEASE)
    wamid = "wamid.WINDOW"
    payload = {
        "wamid": wamid,
        "phone_number_id": NUMBER,
        "from": "821012345678",
        "intent": "voting",
        "language": "ko",
        "timestamp": utc_now().isoformat(),
    }
    body = Envelope(
        event_id=event_id("test", wamid),
        kind="message.voting",
        occurred_at=utc_now(),
        correlation_id=wamid,
        payload=payload,
    ).encode()
    pool = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=4)
    broker = Broker(environment.amqp_url, connection_name="fallback-test")
    broker.start()
    ledger = ReplyLedger(pool)
    ledger.start()
    meta = SlowSlots(pool, wamid)
    try:
        handle = responder_handler(
            pool, ledger, Publisher(broker, timeout=5), meta, load_catalog(), max_retries=3
        )
        await broker.connection()
        await handle(Message(body))  # type: ignore[arg-type]
        state = await pool.fetchrow(
            "SELECT state, wamid FROM reply_ledger WHERE inbound_message_id = $1", wamid
        )
    finally:
        await ledger.close()
        await broker.close()
        await pool.close()
    assert [message["type"] for message in meta.sent] == ["text", "template"]
    assert meta.claim_live_at_send == [True, True]  # the claim was live at both calls
    assert state is not None
    assert dict(state) == {"state": "sent", "wamid": "wamid.TEMPLATE"}

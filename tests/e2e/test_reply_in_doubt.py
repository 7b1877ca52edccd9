"""A reply whose Graph API call timed out may have reached Meta: it is reported in doubt and
never sent again, even while the broker will not take the report.

The report is `outbound.in_doubt`, which only the audit's queue takes (`#`). With that binding
removed, the broker returns it unroutable, so the responder cannot publish it, while its
consumer's channel stays open and the message stays with it: the case where the consumer once
ran the handler again for the same delivery, which took the ledger's 'sending' claim for its
own and sent the reply a second time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest

from civicline.common.topology import AUDIT_EVENTS, EXCHANGE, OUTBOUND_IN_DOUBT
from civicline.simulator import text_message_webhook
from support.isolation import EnvironmentFactory
from support.pipeline import APP_SECRET, Pipeline
from support.traffic import Webhook, deliver
from support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CITIZEN = "82770000001"
# Longer than the responder's Graph API timeout (GraphClient, 10 s).
HELD_SECONDS = 12


@pytest.fixture(scope="module")
async def pipeline(
    environments: EnvironmentFactory, simulator_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    environment = await environments("in-doubt")
    running = Pipeline(environment, simulator_url, tmp_path_factory.mktemp("logs"))
    async with running.started():
        yield running


async def simulator(method: str, url: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def replies(simulator_url: str, wamid: str) -> list[dict[str, Any]]:
    sends = await simulator("GET", f"{simulator_url}/_sim/sent?to={CITIZEN}")
    return [s for s in sends if s["body"].get("context", {}).get("message_id") == wamid]


async def outcomes(database_url: str, wamid: str) -> list[str]:
    """The kinds of the audited outcomes (`outbound.*`) of the reply to `wamid`."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT kind FROM audit_log WHERE correlation_id = $1 AND kind LIKE 'outbound.%'",
            wamid,
        )
    finally:
        await connection.close()
    return [row["kind"] for row in rows]


async def audited(database_url: str, wamid: str) -> bool:
    return bool(await outcomes(database_url, wamid))


async def ask(pipeline: Pipeline, citizen: str) -> str:
    body, wamid = text_message_webhook(wa_id=citizen, text="Where do I vote?")
    log = await deliver(pipeline.webhook_url, APP_SECRET, [Webhook(body, (wamid,))])
    assert len(log.accepted) == 1
    return wamid


async def test_a_timed_out_reply_is_reported_in_doubt_and_not_sent_again(
    pipeline: Pipeline, simulator_url: str
) -> None:
    database_url = pipeline.environment.database_url
    # A first conversation, so that every service has published and declared its topology
    # (a publisher declares it, bindings included, when it opens its channel).
    first = await ask(pipeline, "82770000002")
    await eventually(lambda: audited(database_url, first), what="a first reply", timeout=30)
    await simulator(
        "POST", f"{simulator_url}/_sim/faults", [{"to": CITIZEN, "delay_ms": HELD_SECONDS * 1000}]
    )
    connection = await aio_pika.connect(pipeline.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        audit = await channel.get_queue(AUDIT_EVENTS.name)
        await audit.unbind(exchange, "#")
        try:
            asked = time.time()
            wamid = await ask(pipeline, CITIZEN)

            async def held_reply_arrived() -> bool:
                # Meta's side has the held call once its delay is over; by then the responder
                # gave up on it (its timeout is shorter) and tried to report the doubt.
                return any(
                    datetime.fromisoformat(s["received_at"]).timestamp() >= asked + HELD_SECONDS
                    for s in await replies(simulator_url, wamid)
                )

            await eventually(held_reply_arrived, what="the held reply", timeout=60, interval=0.2)
        finally:
            await audit.bind(exchange, "#")

    await eventually(
        lambda: audited(database_url, wamid), what="the reply's outcome audited", timeout=60
    )
    assert await outcomes(database_url, wamid) == [OUTBOUND_IN_DOUBT]
    connection = await asyncpg.connect(database_url)
    try:
        ledger = await connection.fetchval(
            "SELECT state FROM reply_ledger WHERE inbound_message_id = $1", wamid
        )
    finally:
        await connection.close()
    assert ledger == "sending"
    assert len(await replies(simulator_url, wamid)) == 1, "the reply in doubt was sent again"

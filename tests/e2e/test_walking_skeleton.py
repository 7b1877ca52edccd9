"""A citizen's message travels the whole way: simulator → ingress → RabbitMQ → router →
responder → simulator (as Graph API), with every step in the audit log exactly once.

The four services run as real processes on an isolated vhost and database; Meta is our
simulator over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from civicline.responder.catalog import choose_reply, load_catalog
from civicline.simulator import server as simulator_server
from civicline.simulator.client import send_webhook
from civicline.simulator.webhooks import status_webhook, text_message_webhook
from support.isolation import EnvironmentFactory
from support.pipeline import APP_SECRET, Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

KO_CITIZEN, JA_CITIZEN, EN_CITIZEN = "821052347781", "819023456712", "447700900321"


@pytest.fixture(scope="module")
async def simulator() -> AsyncIterator[simulator_server.Simulator]:
    async with simulator_server.Simulator() as sim:
        yield sim


@pytest.fixture(scope="module")
async def pipeline(
    environments: EnvironmentFactory,
    simulator: simulator_server.Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Pipeline]:
    environment = await environments("e2e")
    running = Pipeline(environment, simulator.base_url, tmp_path_factory.mktemp("logs"))
    async with running.started():
        yield running


async def audit_rows(database_url: str, correlation_id: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(
            "SELECT seq, kind, payload FROM audit_log WHERE correlation_id = $1 ORDER BY seq",
            correlation_id,
        )
    finally:
        await connection.close()
    return rows


async def wait_for_audit(database_url: str, correlation_id: str, kinds: set[str]) -> list[str]:
    """Wait until the audit log holds every kind for this correlation id; return all kinds."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        found = [row["kind"] for row in await audit_rows(database_url, correlation_id)]
        if kinds <= set(found) or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def raw_webhook_count(database_url: str, body: bytes) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM audit_log WHERE kind = 'inbound.webhook' AND raw_body = $1", body
        )
    finally:
        await connection.close()
    return count


@pytest.mark.parametrize(
    ("citizen", "text", "intent", "language"),
    [
        (KO_CITIZEN, "투표소 위치 알려주세요", "voting", "ko"),
        (JA_CITIZEN, "避難所はどこですか", "shelter", "ja"),
        (EN_CITIZEN, "How do I renew my passport?", "passport", "en"),
    ],
)
async def test_citizen_gets_one_reply_in_their_language_and_every_step_is_audited(
    pipeline: Pipeline,
    simulator: simulator_server.Simulator,
    citizen: str,
    text: str,
    intent: str,
    language: str,
) -> None:
    body, wamid = text_message_webhook(wa_id=citizen, text=text)

    assert await send_webhook(pipeline.webhook_url, body, APP_SECRET) == 200

    sends = await simulator.wait_for_sends(1, to=citizen, timeout=30)
    replies = [s for s in sends if s.body.get("context", {}).get("message_id") == wamid]
    assert len(replies) == 1
    expected = choose_reply(load_catalog(), intent, language)
    assert replies[0].body["type"] == "text"
    assert replies[0].body["text"]["body"] == expected.body
    assert expected.language == language

    kinds = await wait_for_audit(
        pipeline.environment.database_url, wamid, {f"message.{intent}", "outbound.sent"}
    )
    assert sorted(kinds) == sorted([f"message.{intent}", "outbound.sent"])
    assert await raw_webhook_count(pipeline.environment.database_url, body) == 1
    sent = [
        orjson.loads(row["payload"])
        for row in await audit_rows(pipeline.environment.database_url, wamid)
        if row["kind"] == "outbound.sent"
    ]
    assert [payload["wamid"] for payload in sent] == [replies[0].wamid]


async def test_a_redelivered_webhook_still_gets_one_reply_and_one_audit_row_per_event(
    pipeline: Pipeline, simulator: simulator_server.Simulator
) -> None:
    citizen = "821099990001"
    body, wamid = text_message_webhook(wa_id=citizen, text="백신 접종 어디서 하나요?")

    for _ in range(3):
        assert await send_webhook(pipeline.webhook_url, body, APP_SECRET) == 200
    await simulator.wait_for_sends(1, to=citizen, timeout=30)
    kinds = await wait_for_audit(
        pipeline.environment.database_url, wamid, {"message.health", "outbound.sent"}
    )
    # A later message from the same citizen is answered, and proves the duplicates were
    # processed (queues drain in order) before we count.
    follow_up, follow_up_wamid = text_message_webhook(wa_id=citizen, text="도움말")
    assert await send_webhook(pipeline.webhook_url, follow_up, APP_SECRET) == 200
    await wait_for_audit(pipeline.environment.database_url, follow_up_wamid, {"outbound.sent"})

    replies_to_first = [
        s
        for s in simulator.sent(to=citizen)
        if s.body.get("context", {}).get("message_id") == wamid
    ]
    assert len(replies_to_first) == 1
    kinds = [r["kind"] for r in await audit_rows(pipeline.environment.database_url, wamid)]
    assert sorted(kinds) == ["message.health", "outbound.sent"]
    assert await raw_webhook_count(pipeline.environment.database_url, body) == 1


async def test_delivery_status_webhooks_are_audited_once_each(
    pipeline: Pipeline, simulator: simulator_server.Simulator
) -> None:
    citizen = "447700900999"
    body, _ = text_message_webhook(wa_id=citizen, text="menu")
    assert await send_webhook(pipeline.webhook_url, body, APP_SECRET) == 200
    reply = (await simulator.wait_for_sends(1, to=citizen, timeout=30))[0]
    assert reply.wamid is not None

    for state in ("sent", "delivered", "read", "delivered"):
        status = status_webhook(wamid=reply.wamid, status=state, recipient_id=citizen)
        assert await send_webhook(pipeline.webhook_url, status, APP_SECRET) == 200

    kinds = await wait_for_audit(
        pipeline.environment.database_url,
        reply.wamid,
        {"status.sent", "status.delivered", "status.read"},
    )
    assert sorted(kinds) == ["status.delivered", "status.read", "status.sent"]


@pytest.fixture(scope="module")
def fixture_bodies(webhook_fixtures: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(webhook_fixtures.glob("*.json"))]


async def test_every_shared_fixture_is_accepted_and_audited_raw(
    pipeline: Pipeline, fixture_bodies: list[bytes]
) -> None:
    bodies = fixture_bodies
    for body in bodies:
        assert await send_webhook(pipeline.webhook_url, body, APP_SECRET) == 200
    deadline = asyncio.get_running_loop().time() + 30
    counts: list[int] = []
    while asyncio.get_running_loop().time() < deadline:
        counts = [await raw_webhook_count(pipeline.environment.database_url, b) for b in bodies]
        if all(counts):
            break
        await asyncio.sleep(0.1)
    assert counts == [1] * len(bodies)


async def test_a_bad_signature_is_refused_and_nothing_is_audited(pipeline: Pipeline) -> None:
    body, wamid = text_message_webhook(wa_id="821000000000", text="투표")

    assert await send_webhook(pipeline.webhook_url, body, "not-the-app-secret") == 401
    # A good message sent afterwards is audited; by then the refused one would have been too.
    good, good_wamid = text_message_webhook(wa_id="821000000001", text="투표")
    assert await send_webhook(pipeline.webhook_url, good, APP_SECRET) == 200
    await wait_for_audit(pipeline.environment.database_url, good_wamid, {"message.voting"})
    assert await raw_webhook_count(pipeline.environment.database_url, body) == 0
    assert await audit_rows(pipeline.environment.database_url, wamid) == []


async def test_an_opted_out_citizen_gets_nothing_but_confirmations_until_they_opt_in(
    pipeline: Pipeline, simulator: simulator_server.Simulator
) -> None:
    citizen = "821077770001"
    catalog = load_catalog()
    database_url = pipeline.environment.database_url

    async def say(text: str, expect: set[str]) -> str:
        body, wamid = text_message_webhook(wa_id=citizen, text=text)
        assert await send_webhook(pipeline.webhook_url, body, APP_SECRET) == 200
        found = await wait_for_audit(database_url, wamid, expect)
        assert expect <= set(found), found
        return wamid

    def replies_to(wamid: str) -> list[str]:
        return [
            s.body["text"]["body"]
            for s in simulator.sent(to=citizen)
            if s.body.get("context", {}).get("message_id") == wamid
        ]

    stop = await say("중지", {"message.opt_out", "outbound.sent"})
    assert replies_to(stop) == [choose_reply(catalog, "opt_out", "ko").body]

    question = await say("투표소 위치 알려주세요", {"message.voting", "outbound.suppressed"})
    assert replies_to(question) == []

    start = await say("시작", {"message.opt_in", "outbound.sent"})
    assert replies_to(start) == [choose_reply(catalog, "opt_in", "ko").body]

    again = await say("투표소 위치 알려주세요", {"message.voting", "outbound.sent"})
    assert replies_to(again) == [choose_reply(catalog, "voting", "ko").body]

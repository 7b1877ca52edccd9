"""An auditor's day with the whole pipeline running: a citizen writes, gets an answer, and the
auditor — with a token and the README's calls — finds the conversation by phone number on the
audit service's own port, while the database holds neither the number nor the words in clear;
then the citizen asks to be forgotten, and the log still verifies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from civicline.audit.checkpoint import Signer
from civicline.simulator import server as simulator_server
from civicline.simulator.client import send_webhook
from civicline.simulator.webhooks import text_message_webhook
from support.audit_api import KEY_ENV, create_token
from support.audit_logs import run_audit_cli
from support.isolation import EnvironmentFactory
from support.pipeline import APP_SECRET, Pipeline
from support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CITIZEN, TEXT = "821098765432", "투표소가 어디인가요? 집은 종로구"
SIGNER = Signer.generate("e2e-api.civicline.example/audit")


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
    environment = await environments("e2e_api")
    running = Pipeline(
        environment,
        simulator.base_url,
        tmp_path_factory.mktemp("logs"),
        extra_env={
            **KEY_ENV,
            "AUDIT_SIGNING_KEY": SIGNER.encode(),
            "AUDIT_CHECKPOINT_INTERVAL": "1",
        },
    )
    try:
        await running.start_all()
        yield running
    finally:
        await running.stop_all()


async def get(pipeline: Pipeline, path: str, token: str, **params: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{pipeline.ports['audit']}{path}"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
        session.get(url, params=params) as response,
    ):
        return response.status, await response.json()


async def test_an_auditor_finds_a_conversation_by_number_and_the_citizen_is_forgotten(
    pipeline: Pipeline, simulator: simulator_server.Simulator, tmp_path: Path
) -> None:
    body, wamid = text_message_webhook(wa_id=CITIZEN, text=TEXT)
    assert await send_webhook(pipeline.webhook_url, body, APP_SECRET) == 200
    await simulator.wait_for_sends(1, to=CITIZEN, timeout=30)

    database_url = pipeline.environment.database_url
    auditor = await create_token(database_url, "auditor", "auditor")
    operator = await create_token(database_url, "operator", "operator")
    found: dict[str, Any] = {}

    async def answered() -> bool:
        status, page = await get(pipeline, "/v1/conversations", auditor, citizen="+82 10-9876-5432")
        assert status == 200, page
        found.update(page)
        conversations = page["conversations"]
        return bool(conversations) and bool(conversations[0]["replies"])

    await eventually(answered, what="the conversation and its reply in the audit log", timeout=30)
    [conversation] = found["conversations"]
    assert conversation["message"]["correlation_id"] == wamid
    assert conversation["message"]["payload"]["text"] == TEXT
    assert conversation["classification"]["intent"] == "voting"
    assert conversation["replies"][0]["kind"] == "outbound.sent"

    connection = await asyncpg.connect(database_url)
    try:
        dump = "\n".join(
            row[0] for row in await connection.fetch("SELECT t::text FROM audit_log t")
        )
    finally:
        await connection.close()
    assert CITIZEN not in dump
    assert "종로구" not in dump

    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {operator}"}) as session,
        session.post(
            f"http://127.0.0.1:{pipeline.ports['audit']}/v1/erasures", json={"citizen": CITIZEN}
        ) as response,
    ):
        assert response.status == 200, await response.text()
    status, page = await get(pipeline, "/v1/events", auditor, citizen=CITIZEN)
    assert status == 200
    assert page["events"]
    assert all(event["erased"] for event in page["events"])

    public = tmp_path / "audit.pub"
    public.write_text(SIGNER.verifier.encode())
    code, output = await run_audit_cli(
        "checkpoint",
        "--no-publish",
        env={"CIVICLINE_DATABASE_URL": database_url, "AUDIT_SIGNING_KEY": SIGNER.encode()},
    )
    assert code == 0, output
    code, output = await run_audit_cli(
        "verify", "--public-key", str(public), env={"CIVICLINE_DATABASE_URL": database_url}
    )
    assert code == 0, output

    # The README's "export a day, and verify it", with the CLI, offline.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = tmp_path / "day.ndjson"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {auditor}"}) as session,
        session.get(
            f"http://127.0.0.1:{pipeline.ports['audit']}/v1/export",
            params={"since": today.isoformat(), "until": (today + timedelta(days=1)).isoformat()},
        ) as response,
    ):
        assert response.status == 200
        await asyncio.to_thread(day.write_bytes, await response.read())
    code, output = await run_audit_cli(
        "verify", "--public-key", str(public), "--export", str(day), env={}
    )
    assert code == 0, output
    assert "OK: events " in output, output
    assert "are proven by the signed tree head" in output, output


# More than the audit service's database connections (connect_pool's default, 10).
EXPORTS = 24


async def test_auditors_exporting_at_once_never_stop_the_log(pipeline: Pipeline) -> None:
    """An export records its access through the log's own writer, and must have it committed
    before it answers. Exports holding every database connection of the service while they
    waited for that record would leave the writer none: the API and the log would stop
    together, for good."""
    database_url = pipeline.environment.database_url
    auditor = await create_token(database_url, "exporter", "auditor")
    url = f"http://127.0.0.1:{pipeline.ports['audit']}/v1/export"

    async def export(session: aiohttp.ClientSession) -> int:
        async with session.get(url, params={"from_seq": "0"}) as response:
            await response.read()
            return response.status

    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {auditor}"}) as session,
        asyncio.timeout(60),
    ):
        statuses = await asyncio.gather(*(export(session) for _ in range(EXPORTS)))
    assert statuses == [200] * EXPORTS

    # The log goes on taking the pipeline's events.
    body, wamid = text_message_webhook(wa_id="821011112222", text="Where do I vote?")
    assert await send_webhook(pipeline.webhook_url, body, APP_SECRET) == 200

    async def audited() -> bool:
        connection = await asyncpg.connect(database_url)
        try:
            return bool(
                await connection.fetchval(
                    "SELECT count(*) FROM audit_log WHERE correlation_id = $1", wamid
                )
            )
        finally:
            await connection.close()

    await eventually(audited, what="a new message in the audit log", timeout=30)

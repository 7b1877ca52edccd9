"""Subscriptions and broadcast campaigns end to end: citizens subscribe through the conversation;
an operator runs campaigns through the API and the `civicline-campaign` CLI; the simulator, as
Meta, records every template sent.

One pipeline for the module, at Meta's top throughput tier (RESPONDER_SEND_RATE=1000) and an
unlimited messaging tier. The simulator runs as its own process, so its clock (which measures
the send rate) is not read by an event loop that is busy with the test. Campaign audiences are
written straight into the subscriptions table (50,000 subscribers cannot subscribe by webhook
in a test's time); the subscription path itself is tested by webhooks in the first test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from civicline.common.topology import campaign_callback
from civicline.simulator import interactive_reply_webhook, status_webhook, text_message_webhook
from civicline.simulator.webhooks import DEFAULT_PHONE_NUMBER_ID
from support.isolation import EnvironmentFactory
from support.pipeline import APP_SECRET, Pipeline
from support.traffic import QUESTIONS, Webhook, deliver
from support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEND_RATE = 1000
OPERATOR_TOKEN = "e2e-operator-token"
BROADCAST_CONCURRENCY = 256
TEMPLATE = {
    "name": "civicline_flood_warning",
    "languages": {"ko": "ko", "ja": "ja", "en": "en_US"},
    "fallback": "en_US",
    "parameters": ["Mapo-gu", "18:00"],
}


@pytest.fixture(scope="module")
async def pipeline(
    environments: EnvironmentFactory, simulator_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    environment = await environments("broadcasts")
    running = Pipeline(
        environment,
        simulator_url,
        tmp_path_factory.mktemp("logs"),
        extra_env={
            "RESPONDER_SEND_RATE": str(SEND_RATE),
            "RESPONDER_MESSAGING_TIER": "unlimited",
            "RESPONDER_BROADCAST_CONCURRENCY": str(BROADCAST_CONCURRENCY),
            "CAMPAIGN_OPERATOR_TOKENS": OPERATOR_TOKEN,
        },
    )
    async with running.started():
        yield running


# --- helpers ----------------------------------------------------------------------------------


async def simulator_get(simulator_url: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(simulator_url + path) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def template_summary(simulator_url: str, after: int) -> dict[str, Any]:
    summary: dict[str, Any] = await simulator_get(
        simulator_url, f"/_sim/sent/summary?type=template&after={after}"
    )
    return summary


async def last_sequence(simulator_url: str) -> int:
    stats = await simulator_get(simulator_url, "/_sim/stats")
    return int(stats["last_sequence"])


async def api(
    pipeline: Pipeline, method: str, path: str, body: Any = None, *, expect: int = 200
) -> Any:
    url = f"http://127.0.0.1:{pipeline.ports['responder']}{path}"
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as answer,
    ):
        assert answer.status == expect, await answer.text()
        return await answer.json()


def cli(pipeline: Pipeline, *args: str) -> str:
    """Run `civicline-campaign` as an operator would; returns its output."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "civicline.responder.cli",
            "--url",
            f"http://127.0.0.1:{pipeline.ports['responder']}",
            *args,
        ],
        env={**os.environ, "CAMPAIGN_OPERATOR_TOKEN": OPERATOR_TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def token_cli(pipeline: Pipeline, action: str, name: str, *more: str) -> str:
    """`civicline-audit token <action> --name <name>`, as the README has an operator do."""
    result = subprocess.run(
        [sys.executable, "-m", "civicline.audit", "token", action, "--name", name, *more,
         "--database-url", pipeline.environment.database_url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


async def seed_subscribers(
    database_url: str, topic: str, prefix: str, count: int, *, opted_out: int = 0
) -> list[str]:
    """`count` subscribers of `topic` (a third Korean, a third Japanese, a third with no known
    language), of whom the first `opted_out` have since sent STOP."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """INSERT INTO subscriptions (phone_number_id, topic, citizen, subscribed,
                                          consented_at, consent_wamid)
               SELECT $1, $2, $3 || lpad(g::text, 8, '0'), true, now(), 'wamid.seed.' || g
               FROM generate_series(1, $4) AS g""",
            DEFAULT_PHONE_NUMBER_ID,
            topic,
            prefix,
            count,
        )
        await connection.execute(
            """INSERT INTO contacts (phone_number_id, citizen, language, opted_out)
               SELECT $1, $2 || lpad(g::text, 8, '0'),
                      (ARRAY['ko', 'ja', NULL])[g % 3 + 1], g <= $4
               FROM generate_series(1, $3) AS g""",
            DEFAULT_PHONE_NUMBER_ID,
            prefix,
            count,
            opted_out,
        )
    finally:
        await connection.close()
    return [f"{prefix}{i:08d}" for i in range(1, count + 1)]


async def campaign_spec(topics: list[str], name: str) -> dict[str, Any]:
    return {
        "name": name,
        "phone_number_id": DEFAULT_PHONE_NUMBER_ID,
        "template": TEMPLATE,
        "audience": {"topics": topics},
    }


async def start_campaign(pipeline: Pipeline, topic: str, name: str) -> str:
    spec = await campaign_spec([topic], name)
    campaign = await api(pipeline, "POST", "/campaigns", spec, expect=201)
    await api(pipeline, "POST", f"/campaigns/{campaign['id']}/schedule")
    return str(campaign["id"])


async def fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def wait_for_state(
    pipeline: Pipeline, campaign_id: str, state: str, timeout: float = 120
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await api(pipeline, "GET", f"/campaigns/{campaign_id}"))
        return bool(found["state"] == state and found["progress"]["sending"] == 0)

    await eventually(reached, what=f"campaign {state}", timeout=timeout, interval=0.25)
    return found


async def wait_for_sent(pipeline: Pipeline, campaign_id: str, at_least: int) -> None:
    async def enough() -> bool:
        campaign = await api(pipeline, "GET", f"/campaigns/{campaign_id}")
        return bool(campaign["progress"]["sent"] >= at_least)

    await eventually(enough, what=f"{at_least} sent", timeout=60, interval=0.1)


async def replies_to(simulator_url: str, citizen: str) -> list[dict[str, Any]]:
    sends: list[dict[str, Any]] = await simulator_get(simulator_url, f"/_sim/sent?to={citizen}")
    return sends


async def say(pipeline: Pipeline, citizen: str, text: str) -> str:
    body, wamid = text_message_webhook(wa_id=citizen, text=text)
    log = await deliver(pipeline.webhook_url, APP_SECRET, [Webhook(body, (wamid,))])
    assert len(log.accepted) == 1
    return wamid


async def reply_to(simulator_url: str, citizen: str, wamid: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def answered() -> bool:
        found[:] = [
            s
            for s in await replies_to(simulator_url, citizen)
            if s["body"].get("context", {}).get("message_id") == wamid
        ]
        return bool(found)

    await eventually(answered, what=f"the reply to {wamid}", timeout=30, interval=0.1)
    return found[0]


async def subscription(database_url: str, citizen: str, topic: str) -> asyncpg.Record | None:
    query = "SELECT * FROM subscriptions WHERE citizen = $1 AND topic = $2"
    rows = await fetch(database_url, query, citizen, topic)
    return rows[0] if rows else None


# --- tests ------------------------------------------------------------------------------------


async def test_citizens_subscribe_and_unsubscribe_in_their_language(
    pipeline: Pipeline, simulator_url: str
) -> None:
    database_url = pipeline.environment.database_url
    english, korean, chooser = "447700900101", "821090000101", "819090000101"

    wamid = await say(pipeline, english, "SUBSCRIBE FLOOD")
    reply = await reply_to(simulator_url, english, wamid)
    assert "Flood alerts: Mapo" in reply["body"]["text"]["body"]
    row = await subscription(database_url, english, "flood-seoul-mapo")
    assert row is not None
    assert row["subscribed"]
    assert row["consent_wamid"] == wamid
    assert row["consented_at"] is not None

    wamid = await say(pipeline, korean, "선거 알림")
    reply = await reply_to(simulator_url, korean, wamid)
    assert "선거 안내" in reply["body"]["text"]["body"]

    # No topic named: the topic list, whose rows subscribe with one tap.
    wamid = await say(pipeline, chooser, "お知らせ")
    reply = await reply_to(simulator_url, chooser, wamid)
    rows = reply["body"]["interactive"]["action"]["sections"][0]["rows"]
    assert {"id": "sub:vaccination", "title": "予防接種のお知らせ"} in rows
    body, tap = interactive_reply_webhook(
        wa_id=chooser, reply_id="sub:vaccination", title="予防接種のお知らせ", in_reply_to=wamid
    )
    await deliver(pipeline.webhook_url, APP_SECRET, [Webhook(body, (tap,))])
    await reply_to(simulator_url, chooser, tap)
    chosen = await subscription(database_url, chooser, "vaccination")
    assert chosen is not None
    assert chosen["consent_wamid"] == tap

    # Out of one topic, then (STOP) out of all, each with the message that withdrew it.
    wamid = await say(pipeline, english, "UNSUBSCRIBE FLOOD")
    reply = await reply_to(simulator_url, english, wamid)
    assert "no longer receive" in reply["body"]["text"]["body"]
    row = await subscription(database_url, english, "flood-seoul-mapo")
    assert row is not None
    assert not row["subscribed"]
    assert row["withdrawal_wamid"] == wamid
    stop = await say(pipeline, korean, "중지")
    await reply_to(simulator_url, korean, stop)
    row = await subscription(database_url, korean, "election")
    assert row is not None
    assert (row["subscribed"], row["withdrawal_wamid"]) == (False, stop)


async def test_a_campaign_to_50000_citizens_sends_each_once_within_the_limit_and_replies_go_first(
    pipeline: Pipeline, simulator_url: str
) -> None:
    database_url = pipeline.environment.database_url
    audience = 50_000
    opted_out = 25
    citizens = await seed_subscribers(
        database_url, "flood-seoul-mapo", "8250", audience + opted_out, opted_out=opted_out
    )
    after = await last_sequence(simulator_url)
    campaign_id = await start_campaign(pipeline, "flood-seoul-mapo", "Flood warning, Mapo")

    # Citizens' questions during the broadcast are answered within seconds.
    await wait_for_sent(pipeline, campaign_id, 2_000)
    latencies = []
    for i in range(8):
        citizen = f"8260{i:08d}"
        asked = time.time()
        wamid = await say(pipeline, citizen, QUESTIONS[i % len(QUESTIONS)])
        reply = await reply_to(simulator_url, citizen, wamid)
        latencies.append(_seconds(reply["received_at"]) - asked)
    during = await api(pipeline, "GET", f"/campaigns/{campaign_id}")
    assert during["state"] == "running", "the questions were asked during the broadcast"
    assert max(latencies) < 5.0, latencies

    done = await wait_for_state(pipeline, campaign_id, "completed", timeout=400)
    summary = await template_summary(simulator_url, after)
    progress = done["progress"]
    rate = summary["accepted"] / summary["seconds"]
    print(
        f"\n50,000-recipient campaign: {summary['seconds']:.1f} s, {rate:.0f} sends/s, "
        f"busiest second {summary['busiest_second']}, replies during it within "
        f"{max(latencies):.2f} s"
    )
    assert summary["accepted"] == audience
    assert summary["recipients"] == audience
    assert summary["duplicates"] == {}
    assert summary["busiest_second"] <= SEND_RATE
    assert summary["by_template"] == {"civicline_flood_warning": audience}
    # A third each in Korean and Japanese; the rest (no known language) get the fallback.
    assert sum(summary["by_language"].values()) == audience
    korean = sum(1 for g in range(opted_out + 1, audience + opted_out + 1) if g % 3 == 0)
    assert summary["by_language"]["ko"] == korean
    assert progress["total"] == audience + opted_out
    assert progress["sent"] == audience
    assert progress["skipped"] == {"opted_out": opted_out}
    assert progress["queued"] == progress["in_doubt"] == progress["failed_total"] == 0
    skipped = citizens[:opted_out]
    for citizen in skipped[:3]:
        assert await replies_to(simulator_url, citizen) == []

    # Meta's statuses come back through the webhook: progress counts them exactly.
    sample = await fetch(
        database_url,
        """SELECT wa_id, wamid FROM campaign_recipients WHERE campaign_id = $1
           AND state = 'sent' ORDER BY wa_id LIMIT 35""",
        uuid.UUID(campaign_id),
    )
    statuses = []
    for index, row in enumerate(sample):
        # Meta repeats the callback data each campaign message was sent with; it is what
        # routes these statuses (and not those of replies) to the responder.
        sends = await replies_to(simulator_url, row["wa_id"])
        [sent] = [send for send in sends if send["wamid"] == row["wamid"]]
        callback = sent["body"]["biz_opaque_callback_data"]
        assert callback == campaign_callback(campaign_id)
        receipt = {"wamid": row["wamid"], "recipient_id": row["wa_id"], "callback_data": callback}
        if index < 20:
            statuses.append(status_webhook(status="delivered", **receipt))
        if index < 10:
            statuses.append(status_webhook(status="read", **receipt))
        if index >= 30:
            statuses.append(status_webhook(status="failed", error_code=131026, **receipt))
    log = await deliver(pipeline.webhook_url, APP_SECRET, [Webhook(s, ()) for s in statuses])
    assert len(log.accepted) == len(statuses)

    async def counted() -> bool:
        progress = (await api(pipeline, "GET", f"/campaigns/{campaign_id}"))["progress"]
        counts = (progress["delivered"], progress["read"], progress["failed"])
        return bool(counts == (20, 10, {"131026": 5}) and progress["sent"] == audience)

    await eventually(counted, what="statuses in the progress", timeout=30, interval=0.2)


async def sent_to(simulator_url: str, after: int) -> int:
    return int((await template_summary(simulator_url, after))["accepted"])


async def test_an_operator_pauses_resumes_and_cancels_with_the_cli(
    pipeline: Pipeline, simulator_url: str, tmp_path: Path
) -> None:
    database_url = pipeline.environment.database_url
    await seed_subscribers(database_url, "election", "8270", 2_000)
    spec = tmp_path / "election.toml"
    spec.write_text(
        f"""name = "Polling stations open 6:00-18:00"
phone_number_id = "{DEFAULT_PHONE_NUMBER_ID}"

[template]
name = "civicline_polling_hours"
fallback = "en_US"
parameters = ["6:00", "18:00"]
languages = {{ ko = "ko", ja = "ja", en = "en_US" }}

[audience]
topics = ["election"]
""",
        encoding="utf-8",
    )
    after = await last_sequence(simulator_url)
    created = cli(pipeline, "--json", "create", str(spec))
    campaign_id = orjson.loads(created)["id"]
    await wait_for_sent(pipeline, campaign_id, 300)

    assert "paused" in cli(pipeline, "pause", campaign_id)
    paused = await wait_for_state(pipeline, campaign_id, "paused")
    frozen = await sent_to(simulator_url, after)
    assert frozen == paused["progress"]["sent"] < 2_000
    await asyncio.sleep(1.5)  # a paused campaign sends nothing more, however long it waits
    assert await sent_to(simulator_url, after) == frozen

    cli(pipeline, "resume", campaign_id)
    done = await wait_for_state(pipeline, campaign_id, "completed")
    summary = await template_summary(simulator_url, after)
    assert (summary["accepted"], summary["recipients"], summary["duplicates"]) == (2_000, 2_000, {})
    assert done["progress"]["sent"] == 2_000
    shown = cli(pipeline, "show", campaign_id)
    assert "completed" in shown
    assert "sent 2000" in shown

    # A list campaign, cancelled half way: nobody waiting gets it afterwards.
    listed = tmp_path / "citizens.csv"
    listed.write_text(
        "wa_id,language\n" + "".join(f"8280{i:08d},ko\n" for i in range(1_500)), encoding="utf-8"
    )
    after = await last_sequence(simulator_url)
    created = cli(pipeline, "--json", "create", str(spec), "--list", str(listed))
    list_campaign = orjson.loads(created)["id"]
    await wait_for_sent(pipeline, list_campaign, 300)
    cli(pipeline, "cancel", list_campaign)
    cancelled = await wait_for_state(pipeline, list_campaign, "cancelled")
    progress = cancelled["progress"]
    # The election topic's subscribers and the list: up to 3,500 recipients (fewer if the
    # cancel came before the whole audience was expanded), none twice.
    assert progress["total"] <= 3_500
    assert progress["sent"] + progress["cancelled"] == progress["total"]
    assert progress["cancelled"] > 0
    summary = await template_summary(simulator_url, after)
    assert summary["duplicates"] == {}
    assert summary["accepted"] == progress["sent"]

    # Every change is in the audit log.
    async def audited() -> bool:
        query = "SELECT DISTINCT kind FROM audit_log WHERE kind LIKE 'broadcast.campaign.%'"
        kinds = {row["kind"] for row in await fetch(database_url, query)}
        changes = ("created", "scheduled", "started", "paused", "resumed", "completed", "cancelled")
        return kinds >= {f"broadcast.campaign.{change}" for change in changes}

    await eventually(audited, what="campaign changes in the audit log", timeout=60)


async def test_a_responder_killed_mid_campaign_loses_and_duplicates_nothing(
    pipeline: Pipeline, simulator_url: str
) -> None:
    database_url = pipeline.environment.database_url
    await seed_subscribers(database_url, "vaccination", "8290", 3_000)
    subscribed = await fetch(
        database_url, "SELECT citizen FROM subscriptions WHERE topic = 'vaccination' AND subscribed"
    )
    audience = len(subscribed)
    after = await last_sequence(simulator_url)
    campaign_id = await start_campaign(pipeline, "vaccination", "Vaccine reminder")
    await wait_for_sent(pipeline, campaign_id, 800)
    pipeline.kill("responder")
    await pipeline.restart("responder")

    done = await wait_for_state(pipeline, campaign_id, "completed", timeout=120)
    progress = done["progress"]
    summary = await template_summary(simulator_url, after)
    # Nobody got it twice, and everyone is accounted for: sent, or reported in doubt when
    # the kill cut their Graph API call (never resent blindly).
    assert summary["duplicates"] == {}
    assert progress["total"] == audience  # the 3,000 and whoever subscribed by message
    assert progress["sent"] + progress["in_doubt"] == audience
    assert progress["in_doubt"] <= BROADCAST_CONCURRENCY
    assert progress["sent"] <= summary["accepted"] <= audience
    # The operator can list who is in doubt, to decide what to do about them.
    exported = cli(pipeline, "recipients", campaign_id, "--state", "in_doubt")
    lines = exported.splitlines()
    assert lines[0] == "wa_id,language,wamid,error_code,reason"
    assert len(lines) - 1 == progress["in_doubt"]
    print(f"\nkilled mid-campaign: {progress['in_doubt']} in doubt, {summary['accepted']} at Meta")


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_operators_use_tokens_issued_in_the_api_token_table(pipeline: Pipeline) -> None:
    # The same hashed, revocable tokens as the audit API's: issued, listed and revoked with
    # civicline-audit token, no restart of the responder needed.
    operator = token_cli(pipeline, "create", "flood-desk", "--role", "operator").split()[-1]
    auditor = token_cli(pipeline, "create", "court-auditor", "--role", "auditor").split()[-1]
    url = f"http://127.0.0.1:{pipeline.ports['responder']}/campaigns"

    async def status_with(authorization: str | None) -> tuple[int, str]:
        headers = {"Authorization": authorization} if authorization is not None else {}
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
            return answer.status, answer.headers.get("WWW-Authenticate", "")

    assert await status_with(f"Bearer {operator}") == (200, "")
    assert (await status_with(f"Bearer {auditor}"))[0] == 403
    assert (await status_with("Bearer cvl_unknown"))[0] == 401
    assert await status_with(None) == (401, 'Bearer realm="civicline campaigns"')
    assert await status_with(f"Bearer {OPERATOR_TOKEN}") == (200, "")  # the configured one

    # What an operator with an issued token does is recorded under the token's name.
    async with aiohttp.ClientSession() as session:
        spec = {
            "name": "token check",
            "phone_number_id": DEFAULT_PHONE_NUMBER_ID,
            "template": TEMPLATE,
            "audience": {"list": True},
        }
        headers = {"Authorization": f"Bearer {operator}"}
        async with session.post(url, json=spec, headers=headers) as answer:
            assert answer.status == 201, await answer.text()
            created = await answer.json()
    connection = await asyncpg.connect(pipeline.environment.database_url)
    try:
        by = await connection.fetchval(
            "SELECT created_by FROM campaigns WHERE id = $1", uuid.UUID(created["id"])
        )
    finally:
        await connection.close()
    assert by == "operator:flood-desk"

    token_cli(pipeline, "revoke", "flood-desk")
    assert (await status_with(f"Bearer {operator}"))[0] == 401


async def test_a_refused_sender_pauses_a_campaign_until_meta_takes_its_sends(
    pipeline: Pipeline, simulator_url: str
) -> None:
    # An expired token (190) refuses every send, whatever the recipient (reference §6: "pause
    # the sender"). The recipients wait, their job in its delay queue, and are sent once the
    # token works again (here: after five refusals); none is recorded as failed.
    citizens = [f"8285{n:08d}" for n in range(20)]
    spec = {**await campaign_spec([], "Token expiry drill"), "audience": {"list": True}}
    campaign = await api(pipeline, "POST", "/campaigns", spec, expect=201)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{pipeline.ports['responder']}/campaigns/{campaign['id']}/list",
            data="\n".join(citizens),
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "text/csv"},
        ) as answer,
    ):
        assert answer.status == 200, await answer.text()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{simulator_url}/_sim/faults", json=[{"code": 190, "count": 5}]) as faults,
    ):
        assert faults.status == 200, await faults.text()
    after = await last_sequence(simulator_url)
    await api(pipeline, "POST", f"/campaigns/{campaign['id']}/schedule")

    done = await wait_for_state(pipeline, campaign["id"], "completed", timeout=120)
    assert done["progress"]["sent"] == len(citizens)
    assert done["progress"]["failed_total"] == 0
    summary = await template_summary(simulator_url, after)
    assert summary["accepted"] == summary["recipients"] == len(citizens)
    assert summary["duplicates"] == {}

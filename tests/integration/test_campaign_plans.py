"""A wave of a campaign reads its own recipients, not the whole campaign: the plans Postgres
uses for the statements the senders run (campaign_store.CLAIM_ROWS, MARK_SENDING, SETTLE), on
a campaign of 20,000 subscribers that grew page by page after the statements were planned.

A long-running sender's prepared statements keep a generic plan (cached after their fifth
run) until the statistics of their tables change. Planned while a campaign's table held one
page, a claim of 16 recipients read every row of the campaign and every contact of the
number. The campaign driver refreshes the statistics as the campaign grows (migration 0060):
this machine's Postgres runs no autovacuum, and a deployment's may not come round for a
minute. Checked here as the senders would meet them: the cached plans, after the refresh.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import structlog

from civicline.common.amqp import Broker, Publisher
from civicline.common.topology import declare
from civicline.responder import campaign_store as store
from civicline.responder.broadcasts import Driver
from civicline.responder.campaigns import CampaignSpec
from support.amqp_probe import probe_channel
from support.audit_logs import fresh_database
from support.isolation import EnvironmentFactory
from support.plans import rows_read
from support.waiting import eventually

pytestmark = pytest.mark.integration

NUMBER = "106512349876543"
TOPIC = "flood-seoul-mapo"
AUDIENCE = 20_000
CITIZENS = [f"8250{n:08d}" for n in range(1, AUDIENCE + 1)]
WAVE = CITIZENS[9_000:9_016]
# Rows a plan may touch for a wave of 16: the wave itself, each with a contact and a
# subscription looked up by key, and some slack for dead row versions.
MOST_ROWS = 10 * len(WAVE)


STATEMENTS = {
    "claim_rows": store.CLAIM_ROWS,
    "mark_sending": store.MARK_SENDING,
    "settle": store.SETTLE,
}


@pytest.fixture(scope="module")
async def campaign() -> AsyncIterator[tuple[asyncpg.Connection, uuid.UUID]]:
    async with fresh_database("campaign_plans") as url:
        connection = await asyncpg.connect(url)
        try:
            campaign_id = await start_campaign(connection)
            # The senders' statements are planned while the table holds a first page...
            await connection.execute("SET plan_cache_mode = force_generic_plan")
            for name, sql in STATEMENTS.items():
                await connection.execute(f"PREPARE {name} AS {sql}")
            await rows_touched(connection, "claim_rows", *claim_arguments(campaign_id))
            await rows_touched(connection, "mark_sending", campaign_id, WAVE, ["me"] * len(WAVE))
            await rows_touched(connection, "settle", *settle_arguments(campaign_id))
            # ... and the plans stay cached while the expansion adds the rest, page by page.
            await expand(connection, campaign_id)
            await eventually(
                lambda: all_counted(connection),
                what="the expansion to be counted in the table statistics",
                timeout=15,
                interval=0.2,
            )
            await eventually(
                lambda: statistics_refreshed(connection),
                what="the campaign tables to be analysed",
                timeout=15,
                interval=0.5,
            )
            yield connection, campaign_id
        finally:
            await connection.close()


async def start_campaign(connection: asyncpg.Connection) -> uuid.UUID:
    campaign_id = uuid.uuid4()
    spec = {"audience": {"topics": [TOPIC, "election"], "list": False}}
    await connection.execute(
        """INSERT INTO campaigns (id, name, phone_number_id, spec, state, created_by)
           VALUES ($1, 'plans', $2, $3::jsonb, 'running', 'test')""",
        campaign_id,
        NUMBER,
        orjson.dumps(spec).decode(),
    )
    for topic in (TOPIC, "election", "heatwave-busan"):
        await connection.execute(
            """INSERT INTO subscriptions (phone_number_id, topic, citizen, subscribed)
               SELECT $1, $2, unnest($3::text[]), true""",
            NUMBER,
            topic,
            CITIZENS,
        )
    await connection.execute(
        """INSERT INTO contacts (phone_number_id, citizen, language, opted_out)
           SELECT $1, unnest($2::text[]), 'ko', false""",
        NUMBER,
        CITIZENS[::3],
    )
    await add_recipients(connection, campaign_id, WAVE)
    return campaign_id


async def expand(connection: asyncpg.Connection, campaign_id: uuid.UUID) -> None:
    wave = set(WAVE)
    rest = [citizen for citizen in CITIZENS if citizen not in wave]
    for first in range(0, len(rest), 500):
        await add_recipients(connection, campaign_id, rest[first : first + 500])


async def add_recipients(
    connection: asyncpg.Connection, campaign_id: uuid.UUID, citizens: list[str]
) -> None:
    await connection.execute(
        """INSERT INTO campaign_recipients (campaign_id, wa_id, via_topic, language, state)
           SELECT $1, unnest($2::text[]), $3, 'ko', 'queued'""",
        campaign_id,
        citizens,
        TOPIC,
    )


async def all_counted(connection: asyncpg.Connection) -> bool:
    """Each backend adds its rows to the shared statistics at most once a second: until all
    are counted, the refresh could analyse too early, and find more to do again at once."""
    inserted = await connection.fetchval(
        "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'campaign_recipients'"
    )
    return bool(inserted is not None and inserted >= AUDIENCE)


async def statistics_refreshed(connection: asyncpg.Connection) -> bool:
    """What the campaign driver does while a campaign runs, as civicline_writer, the role the
    services connect as (only a table's owner may analyse it: the function may)."""
    async with connection.transaction():
        await connection.execute("SET LOCAL ROLE civicline_writer")
        analysed = await connection.fetchval("SELECT campaign_statistics_refresh()")
    return "campaign_recipients" in analysed


def claim_arguments(campaign_id: uuid.UUID) -> tuple[Any, ...]:
    return (campaign_id, WAVE, NUMBER, 30.0, [TOPIC, "election"])


def settle_arguments(campaign_id: uuid.UUID) -> tuple[Any, ...]:
    wamids = [f"wamid.{wa_id}" for wa_id in WAVE]
    return (campaign_id, WAVE, ["sent"] * len(WAVE), wamids, [None] * len(WAVE))


async def rows_touched(connection: asyncpg.Connection, statement: str, *arguments: Any) -> int:
    """Rows every scan of the prepared `statement`'s plan read (kept or filtered out), run
    and rolled back."""
    values = ", ".join(_literal(argument) for argument in arguments)
    transaction = connection.transaction()
    await transaction.start()
    try:
        plan = orjson.loads(
            await connection.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {statement}({values})"
            )
        )
    finally:
        await transaction.rollback()
    return rows_read(plan[0]["Plan"])


def _literal(value: Any) -> str:
    """A constant for EXECUTE, which takes no bind parameters (array items are the test's own:
    digits, dots, dashes and letters, nothing to escape inside the braces)."""
    if isinstance(value, list):
        items = ",".join("NULL" if item is None else f'"{item}"' for item in value)
        value = f"{{{items}}}"
    return "'" + str(value).replace("'", "''") + "'"


async def test_a_claim_reads_the_wave_not_the_campaign_or_the_topic(
    campaign: tuple[asyncpg.Connection, uuid.UUID],
) -> None:
    connection, campaign_id = campaign
    touched = await rows_touched(connection, "claim_rows", *claim_arguments(campaign_id))
    assert touched <= MOST_ROWS, touched


async def test_marking_and_settling_a_wave_read_its_rows_only(
    campaign: tuple[asyncpg.Connection, uuid.UUID],
) -> None:
    connection, campaign_id = campaign
    await connection.execute(
        """UPDATE campaign_recipients SET state = 'claimed', claimed_by = 'me'
           WHERE campaign_id = $1 AND wa_id = ANY($2::text[])""",
        campaign_id,
        WAVE,
    )
    marked = await rows_touched(connection, "mark_sending", campaign_id, WAVE, ["me"] * len(WAVE))
    await connection.execute(
        """UPDATE campaign_recipients SET state = 'sending'
           WHERE campaign_id = $1 AND wa_id = ANY($2::text[])""",
        campaign_id,
        WAVE,
    )
    settled = await rows_touched(connection, "settle", *settle_arguments(campaign_id))
    assert marked <= MOST_ROWS, marked
    assert settled <= MOST_ROWS, settled


async def test_statistics_are_refreshed_only_when_much_has_changed(
    campaign: tuple[asyncpg.Connection, uuid.UUID],
) -> None:
    connection, _ = campaign
    async with connection.transaction():
        await connection.execute("SET LOCAL ROLE civicline_writer")
        again = await connection.fetchval("SELECT campaign_statistics_refresh()")
    assert again == []
    analysed = await connection.fetchval(
        """SELECT count(*) FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL
           AND relname IN ('campaign_recipients', 'subscriptions', 'contacts')"""
    )
    assert analysed == 3


async def test_the_function_resolves_names_in_its_schema_before_a_callers_temporary_ones(
    campaign: tuple[asyncpg.Connection, uuid.UUID],
) -> None:
    """It runs as the tables' owner: with pg_temp searched first (Postgres's default when the
    path does not name it), a caller's temporary table or view named like a campaign table
    would stand in for it."""
    connection, _ = campaign
    config = await connection.fetchval(
        "SELECT proconfig FROM pg_proc WHERE proname = 'campaign_statistics_refresh'"
    )
    assert "search_path=public, pg_temp" in config, config
    assert await connection.fetchval(
        "SELECT prosecdef FROM pg_proc WHERE proname = 'campaign_statistics_refresh'"
    )


async def test_campaigns_go_on_when_their_statistics_cannot_be_refreshed(
    environment_for_test: EnvironmentFactory,
) -> None:
    """A responder deployed before its migration (the function is missing): the driver
    expands the campaign all the same, and logs why it could not refresh."""
    environment = await environment_for_test("campaign_stats")
    async with probe_channel(environment.amqp_url) as channel:
        await declare(channel)
    pool = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=4)
    broker = Broker(environment.amqp_url, connection_name="test-campaign-driver")
    broker.start()
    driver = Driver(pool, Publisher(broker, timeout=5), idle=0.05)
    try:
        await pool.execute("DROP FUNCTION campaign_statistics_refresh()")
        spec = CampaignSpec(
            name="driver",
            phone_number_id=NUMBER,
            template="civicline_flood_warning",
            languages={"ko": "ko"},
            fallback_language="en_US",
            parameters={"*": ()},
            topics=(TOPIC,),
        )
        await pool.execute(
            """INSERT INTO subscriptions (phone_number_id, topic, citizen, subscribed)
               SELECT $1, $2, unnest($3::text[]), true""",
            NUMBER,
            TOPIC,
            CITIZENS[:1_600],
        )
        campaign_id = uuid.uuid4()
        await pool.execute(
            """INSERT INTO campaigns (id, name, phone_number_id, spec, state, created_by)
               VALUES ($1, 'driver', $2, $3::jsonb, 'running', 'test')""",
            campaign_id,
            NUMBER,
            orjson.dumps(spec.as_json()).decode(),
        )
        with structlog.testing.capture_logs() as logs:
            driver.start()

            async def expanded() -> bool:
                return bool(
                    await pool.fetchval("SELECT expanded FROM campaigns WHERE id = $1", campaign_id)
                )

            await eventually(expanded, what="the campaign to be expanded", timeout=30)
        recipients = await pool.fetchval(
            "SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1", campaign_id
        )
        assert recipients == 1_600
        failures = [entry for entry in logs if entry["event"] == "campaign_statistics_failed"]
        assert failures, [entry["event"] for entry in logs]
        assert "campaign_statistics_refresh" in failures[0]["error"]
    finally:
        await driver.stop()
        await broker.close()
        await pool.close()

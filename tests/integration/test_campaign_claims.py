"""Campaign claims on the real Postgres: the messaging tier counts unique citizens over 24 h
for every replica together, a dead sender's claim is in doubt and never claimed again, and a
citizen who opted out after the audience was expanded is skipped."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from civicline.responder import campaign_store as store
from support.isolation import create_database, drop_database, unique_name

pytestmark = pytest.mark.integration

NUMBER = "106512349876543"
SPEC = {
    "name": "t",
    "phone_number_id": NUMBER,
    "template": {"name": "t", "languages": {}, "fallback": "en_US", "parameters": {"*": []}},
    "audience": {"topics": ["election"], "list": False},
    "send_at": None,
}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    name = unique_name("claims")
    url = await create_database(name)
    connection_pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        yield connection_pool
    finally:
        await connection_pool.close()
        await drop_database(name)


async def running_campaign(pool: asyncpg.Pool, citizens: list[str]) -> uuid.UUID:
    campaign_id = uuid.uuid4()
    await pool.execute(
        """INSERT INTO campaigns (id, name, phone_number_id, spec, state, created_by)
           VALUES ($1, 't', $2, $3::jsonb, 'running', 'test')""",
        campaign_id,
        NUMBER,
        orjson.dumps(SPEC).decode(),
    )
    await pool.execute(
        """INSERT INTO subscriptions (phone_number_id, topic, citizen, subscribed)
           SELECT $1, 'election', unnest($2::text[]), true ON CONFLICT DO NOTHING""",
        NUMBER,
        citizens,
    )
    await pool.execute(
        """INSERT INTO campaign_recipients (campaign_id, wa_id, via_topic, language, state)
           SELECT $1, unnest($2::text[]), 'election', 'en_US', 'queued'""",
        campaign_id,
        citizens,
    )
    return campaign_id


async def test_the_tier_counts_unique_citizens_across_campaigns(pool: asyncpg.Pool) -> None:
    # Eight citizens were reached in the last 24 h, one of them again now; one long ago.
    await pool.execute(
        """INSERT INTO messaging_reach (citizen, last_sent_at)
           SELECT 'old' || g, now() - interval '1 hour' FROM generate_series(1, 7) g
           UNION ALL SELECT 'c1', now() - interval '2 hours'
           UNION ALL SELECT 'c2', now() - interval '25 hours'"""
    )
    citizens = ["c1", "c2", "c3", "c4", "c5"]
    campaign = await running_campaign(pool, citizens)
    claims = await store.claim(pool, campaign, [(c, "me") for c in citizens], tier=10)
    kinds = {c: claims[c].kind for c in citizens}
    # c1 does not count again; two new citizens fit under 10; the rest wait.
    assert kinds == {
        "c1": "claimed",
        "c2": "claimed",
        "c3": "claimed",
        "c4": "deferred",
        "c5": "deferred",
    }
    used = await pool.fetchval(
        "SELECT count(*) FROM messaging_reach WHERE last_sent_at > now() - interval '24 hours'"
    )
    assert used == 10
    # Another campaign to the same citizens: those reached count no more; the others wait.
    other = await running_campaign(pool, citizens)
    claims = await store.claim(pool, other, [(c, "me") for c in citizens], tier=10)
    assert [claims[c].kind for c in citizens] == [
        "claimed",
        "claimed",
        "claimed",
        "deferred",
        "deferred",
    ]


async def test_a_dead_senders_claim_is_taken_over_unless_it_was_calling_meta(
    pool: asyncpg.Pool,
) -> None:
    campaign = await running_campaign(pool, ["d1", "d2"])
    first = await store.claim(pool, campaign, [("d1", "one"), ("d2", "one")], tier=None)
    assert {c.kind for c in first.values()} == {"claimed"}
    # The same delivery retrying (its commit's answer lost) still owns its claims;
    # another sender meets them live, so it waits.
    again = await store.claim(pool, campaign, [("d1", "one")], tier=None)
    assert again["d1"].kind == "claimed"
    other = await store.claim(pool, campaign, [("d1", "two")], tier=None)
    assert other["d1"].kind == "in_progress"

    async def expire() -> None:
        await pool.execute(
            "UPDATE campaign_recipients SET claimed_at = now() - interval '1 minute'"
        )

    # The first sender died before calling Meta: another takes the recipient over.
    await expire()
    taken = await store.claim(pool, campaign, [("d1", "two")], tier=None)
    assert taken["d1"].kind == "claimed"
    assert await store.mark_sending(pool, campaign, [("d1", "one")]) == set()  # not its own
    assert await store.mark_sending(pool, campaign, [("d1", "two")]) == {"d1"}
    # That one died while calling Meta: in doubt, for good.
    await expire()
    late = await store.claim(pool, campaign, [("d1", "three")], tier=None)
    assert late["d1"].kind == "in_doubt"
    later = await store.claim(pool, campaign, [("d1", "four")], tier=None)
    assert (later["d1"].kind, later["d1"].state) == ("done", "in_doubt")
    assert await store.mark_sending(pool, campaign, [("d2", "one")]) == {"d2"}
    await store.settle(pool, campaign, [store.Outcome("d2", "sent", "wamid.d2")])
    settled = await store.claim(pool, campaign, [("d2", "two")], tier=None)
    assert (settled["d2"].kind, settled["d2"].wamid) == ("done", "wamid.d2")


async def test_opted_out_or_unsubscribed_since_expansion_are_skipped(pool: asyncpg.Pool) -> None:
    campaign = await running_campaign(pool, ["s1", "s2", "s3"])
    await pool.execute(
        "INSERT INTO contacts (phone_number_id, citizen, opted_out) VALUES ($1, 's1', true)",
        NUMBER,
    )
    await pool.execute("UPDATE subscriptions SET subscribed = false WHERE citizen = 's2'")
    claims = await store.claim(pool, campaign, [(c, "me") for c in ("s1", "s2", "s3")], tier=None)
    assert (claims["s1"].kind, claims["s1"].reason) == ("skipped", "opted_out")
    assert (claims["s2"].kind, claims["s2"].reason) == ("skipped", "unsubscribed")
    assert claims["s3"].kind == "claimed"
    progress = await store.progress(pool, campaign)
    assert progress.skipped == {"opted_out": 1, "unsubscribed": 1}


async def test_a_paused_campaign_claims_nothing(pool: asyncpg.Pool) -> None:
    campaign = await running_campaign(pool, ["p1"])
    await pool.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", campaign)
    claims = await store.claim(pool, campaign, [("p1", "me")], tier=None)
    assert claims["p1"].kind == "halted"
    assert (await store.progress(pool, campaign)).queued == 1

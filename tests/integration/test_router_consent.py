"""Consent in Postgres as the router records it, in the order the citizen gave it whatever the
order Meta delivered it in: a STOP withdraws only the subscriptions given before it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from civicline.router.adapters import record_consent
from civicline.router.core import Route
from support.isolation import EnvironmentFactory

pytestmark = pytest.mark.integration

NUMBER, CITIZEN = "106512349876543", "821055550001"


def at(second: int) -> datetime:
    return datetime.fromtimestamp(1_790_000_000 + second, UTC)


@pytest.fixture
async def connection(environments: EnvironmentFactory) -> AsyncIterator[asyncpg.Connection]:
    environment = await environments("router_consent")
    connection = await asyncpg.connect(environment.database_url)
    yield connection
    await connection.close()


async def subscribed(connection: asyncpg.Connection) -> dict[str, bool]:
    rows = await connection.fetch(
        "SELECT topic, subscribed FROM subscriptions WHERE citizen = $1 ORDER BY topic", CITIZEN
    )
    return {row["topic"]: row["subscribed"] for row in rows}


async def test_a_late_stop_withdraws_only_the_subscriptions_given_before_it(
    connection: asyncpg.Connection,
) -> None:
    stop = Route("opt_out", urgent=False, needs_reply=True)
    for topic, second in (("election", 50), ("vaccination", 200)):
        await record_consent(
            connection,
            NUMBER,
            CITIZEN,
            Route("subscribe", urgent=False, needs_reply=True, topic=topic),
            wamid=f"wamid.{topic}",
            at=at(second),
        )
    # The STOP was sent at 100, between them, and delivered after both.
    await record_consent(connection, NUMBER, CITIZEN, stop, wamid="wamid.STOP", at=at(100))
    assert await subscribed(connection) == {"election": False, "vaccination": True}

"""What a service does as it starts. A consumer that cannot start at first (the broker refuses
a declaration, or goes away while it declares) keeps trying, and consumes once it can: it must
not stay up, never ready and never consuming, with nothing to restart it. The router forgets
the WhatsApp ids Meta can no longer redeliver."""

from __future__ import annotations

import aio_pika
import asyncpg
import pytest

from civicline.common.topology import ROUTER_INBOUND
from support.isolation import EnvironmentFactory
from support.pipeline import Pipeline
from support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def test_a_consumer_that_could_not_start_tries_again_until_it_can(
    environments: EnvironmentFactory, simulator_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    environment = await environments("startup")
    pipeline = Pipeline(environment, simulator_url, tmp_path_factory.mktemp("logs"))
    connection = await aio_pika.connect(environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        # The router's queue exists with other arguments (a classic queue where the topology
        # declares a quorum one): the broker refuses the router's declaration and closes its
        # channel, as long as this stays.
        blocker = await channel.declare_queue(ROUTER_INBOUND.name, durable=True)
        pipeline.start("router")
        try:
            await eventually(
                lambda: "PRECONDITION_FAILED" in pipeline.log_tail("router", lines=200),
                what="the router's refused declaration",
                timeout=30,
            )
            await blocker.delete(if_unused=False, if_empty=False)
            await pipeline.wait_ready("router", timeout=30)
        finally:
            exit_code = await pipeline.stop("router")
    assert exit_code == 0, pipeline.log_tail("router")


async def test_a_starting_router_forgets_ids_meta_can_no_longer_redeliver(
    environments: EnvironmentFactory, simulator_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    environment = await environments("forget")
    connection = await asyncpg.connect(environment.database_url)
    try:
        await connection.execute(
            """INSERT INTO router_seen (dedup_key, first_seen_at) VALUES
                   ('message:wamid.OLD', now() - interval '9 days'),
                   ('message:wamid.RECENT', now() - interval '6 days')"""
        )
        pipeline = Pipeline(environment, simulator_url, tmp_path_factory.mktemp("logs"))
        pipeline.start("router")
        try:
            await pipeline.wait_ready("router")

            async def forgotten() -> bool:
                rows = await connection.fetch("SELECT dedup_key FROM router_seen")
                return [row["dedup_key"] for row in rows] == ["message:wamid.RECENT"]

            await eventually(forgotten, what="the 9-day-old id forgotten", timeout=30)
        finally:
            exit_code = await pipeline.stop("router")
    finally:
        await connection.close()
    assert exit_code == 0, pipeline.log_tail("router")

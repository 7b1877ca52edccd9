"""A service whose consumer cannot start at first (the broker refuses a declaration, or goes
away while it declares) keeps trying, and consumes once it can: it must not stay up, never
ready and never consuming, with nothing to restart it."""

from __future__ import annotations

import aio_pika
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

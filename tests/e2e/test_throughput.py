"""A burst of 1,000 citizen messages with two responder processes running: the per-number
send rate, as Meta's side records it, never exceeds the configured limit in any one-second
window, and every message gets exactly one reply. (How close to the limit the sends run is a
performance figure, measured by `make bench`, not asserted here: on a loaded machine it varies.)

The simulator runs as its own process here: in the test process its clock would be read by an
event loop also busy sending the burst, bunching arrivals that were in fact well spaced. For
the same reason it runs ahead of the pipeline in the CPU's queue (support.pipeline).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from support.isolation import EnvironmentFactory
from support.pipeline import APP_SECRET, Pipeline
from support.timing import busiest_second
from support.traffic import citizen_messages, deliver

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEND_RATE = 100


@pytest.fixture(scope="module")
async def pipeline(
    environments: EnvironmentFactory, simulator_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    environment = await environments("throughput")
    running = Pipeline(
        environment,
        simulator_url,
        tmp_path_factory.mktemp("logs"),
        extra_env={"RESPONDER_SEND_RATE": str(SEND_RATE)},
    )
    async with running.started("responder-2"):
        yield running


async def recorded_sends(simulator_url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{simulator_url}/_sim/sent") as answer,
    ):
        sends: list[dict[str, Any]] = await answer.json()
    return sends


async def test_a_burst_of_1000_never_exceeds_the_per_number_rate(
    pipeline: Pipeline, simulator_url: str
) -> None:
    hooks = citizen_messages(1000, citizens=1000, prefix="8230")
    wamids = {w for hook in hooks for w in hook.wamids}
    log = await deliver(pipeline.webhook_url, APP_SECRET, hooks, concurrency=32)
    assert len(log.accepted) == 1000

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    replies: Counter[str] = Counter()
    sends: list[dict[str, Any]] = []
    while loop.time() < deadline:
        sends = await recorded_sends(simulator_url)
        replies = Counter(
            s["body"]["context"]["message_id"] for s in sends if "context" in s["body"]
        )
        if wamids <= set(replies):
            break
        await asyncio.sleep(0.5)

    assert all(replies[w] == 1 for w in wamids), "each message answered exactly once"
    times = [datetime.fromisoformat(s["received_at"]).timestamp() for s in sends]
    assert busiest_second(times) <= SEND_RATE

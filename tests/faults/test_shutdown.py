"""A pod is told to stop (SIGTERM) whatever state its dependencies are in: on a node drain or
a network partition Kubernetes waits the grace period (30 s for the consumers, deploy/k8s),
then kills. A service that hangs until then holds its work the whole time, and a rollout or a
scale-in stalls on it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from civicline.simulator.server import Simulator
from support.isolation import EnvironmentFactory
from support.pipeline import SERVICES, Pipeline
from support.tcpproxy import TcpProxy, through

# The consumers' terminationGracePeriodSeconds in deploy/k8s/base.
GRACE_PERIOD = 30.0
# A little longer than one connection attempt may take (CONNECT_TIMEOUT in the AMQP module),
# so every service has seen an attempt time out and is in the middle of the next one.
PAST_ONE_ATTEMPT = 12.0


async def stop_all_at_once(pipeline: Pipeline) -> dict[str, int]:
    codes = await asyncio.gather(
        *(pipeline.stop(service, timeout=GRACE_PERIOD) for service in SERVICES)
    )
    return dict(zip(SERVICES, codes, strict=True))


@pytest.mark.parametrize("black_holed", ["from the start", "after the services were ready"])
async def test_every_service_stops_on_sigterm_while_the_broker_is_black_holed(
    environment_for_test: EnvironmentFactory, tmp_path: Path, black_holed: str
) -> None:
    environment = await environment_for_test("stop")
    broker = urlsplit(environment.amqp_url)
    proxy = TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    await proxy.start()
    async with Simulator() as simulator:
        pipeline = Pipeline(
            environment,
            simulator.base_url,
            tmp_path,
            amqp_url=through(environment.amqp_url, proxy.port),
        )
        try:
            if black_holed == "from the start":
                proxy.black_hole()
                for service in SERVICES:
                    pipeline.start(service)
                for service in SERVICES:
                    await pipeline.wait_ready(service, probe="healthz")
                await asyncio.sleep(PAST_ONE_ATTEMPT)
                assert not any([await pipeline.is_ready(s) for s in SERVICES])
            else:
                await pipeline.start_all()
                proxy.black_hole()
                await asyncio.sleep(PAST_ONE_ATTEMPT)
            # pipeline.stop fails the test if a service still runs after the grace period.
            assert await stop_all_at_once(pipeline) == dict.fromkeys(SERVICES, 0)
        finally:
            for process in pipeline.processes.values():
                if process.poll() is None:
                    process.kill()
            await proxy.stop()

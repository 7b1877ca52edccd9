"""A pod is told to stop (SIGTERM) whatever state its dependencies are in: on a node drain or
a network partition Kubernetes waits the grace period (30 s for the consumers, deploy/k8s),
then kills. A service that hangs until then holds its work the whole time, and a rollout or a
scale-in stalls on it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest

from civicline.common.topology import AUDIT_EVENTS, EXCHANGE, RESPONDER_MESSAGES
from civicline.simulator import text_message_webhook
from civicline.simulator.server import Simulator
from support.isolation import EnvironmentFactory
from support.pipeline import APP_SECRET, SERVICES, Pipeline
from support.tcpproxy import TcpProxy, through
from support.traffic import Webhook, deliver
from support.waiting import eventually

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


async def test_the_router_stops_at_once_though_it_holds_a_batch_through_an_outage(
    environment_for_test: EnvironmentFactory, tmp_path: Path
) -> None:
    # The router holds a batch while it cannot publish its events (here: nothing is bound to
    # take them, so the broker returns them; a memory alarm does alike), and is not ready
    # meanwhile. Told to stop, it must leave the batch's webhooks to be redelivered at once,
    # not wait its whole drain timeout (60 s here) for an outage that may last much longer.
    environment = await environment_for_test("stop-batch")
    citizen = "82771234001"
    routes = [(AUDIT_EVENTS.name, "#"), (RESPONDER_MESSAGES.name, "message.#")]
    async with Simulator() as simulator:
        pipeline = Pipeline(
            environment,
            simulator.base_url,
            tmp_path,
            extra_env={"CIVICLINE_SHUTDOWN_TIMEOUT": "60"},
        )
        connection = await aio_pika.connect(environment.amqp_url)
        database = await asyncpg.connect(environment.database_url)
        try:
            await pipeline.start_all()
            # A first message, answered and its reply audited: every publisher has declared
            # the topology (bindings included, on its first publish) before two bindings are
            # taken away.
            body, wamid = text_message_webhook(wa_id="82771234000", text="Where do I vote?")
            await deliver(pipeline.webhook_url, APP_SECRET, [Webhook(body, (wamid,))])

            async def reply_audited() -> bool:
                return bool(
                    await database.fetchval(
                        "SELECT count(*) FROM audit_log WHERE kind = 'outbound.sent'"
                    )
                )

            await eventually(reply_audited, what="the first reply to be audited")
            channel = await connection.channel()
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            for queue, key in routes:
                await (await channel.get_queue(queue, ensure=False)).unbind(exchange, key)
            body, wamid = text_message_webhook(wa_id=citizen, text="Where do I vote?")
            log = await deliver(pipeline.webhook_url, APP_SECRET, [Webhook(body, (wamid,))])
            assert len(log.accepted) == 1

            async def router_not_ready() -> bool:
                return not await pipeline.is_ready("router")

            await eventually(router_not_ready, what="the router to say it is not ready")
            assert "batch_waiting_out_outage" in pipeline.log_events("batch_waiting_out_outage")
            started = asyncio.get_running_loop().time()
            assert await pipeline.stop("router", timeout=90) == 0
            assert asyncio.get_running_loop().time() - started < 20, "waited out its drain"

            for queue, key in routes:
                await (await channel.get_queue(queue, ensure=False)).bind(exchange, key)
            await pipeline.restart("router")
            # Nothing was lost: the webhook the router let go is routed and answered.
            await eventually(lambda: bool(simulator.sent(to=citizen)), what="the reply")
        finally:
            await connection.close()
            await database.close()
            codes = await pipeline.stop_all()
        assert codes == dict.fromkeys(codes, 0)

"""What a consuming service (router, responder, audit) runs: broker, database pool, publisher
and one queue consumer, started in the background and torn down in the right order.

The service's HTTP server (health, metrics) is up at once; the consumer starts only when
both RabbitMQ and Postgres are reachable, so a dependency that is down at start makes the
service wait (readiness red) instead of exiting. On shutdown the consumer stops taking
messages and drains in-flight ones before the pool and the connection close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

from civicline.common.amqp import Broker, Consumer, MessageHandler, Publisher
from civicline.common.batching import Batcher
from civicline.common.db import close_pool, connect_pool, pool_is_ready
from civicline.common.failures import SHUTDOWN_STEP_TIMEOUT, shutdown_step
from civicline.common.health import add_health_routes, register_readiness
from civicline.common.retry import retry_forever
from civicline.common.settings import Settings
from civicline.common.topology import QueueSpec

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Runtime:
    settings: Settings
    broker: Broker
    publisher: Publisher
    pool: asyncpg.Pool
    # Stopped before the consumers drain: background work a handler factory started.
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The handlers' batchers: one holding a batch through an outage makes the process not
    # ready, and a stop tells them to wait out outages no longer.
    batchers: list[Batcher[Any, Any]] = field(default_factory=list)


HandlerFactory = Callable[[Runtime], Awaitable[MessageHandler]]
RUNTIME = web.AppKey("runtime", Runtime)


@dataclass(frozen=True, slots=True)
class MoreConsumer:
    """A further queue the same process consumes (e.g. the responder's campaign jobs)."""

    spec: QueueSpec
    build_handler: HandlerFactory
    prefetch: int


def _report_failed_start(starter: asyncio.Task[None]) -> None:
    if not starter.cancelled() and (error := starter.exception()) is not None:
        log.error("start_failed", error=f"{type(error).__name__}: {error}")


def _consumer(
    settings: Settings,
    broker: Broker,
    publisher: Publisher,
    spec: QueueSpec,
    handler: MessageHandler,
    prefetch: int,
) -> Consumer:
    """A consumer of `spec`; one that has delay queues parks work held through a long outage."""

    async def park(message: AbstractIncomingMessage) -> None:
        await publisher.park(message, spec)

    return Consumer(
        broker,
        spec,
        handler,
        prefetch=prefetch,
        park=park if spec.retry_delays else None,
        park_after=settings.park_after,
    )


def create_consumer_app(
    settings: Settings,
    spec: QueueSpec,
    build_handler: HandlerFactory,
    *,
    prefetch: int | None = None,
    more: Sequence[MoreConsumer] = (),
) -> web.Application:
    """An aiohttp app serving health and metrics that consumes `spec` with `build_handler`'s
    handler once its dependencies are reachable."""
    app = web.Application()
    add_health_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        broker = Broker(settings.amqp_url, connection_name=f"civicline-{settings.service_name}")
        broker.start()
        publisher = Publisher(broker, timeout=settings.publish_timeout)
        state: dict[str, object] = {}

        async def start() -> None:
            pool = await connect_pool(settings.database_url)
            state["pool"] = pool
            runtime = Runtime(settings, broker, publisher, pool)
            app[RUNTIME] = runtime
            handler = await build_handler(runtime)
            consumer = _consumer(
                settings, broker, publisher, spec, handler, prefetch or settings.prefetch
            )
            # The broker may go away, or refuse a declaration, while a consumer starts: try
            # again until it works. Given up, the process would stay up, never ready and never
            # consuming, with nothing to restart it.
            await retry_forever(consumer.start, what=f"consume {spec.name}")
            state["consumer"] = consumer
            others = []
            for extra in more:
                other = _consumer(
                    settings,
                    broker,
                    publisher,
                    extra.spec,
                    await extra.build_handler(runtime),
                    extra.prefetch,
                )
                await retry_forever(other.start, what=f"consume {extra.spec.name}")
                others.append(other)
            state["more"] = others

        async def broker_ready() -> bool:
            return broker.is_ready

        async def database_ready() -> bool:
            pool = state.get("pool")
            return await pool_is_ready(pool if isinstance(pool, asyncpg.Pool) else None)

        async def consuming() -> bool:
            consumer = state.get("consumer")
            others = state.get("more")
            runtime = app.get(RUNTIME)
            return (
                isinstance(consumer, Consumer)
                and consumer.is_consuming
                and isinstance(others, list)
                and all(other.is_consuming for other in others)
                and runtime is not None
                and not any(batcher.waiting_out_outage for batcher in runtime.batchers)
            )

        register_readiness(app, "rabbitmq", broker_ready)
        register_readiness(app, "postgres", database_ready)
        register_readiness(app, "consuming", consuming)
        starter = asyncio.create_task(start(), name=f"start-{spec.name}")
        starter.add_done_callback(_report_failed_start)
        yield
        if not starter.done():
            starter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starter
        # Every step is bounded and runs whatever the one before did: a process that hangs
        # on a dead dependency outlives its grace period and is killed with work in hand.
        runtime = app.get(RUNTIME)
        for batcher in runtime.batchers if runtime is not None else ():
            batcher.stopping()
        for stop in runtime.on_stop if runtime is not None else ():
            await shutdown_step("stop background work", stop(), timeout=settings.shutdown_timeout)
        consumers = [state.get("consumer"), *state.get("more", [])]  # type: ignore[misc]
        # All at once, so their drains overlap instead of adding up.
        await asyncio.gather(
            *(
                shutdown_step(
                    "stop a consumer",
                    consumer.stop(settings.shutdown_timeout),
                    # Cancelling the consumer, the drain, closing the channel.
                    timeout=settings.shutdown_timeout + 2 * SHUTDOWN_STEP_TIMEOUT,
                )
                for consumer in consumers
                if isinstance(consumer, Consumer)
            )
        )
        pool = state.get("pool")
        if isinstance(pool, asyncpg.Pool):
            await close_pool(pool)
        await broker.close()
        log.info("stopped", queue=spec.name)

    app.cleanup_ctx.append(lifecycle)
    return app

"""router: consumes raw webhooks, publishes classified messages and delivery statuses."""

from __future__ import annotations

from aiohttp import web

from civicline.common.amqp import MessageHandler
from civicline.common.batching import Batcher
from civicline.common.runtime import Runtime, create_consumer_app
from civicline.common.settings import Settings
from civicline.common.topics import load_topics
from civicline.common.topology import ROUTER_INBOUND
from civicline.router.batch import Delivered
from civicline.router.handlers import router_batcher, router_handler
from civicline.router.rules import load_rules
from civicline.router.upkeep import SeenForgetter


def create_app(settings: Settings) -> web.Application:
    # Loaded before anything connects: a broken rules file stops the start with its error.
    rules = load_rules(settings.router_rules_path, topics=load_topics(settings.topics_path))
    batchers: list[Batcher[Delivered, None]] = []

    async def build_handler(runtime: Runtime) -> MessageHandler:
        batcher = router_batcher(
            runtime.pool,
            runtime.publisher,
            rules,
            size=settings.router_batch_size,
            linger=settings.router_batch_linger,
        )
        batcher.start()
        batchers.append(batcher)
        runtime.batchers.append(batcher)
        forgetter = SeenForgetter(runtime.pool)
        forgetter.start()
        runtime.on_stop.append(forgetter.stop)
        return router_handler(runtime.publisher, batcher)

    # Prefetch two batches, so one fills while the other is routed.
    app = create_consumer_app(
        settings,
        ROUTER_INBOUND,
        build_handler,
        prefetch=max(settings.prefetch, settings.router_batch_size * 2),
    )

    async def close_batchers(app: web.Application) -> None:
        # After the consumer drained (the runtime's cleanup runs first).
        for batcher in batchers:
            await batcher.close()

    app.on_cleanup.append(close_batchers)
    return app

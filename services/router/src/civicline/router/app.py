"""router: consumes raw webhooks, publishes classified messages and delivery statuses."""

from __future__ import annotations

from aiohttp import web

from civicline.common.amqp import MessageHandler
from civicline.common.runtime import Runtime, create_consumer_app
from civicline.common.settings import Settings
from civicline.common.topics import load_topics
from civicline.common.topology import ROUTER_INBOUND
from civicline.router.handlers import router_handler
from civicline.router.rules import load_rules


def create_app(settings: Settings) -> web.Application:
    # Loaded before anything connects: a broken rules file stops the start with its error.
    rules = load_rules(settings.router_rules_path, topics=load_topics(settings.topics_path))

    async def build_handler(runtime: Runtime) -> MessageHandler:
        return router_handler(runtime.pool, runtime.publisher, rules)

    return create_consumer_app(settings, ROUTER_INBOUND, build_handler)

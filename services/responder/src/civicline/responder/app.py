"""responder: consumes classified messages and answers each once through the Graph API; sends
broadcast campaigns, and serves the operator API that runs them."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from civicline.common.amqp import MessageHandler
from civicline.common.batching import Batcher
from civicline.common.runtime import MoreConsumer, Runtime, create_consumer_app
from civicline.common.settings import Settings
from civicline.common.topics import load_topics
from civicline.common.topology import RESPONDER_BROADCASTS, RESPONDER_MESSAGES, RESPONDER_STATUSES
from civicline.responder.adapters import ReplyLedger
from civicline.responder.api import DRIVER_WAKE, add_campaign_routes
from civicline.responder.broadcasts import (
    Driver,
    broadcast_handler,
    status_batcher,
    status_handler,
)
from civicline.responder.campaigns import broadcast_rate
from civicline.responder.catalog import load_catalog
from civicline.responder.graph import GraphClient
from civicline.responder.handlers import responder_handler
from civicline.responder.pauses import PausingGraph, SenderPauses
from civicline.responder.throttle import BroadcastSender, RateLimitedSender, SendSchedule

# Campaign jobs (100 recipients each) in flight at once: each sends one wave at a time, so
# several keep the number's broadcast slots used while others wait on Postgres or Meta.
# Delivery statuses (three per reply) are joined to campaign recipients in batches, one
# transaction each: enough in flight to fill a batch.
STATUS_PREFETCH = 256
BROADCAST_PREFETCH = 16


def create_app(settings: Settings) -> web.Application:
    # Loaded before anything connects: a broken catalog or topics file stops the start.
    catalog = load_catalog(settings.responder_catalog_path)
    topics = load_topics(settings.topics_path)
    sessions: list[aiohttp.ClientSession] = []
    ledgers: list[ReplyLedger] = []
    status_batchers: list[Batcher[Any, Any]] = []
    schedules: dict[str, SendSchedule] = {}
    # One per process: a number Meta refuses outright is paused for replies and campaigns alike.
    pauses = SenderPauses()

    def graph_client() -> PausingGraph:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.responder_broadcast_concurrency + 16)
        )
        sessions.append(session)
        graph = GraphClient(
            session,
            base_url=settings.graph_api_base_url,
            api_version=settings.graph_api_version,
            access_token=settings.access_token,
        )
        return PausingGraph(graph, pauses)

    def shared_schedule(runtime: Runtime) -> SendSchedule:
        # One schedule object per process: replies and broadcasts queue on the same lock.
        if "shared" not in schedules:
            schedules["shared"] = SendSchedule(runtime.pool, rate=settings.responder_send_rate)
        return schedules["shared"]

    async def build_handler(runtime: Runtime) -> MessageHandler:
        # Every send, replies and away notices alike, waits for a slot of the per-number
        # schedule shared with the other replicas.
        sender = RateLimitedSender(graph_client(), shared_schedule(runtime))
        ledger = ReplyLedger(runtime.pool, batch_size=settings.prefetch)
        ledger.start()
        ledgers.append(ledger)
        runtime.batchers.extend(ledger.batchers)
        return responder_handler(
            runtime.pool,
            ledger,
            runtime.publisher,
            sender,
            catalog,
            max_retries=settings.responder_max_retries,
            topics=topics,
        )

    async def build_broadcasts(runtime: Runtime) -> MessageHandler:
        sender = BroadcastSender(
            graph_client(),
            shared_schedule(runtime),
            runtime.pool,
            broadcast_rate=broadcast_rate(
                settings.responder_send_rate, settings.responder_reply_reserve
            ),
        )
        driver = Driver(runtime.pool, runtime.publisher)
        driver.start()
        app[DRIVER_WAKE].append(driver.wake)
        runtime.on_stop.append(driver.stop)
        return broadcast_handler(
            runtime.pool,
            runtime.publisher,
            sender,
            # Calls in flight: a wave per job in flight (the prefetch).
            wave_size=max(1, settings.responder_broadcast_concurrency // BROADCAST_PREFETCH),
            tier=settings.responder_messaging_tier,
        )

    async def build_statuses(runtime: Runtime) -> MessageHandler:
        batcher = status_batcher(runtime.pool, runtime.publisher)
        batcher.start()
        status_batchers.append(batcher)
        runtime.batchers.append(batcher)
        return status_handler(runtime.publisher, batcher)

    app = create_consumer_app(
        settings,
        RESPONDER_MESSAGES,
        build_handler,
        more=(
            MoreConsumer(RESPONDER_BROADCASTS, build_broadcasts, BROADCAST_PREFETCH),
            MoreConsumer(RESPONDER_STATUSES, build_statuses, STATUS_PREFETCH),
        ),
    )
    add_campaign_routes(app, settings.campaign_operator_tokens, topics)

    async def close_sessions(app: web.Application) -> None:
        # After the consumer drained (the runtime's cleanup runs first).
        for session in sessions:
            await session.close()
        for ledger in ledgers:
            await ledger.close()
        for batcher in status_batchers:
            await batcher.close()

    app.on_cleanup.append(close_sessions)
    return app

"""responder: consumes classified messages and answers each once through the Graph API."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from civicline.common.amqp import MessageHandler
from civicline.common.runtime import Runtime, create_consumer_app
from civicline.common.settings import Settings
from civicline.common.topology import RESPONDER_MESSAGES
from civicline.responder.adapters import ReplyLedger
from civicline.responder.catalog import load_catalog
from civicline.responder.graph import GraphClient
from civicline.responder.handlers import responder_handler
from civicline.responder.throttle import RateLimitedSender, SendSchedule


def create_app(settings: Settings) -> web.Application:
    # Loaded before anything connects: a broken catalog stops the start with its error.
    catalog = load_catalog(settings.responder_catalog_path)
    sessions: list[aiohttp.ClientSession] = []
    ledgers: list[ReplyLedger] = []

    async def build_handler(runtime: Runtime) -> MessageHandler:
        session = aiohttp.ClientSession()
        sessions.append(session)
        graph = GraphClient(
            session,
            base_url=settings.graph_api_base_url,
            api_version=settings.graph_api_version,
            access_token=settings.access_token,
        )
        # Every send, replies and away notices alike, waits for a slot of the per-number
        # schedule shared with the other replicas.
        sender = RateLimitedSender(
            graph, SendSchedule(runtime.pool, rate=settings.responder_send_rate)
        )
        ledger = ReplyLedger(runtime.pool, batch_size=settings.prefetch)
        ledger.start()
        ledgers.append(ledger)
        return responder_handler(
            runtime.pool,
            ledger,
            runtime.publisher,
            sender,
            catalog,
            max_retries=settings.responder_max_retries,
        )

    app = create_consumer_app(settings, RESPONDER_MESSAGES, build_handler)

    async def close_sessions(app: web.Application) -> None:
        # After the consumer drained (the runtime's cleanup runs first).
        for session in sessions:
            await session.close()
        for ledger in ledgers:
            await ledger.close()

    app.on_cleanup.append(close_sessions)
    return app

"""audit: consumes every routing key and appends each event once to the append-only log."""

from __future__ import annotations

from aiohttp import web

from civicline.audit.adapters import BatchWriter
from civicline.audit.handlers import audit_handler
from civicline.common.amqp import MessageHandler
from civicline.common.runtime import Runtime, create_consumer_app
from civicline.common.settings import Settings
from civicline.common.topology import AUDIT_EVENTS


def create_app(settings: Settings) -> web.Application:
    writers: list[BatchWriter] = []

    async def build_handler(runtime: Runtime) -> MessageHandler:
        writer = BatchWriter(
            runtime.pool,
            batch_size=settings.audit_batch_size,
            linger=settings.audit_batch_linger,
        )
        writer.start()
        writers.append(writer)
        return audit_handler(writer)

    # Prefetch at least a full batch, or batches could never fill.
    app = create_consumer_app(
        settings,
        AUDIT_EVENTS,
        build_handler,
        prefetch=max(settings.prefetch, settings.audit_batch_size * 2),
    )

    async def close_writers(app: web.Application) -> None:
        for writer in writers:
            await writer.close()

    app.on_cleanup.append(close_writers)
    return app

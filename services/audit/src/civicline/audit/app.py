"""audit: consumes every routing key, appends each event once to the Merkle log, and signs tree
heads as the log grows (when a signing key is configured)."""

from __future__ import annotations

import asyncpg
import structlog
from aiohttp import web

from civicline.audit import privacy
from civicline.audit.adapters import BatchWriter
from civicline.audit.api import AuditApi, add_api_routes
from civicline.audit.checkpoint import CheckpointError, Signer
from civicline.audit.checkpointer import Checkpointer
from civicline.audit.handlers import audit_handler
from civicline.common.amqp import MessageHandler
from civicline.common.db import close_pool, connect_pool
from civicline.common.runtime import Runtime, create_consumer_app
from civicline.common.settings import Settings, SettingsError
from civicline.common.topology import AUDIT_EVENTS

log = structlog.get_logger(__name__)

# The auditors' API has database connections of its own. An export holds one for as long as it
# streams, and records its access through the log's writer before it answers: on the writer's
# pool, enough exports at once held every connection while they waited for the writer, which
# then had none to write with, and the API and the log stopped together for good.
API_CONNECTIONS = 4


def load_signer(settings: Settings) -> Signer | None:
    """The tree-head signing key, or None when none is configured (then no heads are signed)."""
    if not settings.audit_signing_key:
        return None
    try:
        return Signer.parse(settings.audit_signing_key)
    except CheckpointError as exc:
        raise SettingsError(f"AUDIT_SIGNING_KEY (or AUDIT_SIGNING_KEY_FILE): {exc}") from None


def load_privacy(settings: Settings) -> privacy.PrivacyKeys | None:
    """The pseudonym and master keys, or None when neither is configured (then events are
    logged in clear, as before encoding v2, and the service says so at start)."""
    pseudonym, master = settings.audit_pseudonym_key, settings.audit_master_key
    if not pseudonym and not master:
        return None
    if not pseudonym or not master:
        raise SettingsError(
            "set both AUDIT_PSEUDONYM_KEY and AUDIT_MASTER_KEY (or their _FILE forms), or neither"
        )
    try:
        return privacy.PrivacyKeys.from_secrets(pseudonym, master)
    except ValueError as exc:
        raise SettingsError(f"AUDIT_PSEUDONYM_KEY / AUDIT_MASTER_KEY: {exc}") from None


def create_app(settings: Settings) -> web.Application:
    signer = load_signer(settings)
    keys = load_privacy(settings)
    api = AuditApi(keys)
    writers: list[BatchWriter] = []
    api_pools: list[asyncpg.Pool] = []
    checkpointers: list[Checkpointer] = []

    async def build_handler(runtime: Runtime) -> MessageHandler:
        checkpointer = None
        if signer is not None:
            checkpointer = Checkpointer(
                runtime.pool,
                signer,
                publisher=runtime.publisher,
                interval=settings.audit_checkpoint_interval,
                every=settings.audit_checkpoint_size,
                directory=settings.audit_checkpoint_dir,
            )
            checkpointer.start()
            checkpointers.append(checkpointer)
        writer = BatchWriter(
            runtime.pool,
            batch_size=settings.audit_batch_size,
            linger=settings.audit_batch_linger,
            on_commit=checkpointer.appended if checkpointer is not None else None,
            keys=keys,
        )
        writer.start()
        writers.append(writer)
        api_pool = await connect_pool(settings.database_url, max_size=API_CONNECTIONS)
        api_pools.append(api_pool)
        api.pool, api.writer = api_pool, writer
        return audit_handler(writer)

    # Prefetch at least a full batch, or batches could never fill.
    app = create_consumer_app(
        settings,
        AUDIT_EVENTS,
        build_handler,
        prefetch=max(settings.prefetch, settings.audit_batch_size * 2),
    )

    async def announce(app: web.Application) -> None:
        if signer is None:
            # Never sign with a key nobody holds: without a configured key the log is still a
            # Merkle tree, and the first head signed later covers every event before it.
            log.warning(
                "tree_heads_not_signed",
                reason="no AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY_FILE configured",
                hint="civicline-audit keygen --origin <your log's name> --out <file>",
            )
        else:
            log.info("tree_heads_signed_by", verifier_key=signer.verifier.encode())
        if keys is None:
            log.warning(
                "citizens_not_pseudonymised",
                reason="no AUDIT_PSEUDONYM_KEY and AUDIT_MASTER_KEY configured",
                hint="events are logged in clear and cannot be erased per citizen",
            )

    async def stop_checkpointers(app: web.Application) -> None:
        # On shutdown, before the runtime's cleanup closes the pool under them.
        for checkpointer in checkpointers:
            await checkpointer.stop()

    async def close_writers_and_api_pools(app: web.Application) -> None:
        for writer in writers:
            await writer.close()
        for pool in api_pools:
            await close_pool(pool)

    add_api_routes(app, api)
    app.on_startup.append(announce)
    app.on_shutdown.append(stop_checkpointers)
    app.on_cleanup.append(close_writers_and_api_pools)
    return app

"""Signs tree heads as the log grows: every AUDIT_CHECKPOINT_INTERVAL seconds if anything but
checkpoint events was logged, and as soon as AUDIT_CHECKPOINT_SIZE leaves arrived since the last
head. Each head is stored, then written to AUDIT_CHECKPOINT_DIR (if set) and published as an
`audit.checkpoint` event, so copies exist outside the database.

Several audit replicas may each run one: the log-state lock and the tree head's primary key
make sure one head is signed per size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

import asyncpg
import structlog
from prometheus_client import Counter, Gauge

from civicline.audit.adapters import sign_tree_head
from civicline.audit.checkpoint import Signer
from civicline.audit.core import TreeHead, tree_head_envelope
from civicline.common.amqp import Publisher

log = structlog.get_logger(__name__)

SIGNED = Counter("civicline_audit_tree_heads_signed_total", "Tree heads signed")
SIGNED_SIZE = Gauge("civicline_audit_signed_tree_size", "Tree size of the latest signed head")
ROUNDS = Counter("civicline_audit_checkpoint_rounds_total", "Times the checkpointer looked")


def write_checkpoint_file(directory: Path, head: TreeHead) -> Path:
    """Write `<size>.checkpoint` and replace `latest.checkpoint`, each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{head.tree_size:020d}.checkpoint"
    for path in (target, directory / "latest.checkpoint"):
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".checkpoint-")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(head.checkpoint)
        os.replace(temporary, path)
    return target


async def publish_tree_head(
    head: TreeHead, signer: Signer, *, publisher: Publisher | None, directory: str | None
) -> None:
    """Take copies of a new head outside the database; a failure is logged, never raised:
    the head is stored, and the next one covers everything this one did."""
    if directory is not None:
        try:
            path = await asyncio.to_thread(write_checkpoint_file, Path(directory), head)
            log.info("checkpoint_written", path=str(path), tree_size=head.tree_size)
        except OSError as exc:
            log.error("checkpoint_write_failed", directory=directory, error=str(exc))
    if publisher is not None:
        try:
            await publisher.publish_envelope(tree_head_envelope(head, signer.name))
        except Exception as exc:
            log.warning("checkpoint_publish_failed", tree_size=head.tree_size, error=str(exc))


class Checkpointer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        signer: Signer,
        *,
        publisher: Publisher | None,
        interval: float,
        every: int,
        directory: str | None,
    ) -> None:
        self._pool = pool
        self._signer = signer
        self._publisher = publisher
        self._interval = interval
        self._every = every
        self._directory = directory
        self._last_signed: int | None = None
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-checkpointer")

    def appended(self, tree_size: int) -> None:
        """Called after each committed batch: a head is due early once enough leaves came."""
        if self._last_signed is not None and tree_size - self._last_signed >= self._every:
            self._due.set()

    async def _run(self) -> None:
        while True:
            self._due.clear()
            try:
                await self.sign_once()
            except Exception as exc:
                # The database is away: the next round tries again.
                log.warning("checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._interval)

    async def sign_once(self) -> TreeHead | None:
        ROUNDS.inc()
        head = await sign_tree_head(self._pool, self._signer)
        if self._last_signed is None or head is not None:
            self._last_signed = (
                head.tree_size
                if head is not None
                else await self._pool.fetchval(
                    "SELECT coalesce(max(tree_size), 0) FROM audit_tree_head"
                )
            )
        if head is None:
            return None
        SIGNED.inc()
        SIGNED_SIZE.set(head.tree_size)
        log.info("tree_head_signed", tree_size=head.tree_size, root_hash=head.root_hash.hex())
        await publish_tree_head(
            head, self._signer, publisher=self._publisher, directory=self._directory
        )
        return head

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

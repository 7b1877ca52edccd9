"""Two audit processes append to one log at once, as two replicas would: the sequence stays
gapless, the Merkle tree verifies against the heads they signed, every head is published and
logged (as a leaf of a later head), and publishing a head never makes another one due."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from civicline.audit.auditor import verify_database
from civicline.audit.checkpoint import Signer, open_checkpoint
from civicline.audit.core import AUDIT_CHECKPOINT
from civicline.common.amqp import Broker, Publisher
from civicline.common.envelope import Envelope, event_id, utc_now
from support.isolation import Environment, EnvironmentFactory
from support.pipeline import Pipeline
from support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

EVENTS = 600
SIGNER = Signer.generate("replicas.civicline.example/audit")


@dataclass
class AuditReplica:
    port: int
    checkpoint_dir: Path

    async def metric(self, name: str) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}/metrics") as answer,
        ):
            text = await answer.text()
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
async def environment(environments: EnvironmentFactory) -> Environment:
    return await environments("replicas")


@pytest.fixture(scope="module")
async def replicas(
    environment: Environment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[AuditReplica]]:
    directory = tmp_path_factory.mktemp("audit-replicas")
    key = directory / "audit.key"
    key.write_text(SIGNER.encode())
    checkpoints = directory / "checkpoints"
    pipeline = Pipeline(
        environment,
        "http://127.0.0.1:9",  # audit never calls the Graph API
        directory,
        extra_env={
            "AUDIT_SIGNING_KEY_FILE": str(key),
            "AUDIT_CHECKPOINT_DIR": str(checkpoints),
            "AUDIT_CHECKPOINT_INTERVAL": "0.3",
            "AUDIT_CHECKPOINT_SIZE": "100",
            "AUDIT_BATCH_SIZE": "16",
            "CIVICLINE_PREFETCH": "16",
        },
    )
    names = ("audit", "audit-2")
    try:
        for name in names:
            pipeline.start(name)
        for name in names:
            await pipeline.wait_ready(name)
        yield [AuditReplica(pipeline.ports[name], checkpoints) for name in names]
    finally:
        codes = await pipeline.stop_all()
        assert codes == dict.fromkeys(names, 0), {n: pipeline.log_tail(n) for n in names}


@pytest.fixture(scope="module")
async def database(environment: Environment) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def publish_events(environment: Environment, count: int) -> None:
    broker = Broker(environment.amqp_url, connection_name="audit-replicas-test")
    broker.start()
    try:
        await broker.connection()
        publisher = Publisher(broker, timeout=10)
        envelopes = [
            Envelope(
                event_id=event_id("message", f"replicas-{n}"),
                kind="message.voting",
                occurred_at=utc_now(),
                correlation_id=f"wamid.replicas-{n}",
                payload={"text": "투표소 위치", "n": n},
            )
            for n in range(count)
        ]
        for start in range(0, count, 50):
            await asyncio.gather(
                *(publisher.publish_envelope(e) for e in envelopes[start : start + 50])
            )
    finally:
        await broker.close()


async def quiescent(database: asyncpg.Pool) -> bool:
    """Every head is signed, echoed back and logged, and nothing but echoes came after the
    latest head."""
    row = await database.fetchrow(
        """SELECT (SELECT max(tree_size) FROM audit_tree_head) AS latest,
                  (SELECT count(*) FROM audit_tree_head) AS heads,
                  (SELECT count(*) FROM audit_log WHERE kind = $1) AS echoes""",
        AUDIT_CHECKPOINT,
    )
    if row["latest"] is None or row["heads"] != row["echoes"]:
        return False
    after = await database.fetchval(
        "SELECT count(*) FROM audit_log WHERE seq >= $1 AND kind <> $2",
        row["latest"],
        AUDIT_CHECKPOINT,
    )
    return bool(after == 0)


async def test_two_replicas_keep_one_gapless_verifiable_log(
    environment: Environment, replicas: list[AuditReplica], database: asyncpg.Pool
) -> None:
    await publish_events(environment, EVENTS)

    async def all_events_logged() -> bool:
        count = await database.fetchval(
            "SELECT count(*) FROM audit_log WHERE kind = 'message.voting'"
        )
        return bool(count == EVENTS)

    await eventually(all_events_logged, what="every event in the log")
    await eventually(lambda: quiescent(database), what="the heads to settle")

    # Both processes appended: the serialisation on the log-state row was really contended.
    appended = [await r.metric("civicline_audit_appended_total") for r in replicas]
    assert all(count > 0 for count in appended), appended

    seqs = [row["seq"] for row in await database.fetch("SELECT seq FROM audit_log ORDER BY seq")]
    assert seqs == list(range(len(seqs)))
    heads = await database.fetch("SELECT tree_size, checkpoint FROM audit_tree_head ORDER BY 1")
    assert len(heads) >= EVENTS // 100  # the size threshold signed heads during the load
    report = await verify_database(
        environment.database_url, SIGNER.verifier, tuple(h["checkpoint"] for h in heads)
    )
    assert report.ok, report.lines()
    assert report.verified_size == heads[-1]["tree_size"]

    # No loop: both checkpointers look again, twice, and sign nothing new.
    rounds = [await r.metric("civicline_audit_checkpoint_rounds_total") for r in replicas]

    async def both_looked_twice() -> bool:
        now = [await r.metric("civicline_audit_checkpoint_rounds_total") for r in replicas]
        return all(n >= before + 2 for n, before in zip(now, rounds, strict=True))

    await eventually(both_looked_twice, what="two more checkpointer rounds")
    assert await database.fetchval("SELECT count(*) FROM audit_tree_head") == len(heads)


async def test_heads_are_written_outside_the_database(
    replicas: list[AuditReplica], database: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    latest = await database.fetchrow(
        "SELECT tree_size, checkpoint FROM audit_tree_head ORDER BY tree_size DESC LIMIT 1"
    )
    assert latest is not None
    written = replicas[0].checkpoint_dir / f"{latest['tree_size']:020d}.checkpoint"
    assert written.read_text() == latest["checkpoint"]
    assert open_checkpoint(written.read_text(), SIGNER.verifier).tree_size == latest["tree_size"]

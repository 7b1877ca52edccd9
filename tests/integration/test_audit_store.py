"""The audit log in the real Postgres and behind the real RabbitMQ: every event once, numbered
without gaps even under concurrent writers, append-only, raw webhook bytes kept exactly.

Sequence numbers are checked relative to the log's `next_seq` when a test starts, and the whole
log is checked to be gapless, so the tests hold in any order against one module database.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from civicline.audit import merkle
from civicline.audit.adapters import BatchWriter, append_batch
from civicline.audit.core import AuditRecord
from civicline.audit.handlers import audit_handler
from civicline.audit.merkle import CompactRange
from civicline.common.amqp import Broker, Consumer, Publisher
from civicline.common.envelope import SCHEMA_VERSION, Envelope, event_id
from civicline.common.topology import AUDIT_EVENTS, INBOUND_WEBHOOK, declare
from support.isolation import Environment, EnvironmentFactory

pytestmark = pytest.mark.integration


OCCURRED_AT = datetime(2026, 7, 18, 9, 30, 15, 123456, tzinfo=UTC)
# Every byte value, a NUL, invalid UTF-8 and Meta's \uXXXX escapes: bytea must keep them all.
AWKWARD_BYTES = bytes(range(256)) + b'{"text":"\\ud22c\\ud45c"}\x00\xff\xfe'


async def wait_for_count(
    count: Callable[[], Awaitable[int]],
    expected: int,
    *,
    timeout: float = 20.0,
    what: str,
) -> None:
    """Poll `count` until it equals `expected`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        current = await count()
        if current == expected:
            return
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}: {current}, expected {expected}"
            )
        await asyncio.sleep(0.05)


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


def envelope_record(
    natural_key: str | None = None, *, payload: dict[str, Any] | None = None
) -> AuditRecord:
    key = natural_key or unique("wamid")
    return AuditRecord(
        event_id=event_id("message", key),
        kind="message.voting",
        occurred_at=OCCURRED_AT,
        correlation_id=key,
        schema_version=SCHEMA_VERSION,
        payload=payload if payload is not None else {"text": "투표소 위치", "wamid": key},
    )


def raw_record(body: bytes | None = None) -> AuditRecord:
    raw_body = body if body is not None else unique("raw").encode() + AWKWARD_BYTES
    raw_event_id = event_id("webhook", hashlib.sha256(raw_body).hexdigest())
    return AuditRecord(
        event_id=raw_event_id,
        kind=INBOUND_WEBHOOK,
        occurred_at=OCCURRED_AT,
        correlation_id=str(raw_event_id),
        schema_version=SCHEMA_VERSION,
        payload={"bytes": len(raw_body), "content_type": "application/json"},
        raw_body=raw_body,
        signature="sha256=" + "0f" * 32,
    )


@pytest.fixture(scope="module")
async def environment(environments: EnvironmentFactory) -> Environment:
    return await environments("audit")


@pytest.fixture(scope="module")
async def pool(environment: Environment) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=10)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture(scope="module")
async def second_pool(environment: Environment) -> AsyncIterator[asyncpg.Pool]:
    """Another client, as a second audit replica would be."""
    created = await asyncpg.create_pool(environment.database_url, min_size=1, max_size=10)
    try:
        yield created
    finally:
        await created.close()


async def next_seq(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval("SELECT next_seq FROM audit_log_state")
    assert isinstance(value, int)
    return value


async def seqs_of(pool: asyncpg.Pool, records: Sequence[AuditRecord]) -> dict[uuid.UUID, int]:
    rows = await pool.fetch(
        "SELECT event_id, seq FROM audit_log WHERE event_id = ANY($1::uuid[])",
        [r.event_id for r in records],
    )
    return {row["event_id"]: row["seq"] for row in rows}


async def assert_log_is_gapless(pool: asyncpg.Pool) -> None:
    """Gapless, and the Merkle tree the writers kept is the tree of the rows as stored."""
    rows = await pool.fetch("SELECT seq, leaf_hash FROM audit_log ORDER BY seq")
    seqs = [row["seq"] for row in rows]
    assert seqs == list(range(len(seqs))), "the audit log has a gap or a duplicate seq"
    assert await next_seq(pool) == len(seqs)
    state = await pool.fetchrow("SELECT tree_size, frontier FROM audit_log_state")
    assert state is not None
    tree = CompactRange.decode(state["tree_size"], state["frontier"])
    assert tree.size == len(seqs)
    assert tree.root() == merkle.root([row["leaf_hash"] for row in rows])
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM audit_log a WHERE leaf_hash <> audit_leaf_hash(a)"
        )
        == 0
    )


async def test_append_numbers_records_in_order_and_keeps_them_exactly(pool: asyncpg.Pool) -> None:
    records = [raw_record(), envelope_record(), raw_record(), envelope_record(), raw_record()]
    start = await next_seq(pool)

    assert await append_batch(pool, records) == len(records)

    seqs = await seqs_of(pool, records)
    assert [seqs[r.event_id] for r in records] == list(range(start, start + len(records)))
    assert await next_seq(pool) == start + len(records)
    for record in records:
        row = await pool.fetchrow("SELECT * FROM audit_log WHERE event_id = $1", record.event_id)
        assert row is not None
        assert row["kind"] == record.kind
        assert row["occurred_at"] == record.occurred_at
        assert row["correlation_id"] == record.correlation_id
        assert row["schema_version"] == record.schema_version
        assert orjson.loads(row["payload"]) == record.payload
        assert row["raw_body"] == record.raw_body
        assert row["signature"] == record.signature
    await assert_log_is_gapless(pool)


async def test_raw_body_comes_back_byte_for_byte(pool: asyncpg.Pool) -> None:
    body = unique("exact").encode() + AWKWARD_BYTES
    record = raw_record(body)
    await append_batch(pool, [record])
    stored = await pool.fetchval(
        "SELECT raw_body FROM audit_log WHERE event_id = $1", record.event_id
    )
    assert isinstance(stored, bytes)
    assert stored == body
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(body).hexdigest()


async def test_appending_again_adds_nothing_and_numbering_continues(pool: asyncpg.Pool) -> None:
    records = [envelope_record(), raw_record(), envelope_record()]
    await append_batch(pool, records)
    after_first = await next_seq(pool)

    assert await append_batch(pool, records) == 0
    assert await append_batch(pool, list(reversed(records))) == 0
    assert await next_seq(pool) == after_first

    fresh = envelope_record()
    assert await append_batch(pool, [*records, fresh]) == 1
    assert (await seqs_of(pool, [fresh]))[fresh.event_id] == after_first
    assert len(await seqs_of(pool, records)) == len(records)
    await assert_log_is_gapless(pool)


async def test_a_duplicate_inside_one_batch_is_written_once(pool: asyncpg.Pool) -> None:
    first, second = envelope_record(), raw_record()
    start = await next_seq(pool)

    assert await append_batch(pool, [first, second, first, second, first]) == 2

    assert await seqs_of(pool, [first, second]) == {
        first.event_id: start,
        second.event_id: start + 1,
    }
    await assert_log_is_gapless(pool)


async def test_an_empty_batch_changes_nothing(pool: asyncpg.Pool) -> None:
    start = await next_seq(pool)
    assert await append_batch(pool, []) == 0
    assert await next_seq(pool) == start


async def test_concurrent_writers_keep_the_log_gapless(
    pool: asyncpg.Pool, second_pool: asyncpg.Pool
) -> None:
    batches = [
        [raw_record() if n % 5 == 0 else envelope_record() for n in range(25)] for _ in range(20)
    ]
    start = await next_seq(pool)

    written = await asyncio.gather(
        *(append_batch(pool if i % 2 else second_pool, batch) for i, batch in enumerate(batches))
    )

    assert written == [25] * 20
    everything = [record for batch in batches for record in batch]
    seqs = await seqs_of(pool, everything)
    assert sorted(seqs.values()) == list(range(start, start + len(everything)))
    # Each batch is one transaction: its records are numbered consecutively, in order.
    for batch in batches:
        numbers = [seqs[r.event_id] for r in batch]
        assert numbers == list(range(numbers[0], numbers[0] + len(batch)))
    await assert_log_is_gapless(pool)


async def test_concurrent_redeliveries_are_written_once(
    pool: asyncpg.Pool, second_pool: asyncpg.Pool
) -> None:
    # Two replicas receive overlapping redeliveries at the same time.
    shared = [envelope_record() for _ in range(40)]
    batches = [shared[i : i + 20] for i in range(0, 40, 5)] * 2
    start = await next_seq(pool)

    written = await asyncio.gather(
        *(append_batch(pool if i % 2 else second_pool, batch) for i, batch in enumerate(batches))
    )

    assert sum(written) == len(shared)
    assert sorted((await seqs_of(pool, shared)).values()) == list(range(start, start + 40))
    await assert_log_is_gapless(pool)


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("UPDATE audit_log SET kind = 'message.tampered' WHERE seq = $1", id="update"),
        pytest.param("UPDATE audit_log SET raw_body = NULL WHERE seq = $1", id="update-raw"),
        pytest.param("DELETE FROM audit_log WHERE seq = $1", id="delete"),
        pytest.param("DELETE FROM audit_log WHERE seq >= $1", id="delete-tail"),
        pytest.param("TRUNCATE audit_log", id="truncate"),
    ],
)
async def test_the_log_refuses_changes(pool: asyncpg.Pool, statement: str) -> None:
    record = raw_record()
    await append_batch(pool, [record])
    seq = (await seqs_of(pool, [record]))[record.event_id]
    before = await pool.fetchrow("SELECT * FROM audit_log WHERE seq = $1", seq)
    count_before = await pool.fetchval("SELECT count(*) FROM audit_log")

    arguments = (seq,) if "$1" in statement else ()
    async with pool.acquire() as connection:
        with pytest.raises(asyncpg.PostgresError, match="append-only") as refused:
            await connection.execute(statement, *arguments)
    assert refused.value.sqlstate == "42501"  # insufficient_privilege

    assert await pool.fetchrow("SELECT * FROM audit_log WHERE seq = $1", seq) == before
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == count_before
    await assert_log_is_gapless(pool)


async def test_a_payload_string_with_nul_is_stored(pool: asyncpg.Pool) -> None:
    # A citizen's text may carry U+0000 (JSON "\u0000" in Meta's body); the router copies the
    # text into the event's payload unchanged. jsonb could not hold \u0000: the payload is json,
    # kept verbatim (and hashed into the leaf as stored).
    record = envelope_record(payload={"text": "vote\x00here", "wamid": unique("nul")})
    assert await append_batch(pool, [record]) == 1
    stored = await pool.fetchval(
        "SELECT payload FROM audit_log WHERE event_id = $1", record.event_id
    )
    assert orjson.loads(stored) == record.payload


async def test_one_unstorable_record_does_not_fail_its_batch_mates(pool: asyncpg.Pool) -> None:
    # Postgres text can never hold NUL, so this record cannot be written however payloads are
    # stored. The records that share its batch must still be appended (the batch is retried
    # record by record, and only the bad one fails).
    writer = BatchWriter(pool, batch_size=16, linger=0.2)
    writer.start()
    try:
        good = [envelope_record() for _ in range(3)]
        unstorable = envelope_record(unique("bad") + "\x00")
        outcomes = await asyncio.gather(
            writer.append(good[0]),
            writer.append(unstorable),
            writer.append(good[1]),
            writer.append(good[2]),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert len(await seqs_of(pool, good)) == len(good), outcomes
    assert [outcomes[0], outcomes[2], outcomes[3]] == [None, None, None]
    assert isinstance(outcomes[1], Exception)
    await assert_log_is_gapless(pool)


async def test_batch_writer_appends_concurrent_records_once(pool: asyncpg.Pool) -> None:
    writer = BatchWriter(pool, batch_size=16, linger=0.01)
    writer.start()
    try:
        records = [envelope_record() for _ in range(50)] + [raw_record() for _ in range(10)]
        start = await next_seq(pool)
        await asyncio.gather(*(writer.append(r) for r in [*records, *records[:20]]))
    finally:
        await writer.close()
    seqs = await seqs_of(pool, records)
    assert sorted(seqs.values()) == list(range(start, start + len(records)))
    await assert_log_is_gapless(pool)


# --- The audit consumer through the real RabbitMQ -------------------------------------------


@pytest.fixture(scope="module")
async def inspector(environment: Environment) -> AsyncIterator[AbstractChannel]:
    """The test's own channel. Not robust: a robust channel answers passive declares from its
    cache, so message counts would be stale."""
    connection: AbstractConnection = await aio_pika.connect(environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare(channel)
        yield channel


async def ready_count(channel: AbstractChannel, queue_name: str) -> int:
    declared = await channel.declare_queue(queue_name, passive=True)
    count = declared.declaration_result.message_count
    assert count is not None
    return count


async def purge(channel: AbstractChannel, *queue_names: str) -> None:
    for name in queue_names:
        await (await channel.get_queue(name, ensure=False)).purge()


@dataclass
class RunningAudit:
    consumer: Consumer
    publisher: Publisher


@asynccontextmanager
async def audit_consumer(
    environment: Environment, pool: asyncpg.Pool, *, retry_pause: float = 1.0
) -> AsyncIterator[RunningAudit]:
    broker = Broker(environment.amqp_url, connection_name="audit-store-test")
    broker.start()
    writer = BatchWriter(pool, batch_size=16, linger=0.01)
    writer.start()
    consumer = Consumer(
        broker, AUDIT_EVENTS, audit_handler(writer), prefetch=64, retry_pause=retry_pause
    )
    try:
        await consumer.start()
        yield RunningAudit(consumer, Publisher(broker, timeout=5.0))
    finally:
        await consumer.stop(5)
        await writer.close()
        await broker.close()


def message_envelope(kind: str = "message.voting") -> Envelope:
    wamid = unique("wamid")
    return Envelope(
        event_id=event_id("message", wamid),
        kind=kind,
        occurred_at=OCCURRED_AT,
        correlation_id=wamid,
        payload={"text": "投票所はどこですか", "wamid": wamid},
    )


async def publish_raw_webhook(
    publisher: Publisher, body: bytes, *, signature: str, received_at: datetime
) -> uuid.UUID:
    """What ingress publishes for one accepted webhook."""
    raw_event_id = event_id("webhook", hashlib.sha256(body).hexdigest())
    await publisher.publish(
        INBOUND_WEBHOOK,
        body,
        message_id=str(raw_event_id),
        correlation_id=str(raw_event_id),
        content_type="application/json",
        headers={"x-hub-signature-256": signature, "x-received-at": received_at.isoformat()},
        timestamp=received_at,
    )
    return raw_event_id


async def rows_present(pool: asyncpg.Pool, ids: Sequence[uuid.UUID]) -> int:
    count = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE event_id = ANY($1::uuid[])", list(ids)
    )
    assert isinstance(count, int)
    return count


async def test_consumer_audits_each_event_once(
    environment: Environment, pool: asyncpg.Pool, inspector: AbstractChannel
) -> None:
    await purge(inspector, AUDIT_EVENTS.name, AUDIT_EVENTS.dead_letter_queue)
    envelope = message_envelope()
    body = unique("webhook").encode() + b'{"text":"\\ud22c\\ud45c"}'
    signature = "sha256=" + hashlib.sha256(b"stand-in").hexdigest()
    received_at = datetime.now(UTC) - timedelta(seconds=3)

    async with audit_consumer(environment, pool) as audit:
        for _ in range(3):
            await audit.publisher.publish_envelope(envelope)
        raw_ids = {
            await publish_raw_webhook(
                audit.publisher, body, signature=signature, received_at=received_at
            )
            for _ in range(2)
        }
        assert len(raw_ids) == 1
        raw_id = raw_ids.pop()
        # Published last: once it is written, everything before it has been handled.
        sentinel = message_envelope()
        await audit.publisher.publish_envelope(sentinel)

        ids = [envelope.event_id, raw_id, sentinel.event_id]
        await wait_for_count(lambda: rows_present(pool, ids), 3, what="the audit rows")
        await wait_for_count(
            lambda: ready_count(inspector, AUDIT_EVENTS.name), 0, what="audit.events to drain"
        )
    # Stopped: anything left unacked would be back in the queue now.
    assert await ready_count(inspector, AUDIT_EVENTS.name) == 0
    assert await ready_count(inspector, AUDIT_EVENTS.dead_letter_queue) == 0

    rows = await pool.fetch(
        "SELECT * FROM audit_log WHERE event_id = ANY($1::uuid[]) ORDER BY seq", ids
    )
    assert [row["event_id"] for row in rows] == ids
    message_row, raw_row, _ = rows
    assert message_row["kind"] == "message.voting"
    assert message_row["correlation_id"] == envelope.correlation_id
    assert message_row["occurred_at"] == OCCURRED_AT
    assert orjson.loads(message_row["payload"]) == envelope.payload
    assert message_row["raw_body"] is None
    assert raw_row["kind"] == INBOUND_WEBHOOK
    assert raw_row["raw_body"] == body
    assert raw_row["signature"] == signature
    assert raw_row["occurred_at"] == received_at
    assert orjson.loads(raw_row["payload"]) == {
        "bytes": len(body),
        "content_type": "application/json",
    }
    await assert_log_is_gapless(pool)


async def test_garbage_is_dead_lettered_and_the_consumer_keeps_going(
    environment: Environment, pool: asyncpg.Pool, inspector: AbstractChannel
) -> None:
    await purge(inspector, AUDIT_EVENTS.name, AUDIT_EVENTS.dead_letter_queue)
    garbage_id = uuid.uuid4()
    rows_before = await pool.fetchval("SELECT count(*) FROM audit_log")

    async with audit_consumer(environment, pool) as audit:
        await audit.publisher.publish(
            "message.unknown",
            b"this is not an envelope",
            message_id=str(garbage_id),
            correlation_id="garbage",
            content_type="text/plain",
        )
        await wait_for_count(
            lambda: ready_count(inspector, AUDIT_EVENTS.dead_letter_queue),
            1,
            what="the garbage in audit.events.dlq",
        )
        after = message_envelope("message.unknown")
        await audit.publisher.publish_envelope(after)
        await wait_for_count(
            lambda: rows_present(pool, [after.event_id]),
            1,
            what="the next good message to be written",
        )
        await wait_for_count(
            lambda: ready_count(inspector, AUDIT_EVENTS.name), 0, what="audit.events to drain"
        )
    assert await ready_count(inspector, AUDIT_EVENTS.name) == 0

    dead = await (await inspector.get_queue(AUDIT_EVENTS.dead_letter_queue, ensure=False)).get(
        no_ack=False, fail=False
    )
    assert dead is not None
    await dead.ack()
    assert dead.body == b"this is not an envelope"
    assert dead.message_id == str(garbage_id)
    # Rejected once, without requeue: it did not loop through the delivery limit.
    assert dead.headers.get("x-delivery-count") in (None, 0)
    assert await rows_present(pool, [garbage_id]) == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == rows_before + 1
    await assert_log_is_gapless(pool)


async def test_unstorable_event_does_not_dead_letter_the_events_batched_with_it(
    environment: Environment, pool: asyncpg.Pool, inspector: AbstractChannel
) -> None:
    # The consumer-level effect of the batch retry above: the innocent events that share a batch
    # with an event Postgres refuses reach the log; only the bad one is dead-lettered.
    await purge(inspector, AUDIT_EVENTS.name, AUDIT_EVENTS.dead_letter_queue)
    good = [message_envelope() for _ in range(5)]
    wamid = unique("bad") + "\x00"
    unstorable = Envelope(
        event_id=event_id("message", wamid),
        kind="message.voting",
        occurred_at=OCCURRED_AT,
        correlation_id=wamid,
        payload={"wamid": wamid},
    )

    async with audit_consumer(environment, pool, retry_pause=0.05) as audit:
        await asyncio.gather(
            *(audit.publisher.publish_envelope(e) for e in [good[0], unstorable, *good[1:]])
        )

        everything = [e.event_id for e in [*good, unstorable]]

        async def settled() -> int:
            # Every event ends either in the log or in the dead-letter queue.
            written = await rows_present(pool, everything)
            return written + await ready_count(inspector, AUDIT_EVENTS.dead_letter_queue)

        await wait_for_count(settled, len(everything), what="every event to be written or dead")
    dead_letters = await ready_count(inspector, AUDIT_EVENTS.dead_letter_queue)
    good_written = await rows_present(pool, [e.event_id for e in good])
    await purge(inspector, AUDIT_EVENTS.dead_letter_queue)
    assert good_written == len(good), f"{len(good) - good_written} innocent events dead-lettered"
    assert dead_letters <= 1
    await assert_log_is_gapless(pool)

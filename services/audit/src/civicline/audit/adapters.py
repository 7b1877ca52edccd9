"""Postgres side of the audit log: batched, gapless appends to a Merkle log, tree heads, proofs.

Each batch takes the single log-state row FOR UPDATE, so appends from several audit replicas
are serialised and numbers stay gapless; the same lock covers the tree's right edge (kept in
that row) and the subtree hashes the batch completes. The batch's messages are acked only
after commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog
from prometheus_client import Counter, Gauge, Histogram

from civicline.audit import merkle, privacy
from civicline.audit.canonical import SEALED_VERSION
from civicline.audit.checkpoint import Checkpoint, Signer, sign_checkpoint
from civicline.audit.core import (
    AUDIT_CHECKPOINT,
    AuditRecord,
    Sealing,
    TreeHead,
    checkpoint_due,
    entries_for,
    number_batch,
    stored_source,
    subtrees_to_store,
)
from civicline.audit.merkle import CompactRange, ProofError, Subtree
from civicline.audit.views import erasure_record

log = structlog.get_logger(__name__)

APPENDED = Counter("civicline_audit_appended_total", "Events appended to the audit log")
DUPLICATES = Counter("civicline_audit_duplicates_total", "Redelivered events not appended again")
BATCH_SIZE = Histogram(
    "civicline_audit_batch_size", "Records per audit batch", buckets=(1, 4, 16, 64, 256, 1024)
)
TREE_SIZE = Gauge("civicline_audit_tree_size", "Leaves in the audit Merkle tree")


@dataclass(frozen=True, slots=True)
class Appended:
    new: int
    tree_size: int


@dataclass(slots=True)
class LockedLog:
    next_seq: int
    tree: CompactRange
    now: datetime
    changed: bool = False


async def lock_log(connection: asyncpg.Connection) -> LockedLog:
    """Take the log-state row FOR UPDATE and bring the tree up to next_seq (rows written
    before migration 0004 are folded in once, by whichever writer comes first)."""
    row = await connection.fetchrow(
        "SELECT next_seq, tree_size, frontier FROM audit_log_state WHERE singleton FOR UPDATE"
    )
    # Read the clock only once the lock is held, so recorded_at follows the seq order; the
    # log's partition for that month (and the next) exists before anything is inserted.
    now = await connection.fetchval(
        "SELECT now FROM clock_timestamp() AS now, audit_log_ensure_months() AS ensured"
    )
    locked = LockedLog(row["next_seq"], CompactRange.decode(row["tree_size"], row["frontier"]), now)
    if locked.tree.size < locked.next_seq:
        leaves = await connection.fetch(
            # audit_event_id holds every leaf, those of retired months too
            "SELECT seq, leaf_hash FROM audit_event_id WHERE seq >= $1 ORDER BY seq",
            locked.tree.size,
        )
        if [r["seq"] for r in leaves] != list(range(locked.tree.size, locked.next_seq)):
            raise RuntimeError("audit_log has a gap below next_seq: run civicline-audit verify")
        await _store_subtrees(connection, locked.tree.extend(r["leaf_hash"] for r in leaves))
        locked.changed = True
    return locked


async def _store_subtrees(connection: asyncpg.Connection, completed: Iterable[Subtree]) -> None:
    kept = subtrees_to_store(completed)
    if kept:
        await connection.execute(
            """INSERT INTO audit_subtree (level, start_seq, hash)
               SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])""",
            [s.level for s in kept],
            [s.index << s.level for s in kept],
            [s.hash for s in kept],
        )


async def _save_state(connection: asyncpg.Connection, locked: LockedLog) -> None:
    await connection.execute(
        "UPDATE audit_log_state SET next_seq = $1, tree_size = $2, frontier = $3 WHERE singleton",
        locked.next_seq,
        locked.tree.size,
        locked.tree.encode(),
    )


async def live_data_keys(
    connection: asyncpg.Connection,
    subjects: Iterable[bytes],
    keys: privacy.PrivacyKeys,
    *,
    create: bool,
) -> dict[bytes, tuple[uuid.UUID, bytes]]:
    """Each subject's live data key (key id, key), created for those without one if `create`.
    Call with the log lock held: erasures take it too, so no event is sealed with a key that
    is being destroyed."""
    wanted = sorted(set(subjects))
    found: dict[bytes, tuple[uuid.UUID, bytes]] = {}
    if not wanted:
        return found
    for row in await connection.fetch(
        """SELECT key_id, subject, wrapped_key FROM audit_subject_key
           WHERE subject = ANY($1::bytea[]) AND erased_at IS NULL""",
        wanted,
    ):
        key_id = row["key_id"]
        found[bytes(row["subject"])] = (
            key_id,
            privacy.unwrap_key(keys.master, key_id, row["wrapped_key"]),
        )
    missing = [subject for subject in wanted if subject not in found]
    if missing and create:
        made = [
            (subject, uuid.uuid4(), secrets.token_bytes(privacy.KEY_SIZE)) for subject in missing
        ]
        await connection.execute(
            """INSERT INTO audit_subject_key (key_id, subject, wrapped_key)
               SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bytea[])""",
            [key_id for _, key_id, _ in made],
            [subject for subject, _, _ in made],
            [privacy.wrap_key(keys.master, key_id, key) for _, key_id, key in made],
        )
        found.update({subject: (key_id, key) for subject, key_id, key in made})
    return found


async def _sealing(
    connection: asyncpg.Connection,
    numbered: Sequence[tuple[int, AuditRecord]],
    keys: privacy.PrivacyKeys | None,
) -> Sealing | None:
    if keys is None:
        return None
    subjects = {record.event_id: keys.subjects(record.citizens()) for _, record in numbered}
    every = {subject for found in subjects.values() for subject in found}
    return Sealing(subjects, await live_data_keys(connection, every, keys, create=True))


def _array_literal(elements: Iterable[str]) -> str:
    return "{" + ",".join(elements) + "}"


async def _append_locked(
    connection: asyncpg.Connection,
    locked: LockedLog,
    records: Sequence[AuditRecord],
    keys: privacy.PrivacyKeys | None,
) -> int:
    """Insert the records not yet logged under the held log lock; returns how many."""
    existing = await connection.fetch(
        "SELECT event_id FROM audit_event_id WHERE event_id = ANY($1::uuid[])",
        [r.event_id for r in records],
    )
    numbered = number_batch(records, {row["event_id"] for row in existing}, locked.next_seq)
    rows = entries_for(numbered, locked.now, await _sealing(connection, numbered, keys))
    if not rows:
        return 0
    await connection.execute(
        # audit_event_id keeps seq and event_id unique across the log's monthly partitions.
        """WITH registered AS (
               INSERT INTO audit_event_id (event_id, seq, leaf_hash)
               SELECT * FROM unnest($3::uuid[], $2::bigint[], $11::bytea[]))
           INSERT INTO audit_log (seq, event_id, kind, occurred_at, recorded_at,
                                  correlation_id, schema_version, payload, raw_body,
                                  signature, leaf_hash, leaf_version, intent, subjects,
                                  key_ids, sealed_payload)
           SELECT seq, event_id, kind, occurred_at, $1::timestamptz, correlation_id,
                  schema_version, payload::json, raw_body, signature, leaf_hash,
                  $12::smallint, intent, subjects::bytea[], key_ids::uuid[], sealed_payload
           FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[],
                       $6::text[], $7::int[], $8::text[], $9::bytea[], $10::text[],
                       $11::bytea[], $13::text[], $14::text[], $15::text[],
                       $16::bytea[])
                AS t(seq, event_id, kind, occurred_at, correlation_id,
                     schema_version, payload, raw_body, signature, leaf_hash,
                     intent, subjects, key_ids, sealed_payload)""",
        locked.now,
        [r.entry.seq for r in rows],
        [r.entry.event_id for r in rows],
        [r.entry.kind for r in rows],
        [r.entry.occurred_at for r in rows],
        [r.entry.correlation_id for r in rows],
        [r.entry.schema_version for r in rows],
        [r.entry.payload_json for r in rows],
        [r.raw_body for r in rows],
        [r.entry.signature for r in rows],
        [r.leaf_hash for r in rows],
        SEALED_VERSION,
        [r.entry.intent for r in rows],
        # Arrays of arrays cannot be unnested row by row: each row's list goes as an array
        # literal, cast back per row.
        [_array_literal(f'"\\\\x{s.hex()}"' for s in r.entry.subjects) for r in rows],
        [_array_literal(str(k) for k in r.entry.key_ids) for r in rows],
        [r.entry.sealed_payload for r in rows],
    )
    await _store_subtrees(connection, locked.tree.extend(r.leaf_hash for r in rows))
    locked.next_seq += len(rows)
    locked.changed = True
    return len(rows)


async def append_locked(
    connection: asyncpg.Connection,
    locked: LockedLog,
    records: Sequence[AuditRecord],
    keys: privacy.PrivacyKeys | None = None,
) -> int:
    """Append records in a transaction that already holds the log lock (`lock_log`), with
    whatever else it does; returns how many were new."""
    new = await _append_locked(connection, locked, records, keys)
    if locked.changed:
        await _save_state(connection, locked)
    return new


async def append_records(
    pool: asyncpg.Pool,
    records: Sequence[AuditRecord],
    keys: privacy.PrivacyKeys | None = None,
) -> Appended:
    """Append the records not yet logged, as leaves of the Merkle tree (sealed for the
    citizens they are about when `keys` are given)."""
    async with pool.acquire() as connection, connection.transaction():
        locked = await lock_log(connection)
        new = await append_locked(connection, locked, records, keys)
    APPENDED.inc(new)
    DUPLICATES.inc(len(records) - new)
    BATCH_SIZE.observe(len(records))
    TREE_SIZE.set(locked.tree.size)
    return Appended(new, locked.tree.size)


@dataclass(frozen=True, slots=True)
class Erasure:
    subject: bytes
    key_ids: list[uuid.UUID]
    events: int
    seq: int | None  # of the audit.erasure event; None if the citizen had no live key


async def erase_subject(
    pool: asyncpg.Pool, keys: privacy.PrivacyKeys, citizen: str, *, requested_by: str
) -> Erasure:
    """Destroy a citizen's data keys and log the erasure, in one transaction under the log
    lock, so no batch seals with the key while it goes. Their events stay in the log, sealed
    for good; every leaf, proof and tree head still verifies (leaves hash the ciphertext)."""
    subject = keys.pseudonymise(citizen)
    async with pool.acquire() as connection, connection.transaction():
        locked = await lock_log(connection)
        erased = await connection.fetch(
            """UPDATE audit_subject_key SET wrapped_key = NULL, erased_at = $2
               WHERE subject = $1 AND erased_at IS NULL RETURNING key_id""",
            subject,
            locked.now,
        )
        key_ids = [row["key_id"] for row in erased]
        events = await connection.fetchval(
            "SELECT count(*) FROM audit_log WHERE subjects @> ARRAY[$1::bytea]", subject
        )
        seq = None
        if key_ids:
            seq = locked.next_seq
            record = erasure_record(
                subject=subject,
                key_ids=key_ids,
                events=events,
                requested_by=requested_by,
                at=locked.now,
            )
            await _append_locked(connection, locked, [record], keys)
        if locked.changed:
            await _save_state(connection, locked)
    return Erasure(subject, key_ids, events, seq)


async def data_keys(
    connection: asyncpg.Connection, key_ids: Iterable[uuid.UUID], keys: privacy.PrivacyKeys
) -> dict[uuid.UUID, bytes | None]:
    """The data keys with these ids, unwrapped; None for those erased."""
    wanted = sorted(set(key_ids))
    if not wanted:
        return {}
    rows = await connection.fetch(
        "SELECT key_id, wrapped_key FROM audit_subject_key WHERE key_id = ANY($1::uuid[])", wanted
    )
    found: dict[uuid.UUID, bytes | None] = dict.fromkeys(wanted)
    for row in rows:
        wrapped = row["wrapped_key"]
        if wrapped is not None:
            found[row["key_id"]] = privacy.unwrap_key(keys.master, row["key_id"], wrapped)
    return found


async def append_batch(
    pool: asyncpg.Pool,
    records: Sequence[AuditRecord],
    keys: privacy.PrivacyKeys | None = None,
) -> int:
    """Append the records not yet logged; returns how many were new."""
    return (await append_records(pool, records, keys)).new


async def sign_tree_head(
    pool: asyncpg.Pool, signer: Signer, *, forced: bool = False
) -> TreeHead | None:
    """Sign and store a tree head for the log as it is now, if one is due (`forced`: whenever
    the log grew since the last head). Returns the new head, or None."""
    async with pool.acquire() as connection, connection.transaction():
        locked = await lock_log(connection)
        if locked.changed:
            await _save_state(connection, locked)
        last_signed = await connection.fetchval(
            "SELECT coalesce(max(tree_size), 0) FROM audit_tree_head"
        )
        size = locked.tree.size
        # The first such event in seq order: a walk of the primary key that stops at once.
        # (As an EXISTS, the planner may first build a bitmap of the whole range: 540 ms for
        # the first head over 10,000,000 events, with the log partitioned by month.)
        other = (
            await connection.fetchval(
                """SELECT seq FROM audit_log WHERE seq >= $1 AND seq < $2 AND kind <> $3
                   ORDER BY seq LIMIT 1""",
                last_signed,
                size,
                AUDIT_CHECKPOINT,
            )
            is not None
        )
        if not checkpoint_due(
            tree_size=size, last_signed=last_signed, other_than_checkpoints=other, forced=forced
        ):
            return None
        checkpoint = Checkpoint(signer.name, size, locked.tree.root(), locked.now)
        head = TreeHead(size, checkpoint.root_hash, locked.now, sign_checkpoint(checkpoint, signer))
        await connection.execute(
            """INSERT INTO audit_tree_head (tree_size, root_hash, signed_at, checkpoint)
               VALUES ($1, $2, $3, $4)""",
            head.tree_size,
            head.root_hash,
            head.signed_at,
            head.checkpoint,
        )
    return head


def _head(row: asyncpg.Record) -> TreeHead:
    return TreeHead(row["tree_size"], row["root_hash"], row["signed_at"], row["checkpoint"])


async def latest_tree_head(connection: asyncpg.Connection) -> TreeHead | None:
    row = await connection.fetchrow("SELECT * FROM audit_tree_head ORDER BY tree_size DESC LIMIT 1")
    return None if row is None else _head(row)


async def tree_heads(connection: asyncpg.Connection) -> list[TreeHead]:
    rows = await connection.fetch("SELECT * FROM audit_tree_head ORDER BY tree_size")
    return [_head(row) for row in rows]


async def tree_size(connection: asyncpg.Connection) -> int:
    """Leaves in the tree (rows from before migration 0004 count once a writer folded them)."""
    size = await connection.fetchval("SELECT tree_size FROM audit_log_state")
    assert isinstance(size, int)
    return size


async def _perfect_hashes(
    connection: asyncpg.Connection, ranges: Iterable[tuple[int, int]]
) -> merkle.PerfectHash:
    """Read, in two queries, every stored hash the perfect subtrees of `ranges` are made of."""
    wanted = {piece for start, end in ranges for piece in merkle.perfect_ranges(start, end)}
    leaf_seqs: set[int] = set()
    subtree_keys: set[tuple[int, int]] = set()
    for level, index in wanted:
        base, first, count = stored_source(level, index)
        if base == 0:
            leaf_seqs.update(range(first, first + count))
        else:
            subtree_keys.update((base, (first + i) << base) for i in range(count))
    stored: dict[tuple[int, int], bytes] = {}
    for row in await connection.fetch(
        # audit_event_id, not the log: it keeps the leaves of retired months too
        "SELECT seq, leaf_hash FROM audit_event_id WHERE seq = ANY($1::bigint[])",
        sorted(leaf_seqs),
    ):
        stored[0, row["seq"]] = row["leaf_hash"]
    if subtree_keys:
        keys = sorted(subtree_keys)
        for row in await connection.fetch(
            """SELECT s.level, s.start_seq, s.hash FROM audit_subtree s
               JOIN unnest($1::smallint[], $2::bigint[]) AS k(level, start_seq)
                 USING (level, start_seq)""",
            [level for level, _ in keys],
            [start for _, start in keys],
        ):
            stored[row["level"], row["start_seq"]] = row["hash"]

    def perfect(level: int, index: int) -> bytes:
        base, first, count = stored_source(level, index)
        try:
            hashes = [stored[base, (first + i) << base] for i in range(count)]
        except KeyError:
            raise ProofError(f"the stored tree lacks the subtree ({level}, {index})") from None
        return merkle.root(hashes)

    return perfect


async def inclusion_proof(connection: asyncpg.Connection, seq: int, size: int) -> list[bytes]:
    """The audit path of leaf `seq` in the tree of `size` leaves, from stored hashes."""
    if size > await tree_size(connection):
        raise ProofError(f"the tree has not reached size {size}")
    ranges = merkle.inclusion_ranges(seq, size)
    perfect = await _perfect_hashes(connection, ranges)
    return [merkle.range_hash(start, end, perfect) for start, end in ranges]


async def range_perfect_hashes(
    connection: asyncpg.Connection, first: int, end: int, size: int
) -> merkle.PerfectHash:
    """The stored hashes a range proof of leaves [first, end) in the tree of `size` needs."""
    if size > await tree_size(connection):
        raise ProofError(f"the tree has not reached size {size}")
    return await _perfect_hashes(connection, [(0, first), (end, size)])


async def consistency_proof(connection: asyncpg.Connection, first: int, second: int) -> list[bytes]:
    """The proof that the tree of `first` leaves is a prefix of the tree of `second` leaves."""
    if second > await tree_size(connection):
        raise ProofError(f"the tree has not reached size {second}")
    ranges = merkle.consistency_ranges(first, second)
    perfect = await _perfect_hashes(connection, ranges)
    return [merkle.range_hash(start, end, perfect) for start, end in ranges]


class UnstorableRecord(Exception):
    """The database refuses this record's data; retrying cannot help."""


def _settle(done: asyncio.Future[None], outcome: BaseException | None) -> None:
    if done.done():
        return
    if outcome is None:
        done.set_result(None)
    else:
        done.set_exception(outcome)


class BatchWriter:
    """Collects records from concurrent handlers into batches; each `append` returns only
    after the batch holding its record has committed (or raises if it failed)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch_size: int,
        linger: float,
        on_commit: Callable[[int], None] | None = None,
        keys: privacy.PrivacyKeys | None = None,
    ) -> None:
        self._pool = pool
        self._on_commit = on_commit
        self._keys = keys
        self._batch_size = batch_size
        self._linger = linger
        self._pending: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-batch-writer")

    async def append(self, record: AuditRecord) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, done))
        self._has_work.set()
        if len(self._pending) >= self._batch_size:
            self._full.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._has_work.wait()
            # Linger briefly so records arriving together share one transaction.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._linger)
            batch = self._pending[: self._batch_size]
            del self._pending[: self._batch_size]
            if len(self._pending) < self._batch_size:
                self._full.clear()
            if not self._pending:
                self._has_work.clear()
            await self._write(batch)

    async def _append(self, records: Sequence[AuditRecord]) -> None:
        appended = await append_records(self._pool, records, self._keys)
        if self._on_commit is not None:
            self._on_commit(appended.tree_size)

    async def _write(self, batch: list[tuple[AuditRecord, asyncio.Future[None]]]) -> None:
        try:
            await self._append([record for record, _ in batch])
        except asyncpg.DataError:
            # One record the database cannot store must not keep its batch-mates out of the
            # log: write them one by one, so only the bad one fails (and is dead-lettered).
            for record, done in batch:
                try:
                    await self._append([record])
                except asyncpg.DataError as exc:
                    _settle(done, UnstorableRecord(f"{type(exc).__name__}: {exc}"))
                except Exception as exc:
                    _settle(done, exc)
                else:
                    _settle(done, None)
        except Exception as exc:
            # The database is unreachable or failing: every waiter is requeued to retry.
            error = f"{type(exc).__name__}: {exc}"
            log.warning("audit_batch_failed", size=len(batch), error=error)
            for _, done in batch:
                _settle(done, exc)
        else:
            for _, done in batch:
                _settle(done, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

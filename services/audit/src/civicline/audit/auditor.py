"""What an auditor runs, as a Python API (the `civicline-audit` subcommands call these): verify
the log in the database or in an NDJSON export, export it, and check one event's inclusion or
the log's consistency with a checkpoint saved earlier, each with only the public key.

Database reads happen in one REPEATABLE READ, READ ONLY transaction, so rows, state and tree
heads come from one snapshot; the auditor role's SELECT is all they need.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import orjson

from civicline.audit import adapters, merkle, query
from civicline.audit.canonical import LogEntry, entry_leaf_hash
from civicline.audit.checkpoint import Verifier, open_checkpoint
from civicline.audit.core import TreeHead
from civicline.audit.verify import (
    LogVerifier,
    RangeProof,
    RangeVerifier,
    Report,
    RetiredLeaf,
    StoredEntry,
    StoredHead,
    retention,
)

EXPORT_FORMAT = "civicline-audit-export"
EXPORT_VERSION = 2
READABLE_EXPORT_VERSIONS = (1, 2)
COLUMNS = """seq, event_id, kind, occurred_at, recorded_at, correlation_id, schema_version,
             payload::text AS payload, raw_body, signature, leaf_hash, leaf_version, intent,
             subjects, key_ids, sealed_payload"""
ROWS = f"SELECT {COLUMNS} FROM audit_log"  # noqa: S608 (constants only)
# An event by its id: the log's months have no index on event_id, audit_event_id has.
SEQ_OF_EVENT = "SELECT seq FROM audit_event_id WHERE event_id = $1"
EVENT_AT = f"{ROWS} WHERE seq = $1"


class ExportError(ValueError):
    """An export file that is not one, or is damaged beyond reading."""


def row_entry(row: asyncpg.Record) -> LogEntry:
    """The entry a stored row is, as its leaf covers it (encoding v1 or v2)."""
    return LogEntry.with_raw_body(
        seq=row["seq"],
        event_id=row["event_id"],
        kind=row["kind"],
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
        correlation_id=row["correlation_id"],
        schema_version=row["schema_version"],
        payload_json=row["payload"],
        raw_body=row["raw_body"],
        signature=row["signature"],
        version=row["leaf_version"],
        intent=row["intent"],
        subjects=tuple(bytes(s) for s in row["subjects"] or ()),
        key_ids=tuple(row["key_ids"] or ()),
        sealed_payload=row["sealed_payload"],
    )


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def export_line(row: asyncpg.Record) -> dict[str, Any]:
    """One event of an export, every column as stored (sealed payloads stay sealed)."""
    return {
        "type": "event",
        "seq": row["seq"],
        "event_id": str(row["event_id"]),
        "kind": row["kind"],
        "occurred_at": _time(row["occurred_at"]),
        "recorded_at": _time(row["recorded_at"]),
        "correlation_id": row["correlation_id"],
        "schema_version": row["schema_version"],
        "payload": row["payload"],
        "raw_body": _b64(row["raw_body"]),
        "signature": row["signature"],
        "leaf_hash": row["leaf_hash"].hex(),
        "leaf_version": row["leaf_version"],
        "intent": row["intent"],
        "subjects": [bytes(s).hex() for s in row["subjects"] or ()],
        "key_ids": [str(k) for k in row["key_ids"] or ()],
        "sealed_payload": _b64(row["sealed_payload"]),
    }


def tree_head_line(head: TreeHead) -> dict[str, Any]:
    return {
        "type": "tree_head",
        "tree_size": head.tree_size,
        "root_hash": head.root_hash.hex(),
        "signed_at": _time(head.signed_at),
        "checkpoint": head.checkpoint,
    }


@asynccontextmanager
async def _snapshot(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            yield connection
    finally:
        await connection.close()


async def _stored_heads(connection: asyncpg.Connection) -> list[StoredHead]:
    return [
        StoredHead(h.tree_size, h.root_hash, h.checkpoint)
        for h in await adapters.tree_heads(connection)
    ]


async def event_row(connection: asyncpg.Connection, ref: int | uuid.UUID) -> asyncpg.Record | None:
    """The log's row of one event, by seq or by event id; None if the log holds no such row.
    audit_event_id only finds the seq: the row itself must say it is that event."""
    seq = await connection.fetchval(SEQ_OF_EVENT, ref) if isinstance(ref, uuid.UUID) else ref
    if seq is None:
        return None
    row = await connection.fetchrow(EVENT_AT, seq)
    if row is None or (isinstance(ref, uuid.UUID) and row["event_id"] != ref):
        return None
    return row


async def range_preamble(
    connection: asyncpg.Connection, first: int, end: int, next_seq: int, head: TreeHead | None
) -> list[dict[str, Any]]:
    """The lines a range export starts with: its header and, when `head` covers the range,
    that head and the range proof against it."""
    lines: list[dict[str, Any]] = [
        {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "next_seq": next_seq,
            "first_seq": first,
            "end_seq": end,
        }
    ]
    if head is not None and end <= head.tree_size:
        perfect = await adapters.range_perfect_hashes(connection, first, end, head.tree_size)
        left, right = query.range_proof(first, end, head.tree_size, perfect)
        lines.append(tree_head_line(head))
        lines.append(
            {
                "type": "range_proof",
                "tree_size": head.tree_size,
                "left": [element.hex() for element in left],
                "right": [element.hex() for element in right],
            }
        )
    return lines


async def retired_ranges(connection: asyncpg.Connection) -> list[tuple[int, int]]:
    """The [first, end) seq ranges retired with their months, as the latest audit.retention
    event of the log lists them (each lists every range retired so far, and the latest is
    never in a retired month)."""
    payload = await connection.fetchval(
        """SELECT payload::text FROM audit_log WHERE kind = $1
           ORDER BY seq DESC LIMIT 1""",
        query.RETENTION_KIND,
    )
    said = retention(payload)
    return [] if said is None else list(said.retired)


async def log_items(
    connection: asyncpg.Connection, retired: Sequence[tuple[int, int]]
) -> AsyncIterator[asyncpg.Record | RetiredLeaf]:
    """Every event by seq: a row of the log, or, inside a retired range, the leaf hash that
    audit_event_id keeps of it."""
    pending = sorted(retired)

    async def leaves(first: int, end: int) -> AsyncIterator[RetiredLeaf]:
        async for row in connection.cursor(
            "SELECT seq, leaf_hash FROM audit_event_id WHERE seq >= $1 AND seq < $2 ORDER BY seq",
            first,
            end,
            prefetch=5000,
        ):
            yield RetiredLeaf(row["seq"], row["leaf_hash"])

    async for row in connection.cursor(f"{ROWS} ORDER BY seq", prefetch=5000):
        while pending and pending[0][0] <= row["seq"]:
            async for leaf in leaves(*pending.pop(0)):
                yield leaf
        yield row
    for first, end in pending:
        async for leaf in leaves(first, end):
            yield leaf


async def verify_database(
    database_url: str, verifier: Verifier, saved_checkpoints: tuple[str, ...] = ()
) -> Report:
    async with _snapshot(database_url) as connection:
        next_seq = await connection.fetchval("SELECT next_seq FROM audit_log_state")
        retired = await retired_ranges(connection)
        checker = LogVerifier(
            verifier, await _stored_heads(connection), saved_checkpoints, next_seq, retired
        )
        async for item in log_items(connection, retired):
            if isinstance(item, RetiredLeaf):
                checker.add_retired(item)
            else:
                checker.add(StoredEntry(row_entry(item), item["leaf_hash"]))
    return checker.finish()


def _time(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def export_database(database_url: str, out: TextIO) -> int:
    """Write the log as NDJSON: a header, the tree heads, then every event by seq. Returns the
    number of events written."""
    count = 0
    async with _snapshot(database_url) as connection:
        next_seq = await connection.fetchval("SELECT next_seq FROM audit_log_state")
        retired = await retired_ranges(connection)
        header: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "next_seq": next_seq,
        }
        if retired:
            header["retired"] = [list(r) for r in retired]
        out.write(orjson.dumps(header).decode() + "\n")
        for head in await adapters.tree_heads(connection):
            out.write(orjson.dumps(tree_head_line(head)).decode() + "\n")
        async for item in log_items(connection, retired):
            line = (
                {"type": "retired", "seq": item.seq, "leaf_hash": item.leaf_hash.hex()}
                if isinstance(item, RetiredLeaf)
                else export_line(item)
            )
            out.write(orjson.dumps(line).decode() + "\n")
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class Export:
    path: Path
    next_seq: int | None
    heads: list[StoredHead]
    first_seq: int | None = None  # set for an export of a range (the query API's /v1/export)
    end_seq: int | None = None
    range_proof: RangeProof | None = None
    retired: tuple[tuple[int, int], ...] = ()  # ranges whose events are leaves only

    def entries(self) -> Iterator[StoredEntry | RetiredLeaf]:
        with self.path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                document = _line(line, number)
                if document.get("type") == "event":
                    yield _stored_entry(document, number)
                elif document.get("type") == "retired":
                    try:
                        yield RetiredLeaf(
                            int(document["seq"]), bytes.fromhex(document["leaf_hash"])
                        )
                    except (KeyError, TypeError, ValueError) as exc:
                        raise ExportError(f"line {number}: not a retired leaf: {exc!r}") from None


def _line(line: bytes, number: int) -> dict[str, Any]:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ExportError(f"line {number} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ExportError(f"line {number} is not a JSON object")
    return document


def _optional_b64(value: Any) -> bytes | None:
    return None if value is None else base64.b64decode(value, validate=True)


def _stored_entry(document: dict[str, Any], number: int) -> StoredEntry:
    try:
        raw = document["raw_body"]
        entry = LogEntry.with_raw_body(
            seq=int(document["seq"]),
            event_id=uuid.UUID(document["event_id"]),
            kind=document["kind"],
            occurred_at=datetime.fromisoformat(document["occurred_at"]),
            recorded_at=datetime.fromisoformat(document["recorded_at"]),
            correlation_id=document["correlation_id"],
            schema_version=int(document["schema_version"]),
            payload_json=document["payload"],
            raw_body=_optional_b64(raw),
            signature=document["signature"],
            version=int(document.get("leaf_version", 1)),
            intent=document.get("intent"),
            subjects=tuple(bytes.fromhex(s) for s in document.get("subjects", ())),
            key_ids=tuple(uuid.UUID(k) for k in document.get("key_ids", ())),
            sealed_payload=_optional_b64(document.get("sealed_payload")),
        )
        leaf = document.get("leaf_hash")
        return StoredEntry(entry, None if leaf is None else bytes.fromhex(leaf))
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"line {number}: not an audit event: {exc!r}") from None


def read_export(path: Path) -> Export:
    """The export's header and tree heads (events are streamed later, by `entries()`)."""
    heads: list[StoredHead] = []
    next_seq = None
    header: dict[str, Any] = {}
    proof = None
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            document = _line(line, number)
            if number == 1:
                if document.get("format") != EXPORT_FORMAT:
                    raise ExportError(f"{path} is not a {EXPORT_FORMAT} file")
                if document.get("version") not in READABLE_EXPORT_VERSIONS:
                    raise ExportError(f"export version {document.get('version')} is unknown")
                next_seq = document.get("next_seq")
                header = document
            elif document.get("type") == "range_proof":
                try:
                    proof = RangeProof(
                        int(document["tree_size"]),
                        tuple(bytes.fromhex(h) for h in document["left"]),
                        tuple(bytes.fromhex(h) for h in document["right"]),
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ExportError(f"line {number}: not a range proof: {exc!r}") from None
            elif document.get("type") == "tree_head":
                try:
                    heads.append(
                        StoredHead(
                            int(document["tree_size"]),
                            bytes.fromhex(document["root_hash"]),
                            document["checkpoint"],
                        )
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ExportError(f"line {number}: not a tree head: {exc!r}") from None
    first, end = header.get("first_seq"), header.get("end_seq")
    if (first is None) != (end is None) or any(
        v is not None and (not isinstance(v, int) or v < 0) for v in (first, end)
    ):
        raise ExportError("the header's first_seq and end_seq are not a range")
    try:
        retired = tuple((int(a), int(b)) for a, b in header.get("retired", ()))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"the header's retired ranges are not ranges: {exc!r}") from None
    return Export(path, next_seq, heads, first, end, proof, retired)


def verify_export(
    path: Path, verifier: Verifier, saved_checkpoints: tuple[str, ...] = ()
) -> Report:
    export = read_export(path)
    if export.first_seq is not None and export.end_seq is not None:
        ranged = RangeVerifier(
            verifier,
            export.heads,
            export.first_seq,
            export.end_seq,
            export.range_proof,
            saved_checkpoints,
        )
        for item in export.entries():
            if isinstance(item, StoredEntry):  # a range export holds no retired leaves
                ranged.add(item)
        return ranged.finish()
    checker = LogVerifier(
        verifier, export.heads, saved_checkpoints, export.next_seq, export.retired
    )
    for item in export.entries():
        checker.feed(item)
    return checker.finish()


@dataclass(frozen=True, slots=True)
class InclusionCheck:
    seq: int
    event_id: uuid.UUID
    tree_size: int
    leaf_hash: bytes
    proof: list[bytes]
    root_hash: bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": str(self.event_id),
            "tree_size": self.tree_size,
            "leaf_hash": self.leaf_hash.hex(),
            "proof": [element.hex() for element in self.proof],
            "root_hash": self.root_hash.hex(),
        }


async def check_inclusion(
    database_url: str,
    verifier: Verifier,
    checkpoint_note: str,
    *,
    seq: int | None = None,
    event_id: uuid.UUID | None = None,
) -> InclusionCheck:
    """Prove that one event, as stored now, is in the tree a signed checkpoint commits to.

    The leaf is recomputed from the row's content (never taken from the database), and the
    proof is checked against the checkpoint's root: merkle.ProofError (or CheckpointError for
    the signature) unless the event is included exactly as stored.
    """
    checkpoint = open_checkpoint(checkpoint_note, verifier)
    async with _snapshot(database_url) as connection:
        ref = seq if seq is not None else event_id
        assert ref is not None, "a seq or an event id"
        row = await event_row(connection, ref)
        if row is None:
            raise merkle.ProofError(f"no event {ref} in the log")
        seq = row["seq"]
        proof = await adapters.inclusion_proof(connection, seq, checkpoint.tree_size)
    leaf = entry_leaf_hash(row_entry(row))
    merkle.verify_inclusion(seq, checkpoint.tree_size, leaf, proof, checkpoint.root_hash)
    return InclusionCheck(
        seq, row["event_id"], checkpoint.tree_size, leaf, proof, checkpoint.root_hash
    )


@dataclass(frozen=True, slots=True)
class ConsistencyCheck:
    first_size: int
    second_size: int
    proof: list[bytes]


async def check_consistency(
    database_url: str, verifier: Verifier, saved_note: str, newer_note: str | None = None
) -> ConsistencyCheck:
    """Prove that the log behind a checkpoint saved earlier is a prefix of the log now (the
    latest stored tree head, or `newer_note`): O(log n) reads, where `verify` reads all.
    merkle.ProofError unless it is."""
    first = open_checkpoint(saved_note, verifier)
    async with _snapshot(database_url) as connection:
        if newer_note is None:
            latest = await adapters.latest_tree_head(connection)
            if latest is None:
                raise merkle.ProofError("the database holds no signed tree head")
            newer_note = latest.checkpoint
        second = open_checkpoint(newer_note, verifier)
        if second.tree_size < first.tree_size:
            raise merkle.ProofError(
                f"the log shrank: the saved checkpoint has {first.tree_size} events, "
                f"the newer one {second.tree_size}"
            )
        proof = await adapters.consistency_proof(connection, first.tree_size, second.tree_size)
    merkle.verify_consistency(
        first.tree_size, second.tree_size, first.root_hash, second.root_hash, proof
    )
    return ConsistencyCheck(first.tree_size, second.tree_size, proof)

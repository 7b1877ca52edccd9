"""Audit logs for tests: sample records, and a database of its own for a test that tampers
with one (or needs the migrations applied step by step)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from civicline.audit.canonical import LogEntry, entry_leaf_hash
from civicline.audit.core import AuditRecord
from civicline.common import migrate as migrations
from civicline.common.envelope import SCHEMA_VERSION, event_id
from support.isolation import create_database, drop_database, unique_name

START = datetime(2026, 7, 18, 9, 30, tzinfo=UTC)


def sample_records(
    count: int, *, kind: str = "message.voting", raw_webhooks: bool = True
) -> list[AuditRecord]:
    """Distinct events of `kind`, every third one (unless not `raw_webhooks`) a raw webhook
    with its body and signature."""
    records = []
    for n in range(count):
        key = uuid.uuid4().hex
        if raw_webhooks and n % 3 == 0:
            body = f'{{"entry":"{key}","text":"\\ud22c\\ud45c"}}'.encode() + b"\x00\xff"
            records.append(
                AuditRecord(
                    event_id=event_id("webhook", key),
                    kind="inbound.webhook",
                    occurred_at=START + timedelta(seconds=n),
                    correlation_id=key,
                    schema_version=SCHEMA_VERSION,
                    payload={"bytes": len(body), "content_type": "application/json"},
                    raw_body=body,
                    signature="sha256=" + "ab" * 32,
                )
            )
        else:
            records.append(
                AuditRecord(
                    event_id=event_id("message", key),
                    kind=kind,
                    occurred_at=START + timedelta(seconds=n),
                    correlation_id=f"wamid.{key}",
                    schema_version=SCHEMA_VERSION,
                    payload={"text": "투표소 위치", "n": n},
                )
            )
    return records


def database_url_as(database_url: str, role: str) -> str:
    """The same database, reached as another role (trust authentication on 127.0.0.1)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(database_url)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{role}@{host}{port}"))


async def migrate_below(connection: asyncpg.Connection, version: int) -> None:
    """Apply only the migrations numbered below `version`, to write rows as older code did
    (a later `migrate(connection)` applies the rest)."""
    every = migrations.available_migrations()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            migrations, "available_migrations", lambda: [m for m in every if m.version < version]
        )
        await migrations.migrate(connection)


async def _write_v1_rows(connection: asyncpg.Connection, count: int, at: datetime) -> None:
    """`count` rows exactly as the writer before migration 0030 stored them (encoding v1, with
    the leaf it computed), recorded a second apart from `at`, into a log migrated below 0030."""
    for seq in range(count):
        entry = LogEntry.with_raw_body(
            seq=seq,
            event_id=uuid.uuid4(),
            kind="message.voting",
            occurred_at=at + timedelta(seconds=seq),
            recorded_at=at + timedelta(seconds=seq),
            correlation_id=f"wamid.v1.{seq}",
            schema_version=1,
            payload_json=f'{{"from":"8210{seq:08d}","text":"투표"}}',
            raw_body=b"raw\x00" if seq % 2 else None,
            signature="sha256=00" if seq % 2 else None,
        )
        await connection.execute(
            """INSERT INTO audit_log (seq, event_id, kind, occurred_at, recorded_at,
                   correlation_id, schema_version, payload, raw_body, signature, leaf_hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json, $9, $10, $11)""",
            entry.seq,
            entry.event_id,
            entry.kind,
            entry.occurred_at,
            entry.recorded_at,
            entry.correlation_id,
            entry.schema_version,
            entry.payload_json,
            b"raw\x00" if seq % 2 else None,
            entry.signature,
            entry_leaf_hash(entry),
        )
    await connection.execute("UPDATE audit_log_state SET next_seq = $1", count)


async def write_history(
    connection: asyncpg.Connection, events: list[tuple[datetime, str, str]]
) -> None:
    """Events recorded in the past, as the writer would have logged them then (encoding v1,
    their leaves, audit_event_id, the log state): (recorded_at, kind, payload JSON) each,
    numbered from the log's next seq. The owner's; the writer stamps the present."""
    first = await connection.fetchval("SELECT next_seq FROM audit_log_state")
    for seq, (recorded_at, kind, payload_json) in enumerate(events, start=first):
        await connection.execute("SELECT audit_log_ensure_months_at($1)", recorded_at)
        entry = LogEntry.with_raw_body(
            seq=seq,
            event_id=uuid.uuid4(),
            kind=kind,
            occurred_at=recorded_at,
            recorded_at=recorded_at,
            correlation_id=f"history.{seq}",
            schema_version=1,
            payload_json=payload_json,
            raw_body=None,
            signature=None,
            version=1,
        )
        leaf = entry_leaf_hash(entry)
        await connection.execute(
            """WITH registered AS (
                   INSERT INTO audit_event_id (event_id, seq, leaf_hash) VALUES ($2, $1, $8))
               INSERT INTO audit_log (seq, event_id, kind, occurred_at, recorded_at,
                   correlation_id, schema_version, payload, leaf_hash)
               VALUES ($1, $2, $3, $4, $4, $5, $6, $7::json, $8)""",
            entry.seq,
            entry.event_id,
            entry.kind,
            entry.recorded_at,
            entry.correlation_id,
            entry.schema_version,
            entry.payload_json,
            leaf,
        )
    await connection.execute("UPDATE audit_log_state SET next_seq = $1", first + len(events))


@asynccontextmanager
async def old_log_migrated(
    label: str, rows: int, at: datetime, *, written_before: int
) -> AsyncIterator[str]:
    """A new database whose log got `rows` events, recorded a second apart from `at`, from
    the writer of before migration `written_before` (encoding v1), then every migration."""
    async with fresh_database(label, migrate=False) as url:
        connection = await asyncpg.connect(url)
        try:
            await migrate_below(connection, written_before)
            await _write_v1_rows(connection, rows, at)
            await migrations.migrate(connection)
        finally:
            await connection.close()
        yield url


@asynccontextmanager
async def fresh_database(label: str, *, migrate: bool = True) -> AsyncIterator[str]:
    """A new database (no vhost: these tests need no broker), dropped afterwards."""
    name = unique_name(label)
    url = await create_database(name, migrated=migrate)
    try:
        yield url
    finally:
        await drop_database(name)


async def run_audit_cli(*arguments: str, env: dict[str, str]) -> tuple[int, str]:
    """`python -m civicline.audit <arguments>` as a process: (exit status, stdout + stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "civicline.audit",
        *arguments,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()

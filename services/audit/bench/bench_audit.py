"""Benchmark the audit log: append rate, proof times, query API latency and full verification
at N events.

    .venv/bin/python services/audit/bench/bench_audit.py --events 1000000

Creates its own database (dropped at the end unless --keep) on the server of
CIVICLINE_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres), appends
N events in batches of --batch (one transaction per batch, serialised on the log-state row,
as the service writes them) from --writers concurrent writers, or with --service-writer through
the service's own BatchWriter (one replica's batches one after another; without the AMQP
consumer in front, so an upper bound for one replica), signs a tree head, then times
inclusion and consistency proofs read from the stored subtrees, the query API's main queries
over HTTP (p50/p99), and the full verify. Events are about CITIZENS citizens and sealed for them
(encoding v2), as the service writes them with AUDIT_PSEUDONYM_KEY and AUDIT_MASTER_KEY set.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from civicline.audit import merkle
from civicline.audit.adapters import (
    BatchWriter,
    append_batch,
    consistency_proof,
    inclusion_proof,
    sign_tree_head,
)
from civicline.audit.api import serve_standalone
from civicline.audit.auditor import verify_database
from civicline.audit.checkpoint import Signer, open_checkpoint
from civicline.audit.core import AuditRecord
from civicline.audit.privacy import PrivacyKeys
from civicline.common.api_tokens import token_hash
from civicline.common.db import connect_pool
from civicline.common.migrate import migrate
from civicline.common.settings import Settings

ADMIN_URL = os.environ.get(
    "CIVICLINE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


CITIZENS = 50_000
KINDS = ("message.voting", "outbound.sent", "status.delivered", "status.read")
# Fresh for each run; --processes hands them to each writer process.
SECRETS = (secrets.token_hex(32), secrets.token_hex(32))
KEYS = PrivacyKeys.from_secrets(*SECRETS)


def citizen(n: int) -> str:
    return f"8210{n % CITIZENS:08d}"


def records(count: int) -> list[AuditRecord]:
    now = datetime.now(UTC)
    batch = []
    for _ in range(count):
        n = random.randrange(1 << 40)
        raw = n % 4 == 0
        who = citizen(n)
        body = (
            b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"contacts":'
            + b'[{"wa_id":"'
            + who.encode()
            + b'"}]}}]}]}'
        )
        batch.append(
            AuditRecord(
                event_id=uuid.uuid4(),
                kind="inbound.webhook" if raw else KINDS[n % len(KINDS)],
                occurred_at=now,
                correlation_id=f"wamid.{n}",
                schema_version=1,
                payload={
                    "text": "투표소 위치 알려주세요",
                    "n": n,
                    "language": "ko",
                    "from": who,
                    "intent": "report_abuse" if n % 1000 == 0 else "voting",
                },
                raw_body=body if raw else None,
                signature="sha256=" + "ab" * 32 if raw else None,
            )
        )
    return batch


def milliseconds(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


async def append_all(
    pool: asyncpg.Pool, events: int, batch: int, writers: int, keys: PrivacyKeys | None
) -> float:
    remaining = events
    lock = asyncio.Lock()
    done = 0
    started = time.perf_counter()
    last_report = started

    async def writer() -> None:
        nonlocal remaining, done, last_report
        while True:
            async with lock:
                take = min(batch, remaining)
                remaining -= take
            if take == 0:
                return
            await append_batch(pool, records(take), keys)
            done += take
            now = time.perf_counter()
            if now - last_report > 10:
                last_report = now
                print(f"  {done} events, {done / (now - started):.0f} events/s", flush=True)

    await asyncio.gather(*(writer() for _ in range(writers)))
    return events / (time.perf_counter() - started)


async def append_through_writer(
    pool: asyncpg.Pool, events: int, batch: int, keys: PrivacyKeys | None
) -> float:
    """Append as one audit service does: records handed one by one to its BatchWriter, with a
    consumer's prefetch (two batches) of them waiting at any time, each released when its
    batch has committed."""
    linger = next(f.default for f in dataclasses.fields(Settings) if f.name == "audit_batch_linger")
    assert isinstance(linger, float)
    writer = BatchWriter(pool, batch_size=batch, linger=linger, keys=keys)
    writer.start()
    remaining = events
    started = time.perf_counter()

    async def feeder() -> None:
        nonlocal remaining
        while remaining > 0:
            take = min(batch, remaining)
            remaining -= take
            await asyncio.gather(*(writer.append(record) for record in records(take)))

    try:
        await asyncio.gather(feeder(), feeder())
    finally:
        await writer.close()
    return events / (time.perf_counter() - started)


def _append_in_process(
    url: str,
    events: int,
    batch: int,
    writers: int,
    secret_pair: tuple[str, str] | None,
    start: float,
) -> float:
    """One audit replica's share of the appends, in a process of its own; returns when it
    finished (time.time(), comparable across processes)."""

    async def run() -> None:
        keys = None if secret_pair is None else PrivacyKeys.from_secrets(*secret_pair)
        pool = await connect_pool(url, min_size=writers, max_size=writers + 1)
        try:
            await asyncio.sleep(max(0.0, start - time.time()))  # every process starts together
            await append_all(pool, events, batch, writers, keys)
        finally:
            await pool.close()

    asyncio.run(run())
    return time.time()


async def append_in_processes(
    url: str, events: int, batch: int, writers: int, processes: int, in_clear: bool
) -> float:
    """Appends from `processes` processes at once, as that many audit replicas would."""
    context = multiprocessing.get_context("spawn")
    start = time.time() + 3  # time for the processes to import and connect
    share = events // processes
    with ProcessPoolExecutor(processes, mp_context=context) as executor:
        loop = asyncio.get_running_loop()
        finished = await asyncio.gather(
            *(
                loop.run_in_executor(
                    executor,
                    _append_in_process,
                    url,
                    share,
                    batch,
                    writers,
                    None if in_clear else SECRETS,
                    start,
                )
                for _ in range(processes)
            )
        )
    return share * processes / (max(finished) - start)


async def api_latencies(database_url: str, size: int, samples: int) -> None:
    """The query API's main queries over HTTP, as an auditor sends them: p50/p99 each."""
    async with serve_standalone(database_url, KEYS) as (url, pool):
        await _api_latencies(url, pool, size, samples)


async def _api_latencies(url: str, pool: asyncpg.Pool, size: int, samples: int) -> None:
    token = "bench-" + secrets.token_hex(16)
    await pool.execute(
        "INSERT INTO audit_api_token (token_id, name, role, token_hash) VALUES ($1, $2, $3, $4)",
        uuid.uuid4(),
        "bench",
        "auditor",
        token_hash(token),
    )
    base = f"{url}/v1"
    event_ids = [
        str(row["event_id"])
        for row in await pool.fetch(
            "SELECT event_id FROM audit_event_id WHERE seq = ANY($1::bigint[])",
            random.sample(range(size), min(samples, size)),
        )
    ]
    queries: dict[str, Callable[[], tuple[str, dict[str, str]]]] = {
        "events of one citizen": lambda: (
            "/events",
            {"citizen": citizen(random.randrange(CITIZENS))},
        ),
        "conversations of one citizen": lambda: (
            "/conversations",
            {"citizen": citizen(random.randrange(CITIZENS))},
        ),
        "events by kind (first page of 100)": lambda: (
            "/events",
            {"kind": "status.read", "limit": "100"},
        ),
        "events by intent (rare)": lambda: ("/events", {"intent": "report_abuse"}),
        "events by correlation id": lambda: (
            "/events",
            {"correlation_id": f"wamid.{random.randrange(1 << 40)}"},
        ),
        "one event with its inclusion proof": lambda: (f"/events/{random.randrange(size)}", {}),
        "one event by its id, with its proof": lambda: (
            f"/events/{random.choice(event_ids)}",
            {},
        ),
    }
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for label, make in queries.items():
            timings: list[float] = []
            for _ in range(samples):
                path, params = make()
                started = time.perf_counter()
                async with session.get(base + path, params=params) as response:
                    await response.read()
                    assert response.status == 200, await response.text()
                timings.append(time.perf_counter() - started)
            print(f"API {label}: {milliseconds(timings)}", flush=True)
        started = time.perf_counter()
        async with session.get(
            base + "/export", params={"from_seq": str(max(0, size - 100_000))}
        ) as response:
            received = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                received += len(chunk)
        elapsed = time.perf_counter() - started
        print(
            f"API export of the last 100,000 events: {elapsed:.1f} s, "
            f"{received / 2**20:.0f} MiB ({min(size, 100_000) / elapsed:.0f} events/s)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--writers", type=int, default=None, help="concurrent batches per process (default 2)"
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="writer processes, as audit replicas are"
    )
    parser.add_argument("--proofs", type=int, default=200)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument("--queries", type=int, default=200, help="samples per API query")
    parser.add_argument(
        "--in-clear", action="store_true", help="append without pseudonyms and sealing"
    )
    parser.add_argument(
        "--service-writer",
        action="store_true",
        help="append through the audit service's BatchWriter (one replica), not --writers loops",
    )
    args = parser.parse_args()
    if args.service_writer and (args.processes > 1 or args.writers is not None):
        parser.error("--service-writer is one replica's BatchWriter: no --writers, --processes")
    args.writers = args.writers or 2

    name = f"civicline_bench_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    try:
        connection = await asyncpg.connect(url)
        await migrate(connection)
        # The services' pool (no reset round trip when a connection goes back), as the audit's.
        pool = await connect_pool(url, min_size=args.writers, max_size=args.writers + 1)

        how = (
            "the service's BatchWriter"
            if args.service_writer
            else f"{args.writers} writers in each of {args.processes} processes"
        )
        print(f"appending {args.events} events, batches of {args.batch}, {how}")
        keys = None if args.in_clear else KEYS
        if args.service_writer:
            rate = await append_through_writer(pool, args.events, args.batch, keys)
        elif args.processes > 1:
            rate = await append_in_processes(
                url, args.events, args.batch, args.writers, args.processes, args.in_clear
            )
        else:
            rate = await append_all(pool, args.events, args.batch, args.writers, keys)
        print(f"append rate: {rate:.0f} events/s")

        signer = Signer.generate("bench.civicline.example/audit")
        started = time.perf_counter()
        head = await sign_tree_head(pool, signer)
        assert head is not None
        print(
            f"sign a tree head at {head.tree_size}: {(time.perf_counter() - started) * 1000:.1f} ms"
        )
        root = open_checkpoint(head.checkpoint, signer.verifier).root_hash
        size = head.tree_size

        inclusion: list[float] = []
        for seq in random.sample(range(size), args.proofs):
            started = time.perf_counter()
            proof = await inclusion_proof(connection, seq, size)
            inclusion.append(time.perf_counter() - started)
            leaf = await connection.fetchval("SELECT leaf_hash FROM audit_log WHERE seq = $1", seq)
            merkle.verify_inclusion(seq, size, leaf, proof, root)
        print(f"inclusion proof at {size} events ({len(proof)} hashes): {milliseconds(inclusion)}")

        consistency: list[float] = []
        for first in random.sample(range(1, size), args.proofs):
            started = time.perf_counter()
            proof = await consistency_proof(connection, first, size)
            consistency.append(time.perf_counter() - started)
        print(f"consistency proof to {size} events: {milliseconds(consistency)}")

        subtrees = await connection.fetchval("SELECT count(*) FROM audit_subtree")
        # A partitioned table has no storage of its own: its months do.
        table = await connection.fetchval(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
            "WHERE inhparent = 'audit_log'::regclass"
        )
        registry = await connection.fetchval("SELECT pg_total_relation_size('audit_event_id')")
        stored = await connection.fetchval("SELECT pg_total_relation_size('audit_subtree')")
        print(
            f"stored subtrees: {subtrees} rows, {stored / 2**20:.1f} MiB "
            f"(audit_log: {table / 2**20:.0f} MiB in its months; "
            f"audit_event_id: {registry / 2**20:.0f} MiB)"
        )
        await connection.close()
        await api_latencies(url, size, args.queries)
        await pool.close()

        if not args.skip_verify:
            started = time.perf_counter()
            report = await verify_database(url, signer.verifier)
            elapsed = time.perf_counter() - started
            assert report.ok, report.lines()
            print(
                f"full verify of {report.events} events: {elapsed:.1f} s "
                f"({report.events / elapsed:.0f} events/s)"
            )
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())

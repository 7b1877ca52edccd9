"""The auditors' query API, /v1 on the audit service's port (beside /healthz): events by citizen,
kind, intent, time and correlation id; one event with its inclusion proof; tree heads and
consistency proofs; a streamed NDJSON export of a range; conversations. openapi.json documents
it. Every request needs a bearer token (roles auditor, operator), and every answer is first
appended to the log itself as an `audit.access` event through the service's BatchWriter: the
same append path as every other event, committed before the data leaves (publishing it on the
bus instead would let an answer go out whose access record is still in flight)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from civicline.audit import adapters, merkle, privacy, query
from civicline.audit.auditor import (
    COLUMNS,
    ROWS,
    event_row,
    export_line,
    range_preamble,
    retired_ranges,
    row_entry,
    tree_head_line,
)
from civicline.audit.canonical import entry_leaf_hash
from civicline.audit.core import TreeHead
from civicline.audit.query import BadRequest
from civicline.audit.views import DataKeys, access_record, conversation, event_document
from civicline.common.api_tokens import AUDITOR, OPERATOR, Caller, bearer_token, find_caller

log = structlog.get_logger(__name__)

OPENAPI = resources.files("civicline.audit").joinpath("openapi.json").read_bytes()
EXPORT_CHUNK = 1000
# The first event recorded at or after an instant: only the partitions from that month on
# are read (tests/integration/test_audit_query_plans.py).
FIRST_RECORDED_FROM = """SELECT seq FROM audit_log WHERE recorded_at >= $1
                         ORDER BY recorded_at, seq LIMIT 1"""
# Events about a list of message ids: one index probe per id, whatever the statistics say.
BY_CORRELATION = (
    f"SELECT {COLUMNS} FROM unnest($1::text[]) AS wanted(id) "  # noqa: S608 (constants only)
    "JOIN audit_log ON correlation_id = wanted.id WHERE {kinds} ORDER BY seq"
)

# Which roles may call each route: auditors read the log; operators erase, and may read only
# what holds no citizen's data (tree heads, proofs).
ROLES_FOR: dict[str, tuple[str, ...]] = {
    "openapi": (AUDITOR, OPERATOR),
    "events": (AUDITOR,),
    "event": (AUDITOR,),
    "tree_heads": (AUDITOR, OPERATOR),
    "consistency": (AUDITOR, OPERATOR),
    "export": (AUDITOR,),
    "conversations": (AUDITOR,),
    "erasures": (OPERATOR,),
}


@dataclass(slots=True)
class AuditApi:
    """What the handlers use; pool and writer arrive once the service reached Postgres."""

    keys: privacy.PrivacyKeys | None
    pool: asyncpg.Pool | None = None
    writer: adapters.BatchWriter | None = None

    @property
    def pseudonymise(self) -> query.Pseudonymise | None:
        return None if self.keys is None else self.keys.pseudonymise

    async def data_keys(
        self, connection: asyncpg.Connection, rows: Iterable[Mapping[str, Any]]
    ) -> DataKeys:
        if self.keys is None:
            return {}
        wanted = {key_id for row in rows for key_id in row["key_ids"] or ()}
        return await adapters.data_keys(connection, wanted, self.keys)

    async def record(
        self,
        request: web.Request,
        endpoint: str,
        described: Mapping[str, Any],
        rows: int | None,
        status: int = 200,
    ) -> None:
        assert self.writer is not None
        caller = request[CALLER]
        await self.writer.append(
            access_record(
                token_name=caller.name,
                token_id=caller.token_id,
                role=caller.role,
                method=request.method,
                endpoint=endpoint,
                query=described,
                rows=rows,
                status=status,
                at=datetime.now(UTC),
            )
        )


API = web.AppKey("audit_api", AuditApi)
CALLER = web.RequestKey("audit_caller", Caller)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")


def _error(status: int, message: str, **headers: str) -> web.Response:
    response = _json({"error": message}, status)
    response.headers.update(headers)
    return response


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, roles, and errors as JSON, for every /v1 route."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    name = request.match_info.route.name
    if name not in ROLES_FOR:
        return _error(404, f"no such endpoint: {request.method} {request.path}")
    api = request.app[API]
    if api.pool is None or api.writer is None:
        return _error(503, "the audit service is not connected to its database yet")
    bearer = bearer_token(request.headers.get("Authorization"))
    challenge = {"WWW-Authenticate": 'Bearer realm="civicline-audit"'}
    if bearer is None:
        return _error(401, "send a token: Authorization: Bearer <token>", **challenge)
    try:
        caller = await find_caller(api.pool, bearer)
        if caller is None:
            return _error(401, "this token is not valid (unknown or revoked)", **challenge)
        request[CALLER] = caller
        if caller.role not in ROLES_FOR[name]:
            await api.record(request, name, {}, None, status=403)
            allowed = " or ".join(ROLES_FOR[name])
            return _error(403, f"{name} needs the {allowed} role; this token is {caller.role}")
        try:
            query.check_known(name, list(request.query.keys()))
            return await handler(request)
        except BadRequest as exc:
            return _error(400, str(exc))
        except merkle.ProofError as exc:
            return _error(400, str(exc))
    except privacy.PrivacyError as exc:
        # A configuration error, not the caller's: the master key is not the one that wrapped
        # the stored data keys.
        log.error("audit_api_keys_do_not_open", error=str(exc))
        return _error(500, "the configured AUDIT_MASTER_KEY does not open the stored data keys")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("audit_api_database_error", error=f"{type(exc).__name__}: {exc}")
        return _error(503, "the audit database is unavailable; try again")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI, content_type="application/json")


async def _fetch_page(
    request: web.Request, connection: asyncpg.Connection, selected: query.EventFilter
) -> query.Page:
    """One page of events matching `selected`, from the request's cursor and limit."""
    fingerprint = selected.fingerprint()
    after = query.decode_cursor(request.query.get("cursor"), fingerprint)
    limit = query.parse_limit(request.query)
    sql, args = query.page_sql(COLUMNS, selected, after, limit)
    rows = await connection.fetch(sql, *args)
    return query.page_of(rows, limit, fingerprint, lambda row: row["seq"])


async def list_events(request: web.Request) -> web.Response:
    api = request.app[API]
    assert api.pool is not None
    selected = query.parse_event_filter(request.query, api.pseudonymise)
    async with api.pool.acquire() as connection:
        page = await _fetch_page(request, connection, selected)
        keys = await api.data_keys(connection, page.rows)
    documents = [event_document(row, keys) for row in page.rows]
    await api.record(request, "events", selected.described(), len(documents))
    return _json({"events": documents, "next_cursor": page.next_cursor})


async def get_event(request: web.Request) -> web.Response:
    api = request.app[API]
    assert api.pool is not None
    ref = query.parse_event_ref(request.match_info["ref"])
    column = "seq" if isinstance(ref, int) else "event_id"
    async with (
        api.pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        row = await event_row(connection, ref)
        if row is None:
            await api.record(request, "event", {column: str(ref)}, 0, status=404)
            return _error(404, f"no event {ref} in the log")
        head = await adapters.latest_tree_head(connection)
        inclusion = None
        if head is not None and head.tree_size > row["seq"]:
            proof = await adapters.inclusion_proof(connection, row["seq"], head.tree_size)
            leaf = entry_leaf_hash(row_entry(row))
            try:
                merkle.verify_inclusion(row["seq"], head.tree_size, leaf, proof, head.root_hash)
            except merkle.ProofError as exc:
                return _error(
                    409,
                    f"the stored event does not match the signed tree ({exc}): run "
                    "civicline-audit verify",
                )
            inclusion = {
                "tree_size": head.tree_size,
                "root_hash": head.root_hash.hex(),
                "leaf_hash": leaf.hex(),
                "proof": [element.hex() for element in proof],
                "checkpoint": head.checkpoint,
            }
        keys = await api.data_keys(connection, [row])
    document = event_document(row, keys, with_raw_body=True)
    document["inclusion"] = inclusion
    await api.record(request, "event", {column: str(ref)}, 1)
    return _json(document)


async def list_tree_heads(request: web.Request) -> web.Response:
    api = request.app[API]
    assert api.pool is not None
    fingerprint = "tree_heads"
    after = query.decode_cursor(request.query.get("cursor"), fingerprint)
    limit = query.parse_limit(request.query)
    rows = await api.pool.fetch(
        """SELECT tree_size, root_hash, signed_at, checkpoint FROM audit_tree_head
           WHERE tree_size > $1 ORDER BY tree_size LIMIT $2""",
        after,
        limit + 1,
    )
    page = query.page_of(rows, limit, fingerprint, lambda row: row["tree_size"])
    heads = [
        tree_head_line(TreeHead(r["tree_size"], r["root_hash"], r["signed_at"], r["checkpoint"]))
        for r in page.rows
    ]
    for head in heads:
        del head["type"]
    await api.record(request, "tree_heads", {}, len(heads))
    return _json({"tree_heads": heads, "next_cursor": page.next_cursor})


async def get_consistency(request: web.Request) -> web.Response:
    api = request.app[API]
    assert api.pool is not None
    asked = query.parse_consistency(request.query)
    async with (
        api.pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        second = asked.second
        if second is None:
            head = await adapters.latest_tree_head(connection)
            if head is None:
                return _error(409, "the log has no signed tree head yet")
            second = head.tree_size
        if asked.first > second:
            raise BadRequest(f"first ({asked.first}) is larger than second ({second})")
        size = await adapters.tree_size(connection)
        if second > size:
            raise BadRequest(f"the log has {size} events: second must be at most that")
        proof = await adapters.consistency_proof(connection, asked.first, second)
        notes = {
            row["tree_size"]: row["checkpoint"]
            for row in await connection.fetch(
                "SELECT tree_size, checkpoint FROM audit_tree_head WHERE tree_size = ANY($1)",
                [asked.first, second],
            )
        }
    await api.record(request, "consistency", {"first": asked.first, "second": second}, len(proof))
    return _json(
        {
            "first": asked.first,
            "second": second,
            "proof": [element.hex() for element in proof],
            "first_checkpoint": notes.get(asked.first),
            "second_checkpoint": notes.get(second),
        }
    )


async def _export_bounds(
    connection: asyncpg.Connection, wanted: query.ExportRange, next_seq: int
) -> tuple[int, int]:
    """The seqs [first, end) an export covers. recorded_at follows seq (it is read under the
    log lock), so a time range is one contiguous run of seqs."""

    async def first_recorded_from(instant: datetime | None, default: int) -> int:
        if instant is None:
            return default
        seq = await connection.fetchval(FIRST_RECORDED_FROM, instant)
        return next_seq if seq is None else int(seq)

    if wanted.from_seq is not None or wanted.to_seq is not None:
        first = min(wanted.from_seq or 0, next_seq)
        end = next_seq if wanted.to_seq is None else min(wanted.to_seq, next_seq)
    else:
        first = await first_recorded_from(wanted.since, 0)
        end = await first_recorded_from(wanted.until, next_seq)
    return query.past_retired(first, end, await retired_ranges(connection))


async def export(request: web.Request) -> web.StreamResponse:
    """NDJSON: header, the signed head the range is proven against, the range proof, then the
    events by seq (stored form, verifiable; `plain` adds the opened payload). Rows come through
    a server-side cursor in chunks, so memory stays flat however long the range."""
    api = request.app[API]
    assert api.pool is not None
    wanted = query.parse_export(request.query)
    async with (
        api.pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        next_seq = await adapters.tree_size(connection)
        first, end = await _export_bounds(connection, wanted, next_seq)
        head = await adapters.latest_tree_head(connection)
        if head is not None and wanted.to_seq is None and end > head.tree_size:
            # Only what a signed head covers can be verified: the unsigned tail is left for
            # the next export (the header's end_seq says where this one stops).
            end = max(first, head.tree_size)
        lines = await range_preamble(connection, first, end, next_seq, head)
        described = {**wanted.described(), "first_seq": first, "end_seq": end}
        await api.record(request, "export", described, end - first)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        chunk: list[asyncpg.Record] = []
        cursor = connection.cursor(
            f"{ROWS} WHERE seq >= $1 AND seq < $2 ORDER BY seq",
            first,
            end,
            prefetch=EXPORT_CHUNK,
        )
        async for row in cursor:
            chunk.append(row)
            if len(chunk) >= EXPORT_CHUNK:
                await response.write(await _export_chunk(api, connection, chunk))
                chunk = []
        if chunk:
            await response.write(await _export_chunk(api, connection, chunk))
    await response.write_eof()
    return response


async def _export_chunk(
    api: AuditApi, connection: asyncpg.Connection, rows: list[asyncpg.Record]
) -> bytes:
    keys = await api.data_keys(connection, rows)
    out = []
    for row in rows:
        line = export_line(row)
        line["plain"] = event_document(row, keys)["payload"]
        out.append(orjson.dumps(line) + b"\n")
    return b"".join(out)


async def list_conversations(request: web.Request) -> web.Response:
    api = request.app[API]
    assert api.pool is not None
    selected = query.parse_conversation_filter(request.query, api.pseudonymise)
    async with (
        api.pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        page = await _fetch_page(request, connection, selected)
        wamids = [row["correlation_id"] for row in page.rows]
        related = list(
            await connection.fetch(
                BY_CORRELATION.format(kinds="NOT starts_with(kind, 'message.')"),
                wamids + [f"away:{wamid}" for wamid in wamids],
            )
        )
        keys = dict(await api.data_keys(connection, [*page.rows, *related]))
        related_documents = [event_document(row, keys) for row in related]
        sent = [
            document["payload"]["wamid"]
            for document in related_documents
            if document["kind"].startswith("outbound.")
            and isinstance(document["payload"], dict)
            and isinstance(document["payload"].get("wamid"), str)
        ]
        statuses = await connection.fetch(
            BY_CORRELATION.format(kinds="starts_with(kind, 'status.')"), sent
        )
        keys.update(await api.data_keys(connection, statuses))
    related_documents += [event_document(row, keys) for row in statuses]
    conversations = [
        conversation(event_document(row, keys), related_documents) for row in page.rows
    ]
    await api.record(
        request,
        "conversations",
        selected.described(),
        len(page.rows) + len(related_documents),
    )
    return _json({"conversations": conversations, "next_cursor": page.next_cursor})


async def erase(request: web.Request) -> web.Response:
    api = request.app[API]
    assert api.pool is not None
    citizen = query.parse_erasure(await request.read())
    if api.keys is None:
        return _error(409, "this log keeps no citizen keys (AUDIT_MASTER_KEY is not configured)")
    erasure = await adapters.erase_subject(
        api.pool, api.keys, citizen, requested_by=request[CALLER].name
    )
    if not erasure.key_ids:
        return _error(404, "this citizen has no live data key (never seen, or already erased)")
    return _json(
        {
            "subject": erasure.subject.hex(),
            "key_ids": [str(key_id) for key_id in erasure.key_ids],
            "events": erasure.events,
            "erasure_seq": erasure.seq,
        }
    )


@asynccontextmanager
async def serve_standalone(
    database_url: str, keys: privacy.PrivacyKeys | None
) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """The API alone on a free local port, with its own pool and batch writer (no consumer):
    for benchmarks and tests. Yields its base URL and the pool."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
    # The writer's connections apart from the API's, as in the service (audit.app): requests
    # holding the API's while they wait for their access record must leave the writer one.
    writer_pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    writer = adapters.BatchWriter(writer_pool, batch_size=256, linger=0.005, keys=keys)
    writer.start()
    app = web.Application()
    add_api_routes(app, AuditApi(keys, pool, writer))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", pool
    finally:
        await runner.cleanup()
        await writer.close()
        await writer_pool.close()
        await pool.close()


def add_api_routes(app: web.Application, api: AuditApi) -> None:
    app[API] = api
    app.middlewares.append(guard)
    app.router.add_get("/v1/openapi.json", openapi, name="openapi")
    app.router.add_get("/v1/events", list_events, name="events")
    app.router.add_get("/v1/events/{ref}", get_event, name="event")
    app.router.add_get("/v1/tree-heads", list_tree_heads, name="tree_heads")
    app.router.add_get("/v1/consistency", get_consistency, name="consistency")
    app.router.add_get("/v1/export", export, name="export")
    app.router.add_get("/v1/conversations", list_conversations, name="conversations")
    app.router.add_post("/v1/erasures", erase, name="erasures")

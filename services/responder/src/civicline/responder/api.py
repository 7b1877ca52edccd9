"""The operator API for broadcast campaigns, served by the responder (README, "Broadcasts").

Every route needs `Authorization: Bearer <token>`: a token of the operator role from the
API token table (`civicline-audit token create --role operator`, hashed, revocable, the same
tokens as the audit API's), or one of CAMPAIGN_OPERATOR_TOKENS, compared in constant time
(for a first token before any is issued, and for `make run`).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import structlog
from aiohttp import web

from civicline.common.amqp import PublishFailed
from civicline.common.api_tokens import OPERATOR, bearer_token, find_caller
from civicline.common.runtime import RUNTIME
from civicline.common.topics import Topics
from civicline.responder import campaign_store as store
from civicline.responder.campaigns import (
    SpecError,
    TransitionError,
    parse_recipient_list,
    parse_spec,
)

log = structlog.get_logger(__name__)

DRIVER_WAKE = web.AppKey("campaign_driver_wake", list[Callable[[], None]])
MAX_LIST_BYTES = 64 * 1024 * 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _problem(status: int, detail: str) -> web.Response:
    return _json({"error": detail}, status)


def operator_of(tokens: Sequence[str], token: str) -> str | None:
    """Who `token` names if it is one of the configured `tokens` (a short fingerprint, for
    the audit log), or None.

    Every configured token is compared, in constant time, so the answer's timing says nothing
    about which token came close."""
    offered = token.encode("utf-8")
    matched = None
    for candidate in tokens:
        if hmac.compare_digest(offered, candidate.encode("utf-8")):
            matched = candidate
    if matched is None:
        return None
    return "operator:" + hashlib.sha256(matched.encode("utf-8")).hexdigest()[:12]


def _unauthorized(detail: str) -> web.Response:
    response = _problem(401, detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="civicline campaigns"'
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_campaign_routes(app: web.Application, tokens: Sequence[str], topics: Topics) -> None:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/campaigns"):
            return await handler(request)
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return _unauthorized("send an operator token: Authorization: Bearer <token>")
        operator = operator_of(tokens, token)
        runtime = request.app.get(RUNTIME)
        if runtime is None:
            return _problem(503, "not connected to Postgres and RabbitMQ yet")
        if operator is None:
            caller = await find_caller(runtime.pool, token)
            if caller is None:
                return _unauthorized("this token is not valid (unknown or revoked)")
            if caller.role != OPERATOR:
                return _problem(
                    403, f"campaigns need the operator role; this token is {caller.role}"
                )
            operator = f"operator:{caller.name}"
        request["operator"] = operator
        try:
            return await handler(request)
        except PublishFailed as exc:
            return _problem(503, f"the broker did not confirm the audit event: {exc}")

    def campaign_id(request: web.Request) -> uuid.UUID:
        try:
            return uuid.UUID(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound(
                body=orjson.dumps({"error": "no such campaign"}), content_type="application/json"
            ) from None

    def wake(request: web.Request) -> None:
        for callback in request.app[DRIVER_WAKE]:
            callback()

    async def create(request: web.Request) -> web.Response:
        try:
            document = orjson.loads(await request.read())
            spec = parse_spec(document, topics)
        except orjson.JSONDecodeError as exc:
            return _problem(400, f"the body is not JSON: {exc}")
        except SpecError as exc:
            return _problem(422, str(exc))
        runtime = request.app[RUNTIME]
        campaign = await store.create(runtime.pool, runtime.publisher, spec, request["operator"])
        log.info("campaign_created", campaign_id=str(campaign.id), operator=request["operator"])
        return _json(campaign.as_json(), 201)

    async def listing(request: web.Request) -> web.Response:
        campaigns = await store.listing(request.app[RUNTIME].pool)
        return _json([c.as_json() for c in campaigns])

    async def show(request: web.Request) -> web.Response:
        pool = request.app[RUNTIME].pool
        campaign = await store.get(pool, campaign_id(request))
        if campaign is None:
            return _problem(404, "no such campaign")
        return _json(campaign.as_json(await store.progress(pool, campaign.id)))

    async def upload(request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_LIST_BYTES:
            return _problem(413, f"a list is at most {MAX_LIST_BYTES} bytes; upload it in parts")
        text = (await request.read()).decode("utf-8", "replace")
        try:
            recipients = list(parse_recipient_list(text.splitlines()))
            added = await store.add_to_list(
                request.app[RUNTIME].pool, campaign_id(request), recipients
            )
        except SpecError as exc:
            return _problem(422, str(exc))
        except store.NotFound:
            return _problem(404, "no such campaign")
        except ValueError as exc:
            return _problem(409, str(exc))
        return _json({"received": len(recipients), "added": added})

    async def export(request: web.Request) -> web.StreamResponse:
        """`GET /campaigns/{id}/recipients?state=in_doubt`: CSV `wa_id,language,wamid,
        error_code,reason`, e.g. to decide what to do about the citizens left in doubt."""
        state = request.query.get("state", "")
        if state not in store.RECIPIENT_STATES:
            return _problem(
                400, f"state must be one of {', '.join(sorted(store.RECIPIENT_STATES))}"
            )
        pool = request.app[RUNTIME].pool
        campaign = await store.get(pool, campaign_id(request))
        if campaign is None:
            return _problem(404, "no such campaign")
        response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8"})
        await response.prepare(request)
        await response.write(b"wa_id,language,wamid,error_code,reason\n")
        async with pool.acquire() as connection, connection.transaction():
            lines: list[str] = []
            async for row in store.recipients(connection, campaign.id, state):
                values = (
                    row["wa_id"],
                    row["language"],
                    row["wamid"],
                    row["error_code"],
                    row["reason"],
                )
                lines.append(",".join("" if v is None else str(v) for v in values))
                if len(lines) >= 1000:
                    await response.write(("\n".join(lines) + "\n").encode())
                    lines.clear()
            if lines:
                await response.write(("\n".join(lines) + "\n").encode())
        await response.write_eof()
        return response

    def action(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def act(request: web.Request) -> web.Response:
            runtime = request.app[RUNTIME]
            try:
                campaign = await store.change(
                    runtime.pool,
                    runtime.publisher,
                    campaign_id(request),
                    name,
                    by=request["operator"],
                )
            except store.NotFound:
                return _problem(404, "no such campaign")
            except TransitionError as exc:
                return _problem(409, str(exc))
            log.info("campaign_changed", campaign_id=str(campaign.id), action=name)
            wake(request)
            return _json(campaign.as_json(await store.progress(runtime.pool, campaign.id)))

        return act

    app.middlewares.append(authenticate)
    app[DRIVER_WAKE] = []
    app.router.add_post("/campaigns", create)
    app.router.add_get("/campaigns", listing)
    app.router.add_get("/campaigns/{id}", show)
    app.router.add_post("/campaigns/{id}/list", upload)
    app.router.add_get("/campaigns/{id}/recipients", export)
    for name in ("schedule", "pause", "resume", "cancel"):
        app.router.add_post(f"/campaigns/{{id}}/{name}", action(name))

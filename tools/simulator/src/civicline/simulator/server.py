"""The simulated Graph API: `POST /{version}/{phone_number_id}/messages` plus `/_sim/` controls.

Like aiohttp's fake_server example, it is a real HTTP server, so the responder's client is tested
over the wire. `Simulator` runs it in-process on a free port for tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self

import orjson
from aiohttp import web

from civicline.simulator.ids import new_wamid
from civicline.simulator.meta_errors import describe, graph_error_body
from civicline.simulator.receipts import Receipts
from civicline.simulator.state import (
    Fault,
    RecordedRead,
    RecordedSend,
    SimulatorState,
    recordable_headers,
)
from civicline.simulator.validation import InvalidRequest, check_request, normalise_wa_id

STATE_KEY: Final = web.AppKey("simulator_state", SimulatorState)
RECEIPTS_KEY: Final = web.AppKey("simulator_receipts", Receipts)

log = logging.getLogger("civicline.simulator")


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _graph_error(
    http_status: int,
    code: int,
    *,
    message: str | None = None,
    details: str | None = None,
    subcode: int | None = None,
) -> web.Response:
    body = graph_error_body(code, message=message, details=details, subcode=subcode)
    return _json(body, status=http_status)


def _bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def post_messages(request: web.Request) -> web.Response:
    """Meta's send endpoint: auth, validation, scripted faults, then a recorded acceptance."""
    state = request.app[STATE_KEY]
    version = request.match_info["version"]
    phone_number_id = request.match_info["phone_number_id"]
    if not state.accepts_token(_bearer_token(request.headers.get("Authorization"))):
        state.count("unauthorized")
        log.warning("rejected send: invalid access token phone_number_id=%s", phone_number_id)
        return _graph_error(
            401, 190, message="Invalid OAuth access token - Cannot parse access token"
        )
    if state.phone_number_ids is not None and phone_number_id not in state.phone_number_ids:
        state.count("rejected")
        return _graph_error(
            400,
            100,
            subcode=33,
            message=(
                f"Unsupported post request. Object with ID '{phone_number_id}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this operation"
            ),
        )
    try:
        body = orjson.loads(await request.read())
        kind = check_request(body)
    except orjson.JSONDecodeError:
        state.count("rejected")
        return _graph_error(400, 100, message="Invalid JSON in the request body")
    except InvalidRequest as exc:
        state.count("rejected")
        log.warning("rejected send: code=%s %s", exc.code, exc.details or exc.message)
        return _graph_error(400, exc.code, message=exc.message, details=exc.details)

    if kind == "read":
        await state.record_read(
            RecordedRead(
                sequence=state.next_sequence(),
                received_at=time.time(),
                api_version=version,
                phone_number_id=phone_number_id,
                message_id=body["message_id"],
                typing_indicator="typing_indicator" in body,
            )
        )
        return _json({"success": True})

    to = body.get("to")
    recipient = to if isinstance(to, str) else body.get("recipient")
    fault = state.take_fault(recipient if isinstance(recipient, str) else None)
    if fault is not None:
        if fault.delay_ms:
            await asyncio.sleep(fault.delay_ms / 1000)
        if fault.fails:
            return await _fail(request, state, fault, body)
    if (
        state.enforce_window
        and body.get("type", "text") != "template"
        and not state.window_open(recipient if isinstance(recipient, str) else None, time.time())
    ):
        # Outside the 24-hour window only templates are delivered (reference §6).
        return await _fail(request, state, Fault(http_status=400, code=131047), body)

    wamid = new_wamid()
    send = RecordedSend(
        sequence=state.next_sequence(),
        received_at=time.time(),
        api_version=version,
        phone_number_id=phone_number_id,
        body=body,
        wamid=wamid,
        http_status=200,
        headers=recordable_headers(request.headers),
    )
    await state.record_send(send)
    receipts = request.app.get(RECEIPTS_KEY)
    if receipts is not None:
        receipts.schedule(send)
    log.info(
        "accepted send to=%s type=%s phone_number_id=%s wamid=%s",
        send.to,
        send.type,
        phone_number_id,
        wamid,
    )
    contact = (
        {"input": to, "wa_id": normalise_wa_id(to)}
        if isinstance(to, str)
        else {"input": body["recipient"], "user_id": body["recipient"]}
    )
    return _json(
        {
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [{"id": wamid, "message_status": "accepted"}],
        }
    )


async def _fail(
    request: web.Request, state: SimulatorState, fault: Fault, body: Mapping[str, Any]
) -> web.Response:
    assert fault.http_status is not None
    send = RecordedSend(
        sequence=state.next_sequence(),
        received_at=time.time(),
        api_version=request.match_info["version"],
        phone_number_id=request.match_info["phone_number_id"],
        body=body,
        wamid=None,
        http_status=fault.http_status,
        error_code=fault.code,
        headers=recordable_headers(request.headers),
    )
    await state.record_send(send)
    log.warning(
        "injected fault to=%s http_status=%s code=%s", send.to, fault.http_status, fault.code
    )
    if fault.code is None:
        # A bare gateway-style failure: no Graph error object at all.
        return web.Response(
            status=fault.http_status, text=f"simulated upstream failure ({fault.http_status})"
        )
    return _graph_error(
        fault.http_status,
        fault.code,
        details=fault.details or describe(fault.code).details,
        subcode=fault.subcode,
    )


def _flag(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes"}


async def get_sent(request: web.Request) -> web.Response:
    """`GET /_sim/sent?to=&include_failed=1&after=<sequence>`: recorded sends, oldest first."""
    state = request.app[STATE_KEY]
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        return _json({"error": "after must be an integer sequence number"}, status=400)
    sends = state.sends(
        request.query.get("to") or None,
        include_failed=_flag(request.query.get("include_failed")),
        after=after,
    )
    return _json([s.as_json() for s in sends])


async def get_sent_summary(request: web.Request) -> web.Response:
    """`GET /_sim/sent/summary?type=template&after=<sequence>`: counts instead of records."""
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        return _json({"error": "after must be an integer sequence number"}, status=400)
    state = request.app[STATE_KEY]
    return _json(state.summary(message_type=request.query.get("type") or None, after=after))


async def delete_sent(request: web.Request) -> web.Response:
    return _json({"cleared": request.app[STATE_KEY].clear()})


async def get_reads(request: web.Request) -> web.Response:
    return _json([r.as_json() for r in request.app[STATE_KEY].reads()])


async def post_faults(request: web.Request) -> web.Response:
    """`POST /_sim/faults` with a JSON list of fault objects, consumed in order by next sends."""
    state = request.app[STATE_KEY]
    try:
        specs = orjson.loads(await request.read())
        if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
            raise ValueError("body must be a JSON list of fault objects")
        faults = [Fault.from_mapping(spec) for spec in specs]
    except (orjson.JSONDecodeError, ValueError) as exc:
        return _json({"error": str(exc)}, status=400)
    state.add_faults(faults)
    return _json({"queued": len(faults), "pending": [f.as_json() for f in state.pending_faults()]})


async def get_faults(request: web.Request) -> web.Response:
    return _json([f.as_json() for f in request.app[STATE_KEY].pending_faults()])


async def delete_faults(request: web.Request) -> web.Response:
    return _json({"cleared": request.app[STATE_KEY].clear_faults()})


async def post_windows(request: web.Request) -> web.Response:
    """`POST /_sim/windows` with `{"citizen": "...", "at": <Unix seconds, default now>}`: the
    citizen wrote to us, so free-form replies may go to them for 24 hours from `at`."""
    try:
        spec = orjson.loads(await request.read())
        citizen, at = spec["citizen"], spec.get("at", time.time())
        if not isinstance(citizen, str) or not citizen:
            raise ValueError("citizen must be a non-empty string")
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError("at must be Unix seconds")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return _json({"error": f"expected {{citizen, at?}}: {exc}"}, status=400)
    request.app[STATE_KEY].open_window(citizen, float(at))
    return _json({"citizen": citizen, "at": at})


def _stats(app: web.Application) -> dict[str, Any]:
    stats = app[STATE_KEY].stats()
    receipts = app.get(RECEIPTS_KEY)
    if receipts is not None:
        stats["status_webhooks"] = vars(receipts.counts)
    return stats


async def get_stats(request: web.Request) -> web.Response:
    return _json(_stats(request.app))


async def get_health(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


def create_app(
    *,
    access_token: str | None = None,
    phone_number_ids: Iterable[str] | None = None,
    enforce_window: bool = False,
    receipts: Receipts | None = None,
) -> web.Application:
    """The simulator app. With `access_token` only that bearer token is accepted (else any);
    with `phone_number_ids` sends from other numbers fail as they would at Meta; with
    `enforce_window` a free-form send to a citizen whose 24-hour window is not open (see
    `POST /_sim/windows`) fails with 131047, as at Meta; with `receipts` every accepted message
    is followed by its status webhooks (sent, delivered, read), as at Meta."""
    app = web.Application()
    app[STATE_KEY] = SimulatorState(
        access_token=access_token,
        phone_number_ids=phone_number_ids,
        enforce_window=enforce_window,
    )
    if receipts is not None:
        app[RECEIPTS_KEY] = receipts

        async def stop_receipts(_: web.Application) -> None:
            await receipts.close()

        app.on_cleanup.append(stop_receipts)
    app.router.add_post(r"/{version:v\d+\.\d+}/{phone_number_id}/messages", post_messages)
    app.router.add_get("/_sim/sent", get_sent)
    app.router.add_get("/_sim/sent/summary", get_sent_summary)
    app.router.add_delete("/_sim/sent", delete_sent)
    app.router.add_get("/_sim/reads", get_reads)
    app.router.add_get("/_sim/faults", get_faults)
    app.router.add_post("/_sim/faults", post_faults)
    app.router.add_delete("/_sim/faults", delete_faults)
    app.router.add_post("/_sim/windows", post_windows)
    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_get("/_sim/health", get_health)
    return app


class Simulator:
    """The simulator on a real socket, for tests and the CLI.

    `async with Simulator() as sim:` listens on a free port; `sim.base_url` is what the responder
    uses as its Graph API base URL.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_token: str | None = None,
        phone_number_ids: Iterable[str] | None = None,
        enforce_window: bool = False,
        receipts: Receipts | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.app = create_app(
            access_token=access_token,
            phone_number_ids=phone_number_ids,
            enforce_window=enforce_window,
            receipts=receipts,
        )
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"Simulator({self.base_url!r}, {self.state!r})"

    @property
    def state(self) -> SimulatorState:
        return self.app[STATE_KEY]

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def sent(self, to: str | None = None, *, include_failed: bool = False) -> list[RecordedSend]:
        """Accepted sends (and failed attempts too with `include_failed`), oldest first."""
        return self.state.sends(to, include_failed=include_failed)

    def reads(self) -> list[RecordedRead]:
        return self.state.reads()

    async def wait_for_sends(
        self, count: int, to: str | None = None, *, timeout: float = 5.0
    ) -> list[RecordedSend]:
        """Wait until at least `count` sends (to `to`) were accepted; return them all."""
        try:
            await self.state.wait_for(lambda: len(self.state.sends(to)) >= count, timeout)
        except TimeoutError:
            got = len(self.state.sends(to))
            target = f" to {to}" if to else ""
            raise TimeoutError(
                f"expected {count} sends{target} within {timeout}s, got {got}"
            ) from None
        return self.state.sends(to)

    def open_window(self, citizen: str, at: float | None = None) -> None:
        """The citizen wrote at `at` (Unix seconds, default now): see `enforce_window`."""
        self.state.open_window(citizen, time.time() if at is None else at)

    def inject_faults(self, faults: Iterable[Fault | Mapping[str, Any]]) -> None:
        """Script failures for the next sends, in order (same shape as `POST /_sim/faults`)."""
        parsed = [f if isinstance(f, Fault) else Fault.from_mapping(f) for f in faults]
        self.state.add_faults(parsed)

    def clear(self) -> None:
        """Forget recordings and drop any faults still scripted."""
        self.state.clear()
        self.state.clear_faults()

    def stats(self) -> dict[str, Any]:
        return _stats(self.app)

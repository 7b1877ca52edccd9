"""GraphClient against the in-process Meta simulator, over real HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from civicline.responder.catalog import (
    Button,
    Reply,
    Row,
    Section,
    Template,
    choose_template,
    load_catalog,
    to_graph_message,
)
from civicline.responder.graph import GraphClient, GraphError, SendResult, text_message
from civicline.simulator import Simulator

pytestmark = pytest.mark.integration

TOKEN = "EAAG-test-token-never-logged"
PNID = "106512349876543"
CITIZEN = "821052347781"
INBOUND_WAMID = "wamid.HBgMynknU4a++H43rlki5CbVcIUBuz+bhi9upTnN"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(access_token=TOKEN) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def make_client(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    token: str = TOKEN,
    timeout: float = 5.0,
) -> GraphClient:
    return GraphClient(
        session, base_url=base_url, api_version="v25.0", access_token=token, timeout=timeout
    )


@pytest.fixture
def graph(sim: Simulator, session: aiohttp.ClientSession) -> GraphClient:
    return make_client(session, sim.base_url)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def send_and_expect_error(graph: GraphClient) -> GraphError:
    with pytest.raises(GraphError) as caught:
        await graph.send(PNID, text_message(CITIZEN, "투표소 위치 알려주세요"))
    return caught.value


async def test_text_send_returns_a_wamid_and_is_recorded_exactly(
    sim: Simulator, graph: GraphClient
) -> None:
    result = await graph.send(PNID, text_message(CITIZEN, "투표소는 종로구청입니다 🗳️"))
    assert isinstance(result, SendResult)
    assert result.wamid.startswith("wamid.")
    assert result.wa_id == CITIZEN
    assert result.message_status == "accepted"
    [send] = sim.sent(to=CITIZEN)
    assert send.wamid == result.wamid
    assert send.phone_number_id == PNID
    assert send.api_version == "v25.0"
    assert send.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "text",
        "text": {"preview_url": False, "body": "투표소는 종로구청입니다 🗳️"},
    }
    assert send.headers["Content-Type"] == "application/json"


async def test_a_reply_quotes_the_citizens_message(sim: Simulator, graph: GraphClient) -> None:
    message = text_message(CITIZEN, "안내해 드릴게요", reply_to=INBOUND_WAMID, preview_url=True)
    await graph.send(PNID, message)
    [send] = await sim.wait_for_sends(1, to=CITIZEN)
    assert send.body["context"] == {"message_id": INBOUND_WAMID}
    assert send.body["text"] == {"preview_url": True, "body": "안내해 드릴게요"}
    assert send.reply_to == INBOUND_WAMID


async def test_send_fills_in_messaging_product_and_recipient_type(
    sim: Simulator, graph: GraphClient
) -> None:
    location = {
        "to": "+81 90-2345-6712",
        "type": "location",
        "location": {"latitude": 35.68, "longitude": 139.69, "name": "避難所"},
    }
    result = await graph.send(PNID, location)
    assert result.wa_id == "819023456712"
    [send] = sim.sent()
    assert send.body["messaging_product"] == "whatsapp"
    assert send.body["recipient_type"] == "individual"
    assert send.body["location"] == location["location"]


async def test_a_wrong_token_is_a_permanent_auth_error(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    wrong = "EAAG-wrong-token"
    graph = make_client(session, sim.base_url, token=wrong)
    error = await send_and_expect_error(graph)
    assert (error.http_status, error.code) == (401, 190)
    assert not error.retryable
    assert not error.throttle
    assert error.pauses  # no message can go until the token is fixed
    for text in (str(error), repr(error), repr(graph), str(error.as_payload())):
        assert wrong not in text
        assert TOKEN not in text
    assert sim.sent(include_failed=True) == []


async def test_throughput_limit_is_retryable_and_asks_to_slow_down(
    sim: Simulator, graph: GraphClient
) -> None:
    sim.inject_faults([{"http_status": 429, "code": 130429}])
    error = await send_and_expect_error(graph)
    assert (error.http_status, error.code) == (429, 130429)
    assert error.retryable
    assert error.throttle
    assert error.fbtrace_id
    assert error.message.startswith("(#130429)")
    retry = await graph.send(PNID, text_message(CITIZEN, "다시"))
    attempts = sim.sent(include_failed=True)
    assert [a.accepted for a in attempts] == [False, True]
    assert attempts[1].wamid == retry.wamid


async def test_undeliverable_is_permanent(sim: Simulator, graph: GraphClient) -> None:
    sim.inject_faults([{"http_status": 400, "code": 131026}])
    error = await send_and_expect_error(graph)
    assert (error.http_status, error.code) == (400, 131026)
    assert not error.retryable
    assert not error.pauses  # about this citizen, not the sender
    assert error.details


@pytest.mark.parametrize(
    ("fault", "pauses"),
    [
        ({"code": 0}, True),
        ({"code": 368}, True),  # the number is blocked for a while
        ({"code": 133010}, True),  # the number is not registered
        ({"http_status": 401}, True),  # refused credentials, without Meta's error body
        ({"code": 100}, False),
        ({"code": 131047}, False),
        ({"http_status": 500}, False),
    ],
)
async def test_what_refuses_the_sender_and_not_the_message(
    sim: Simulator, graph: GraphClient, fault: dict[str, int], pauses: bool
) -> None:
    sim.inject_faults([fault])
    error = await send_and_expect_error(graph)
    assert error.pauses is pauses


async def test_outside_the_24_hour_window_is_permanent(sim: Simulator, graph: GraphClient) -> None:
    sim.inject_faults([{"code": 131047}])
    error = await send_and_expect_error(graph)
    assert error.code == 131047
    assert not error.retryable


async def test_a_5xx_without_a_code_is_retryable(sim: Simulator, graph: GraphClient) -> None:
    sim.inject_faults([{"http_status": 500}])
    error = await send_and_expect_error(graph)
    assert (error.http_status, error.code) == (500, None)
    assert error.retryable


@pytest.mark.parametrize(("http_status", "in_doubt"), [(502, True), (504, True), (503, False)])
async def test_a_gateways_bare_failure_is_in_doubt_when_it_forwarded_the_request(
    sim: Simulator, graph: GraphClient, http_status: int, in_doubt: bool
) -> None:
    # A proxy's 502/504 means it passed the request on: Meta may have the reply, and a second
    # send could be a second reply. A 503 (nothing upstream took it) is retried.
    sim.inject_faults([{"http_status": http_status}])
    error = await send_and_expect_error(graph)
    assert (error.http_status, error.code) == (http_status, None)
    assert error.ambiguous is in_doubt
    assert error.retryable


async def test_metas_unknown_error_is_retryable(sim: Simulator, graph: GraphClient) -> None:
    sim.inject_faults([{"http_status": 500, "code": 131000}])
    error = await send_and_expect_error(graph)
    assert (error.http_status, error.code) == (500, 131000)
    assert error.retryable


async def test_validation_errors_come_back_as_code_100(graph: GraphClient) -> None:
    too_long = text_message(CITIZEN, "x")
    too_long["text"]["body"] = "x" * 4097
    with pytest.raises(GraphError) as caught:
        await graph.send(PNID, too_long)
    assert (caught.value.http_status, caught.value.code) == (400, 100)
    assert not caught.value.retryable


async def test_connection_refused_is_retryable_with_no_http_status(
    session: aiohttp.ClientSession,
) -> None:
    graph = make_client(session, f"http://127.0.0.1:{closed_port()}")
    error = await send_and_expect_error(graph)
    assert error.http_status == 0
    assert error.code is None
    assert error.retryable
    assert not error.ambiguous  # refused: the request never reached anyone
    assert TOKEN not in str(error)


async def test_a_timeout_is_retryable_with_no_http_status(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.inject_faults([{"delay_ms": 300}])
    graph = make_client(session, sim.base_url, timeout=0.05)
    error = await send_and_expect_error(graph)
    assert error.http_status == 0
    assert error.retryable
    assert error.ambiguous
    # The simulator still accepts the slow send: exactly why retries need the idempotency key.
    await sim.wait_for_sends(1, to=CITIZEN)


async def test_mark_read_and_typing_indicator(sim: Simulator, graph: GraphClient) -> None:
    await graph.mark_read(PNID, INBOUND_WAMID)
    await graph.mark_read(PNID, INBOUND_WAMID, typing_indicator=True)
    reads = sim.reads()
    assert [(r.phone_number_id, r.message_id, r.typing_indicator) for r in reads] == [
        (PNID, INBOUND_WAMID, False),
        (PNID, INBOUND_WAMID, True),
    ]
    assert sim.sent() == []


async def test_mark_read_with_a_wrong_token_raises(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    graph = make_client(session, sim.base_url, token="nope")
    with pytest.raises(GraphError) as caught:
        await graph.mark_read(PNID, INBOUND_WAMID)
    assert caught.value.code == 190


async def test_concurrent_sends_each_get_their_own_wamid(
    sim: Simulator, graph: GraphClient
) -> None:
    results = await asyncio.gather(
        *(graph.send(PNID, text_message(CITIZEN, f"안내 {i}")) for i in range(50))
    )
    sends = await sim.wait_for_sends(50, to=CITIZEN)
    assert len({r.wamid for r in results}) == 50
    assert {s.wamid for s in sends} == {r.wamid for r in results}


def test_text_message_builder_enforces_whatsapp_limits() -> None:
    assert len(text_message(CITIZEN, "가" * 4096)["text"]["body"]) == 4096
    with pytest.raises(ValueError, match="4096"):
        text_message(CITIZEN, "가" * 4097)
    with pytest.raises(ValueError, match="non-empty"):
        text_message(CITIZEN, "")
    assert "context" not in text_message(CITIZEN, "hi")


async def test_client_configuration_is_checked(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="access_token"):
        make_client(session, "http://127.0.0.1:1", token="")
    with pytest.raises(ValueError, match="api_version"):
        GraphClient(session, base_url="http://x", api_version="25", access_token=TOKEN)
    with pytest.raises(ValueError, match="base_url"):
        GraphClient(session, base_url="graph.facebook.com", api_version="v25.0", access_token=TOKEN)


# --- every reply type the catalog sends, over the wire (reference §5) -------------------------


def catalog_message(reply: Reply, **options: Any) -> dict[str, Any]:
    return to_graph_message(reply, to=CITIZEN, reply_to=INBOUND_WAMID, **options)


async def test_reply_buttons_are_sent_exactly(sim: Simulator, graph: GraphClient) -> None:
    reply = Reply(
        intent="food_aid",
        language="en",
        type="buttons",
        body="Food assistance: apply online or at your municipal office.",
        header="Food aid",
        footer="In an emergency, call 112.",
        buttons=(Button("menu_office_hours", "Office hours"), Button("menu_help", "Main menu")),
    )
    result = await graph.send(PNID, catalog_message(reply))
    [send] = sim.sent(to=CITIZEN)
    assert send.wamid == result.wamid
    assert send.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "header": {"type": "text", "text": "Food aid"},
            "body": {"text": "Food assistance: apply online or at your municipal office."},
            "footer": {"text": "In an emergency, call 112."},
            "action": {
                "buttons": [
                    {
                        "type": "reply",
                        "reply": {"id": "menu_office_hours", "title": "Office hours"},
                    },
                    {"type": "reply", "reply": {"id": "menu_help", "title": "Main menu"}},
                ]
            },
        },
        "context": {"message_id": INBOUND_WAMID},
    }


async def test_a_list_is_sent_exactly(sim: Simulator, graph: GraphClient) -> None:
    reply = Reply(
        intent="help",
        language="ko",
        type="list",
        body="무엇을 도와드릴까요?",
        list_button="메뉴 보기",
        sections=(
            Section("서비스", (Row("menu_voting", "투표", "투표소, 투표 시간"),)),
            Section("메시지 수신", (Row("menu_opt_out", "수신 거부"),)),
        ),
    )
    await graph.send(PNID, catalog_message(reply))
    [send] = sim.sent(to=CITIZEN)
    assert send.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": "무엇을 도와드릴까요?"},
            "action": {
                "button": "메뉴 보기",
                "sections": [
                    {
                        "title": "서비스",
                        "rows": [
                            {
                                "id": "menu_voting",
                                "title": "투표",
                                "description": "투표소, 투표 시간",
                            }
                        ],
                    },
                    {
                        "title": "메시지 수신",
                        "rows": [{"id": "menu_opt_out", "title": "수신 거부"}],
                    },
                ],
            },
        },
        "context": {"message_id": INBOUND_WAMID},
    }


async def test_the_nearest_shelter_pin_is_sent_exactly(sim: Simulator, graph: GraphClient) -> None:
    shelters = load_catalog().replies["shelter"]["ja"]
    place = shelters.places[2]
    await graph.send(PNID, catalog_message(shelters, place=place))
    [send] = sim.sent(to=CITIZEN)
    assert send.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "location",
        "location": {
            "latitude": place.latitude,
            "longitude": place.longitude,
            "name": place.name,
            "address": place.address,
        },
        "context": {"message_id": INBOUND_WAMID},
    }


async def test_a_template_is_sent_exactly(sim: Simulator, graph: GraphClient) -> None:
    reply = Reply(
        intent="voting",
        language="ko",
        type="template",
        template=Template("polling_place_reminder", "ko", ("종로구", "7월 30일")),
    )
    result = await graph.send(PNID, catalog_message(reply))
    [send] = sim.sent(to=CITIZEN)
    assert send.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": "template",
        "template": {
            "name": "polling_place_reminder",
            "language": {"code": "ko"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "종로구"},
                        {"type": "text", "text": "7월 30일"},
                    ],
                }
            ],
        },
        "context": {"message_id": INBOUND_WAMID},
    }
    assert result.message_status == "accepted"


async def test_a_username_citizen_is_sent_to_by_recipient(
    sim: Simulator, graph: GraphClient
) -> None:
    bsuid = "KR.88120034561297"
    reply = Reply(intent="help", language="en", type="text", body="How can we help?")
    message = to_graph_message(reply, to=bsuid, reply_to=INBOUND_WAMID, by_user_id=True)
    result = await graph.send(PNID, message)
    assert result.wa_id == bsuid
    [send] = sim.sent(to=bsuid)
    assert send.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "recipient": bsuid,
        "type": "text",
        "text": {"body": "How can we help?", "preview_url": False},
        "context": {"message_id": INBOUND_WAMID},
    }


async def test_every_packaged_reply_template_and_away_notice_is_accepted(
    sim: Simulator, graph: GraphClient
) -> None:
    """Everything the catalog can send passes the simulator's Meta-like validation."""
    catalog = load_catalog()
    assert catalog.office is not None
    messages = []
    for table in (catalog.replies, catalog.templates, {"away": catalog.office.away}):
        for by_language in table.values():
            for reply in by_language.values():
                messages.append(catalog_message(reply))
                messages += [catalog_message(reply, place=p) for p in reply.places]
    results = await asyncio.gather(*(graph.send(PNID, m) for m in messages))
    assert len({r.wamid for r in results}) == len(messages)
    assert sim.stats()["rejected"] == 0
    assert set(sim.stats()["by_type"]) == {"text", "interactive", "location", "template"}


async def test_a_free_form_reply_outside_the_window_is_refused_with_131047(
    session: aiohttp.ClientSession,
) -> None:
    async with Simulator(access_token=TOKEN, enforce_window=True) as sim:
        graph = make_client(session, sim.base_url)
        error = await send_and_expect_error(graph)
        assert (error.http_status, error.code, error.retryable) == (400, 131047, False)
        template = choose_template(load_catalog(), "voting", "ko")
        await graph.send(PNID, catalog_message(template))
        sim.open_window(CITIZEN)
        await graph.send(PNID, text_message(CITIZEN, "안내"))
        assert [s.type for s in sim.sent(to=CITIZEN)] == ["template", "text"]


async def test_template_parameters_meta_refuses_are_a_permanent_error(
    sim: Simulator, graph: GraphClient
) -> None:
    bad = Reply(
        intent="voting", language="en", type="template", template=Template("t", "en", ("a\nb",))
    )
    with pytest.raises(GraphError) as caught:
        await graph.send(PNID, catalog_message(bad))
    assert (caught.value.code, caught.value.retryable) == (132018, False)


async def test_a_connection_never_made_is_retryable_and_not_in_doubt(
    session: aiohttp.ClientSession,
) -> None:
    # A listener whose accept queue is full drops new connection requests: connecting hangs,
    # as to a Graph API host that cannot be reached, and no byte of the request leaves.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.settimeout(0.2)
                fillers.append(filler)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    break  # the queue is full
            graph = make_client(session, f"http://127.0.0.1:{port}", timeout=1.0)
            error = await send_and_expect_error(graph)
        finally:
            for filler in fillers:
                filler.close()
    assert error.http_status == 0
    assert error.retryable
    assert not error.ambiguous, error  # a reply in doubt would never be sent


@pytest.mark.parametrize("body", [b'{"messaging_product":"whatsapp"}', b"[]", b"OK"])
async def test_an_accepted_send_we_cannot_read_is_in_doubt(
    session: aiohttp.ClientSession, body: bytes
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v25.0/{pnid}/messages", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        error = await send_and_expect_error(make_client(session, f"http://127.0.0.1:{port}"))
    finally:
        await runner.cleanup()
    assert error.http_status == 200
    assert error.ambiguous  # Meta took it, under an id we cannot read: never sent twice

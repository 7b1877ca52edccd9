"""GraphClient against the in-process Meta simulator, over real HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

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
    assert error.details


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

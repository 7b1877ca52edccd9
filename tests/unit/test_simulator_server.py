"""The simulated Graph API over real HTTP: validation, auth, faults and the /_sim/ controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from civicline.simulator import Fault, Simulator

PNID = "106512349876543"
TOKEN = "test-token"
CITIZEN = "821052347781"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def text(body: str = "안녕하세요", to: str = CITIZEN, **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": body},
        **extra,
    }


async def post(
    http: aiohttp.ClientSession,
    sim: Simulator,
    body: Any,
    *,
    token: str | None = TOKEN,
    pnid: str = PNID,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = f"{sim.base_url}/v25.0/{pnid}/messages"
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with http.post(url, headers=headers, **kwargs) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def control(
    http: aiohttp.ClientSession, sim: Simulator, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, f"{sim.base_url}/_sim/{path}", **kwargs) as response:
        return response.status, await response.json()


def assert_graph_error(payload: Any, code: int) -> dict[str, Any]:
    error: dict[str, Any] = payload["error"]
    assert error["code"] == code
    assert error["type"] == "OAuthException"
    assert error["message"].startswith(f"(#{code}) ")
    assert isinstance(error["fbtrace_id"], str)
    assert error["fbtrace_id"]
    return error


async def test_accepted_text_send_is_answered_and_recorded(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, payload = await post(http, sim, text(), token="any-token")
    assert status == 200
    wamid = payload["messages"][0]["id"]
    assert payload == {
        "messaging_product": "whatsapp",
        "contacts": [{"input": CITIZEN, "wa_id": CITIZEN}],
        "messages": [{"id": wamid, "message_status": "accepted"}],
    }
    assert wamid.startswith("wamid.")
    [send] = sim.sent()
    assert send.wamid == wamid
    assert send.body == text()
    assert send.phone_number_id == PNID
    assert send.api_version == "v25.0"
    assert send.text == "안녕하세요"
    assert {k.lower() for k in send.headers}.isdisjoint({"authorization"})
    assert sim.stats()["accepted"] == 1


async def test_recipient_is_normalised_like_meta(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, payload = await post(http, sim, text(to="+82 10-5234-7781"))
    assert status == 200
    assert payload["contacts"] == [{"input": "+82 10-5234-7781", "wa_id": CITIZEN}]
    assert len(sim.sent(to=CITIZEN)) == 1


async def test_every_wamid_is_unique(sim: Simulator, http: aiohttp.ClientSession) -> None:
    answers = await asyncio.gather(*(post(http, sim, text(f"n{i}")) for i in range(30)))
    assert len({payload["messages"][0]["id"] for _, payload in answers}) == 30


@pytest.mark.parametrize("token", [None, ""])
async def test_a_send_without_a_bearer_token_is_refused(
    sim: Simulator, http: aiohttp.ClientSession, token: str | None
) -> None:
    status, payload = await post(http, sim, text(), token=token)
    assert status == 401
    assert_graph_error(payload, 190)
    assert sim.sent() == []
    assert sim.stats()["unauthorized"] == 1


async def test_a_configured_token_is_enforced(http: aiohttp.ClientSession) -> None:
    async with Simulator(access_token="the-token") as sim:
        wrong_status, payload = await post(http, sim, text(), token="another-token")
        right_status, _ = await post(http, sim, text(), token="the-token")
    assert wrong_status == 401
    assert_graph_error(payload, 190)
    assert right_status == 200
    assert "the-token" not in repr(sim)


INVALID_BODIES: list[tuple[str, Any]] = [
    ("no messaging_product", {k: v for k, v in text().items() if k != "messaging_product"}),
    ("wrong product", text(messaging_product="sms")),
    ("no to", {k: v for k, v in text().items() if k != "to"}),
    ("to not a number", text(to="citizen")),
    ("unknown type", {**text(), "type": "carrier_pigeon"}),
    ("no text object", {**text(), "text": None}),
    ("empty text", text(body="")),
    ("text too long", text(body="가" * 4097)),
    ("bad recipient_type", text(recipient_type="broadcast")),
    ("context without id", text(context={})),
    (
        "template without language",
        {"messaging_product": "whatsapp", "to": CITIZEN, "type": "template",
         "template": {"name": "polling_place_reminder"}},
    ),
    (
        "location with text coordinates",
        {"messaging_product": "whatsapp", "to": CITIZEN, "type": "location",
         "location": {"latitude": "35.68", "longitude": 139.69}},
    ),
    (
        "image with both link and id",
        {"messaging_product": "whatsapp", "to": CITIZEN, "type": "image",
         "image": {"link": "https://example.org/a.png", "id": "123"}},
    ),
    (
        "reaction without message id",
        {"messaging_product": "whatsapp", "to": CITIZEN, "type": "reaction",
         "reaction": {"emoji": "👍"}},
    ),
    ("a list, not an object", [text()]),
    ("read without message id", {"messaging_product": "whatsapp", "status": "read"}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body"), INVALID_BODIES, ids=[c for c, _ in INVALID_BODIES])
async def test_invalid_bodies_get_code_100(
    sim: Simulator, http: aiohttp.ClientSession, case: str, body: Any
) -> None:
    status, payload = await post(http, sim, body)
    assert status == 400, case
    assert_graph_error(payload, 100)
    assert sim.sent(include_failed=True) == []
    assert sim.stats()["rejected"] == 1


async def test_a_body_that_is_not_json_gets_code_100(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, payload = await post(http, sim, None, raw=b"{not json")
    assert status == 400
    assert_graph_error(payload, 100)


async def test_text_of_exactly_4096_characters_is_accepted(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, _ = await post(http, sim, text(body="가" * 4096))
    assert status == 200


async def test_a_missing_type_defaults_to_text_as_at_meta(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    body = {k: v for k, v in text().items() if k != "type"}
    status, _ = await post(http, sim, body)
    assert status == 200


def buttons(*titles: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": CITIZEN,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "여권 갱신 방법을 선택하세요"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": f"b{i}", "title": t}}
                    for i, t in enumerate(titles)
                ]
            },
        },
    }


def list_message(rows: int) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": CITIZEN,
        "type": "interactive",
        "interactive": {
            "type": "list",
            "header": {"type": "text", "text": "대피소"},
            "body": {"text": "가까운 대피소를 고르세요"},
            "action": {
                "button": "선택",
                "sections": [
                    {
                        "title": "종로구",
                        "rows": [{"id": f"r{i}", "title": f"대피소 {i}"} for i in range(rows)],
                    }
                ],
            },
        },
    }


async def test_interactive_messages_within_limits_are_accepted(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    assert (await post(http, sim, buttons("온라인", "방문", "우편")))[0] == 200
    assert (await post(http, sim, list_message(10)))[0] == 200
    assert sim.stats()["by_type"] == {"interactive": 2}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (buttons("a", "b", "c", "d"), "Buttons count"),
        (buttons("x" * 21), "Button title length"),
        (buttons("same", "same"), "unique"),
        (list_message(11), "row count"),
    ],
)
async def test_interactive_limits_get_code_131009(
    sim: Simulator, http: aiohttp.ClientSession, body: dict[str, Any], detail: str
) -> None:
    status, payload = await post(http, sim, body)
    assert status == 400
    error = assert_graph_error(payload, 131009)
    assert detail in error["error_data"]["details"]


async def test_mark_as_read_succeeds_and_is_recorded_apart_from_sends(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN"}
    typing = {**read, "typing_indicator": {"type": "text"}}
    assert await post(http, sim, read) == (200, {"success": True})
    assert await post(http, sim, typing) == (200, {"success": True})
    assert [(r.message_id, r.typing_indicator) for r in sim.reads()] == [
        ("wamid.IN", False),
        ("wamid.IN", True),
    ]
    assert sim.sent() == []
    _, reads = await control(http, sim, "GET", "reads")
    assert [r["message_id"] for r in reads] == ["wamid.IN", "wamid.IN"]


async def test_scripted_faults_are_consumed_in_order(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    script = [
        {"http_status": 429, "code": 130429, "count": 2},
        {"http_status": 500, "code": 131000},
    ]
    status, queued = await control(http, sim, "POST", "faults", json=script)
    assert status == 200
    assert queued["queued"] == 2
    answers = [await post(http, sim, text(f"try {i}")) for i in range(4)]
    assert [s for s, _ in answers] == [429, 429, 500, 200]
    assert_graph_error(answers[0][1], 130429)
    assert answers[0][1]["error"]["message"] == "(#130429) Rate limit hit"
    assert_graph_error(answers[2][1], 131000)
    attempts = sim.sent(include_failed=True)
    assert [(a.http_status, a.error_code, a.accepted) for a in attempts] == [
        (429, 130429, False),
        (429, 130429, False),
        (500, 131000, False),
        (200, None, True),
    ]
    assert len(sim.sent()) == 1
    assert (await control(http, sim, "GET", "faults"))[1] == []
    stats = sim.stats()
    assert (stats["failed"], stats["accepted"], stats["pending_faults"]) == (3, 1, 0)


async def test_a_fault_without_a_code_is_a_bare_http_error(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.inject_faults([{"http_status": 503}])
    status, payload = await post(http, sim, text())
    assert status == 503
    assert isinstance(payload, str)


async def test_a_fault_code_alone_takes_its_http_status_from_the_table(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.inject_faults([Fault(code=131026, http_status=400), {"code": 130429}, {"code": 190}])
    statuses = [(await post(http, sim, text()))[0] for _ in range(3)]
    assert statuses == [400, 429, 401]


async def test_a_fault_for_one_recipient_leaves_others_alone(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.inject_faults([{"code": 131056, "to": "447700900321"}])
    assert (await post(http, sim, text(to=CITIZEN)))[0] == 200
    status, payload = await post(http, sim, text(to="447700900321"))
    assert status == 400
    assert_graph_error(payload, 131056)


async def test_a_delay_only_fault_still_accepts(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.inject_faults([{"delay_ms": 20}])
    assert (await post(http, sim, text()))[0] == 200
    assert sim.state.pending_faults() == []


@pytest.mark.parametrize(
    "script",
    [
        {"http_status": 429},
        [{"code": "130429"}],
        [{"http_status": 200}],
        [{"code": 130429, "count": 0}],
        [{"code": 130429, "colour": "red"}],
        ["429"],
    ],
)
async def test_malformed_fault_scripts_are_refused_whole(
    sim: Simulator, http: aiohttp.ClientSession, script: Any
) -> None:
    status, payload = await control(http, sim, "POST", "faults", json=script)
    assert status == 400
    assert payload["error"]
    assert sim.state.pending_faults() == []


async def test_control_endpoints_filter_and_clear(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    await post(http, sim, text(to=CITIZEN))
    await post(http, sim, text(to="447700900321"))
    await post(http, sim, text(to=CITIZEN, body="두 번째"))
    _, everything = await control(http, sim, "GET", "sent")
    _, to_citizen = await control(http, sim, "GET", "sent", params={"to": CITIZEN})
    first = to_citizen[0]["sequence"]
    _, later = await control(http, sim, "GET", "sent", params={"to": CITIZEN, "after": first})
    assert len(everything) == 3
    assert [s["body"]["text"]["body"] for s in to_citizen] == ["안녕하세요", "두 번째"]
    assert [s["body"]["text"]["body"] for s in later] == ["두 번째"]
    assert to_citizen[0]["wamid"].startswith("wamid.")
    assert to_citizen[0]["received_at"].endswith("+00:00")
    _, stats = await control(http, sim, "GET", "stats")
    assert stats["accepted"] == 3
    assert stats["by_phone_number_id"] == {PNID: 3}
    assert await control(http, sim, "DELETE", "sent") == (200, {"cleared": 3})
    assert sim.sent() == []


async def test_wait_for_sends_wakes_on_the_sends(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async def send_three() -> None:
        for i in range(3):
            await post(http, sim, text(f"n{i}"))

    sender = asyncio.create_task(send_three())
    sends = await sim.wait_for_sends(3, to=CITIZEN, timeout=5)
    await sender
    assert [s.text for s in sends] == ["n0", "n1", "n2"]


async def test_wait_for_sends_times_out_with_a_clear_message(sim: Simulator) -> None:
    with pytest.raises(TimeoutError, match="expected 1 sends to 447700900321 within"):
        await sim.wait_for_sends(1, to="447700900321", timeout=0.05)


async def test_unknown_phone_number_id_is_refused_when_numbers_are_configured(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(phone_number_ids={PNID}) as sim:
        ok, _ = await post(http, sim, text())
        status, payload = await post(http, sim, text(), pnid="999")
    assert ok == 200
    assert status == 400
    assert assert_graph_error(payload, 100)["error_subcode"] == 33


async def test_clear_forgets_sends_and_faults(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await post(http, sim, text())
    sim.inject_faults([{"code": 131000}])
    sim.clear()
    assert sim.sent() == []
    assert (await post(http, sim, text()))[0] == 200


async def test_each_simulator_gets_its_own_free_port() -> None:
    async with Simulator() as one, Simulator() as two:
        assert one.port != 0
        assert one.base_url != two.base_url
        assert one.base_url.startswith("http://127.0.0.1:")


async def test_the_send_summary_counts_recipients_duplicates_and_the_busiest_second(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    template = {"name": "civicline_flood_warning", "language": {"code": "ko"}}
    for to in ("821000000001", "821000000002", "821000000001"):
        message = {"messaging_product": "whatsapp", "to": to, "type": "template"}
        status, _ = await post(http, sim, {**message, "template": template})
        assert status == 200
    await post(http, sim, text())
    status, summary = await control(http, sim, "GET", "sent/summary?type=template")
    assert status == 200
    assert summary["accepted"] == 3
    assert summary["recipients"] == 2
    assert summary["duplicates"] == {"821000000001": 2}
    assert summary["busiest_second"] == 3
    assert summary["by_template"] == {"civicline_flood_warning": 3}
    assert summary["by_language"] == {"ko": 3}
    status, everything = await control(http, sim, "GET", "sent/summary?after=3")
    assert everything["accepted"] == 1

"""The simulated Graph API checks every message type the responder sends the way Meta does,
enforces the 24-hour window when asked, and builds the citizen webhooks the tests need."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from civicline.router.core import parse_webhook
from civicline.simulator import (
    Simulator,
    interactive_reply_webhook,
    location_message_webhook,
    message_webhook,
    text_message_webhook,
)
from civicline.simulator.__main__ import SendOptions, _open_window, _reply_text, build_parser

PNID = "106512349876543"
CITIZEN = "821052347781"
BSUID = "US.13491208655302741918"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, sim: Simulator, body: Any) -> tuple[int, Any]:
    url = f"{sim.base_url}/v25.0/{PNID}/messages"
    async with http.post(url, json=body, headers={"Authorization": "Bearer t"}) as response:
        return response.status, await response.json()


def message(kind: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CITIZEN,
        "type": kind,
        kind: content,
        **extra,
    }


def template(**fields: Any) -> dict[str, Any]:
    content = {"name": "polling_place_reminder", "language": {"code": "ko"}, **fields}
    return message("template", content)


def body_component(*texts: str) -> list[dict[str, Any]]:
    return [{"type": "body", "parameters": [{"type": "text", "text": t} for t in texts]}]


async def expect_error(
    http: aiohttp.ClientSession, sim: Simulator, body: Any, code: int
) -> dict[str, Any]:
    status, payload = await post(http, sim, body)
    assert status == 400, payload
    assert payload["error"]["code"] == code, payload
    assert sim.sent() == []
    error: dict[str, Any] = payload["error"]
    return error


# --- templates --------------------------------------------------------------------------------


async def test_a_template_with_every_component_kind_is_accepted(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    # The example of reference §5, verbatim.
    components = [
        {
            "type": "header",
            "parameters": [{"type": "image", "image": {"link": "https://example.org/a.png"}}],
        },
        *body_component("종로구", "7월 30일"),
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "0",
            "parameters": [{"type": "payload", "payload": "ACK"}],
        },
    ]
    status, _ = await post(http, sim, template(components=components))
    assert status == 200
    assert sim.sent()[0].body["template"]["components"] == components


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "Polling Place"},
        {"language": {"code": "korean"}},
        {"language": {"code": "ko-KR"}},
        {"components": {"type": "body"}},
        {"components": [{"type": "footer"}]},
        {"components": [{"type": "body", "parameters": [{"type": "emoji", "text": "x"}]}]},
        {"components": [{"type": "body", "parameters": [{"type": "text"}]}]},
        {"components": [{"type": "body", "parameters": "x"}]},
        {"components": [{"type": "button", "index": "0", "parameters": []}]},
        {"components": [{"type": "header", "parameters": [{"type": "image"}]}]},
    ],
)
async def test_malformed_templates_get_code_100(
    sim: Simulator, http: aiohttp.ClientSession, fields: dict[str, Any]
) -> None:
    await expect_error(http, sim, template(**fields), 100)


@pytest.mark.parametrize("text", ["line\nbreak", "tab\there", "five     spaces"])
async def test_template_parameter_text_meta_refuses_gets_132018(
    sim: Simulator, http: aiohttp.ClientSession, text: str
) -> None:
    error = await expect_error(http, sim, template(components=body_component(text)), 132018)
    assert "new-line/tab" in error["error_data"]["details"]


async def test_four_spaces_in_a_parameter_are_fine(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    assert (await post(http, sim, template(components=body_component("a    b"))))[0] == 200


# --- locations and location requests ----------------------------------------------------------


async def test_a_location_pin_is_accepted(sim: Simulator, http: aiohttp.ClientSession) -> None:
    pin = {"latitude": 37.573, "longitude": 126.9794, "name": "대피소", "address": "종로구"}
    assert (await post(http, sim, message("location", pin)))[0] == 200
    assert sim.sent()[0].body["location"] == pin


@pytest.mark.parametrize(
    "pin",
    [
        {"latitude": 90.5, "longitude": 0},
        {"latitude": 0, "longitude": -181},
        {"latitude": True, "longitude": 0},
        {"latitude": 0, "longitude": 0, "name": 5},
        {"latitude": 0, "longitude": 0, "address": ["x"]},
    ],
)
async def test_a_location_out_of_range_or_malformed_gets_code_100(
    sim: Simulator, http: aiohttp.ClientSession, pin: dict[str, Any]
) -> None:
    await expect_error(http, sim, message("location", pin), 100)


def location_request(
    text: str = "위치를 보내 주세요", name: str = "send_location"
) -> dict[str, Any]:
    interactive = {
        "type": "location_request_message",
        "body": {"text": text},
        "action": {"name": name},
    }
    return message("interactive", interactive)


async def test_a_location_request_is_checked(sim: Simulator, http: aiohttp.ClientSession) -> None:
    assert (await post(http, sim, location_request()))[0] == 200
    sim.clear()
    await expect_error(http, sim, location_request(name="share"), 131008)
    await expect_error(http, sim, location_request(text="x" * 1025), 131009)


# --- interactive bodies and headers -----------------------------------------------------------


def interactive(kind: str, body: str, **extra: Any) -> dict[str, Any]:
    action: dict[str, Any] = (
        {"buttons": [{"type": "reply", "reply": {"id": "menu_help", "title": "메뉴"}}]}
        if kind == "button"
        else {"button": "메뉴", "sections": [{"rows": [{"id": "r", "title": "R"}]}]}
    )
    return message("interactive", {"type": kind, "body": {"text": body}, "action": action, **extra})


async def test_a_list_body_may_be_4096_characters_a_buttons_body_1024(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    assert (await post(http, sim, interactive("list", "가" * 4096)))[0] == 200
    assert (await post(http, sim, interactive("button", "가" * 1024)))[0] == 200
    sim.clear()
    await expect_error(http, sim, interactive("list", "가" * 4097), 131009)
    await expect_error(http, sim, interactive("button", "가" * 1025), 131009)


async def test_button_headers_may_be_media_list_headers_only_text(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    image = {"type": "image", "image": {"link": "https://example.org/a.png"}}
    assert (await post(http, sim, interactive("button", "b", header=image)))[0] == 200
    sim.clear()
    await expect_error(http, sim, interactive("list", "b", header=image), 131009)
    await expect_error(http, sim, interactive("button", "b", header={"type": "sticker"}), 131009)


# --- business-scoped user ids -----------------------------------------------------------------


async def test_a_username_citizen_is_reached_by_recipient(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    body = message("text", {"body": "안녕하세요"})
    body.pop("to")
    body["recipient"] = BSUID
    status, payload = await post(http, sim, body)
    assert status == 200
    assert payload["contacts"] == [{"input": BSUID, "user_id": BSUID}]
    assert [s.to for s in sim.sent(to=BSUID)] == [BSUID]


@pytest.mark.parametrize("recipient", ["13491208655302741918", "us.1349", "US.", 5, ""])
async def test_a_recipient_that_is_not_a_bsuid_gets_code_100(
    sim: Simulator, http: aiohttp.ClientSession, recipient: object
) -> None:
    body = message("text", {"body": "x"})
    body.pop("to")
    body["recipient"] = recipient
    await expect_error(http, sim, body, 100)


async def test_a_fault_scripted_for_a_bsuid_hits_it(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.inject_faults([{"code": 131026, "to": BSUID}])
    body = message("text", {"body": "x"})
    body.pop("to")
    body["recipient"] = BSUID
    assert (await post(http, sim, message("text", {"body": "x"})))[0] == 200
    assert (await post(http, sim, body))[0] == 400


# --- the 24-hour window -----------------------------------------------------------------------


async def test_with_the_window_enforced_free_form_needs_an_open_window(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(enforce_window=True) as sim:
        error = await expect_error(http, sim, message("text", {"body": "hi"}), 131047)
        assert error["message"] == "(#131047) Re-engagement message"
        [attempt] = sim.sent(include_failed=True)
        assert (attempt.http_status, attempt.error_code) == (400, 131047)
        # a template goes out whatever the window
        assert (await post(http, sim, template()))[0] == 200
        # the citizen wrote 23 hours ago: free-form is fine, and +82 … is the same citizen
        sim.open_window("+82 10-5234-7781", at=time.time() - 23 * 3600)
        assert (await post(http, sim, message("text", {"body": "hi"})))[0] == 200


async def test_a_window_older_than_24_hours_is_closed(http: aiohttp.ClientSession) -> None:
    async with Simulator(enforce_window=True) as sim:
        sim.open_window(CITIZEN, at=time.time() - 24 * 3600 - 1)
        await expect_error(http, sim, message("text", {"body": "hi"}), 131047)
        # an older message arriving later never shortens the window
        sim.open_window(CITIZEN)
        sim.open_window(CITIZEN, at=time.time() - 48 * 3600)
        assert (await post(http, sim, message("text", {"body": "hi"})))[0] == 200


async def test_windows_can_be_opened_over_http(http: aiohttp.ClientSession) -> None:
    async with Simulator(enforce_window=True) as sim:
        url = f"{sim.base_url}/_sim/windows"
        async with http.post(url, json={"citizen": BSUID}) as response:
            assert response.status == 200
        body = message("text", {"body": "x"})
        body.pop("to")
        body["recipient"] = BSUID
        assert (await post(http, sim, body))[0] == 200
        for bad in ({}, {"citizen": ""}, {"citizen": "x", "at": "now"}, [1]):
            async with http.post(url, json=bad) as response:
                assert response.status == 400


async def test_the_window_is_not_enforced_by_default(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    assert (await post(http, sim, message("text", {"body": "hi"})))[0] == 200


# --- webhook builders -------------------------------------------------------------------------


def test_the_location_builder_matches_fixture_07(webhook_fixtures: Path) -> None:
    body, wamid = location_message_webhook(
        wa_id="819023456712",
        profile_name="佐藤 健",
        latitude=35.6895,
        longitude=139.6917,
        name="新宿区役所",
        address="東京都新宿区歌舞伎町1-4-1",
        wamid="wamid.HBgMJbwRnCEnWBniBwfsk+dt1lhYDZ/kpDMWGexV",
        timestamp="1784362560",
    )
    fixture = (webhook_fixtures / "07_location.json").read_bytes()
    assert json.loads(body) == json.loads(fixture)
    assert wamid == "wamid.HBgMJbwRnCEnWBniBwfsk+dt1lhYDZ/kpDMWGexV"


def test_the_list_reply_builder_matches_fixture_05(webhook_fixtures: Path) -> None:
    body, _ = interactive_reply_webhook(
        wa_id="821052347781",
        profile_name="김민지",
        reply_id="svc_election_polling_place",
        title="투표소 찾기",
        description="주소로 가까운 투표소 검색",
        in_reply_to="wamid.HBgMUqt82hppvWgTp5fH2utWK2Fkkm0tq48tHD09",
        wamid="wamid.HBgMc19h3oQxU5ZQeGO3BlAP1oF+OUusjDlpGY5g",
        timestamp="1784362020",
    )
    fixture = (webhook_fixtures / "05_interactive_list_reply.json").read_bytes()
    assert json.loads(body) == json.loads(fixture)


def test_a_button_reply_is_built_and_parsed() -> None:
    body, wamid = interactive_reply_webhook(
        wa_id=CITIZEN, kind="button_reply", reply_id="menu_help", title="메뉴"
    )
    [parsed] = parse_webhook(json.loads(body), received_at=datetime.now(UTC)).messages
    assert (parsed.wamid, parsed.type, parsed.reply_id, parsed.text) == (
        wamid,
        "interactive",
        "menu_help",
        "메뉴",
    )
    with pytest.raises(ValueError, match="kind"):
        interactive_reply_webhook(wa_id=CITIZEN, kind="nfm_reply", reply_id="x", title="x")


def test_a_username_citizen_sends_from_user_id_only() -> None:
    body, _ = text_message_webhook(user_id=BSUID, text="hello", profile_name="Ana")
    value = json.loads(body)["entry"][0]["changes"][0]["value"]
    assert value["contacts"] == [{"profile": {"name": "Ana"}, "user_id": BSUID}]
    assert value["messages"][0]["from_user_id"] == BSUID
    assert "from" not in value["messages"][0]
    [parsed] = parse_webhook(json.loads(body), received_at=datetime.now(UTC)).messages
    assert (parsed.sender, parsed.sender_user_id) == (None, BSUID)
    with pytest.raises(ValueError, match="wa_id or a user_id"):
        text_message_webhook(text="nobody")


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("image", {"id": "1", "mime_type": "image/jpeg", "sha256": "x"}),
        ("contacts", [{"name": {"formatted_name": "Kim"}, "phones": [{"phone": "+8210"}]}]),
        ("reaction", {"message_id": "wamid.OUT", "emoji": "👍"}),
        ("unsupported", None),
        ("sticker", {"id": "2", "mime_type": "image/webp", "animated": False}),
    ],
)
def test_any_message_type_is_built_the_way_the_router_parses_it(kind: str, content: Any) -> None:
    errors = [{"code": 131051, "title": "Message type unknown"}] if content is None else None
    body, wamid = message_webhook(kind, content, wa_id=CITIZEN, errors=errors)
    [parsed] = parse_webhook(json.loads(body), received_at=datetime.now(UTC)).messages
    assert (parsed.wamid, parsed.type) == (wamid, kind)
    if content is None:
        assert kind not in json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]
        assert parsed.errors[0]["code"] == 131051


# --- what `civicline-simulator send` prints ---------------------------------------------------


def test_the_cli_shows_each_reply_type_as_a_citizen_sees_it() -> None:
    text = {"body": message("text", {"body": "안녕하세요"})}
    assert _reply_text(text) == "안녕하세요"
    menu = interactive(
        "list",
        "무엇을 도와드릴까요?",
        footer={"text": "긴급 112"},
        header={"type": "text", "text": "안내"},
    )
    shown = _reply_text({"body": menu})
    assert shown.splitlines() == [
        "안내",
        "무엇을 도와드릴까요?",
        "  ≡ 메뉴",
        "    • R  (id r)",
        "긴급 112",
    ]
    assert "[메뉴]  (id menu_help)" in _reply_text({"body": interactive("button", "b")})
    pin = message("location", {"latitude": 37.5, "longitude": 127.0, "name": "대피소"})
    assert _reply_text({"body": pin}) == "대피소\n📍 37.5, 127.0"
    sent_template = template(components=body_component("https://vote.example.gov"))
    assert _reply_text({"body": sent_template}) == (
        "[template polling_place_reminder (ko)] https://vote.example.gov"
    )
    reaction = message("reaction", {"message_id": "wamid.X", "emoji": "👍"})
    assert json.loads(_reply_text({"body": reaction})) == reaction


def send_options(*args: str) -> SendOptions:
    parsed = build_parser().parse_args(["send", *args])
    return SendOptions(
        text=parsed.text,
        location=parsed.location,
        user_id=parsed.user_id,
        wa_id=parsed.wa_id,
        profile_name=parsed.name,
        phone_number_id=parsed.phone_number_id,
        webhook_url="http://127.0.0.1:1/webhook",
        simulator_url="http://127.0.0.1:1",
        wait=0,
        secret="s",
    )


def test_the_cli_can_share_a_location_or_play_a_username_citizen() -> None:
    shared = send_options("--location", "37.4979,127.0276", "--from", CITIZEN)
    message_sent = json.loads(shared.webhook()[0])["entry"][0]["changes"][0]["value"]["messages"][0]
    assert (message_sent["from"], message_sent["type"]) == (CITIZEN, "location")
    assert message_sent["location"] == {"latitude": 37.4979, "longitude": 127.0276}
    assert shared.citizen == CITIZEN

    username = send_options("--text", "hello", "--user-id", BSUID, "--phone-number-id", "777")
    value = json.loads(username.webhook()[0])["entry"][0]["changes"][0]["value"]
    assert value["messages"][0]["from_user_id"] == BSUID
    assert value["metadata"]["phone_number_id"] == "777"
    assert username.citizen == BSUID


@pytest.mark.parametrize(
    "args",
    [
        ["--location", "north"],
        ["--location", "91,0"],
        ["--location", "1,2,3"],
        ["--text", "hi", "--location", "1,2"],
        [],
    ],
)
def test_the_cli_refuses_a_bad_or_ambiguous_message(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["send", *args])
    capsys.readouterr()


async def test_the_cli_opens_the_window_before_it_waits(http: aiohttp.ClientSession) -> None:
    async with Simulator(enforce_window=True) as sim:
        await _open_window(http, sim.base_url, CITIZEN)
        assert (await post(http, sim, message("text", {"body": "hi"})))[0] == 200

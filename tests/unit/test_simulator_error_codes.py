"""Meta's error codes: what the simulator answers, and how the responder classifies them (§6)."""

from __future__ import annotations

import pytest

from civicline.responder.graph import (
    ERROR_RULES,
    RETRYABLE_CODES,
    THROTTLE_CODES,
    GraphError,
)
from civicline.simulator.meta_errors import (
    META_ERROR_CODES,
    describe,
    graph_error_body,
    webhook_error,
)

# Written out from the reference's table, independently of the code under test.
RETRY = [1, 2, 4, 80007, 130429, 131000, 131016, 131053, 131056, 133016]
PERMANENT = [0, 100, 190, 368, 131026, 131047, 131048, 131049, 132000, 132001, 133010, 424242]
# Courier's throttle set less 131056, the pair rate limit: §6 says "retry later to that user
# only", so it does not slow the number's schedule for every citizen.
THROTTLE = [4, 80007, 130429, 131048, 133016]
SECTION_6_CODES = [0, 4, 80007, 100, 190, 368, 130429, 131000, 131016, 131026, 131047, 131048]
SECTION_6_CODES += [131049, 131051, 131053, 131056, 132000, 132001, 133010]


@pytest.mark.parametrize("code", RETRY)
def test_transient_codes_are_retryable(code: int) -> None:
    assert GraphError("x", http_status=400, code=code).retryable


@pytest.mark.parametrize("code", PERMANENT)
def test_permanent_and_unknown_codes_are_not_retried(code: int) -> None:
    # Even behind a 5xx: the code, not the HTTP status, decides (§6 "branch on code").
    assert not GraphError("x", http_status=500, code=code).retryable


@pytest.mark.parametrize("code", THROTTLE)
def test_throttle_codes_ask_to_slow_down(code: int) -> None:
    assert GraphError("x", http_status=429, code=code).throttle


def test_the_pair_rate_limit_is_retried_for_that_citizen_without_slowing_the_number() -> None:
    error = GraphError("x", http_status=400, code=131056)
    assert error.retryable
    assert not error.throttle


def test_spam_rate_limit_slows_down_but_is_not_retried() -> None:
    error = GraphError("x", http_status=400, code=131048)
    assert error.throttle
    assert not error.retryable


def test_the_sets_are_derived_from_the_one_table() -> None:
    assert set(RETRY) == RETRYABLE_CODES
    assert set(THROTTLE) == THROTTLE_CODES
    assert set(ERROR_RULES) >= RETRYABLE_CODES | THROTTLE_CODES


@pytest.mark.parametrize(
    ("http_status", "retryable", "throttle"),
    [
        (0, True, False),
        (429, True, True),
        (500, True, False),
        (502, True, False),
        (503, True, False),
        (400, False, False),
        (401, False, False),
        (404, False, False),
        (302, False, False),
        (200, False, False),
    ],
)
def test_without_a_code_the_http_status_decides(
    http_status: int, retryable: bool, throttle: bool
) -> None:
    error = GraphError("x", http_status=http_status)
    assert error.retryable is retryable
    assert error.throttle is throttle


def test_meta_error_object_is_parsed() -> None:
    body = (
        b'{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException",'
        b'"code":131047,"error_subcode":2494010,"error_data":{"messaging_product":"whatsapp",'
        b'"details":"More than 24 hours have passed."},"fbtrace_id":"AbCdEf123"}}'
    )
    error = GraphError.from_response(400, body)
    assert (error.http_status, error.code, error.subcode) == (400, 131047, 2494010)
    assert error.message == "(#131047) Re-engagement message"
    assert error.details == "More than 24 hours have passed."
    assert error.fbtrace_id == "AbCdEf123"
    assert not error.retryable
    assert "131047" in str(error)
    assert "AbCdEf123" in str(error)
    assert error.as_payload() == {
        "code": 131047,
        "http_status": 400,
        "message": "(#131047) Re-engagement message",
        "fbtrace_id": "AbCdEf123",
    }


@pytest.mark.parametrize(
    "body", [b"<html>502 Bad Gateway</html>", b"", b'{"unexpected":true}', b"[1,2]"]
)
def test_a_body_without_an_error_object_keeps_an_excerpt(body: bytes) -> None:
    error = GraphError.from_response(502, body)
    assert error.code is None
    assert error.retryable
    assert error.message.startswith("unexpected response")


def test_simulator_covers_every_code_of_section_6() -> None:
    assert set(SECTION_6_CODES) <= set(META_ERROR_CODES)


@pytest.mark.parametrize("code", sorted(META_ERROR_CODES))
def test_simulator_5xx_and_429_codes_are_ones_the_responder_retries(code: int) -> None:
    entry = META_ERROR_CODES[code]
    if entry.http_status >= 500 or entry.http_status == 429:
        assert code in RETRYABLE_CODES


def test_simulator_answers_with_metas_graph_error_shape() -> None:
    body = graph_error_body(130429)
    error = body["error"]
    assert error["message"] == "(#130429) Rate limit hit"
    assert error["type"] == "OAuthException"
    assert error["code"] == 130429
    assert isinstance(error["fbtrace_id"], str)
    assert "error_data" not in error
    detailed = graph_error_body(131009, details="Button title length invalid.")["error"]
    assert detailed["error_data"] == {
        "messaging_product": "whatsapp",
        "details": "Button title length invalid.",
    }


def test_simulator_webhook_error_shape() -> None:
    error = webhook_error(131026)
    assert set(error) == {"code", "title", "message", "error_data", "href"}
    assert error["title"] == "Message undeliverable"


def test_unknown_codes_get_a_generic_entry() -> None:
    assert describe(999).http_status == 400
    assert describe(190).http_status == 401
    assert describe(130429).http_status == 429

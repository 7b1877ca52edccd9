"""Meta's error codes as the simulator reproduces them, and the two shapes errors take.

Titles and HTTP statuses follow the table in shared/reference/whatsapp-cloud-api.md §6; the few
codes outside that table (131008, 131009, 133016) are Meta's own names for validation and
registration errors. The responder's retry policy lives in civicline.responder.graph, not here:
the simulator only says what Meta says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from civicline.simulator.ids import new_fbtrace_id

ERROR_CODES_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


@dataclass(frozen=True, slots=True)
class MetaErrorCode:
    code: int
    title: str
    http_status: int
    details: str


def _entry(code: int, title: str, http_status: int, details: str = "") -> MetaErrorCode:
    return MetaErrorCode(code, title, http_status, details or f"{title}.")


META_ERROR_CODES: Final[Mapping[int, MetaErrorCode]] = {
    e.code: e
    for e in (
        _entry(0, "Auth exception", 401),
        _entry(4, "API call rate limit reached", 429),
        _entry(100, "Invalid parameter", 400),
        _entry(190, "Access token expired or invalid", 401),
        _entry(368, "Temporarily blocked for policy violations", 403),
        _entry(80007, "WABA rate limit reached", 429),
        _entry(130429, "Rate limit hit", 429, "Message throughput (messages per second) reached."),
        _entry(131000, "Something went wrong", 500, "Unknown error."),
        _entry(131008, "Required parameter is missing", 400),
        _entry(131009, "Parameter value is not valid", 400),
        _entry(131016, "Service unavailable", 503),
        _entry(
            131026,
            "Message undeliverable",
            400,
            "The recipient is not a WhatsApp user, uses an old client or has not accepted the "
            "terms of service.",
        ),
        _entry(
            131047,
            "Re-engagement message",
            400,
            "Message failed to send because more than 24 hours have passed since the customer "
            "last replied to this number.",
        ),
        _entry(131048, "Spam rate limit hit", 400),
        _entry(
            131049,
            "Meta chose not to deliver",
            400,
            "This message was not delivered to maintain healthy ecosystem engagement.",
        ),
        _entry(131051, "Unsupported message type", 400),
        _entry(131053, "Media upload error", 400),
        _entry(131056, "(Business Account, Consumer Account) pair rate limit hit", 400),
        _entry(132000, "Number of parameters does not match the expected number of params", 400),
        _entry(132001, "Template name does not exist in the translation", 400),
        _entry(132018, "There was an issue with the parameters in your template", 400),
        _entry(133010, "Phone number not registered", 400),
        _entry(133016, "Account register deregister rate limit exceeded", 400),
    )
}


def describe(code: int) -> MetaErrorCode:
    """The table entry for `code`; unknown codes get a generic title and HTTP 400."""
    return META_ERROR_CODES.get(code) or MetaErrorCode(code, "Unknown error", 400, "Unknown error.")


def graph_error_body(
    code: int,
    *,
    message: str | None = None,
    details: str | None = None,
    subcode: int | None = None,
) -> dict[str, Any]:
    """The JSON object the Graph API answers a failed call with (reference §6).

    `message` defaults to the code's title; it is always prefixed with `(#code)` as Meta does.
    `error_data` appears only when there are details, as on Meta's WhatsApp-specific errors.
    """
    error: dict[str, Any] = {
        "message": f"(#{code}) {message or describe(code).title}",
        "type": "OAuthException",
        "code": code,
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = new_fbtrace_id()
    return {"error": error}


def webhook_error(code: int) -> dict[str, Any]:
    """An error as it appears inside webhooks: `{code, title, message, error_data, href}`."""
    entry = describe(code)
    return {
        "code": code,
        "title": entry.title,
        "message": entry.title,
        "error_data": {"details": entry.details},
        "href": ERROR_CODES_HREF,
    }

"""Webhook bodies as Meta puts them on the wire: compact JSON, non-ASCII escaped as `\\uXXXX`.

Reference §2: the bytes Meta sends are already escaped (lowercase hex, surrogate pairs for emoji)
and the signature covers exactly those bytes. Key order follows the shared fixtures, so a built
body can be compared byte for byte with them.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from civicline.simulator.ids import new_wamid
from civicline.simulator.meta_errors import webhook_error

DEFAULT_PHONE_NUMBER_ID: Final = "106512349876543"
DEFAULT_DISPLAY_PHONE_NUMBER: Final = "15550100200"
DEFAULT_WABA_ID: Final = "109384756102938"

STATUSES: Final = frozenset({"sent", "delivered", "read", "failed", "played", "deleted"})
# Meta attaches per-message pricing to these receipts; `read` and `failed` come without it.
_PRICED_STATUSES: Final = frozenset({"sent", "delivered"})


def encode_like_meta(payload: Any) -> bytes:
    """Serialise as Meta does on the wire; orjson cannot escape non-ASCII, the stdlib can."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _timestamp(timestamp: int | str | None) -> str:
    # Meta sends Unix seconds as a string (reference §3).
    return str(int(time.time()) if timestamp is None else timestamp)


def _envelope(
    value: dict[str, Any], *, phone_number_id: str, display_phone_number: str, waba_id: str
) -> bytes:
    return encode_like_meta(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": waba_id,
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": display_phone_number,
                                    "phone_number_id": phone_number_id,
                                },
                                **value,
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }
    )


def _contact(wa_id: str | None, user_id: str | None, profile_name: str | None) -> dict[str, Any]:
    contact: dict[str, Any] = {}
    if profile_name is not None:
        contact["profile"] = {"name": profile_name}
    if wa_id is not None:
        contact["wa_id"] = wa_id
    if user_id is not None:
        contact["user_id"] = user_id
    return contact


def message_webhook(
    message_type: str,
    content: Any,
    *,
    wa_id: str | None = None,
    user_id: str | None = None,
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
    profile_name: str | None = None,
    wamid: str | None = None,
    timestamp: int | str | None = None,
    context: dict[str, Any] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> tuple[bytes, str]:
    """A citizen's message of any type (`content` is the object named after the type, None for
    none, e.g. `unsupported`) and its wamid.

    A citizen with a phone number sends `from` (`wa_id`); one known only by a username has no
    phone number and sends `from_user_id`, a business-scoped user id (reference §3).
    """
    if wa_id is None and user_id is None:
        raise ValueError("a citizen needs a wa_id or a user_id")
    message_id = wamid or new_wamid()
    message: dict[str, Any] = {"from": wa_id} if wa_id is not None else {"from_user_id": user_id}
    message |= {"id": message_id, "timestamp": _timestamp(timestamp), "type": message_type}
    if content is not None:
        message[message_type] = content
    if context is not None:
        message["context"] = context
    if errors is not None:
        message["errors"] = errors
    body = _envelope(
        {"contacts": [_contact(wa_id, user_id, profile_name)], "messages": [message]},
        phone_number_id=phone_number_id,
        display_phone_number=display_phone_number,
        waba_id=waba_id,
    )
    return body, message_id


def text_message_webhook(
    *,
    wa_id: str | None = None,
    text: str,
    user_id: str | None = None,
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
    profile_name: str | None = None,
    wamid: str | None = None,
    timestamp: int | str | None = None,
) -> tuple[bytes, str]:
    """A citizen's text message webhook and its wamid (generated when not given).

    Without `profile_name` the contact carries only `wa_id`; the router must cope with that.
    With only `user_id`, the citizen uses a username and has no phone number.
    """
    return message_webhook(
        "text",
        {"body": text},
        wa_id=wa_id,
        user_id=user_id,
        phone_number_id=phone_number_id,
        display_phone_number=display_phone_number,
        waba_id=waba_id,
        profile_name=profile_name,
        wamid=wamid,
        timestamp=timestamp,
    )


def location_message_webhook(
    *,
    latitude: float,
    longitude: float,
    name: str | None = None,
    address: str | None = None,
    wa_id: str | None = None,
    user_id: str | None = None,
    profile_name: str | None = None,
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    wamid: str | None = None,
    timestamp: int | str | None = None,
) -> tuple[bytes, str]:
    """A citizen sharing a location (a pin, or a named place with an address)."""
    location: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    if name is not None:
        location["name"] = name
    if address is not None:
        location["address"] = address
    return message_webhook(
        "location",
        location,
        wa_id=wa_id,
        user_id=user_id,
        profile_name=profile_name,
        phone_number_id=phone_number_id,
        wamid=wamid,
        timestamp=timestamp,
    )


def interactive_reply_webhook(
    *,
    reply_id: str,
    title: str,
    kind: str = "list_reply",
    description: str | None = None,
    in_reply_to: str | None = None,
    wa_id: str | None = None,
    user_id: str | None = None,
    profile_name: str | None = None,
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    wamid: str | None = None,
    timestamp: int | str | None = None,
) -> tuple[bytes, str]:
    """A citizen tapping a list row (`list_reply`) or a reply button (`button_reply`) of the
    message `in_reply_to` (our wamid)."""
    if kind not in ("list_reply", "button_reply"):
        raise ValueError(f"kind must be list_reply or button_reply, got {kind!r}")
    reply: dict[str, Any] = {"id": reply_id, "title": title}
    if description is not None:
        reply["description"] = description
    context = None
    if in_reply_to is not None:
        context = {"from": DEFAULT_DISPLAY_PHONE_NUMBER, "id": in_reply_to}
    return message_webhook(
        "interactive",
        {"type": kind, kind: reply},
        wa_id=wa_id,
        user_id=user_id,
        profile_name=profile_name,
        phone_number_id=phone_number_id,
        wamid=wamid,
        timestamp=timestamp,
        context=context,
    )


def status_webhook(
    *,
    wamid: str,
    status: str,
    recipient_id: str,
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
    timestamp: int | str | None = None,
    pricing: bool | None = None,
    error_code: int | None = None,
    callback_data: str | None = None,
) -> bytes:
    """A delivery receipt for one of our outbound messages.

    `callback_data` is the `biz_opaque_callback_data` the message was sent with, which Meta
    repeats in each of its statuses.

    `pricing` defaults to what Meta does (present on `sent`/`delivered`). A `failed` receipt
    carries `errors[]` with `error_code` (default 131000); other statuses carry one only when
    `error_code` is given.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
    receipt: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": _timestamp(timestamp),
        "recipient_id": recipient_id,
    }
    if callback_data is not None:
        receipt["biz_opaque_callback_data"] = callback_data
    if status == "failed" and error_code is None:
        error_code = 131000
    if error_code is not None:
        receipt["errors"] = [webhook_error(error_code)]
    if status in _PRICED_STATUSES if pricing is None else pricing:
        receipt["pricing"] = {
            "billable": False,
            "pricing_model": "PMP",
            "type": "free_customer_service",
            "category": "service",
        }
    return _envelope(
        {"statuses": [receipt]},
        phone_number_id=phone_number_id,
        display_phone_number=display_phone_number,
        waba_id=waba_id,
    )

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


def text_message_webhook(
    *,
    wa_id: str,
    text: str,
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
    profile_name: str | None = None,
    wamid: str | None = None,
    timestamp: int | str | None = None,
) -> tuple[bytes, str]:
    """A citizen's text message webhook and its wamid (generated when not given).

    Without `profile_name` the contact carries only `wa_id`; the router must cope with that.
    """
    message_id = wamid or new_wamid()
    contact: dict[str, Any] = {"wa_id": wa_id}
    if profile_name is not None:
        contact = {"profile": {"name": profile_name}, "wa_id": wa_id}
    body = _envelope(
        {
            "contacts": [contact],
            "messages": [
                {
                    "from": wa_id,
                    "id": message_id,
                    "timestamp": _timestamp(timestamp),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        },
        phone_number_id=phone_number_id,
        display_phone_number=display_phone_number,
        waba_id=waba_id,
    )
    return body, message_id


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
) -> bytes:
    """A delivery receipt for one of our outbound messages.

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

"""Pure core of the router: turn a decoded WhatsApp webhook body into typed messages,
statuses and errors, and guess the citizen's language. No asyncio, no I/O."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from civicline.common.intents import INTENTS, URGENT_INTENTS

__all__ = [
    "INTENTS",
    "SUPPORTED_LANGUAGES",
    "URGENT_INTENTS",
    "DeliveryStatus",
    "InboundMessage",
    "ParsedWebhook",
    "Route",
    "WebhookError",
    "detect_language",
    "has_letters",
    "parse_webhook",
]

SUPPORTED_LANGUAGES: tuple[str, ...] = ("ko", "ja", "en")

WHATSAPP_OBJECT = "whatsapp_business_account"
MESSAGES_FIELD = "messages"
# Unix timestamps at or above this are milliseconds: courier has seen Meta send them.
_MILLISECONDS_THRESHOLD = 1e12
# Message types whose media object may carry a caption written by the citizen.
_CAPTIONED_TYPES = frozenset({"image", "video", "document", "audio", "sticker"})
_REASON_VALUE_LIMIT = 40
# Bounds that keep int/str conversions of hostile numbers cheap and within Python's limits.
_ID_INT_LIMIT = 10**40
_CODE_DIGITS_LIMIT = 18


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message a citizen sent, as the router understands it."""

    wamid: str
    phone_number_id: str
    display_phone_number: str | None
    waba_id: str | None
    sender: str | None
    sender_user_id: str | None
    profile_name: str | None
    timestamp: datetime
    type: str
    text: str | None
    reply_id: str | None
    context_id: str | None
    content: dict[str, Any]
    errors: tuple[dict[str, Any], ...]

    def __post_init__(self) -> None:
        if not self.sender and not self.sender_user_id:
            raise ValueError("an inbound message needs a sender (wa_id) or a sender_user_id")

    def citizen_key(self) -> str:
        """The id the citizen is known by: the wa_id, else the business-scoped user id."""
        return self.sender or self.sender_user_id or ""


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """A delivery receipt for one of our outbound messages."""

    wamid: str
    phone_number_id: str
    status: str
    timestamp: datetime
    recipient_id: str | None
    errors: tuple[dict[str, Any], ...]
    pricing: dict[str, Any] | None
    conversation: dict[str, Any] | None
    # What we sent the message with, repeated by Meta (a campaign's messages name it).
    callback_data: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookError:
    """An app- or account-level error Meta reported in `value.errors[]`."""

    phone_number_id: str | None
    code: int | None
    title: str | None
    message: str | None
    details: str | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ParsedWebhook:
    """Everything usable in one webhook body.

    `rejected_reason` is set only when the body is not a WhatsApp webhook at all, or when
    it carried items but not one of them was usable; then the tuples are empty. `skipped`
    explains each malformed item that was left out of an otherwise good body, and
    `ignored_fields` lists the `changes[].field` values that are not "messages".
    """

    messages: tuple[InboundMessage, ...] = ()
    statuses: tuple[DeliveryStatus, ...] = ()
    errors: tuple[WebhookError, ...] = ()
    rejected_reason: str | None = None
    contacts: Mapping[str, str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    ignored_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """Where a classified message goes: `message.<intent>`, and `handoff.<team>` when the
    intent is handed to people (`handoff` names the team)."""

    intent: str
    urgent: bool
    needs_reply: bool
    handoff: str | None = None
    # The subscription topic a subscribe / unsubscribe names (None: the citizen named none
    # we know, so they get the topic list).
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class _Change:
    """The parts of one `changes[].value` that every item in it shares."""

    where: str
    waba_id: str | None
    phone_number_id: str | None
    display_phone_number: str | None
    contacts: tuple[dict[str, Any], ...]


@dataclass(slots=True)
class _Collector:
    received_at: datetime
    messages: dict[str, InboundMessage] = field(default_factory=dict)
    statuses: dict[tuple[str, str], DeliveryStatus] = field(default_factory=dict)
    errors: list[WebhookError] = field(default_factory=list)
    contacts: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    ignored_fields: list[str] = field(default_factory=list)


def parse_webhook(payload: object, *, received_at: datetime) -> ParsedWebhook:
    """Parse a decoded webhook body. Total: never raises, whatever JSON value it is given.

    Decode the raw bytes with orjson first: it refuses invalid UTF-8 and lone surrogates,
    which later could not be re-encoded for the bus.
    """
    if not isinstance(payload, dict):
        return ParsedWebhook(rejected_reason=f"body is not a JSON object (got {_kind(payload)})")
    if "object" not in payload:
        return ParsedWebhook(rejected_reason="'object' is missing")
    if payload["object"] != WHATSAPP_OBJECT:
        return ParsedWebhook(
            rejected_reason=(
                f"'object' is {_show(payload['object'])}, expected {WHATSAPP_OBJECT!r}"
            )
        )
    if "entry" not in payload:
        return ParsedWebhook(rejected_reason="'entry' is missing")
    entries = payload["entry"]
    if not isinstance(entries, list):
        return ParsedWebhook(rejected_reason=f"'entry' is not a list (got {_kind(entries)})")

    collected = _Collector(received_at=_as_utc(received_at))
    for change, value in _changes(entries, collected):
        _collect_change(change, value, collected)

    if (
        collected.skipped
        and not collected.messages
        and not collected.statuses
        and not collected.errors
    ):
        return ParsedWebhook(
            rejected_reason=f"no usable item: {collected.skipped[0]}",
            skipped=tuple(collected.skipped),
            ignored_fields=tuple(collected.ignored_fields),
        )
    return ParsedWebhook(
        messages=tuple(collected.messages.values()),
        statuses=tuple(collected.statuses.values()),
        errors=tuple(collected.errors),
        contacts=collected.contacts,
        skipped=tuple(collected.skipped),
        ignored_fields=tuple(collected.ignored_fields),
    )


def _changes(entries: list[Any], collected: _Collector) -> Iterator[tuple[_Change, dict[str, Any]]]:
    """Every `messages` change of every entry; never index 0 only (one POST may batch several)."""
    for entry_index, entry in enumerate(entries):
        where = f"entry[{entry_index}]"
        if not isinstance(entry, dict):
            collected.skipped.append(f"{where}: not an object")
            continue
        changes = entry.get("changes")
        if not isinstance(changes, list):
            collected.skipped.append(f"{where}.changes: not a list")
            continue
        waba_id = _as_id(entry.get("id"))
        for change_index, change in enumerate(changes):
            change_where = f"{where}.changes[{change_index}]"
            if not isinstance(change, dict):
                collected.skipped.append(f"{change_where}: not an object")
                continue
            field_name = change.get("field")
            if field_name != MESSAGES_FIELD:
                # account_update, template status, quality … share the endpoint: tolerated.
                shown = field_name if isinstance(field_name, str) else _show(field_name)
                collected.ignored_fields.append(shown[:_REASON_VALUE_LIMIT])
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                collected.skipped.append(f"{change_where}.value: not an object")
                continue
            metadata = value.get("metadata")
            if not isinstance(metadata, dict):
                metadata = {}
            contacts = value.get("contacts")
            yield (
                _Change(
                    where=f"{change_where}.value",
                    waba_id=waba_id,
                    phone_number_id=_as_id(metadata.get("phone_number_id")),
                    display_phone_number=_as_id(metadata.get("display_phone_number")),
                    contacts=tuple(_dicts(contacts)),
                ),
                value,
            )


def _collect_change(change: _Change, value: dict[str, Any], out: _Collector) -> None:
    for contact in change.contacts:
        name = _profile_name(contact)
        if name is None:
            continue
        for key in (_as_id(contact.get("wa_id")), _as_id(contact.get("user_id"))):
            if key is not None:
                out.contacts.setdefault(key, name)

    for index, item in _items(value, "messages", change, out):
        message = _parse_message(item, change, out.received_at)
        if isinstance(message, str):
            out.skipped.append(f"{change.where}.messages[{index}]: {message}")
        else:
            # Meta can repeat one wamid inside a POST; the first copy wins.
            out.messages.setdefault(message.wamid, message)

    for index, item in _items(value, "statuses", change, out):
        status = _parse_status(item, change, out.received_at)
        if isinstance(status, str):
            out.skipped.append(f"{change.where}.statuses[{index}]: {status}")
        else:
            out.statuses.setdefault((status.wamid, status.status), status)

    for _, item in _items(value, "errors", change, out):
        out.errors.append(_parse_error(item, change.phone_number_id))


def _items(
    value: dict[str, Any], key: str, change: _Change, out: _Collector
) -> Iterator[tuple[int, dict[str, Any]]]:
    items = value.get(key)
    if items is None:
        return
    if not isinstance(items, list):
        out.skipped.append(f"{change.where}.{key}: not a list")
        return
    for index, item in enumerate(items):
        if isinstance(item, dict):
            yield index, item
        else:
            out.skipped.append(f"{change.where}.{key}[{index}]: not an object")


def _parse_message(
    item: dict[str, Any], change: _Change, received_at: datetime
) -> InboundMessage | str:
    """An InboundMessage, or the reason the item was skipped."""
    wamid = _as_id(item.get("id"))
    if wamid is None:
        return "no id"
    if change.phone_number_id is None:
        return "no metadata.phone_number_id to reply from"
    sender = _as_id(item.get("from"))
    sender_user_id = _as_id(item.get("from_user_id"))
    contact = _find_contact(change.contacts, sender, sender_user_id)
    if contact is not None and sender_user_id is None:
        sender_user_id = _as_id(contact.get("user_id"))
    if sender is None and sender_user_id is None:
        return "no sender (neither 'from' nor 'from_user_id')"

    raw_type = item.get("type")
    message_type = raw_type if isinstance(raw_type, str) and raw_type else "unknown"
    body = item.get(message_type)
    if isinstance(body, dict):
        content: dict[str, Any] = body
    elif body is None:
        content = {}
    else:
        # e.g. `contacts` carries a list: keep it, under its own name.
        content = {message_type: body}
    text, reply_id = _text_and_reply_id(message_type, content)
    context = item.get("context")

    return InboundMessage(
        wamid=wamid,
        phone_number_id=change.phone_number_id,
        display_phone_number=change.display_phone_number,
        waba_id=change.waba_id,
        sender=sender,
        sender_user_id=sender_user_id,
        profile_name=_profile_name(contact) if contact is not None else None,
        timestamp=_timestamp(item.get("timestamp"), received_at),
        type=message_type,
        text=text,
        reply_id=reply_id,
        context_id=_as_id(context.get("id")) if isinstance(context, dict) else None,
        content=content,
        errors=tuple(_dicts(item.get("errors"))),
    )


def _text_and_reply_id(message_type: str, content: dict[str, Any]) -> tuple[str | None, str | None]:
    """What the citizen wrote or tapped: the text classification reads, and a reply id."""
    if message_type == "text":
        return _as_str(content.get("body")), None
    if message_type in _CAPTIONED_TYPES:
        return _as_str(content.get("caption")), None
    if message_type == "interactive":
        names = ("button_reply", "list_reply")
        if content.get("type") == "list_reply":
            names = ("list_reply", "button_reply")
        for name in names:
            reply = content.get(name)
            if isinstance(reply, dict):
                return _as_str(reply.get("title")), _as_id(reply.get("id"))
        # nfm_reply (a completed Flow) says "Sent": nothing a human wrote.
        return None, None
    if message_type == "button":
        # A template quick-reply button, not an interactive button_reply.
        return _as_str(content.get("text")), _as_id(content.get("payload"))
    if message_type == "order":
        return _as_str(content.get("text")), None
    return None, None


def _parse_status(
    item: dict[str, Any], change: _Change, received_at: datetime
) -> DeliveryStatus | str:
    wamid = _as_id(item.get("id"))
    if wamid is None:
        return "no id"
    status = _as_str(item.get("status"))
    status = status.strip().lower() if status is not None else ""
    if not status:
        return "no status"
    if change.phone_number_id is None:
        return "no metadata.phone_number_id"
    pricing = item.get("pricing")
    conversation = item.get("conversation")
    return DeliveryStatus(
        wamid=wamid,
        phone_number_id=change.phone_number_id,
        status=status,
        timestamp=_timestamp(item.get("timestamp"), received_at),
        recipient_id=_as_id(item.get("recipient_id")) or _as_id(item.get("recipient_user_id")),
        errors=tuple(_dicts(item.get("errors"))),
        pricing=pricing if isinstance(pricing, dict) else None,
        conversation=conversation if isinstance(conversation, dict) else None,
        callback_data=_as_str(item.get("biz_opaque_callback_data")),
    )


def _parse_error(item: dict[str, Any], phone_number_id: str | None) -> WebhookError:
    error_data = item.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    return WebhookError(
        phone_number_id=phone_number_id,
        code=_as_code(item.get("code")),
        title=_as_str(item.get("title")),
        message=_as_str(item.get("message")),
        details=_as_str(details),
        raw=item,
    )


def _find_contact(
    contacts: tuple[dict[str, Any], ...], sender: str | None, sender_user_id: str | None
) -> dict[str, Any] | None:
    for contact in contacts:
        if sender is not None and _as_id(contact.get("wa_id")) == sender:
            return contact
        if sender_user_id is not None and _as_id(contact.get("user_id")) == sender_user_id:
            return contact
    return None


def _profile_name(contact: dict[str, Any]) -> str | None:
    profile = contact.get("profile")
    return _as_str(profile.get("name")) if isinstance(profile, dict) else None


def _timestamp(value: object, fallback: datetime) -> datetime:
    """WhatsApp sends a string of Unix seconds; values >= 1e12 are milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return fallback
    try:
        seconds = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return fallback
    if not math.isfinite(seconds) or seconds <= 0:
        return fallback
    if seconds >= _MILLISECONDS_THRESHOLD:
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return fallback


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _as_id(value: object) -> str | None:
    """An identifier: a non-blank string, or an integer some producers send instead."""
    if isinstance(value, str):
        stripped = value.strip()
        return stripped or None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _ID_INT_LIMIT:
        return str(value)
    return None


def _as_code(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value.strip()
        if digits.isascii() and digits.isdigit() and len(digits) <= _CODE_DIGITS_LIMIT:
            return int(digits)
    return None


def _dicts(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))


def _kind(value: object) -> str:
    """The JSON name of a decoded value's type, for rejection reasons."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: object) -> str:
    """A short rendering of an unexpected value; reasons end up in logs and events."""
    if isinstance(value, str):
        shown = value if len(value) <= _REASON_VALUE_LIMIT else value[:_REASON_VALUE_LIMIT] + "…"
        return repr(shown)
    return _kind(value)


# --- language -------------------------------------------------------------------------


def _is_hangul(char: str) -> bool:
    code = ord(char)
    return (
        0xAC00 <= code <= 0xD7A3  # syllables
        or 0x1100 <= code <= 0x11FF  # jamo
        or 0x3130 <= code <= 0x318F  # compatibility jamo
        or 0xA960 <= code <= 0xA97F  # jamo extended-A
        or 0xD7B0 <= code <= 0xD7FF  # jamo extended-B
        or 0xFFA0 <= code <= 0xFFDC  # halfwidth jamo
    )


def _is_kana(char: str) -> bool:
    code = ord(char)
    return (
        0x3041 <= code <= 0x309F  # hiragana
        or 0x30A0 <= code <= 0x30FF  # katakana
        or 0x31F0 <= code <= 0x31FF  # katakana phonetic extensions
        or 0xFF66 <= code <= 0xFF9D  # halfwidth katakana
        or 0x1B000 <= code <= 0x1B16F  # kana supplement and extended-A
    )


def _is_han(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= code <= 0x4DBF  # extension A
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0x20000 <= code <= 0x323AF  # extensions B to H
        or code == 0x3005  # 々, the ideographic iteration mark
    )


# A Latin (or other alphabetic) letter carries about a third of what a Hangul syllable, a kana
# or a Han ideograph does: English words average five letters, Korean and Japanese ones two or
# three characters. Beyond this many letters per CJK character, the CJK is only a quoted name.
_LETTERS_PER_CJK_CHARACTER = 3


def has_letters(text: str | None) -> bool:
    """True when the text has a letter of any script: evidence of the writer's language
    (emoji, digits and punctuation alone are none)."""
    return text is not None and any(unicodedata.category(c).startswith("L") for c in text)


def detect_language(text: str | None, stored: str | None) -> str:
    """The language to answer in, from the message's scripts and the stored preference.

    Korean and Japanese are told by the scripts a writer switches keyboards for: Hangul counts
    for Korean, kana for Japanese, and Han ideographs count with the kana when there are any
    (Japanese writes them together) and with the Hangul otherwise (hanja). In a message mixing
    both, the larger count wins and, on a tie, the script written first. Han alone is shared by
    Japanese, Korean and Chinese: it keeps a stored "ja" or "ko" and otherwise means Japanese.
    A message whose Latin (or other) letters outnumber its CJK characters more than three to
    one is a sentence quoting a name ("I live near 新宿"), as is one with no CJK at all: it,
    and emoji-only or empty text, keeps the stored language, or English when there is none.
    """
    fallback = stored if stored else "en"
    if not text:
        return fallback
    hangul = kana = han = other_letters = 0
    first: str | None = None
    for char in text:
        if _is_hangul(char):
            hangul += 1
            first = first or "ko"
        elif _is_kana(char):
            kana += 1
            first = first or "ja"
        elif _is_han(char):
            han += 1
        elif unicodedata.category(char).startswith("L"):
            other_letters += 1
    cjk = hangul + kana + han
    if not cjk or other_letters > _LETTERS_PER_CJK_CHARACTER * cjk:
        return fallback
    if not hangul and not kana:
        return stored if stored in ("ja", "ko") else "ja"
    korean = hangul + (0 if kana else han)
    japanese = kana + (han if kana else 0)
    if korean != japanese:
        return "ko" if korean > japanese else "ja"
    return first or fallback

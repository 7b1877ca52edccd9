"""Checks a Graph API `/messages` request body the way Meta does, as far as civicline needs.

Limits come from shared/reference/whatsapp-cloud-api.md §5. Malformed requests get code 100
(invalid parameter); interactive messages that break a documented limit get 131009 and a missing
interactive part 131008, as Meta answers them; template parameter text Meta refuses (a newline,
a tab, more than 4 spaces in a row) gets 132018.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

MESSAGE_TYPES: Final = frozenset(
    {
        "text",
        "template",
        "interactive",
        "location",
        "image",
        "document",
        "audio",
        "video",
        "sticker",
        "reaction",
        "contacts",
    }
)
MEDIA_TYPES: Final = frozenset({"image", "document", "audio", "video", "sticker"})
_CAPTIONED: Final = frozenset({"image", "document", "video"})
TEXT_BODY_MAX: Final = 4096
BUTTONS_BODY_MAX: Final = 1024
# Meta's list page allows 4096 characters of body text (interactive-list-messages.md).
LIST_BODY_MAX: Final = 4096
# A business-scoped user id: ISO country code, ".", up to 128 alphanumerics; a parent id has
# ".ENT." in between (reference §3).
_BSUID = re.compile(r"[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}")
_TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
_TEMPLATE_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2}|_[A-Z][a-z]{3})?")
_BAD_PARAMETER_TEXT = re.compile(r"[\n\t]| {5,}")
_COMPONENT_TYPES: Final = frozenset({"header", "body", "button"})
_PARAMETER_TYPES: Final = frozenset(
    {"text", "currency", "date_time", "image", "document", "video", "location", "payload"}
)
_BUTTON_HEADER_TYPES: Final = frozenset({"text", "image", "video", "document"})
INTERACTIVE_TYPES: Final = frozenset(
    {
        "button",
        "list",
        "cta_url",
        "flow",
        "product",
        "product_list",
        "catalog_message",
        "location_request_message",
    }
)


def normalise_wa_id(to: str) -> str:
    """`+82 10-5234-7781` → `821052347781`; empty when `to` is not a phone number at all."""
    stripped = "".join(ch for ch in to if ch not in "+-() ")
    return stripped if stripped.isascii() and stripped.isdigit() else ""


class InvalidRequest(Exception):
    """The request breaks a Graph API rule; carries the Meta code and message to answer with."""

    def __init__(self, code: int, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _param(message: str) -> InvalidRequest:
    return InvalidRequest(100, message)


def _limit(details: str) -> InvalidRequest:
    return InvalidRequest(131009, "Parameter value is not valid", details=details)


def _missing(details: str) -> InvalidRequest:
    return InvalidRequest(131008, "Required parameter is missing", details=details)


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_request(body: object) -> Literal["message", "read"]:
    """Classify a valid body as a message send or a mark-as-read; raise InvalidRequest if not."""
    if not isinstance(body, dict):
        raise _param("Invalid parameter")
    product = body.get("messaging_product")
    if product is None:
        raise _param("The parameter messaging_product is required.")
    if product != "whatsapp":
        raise _param(f'Param messaging_product must be one of {{WHATSAPP}} - got "{product}".')
    if "status" in body:
        _check_read(body)
        return "read"
    recipient_type = body.get("recipient_type", "individual")
    if recipient_type not in ("individual", "group"):
        raise _param(
            f'Param recipient_type must be one of {{INDIVIDUAL}} - got "{recipient_type}".'
        )
    to = body.get("to")
    if to is None:
        # A BSUID, for citizens known only by a username (reference §3, §5).
        recipient = body.get("recipient")
        if recipient is None:
            raise _param("The parameter to is required.")
        if not (isinstance(recipient, str) and _BSUID.fullmatch(recipient)):
            raise _param(f'Param recipient must be a business-scoped user id - got "{recipient}".')
    elif not (isinstance(to, str) and normalise_wa_id(to)):
        raise _param(f'Param to must be a phone number or WhatsApp id - got "{to}".')
    message_type = body.get("type", "text")  # Meta defaults a missing type to text
    if message_type not in MESSAGE_TYPES:
        allowed = ", ".join(sorted(t.upper() for t in MESSAGE_TYPES))
        raise _param(f'Param type must be one of {{{allowed}}} - got "{message_type}".')
    context = body.get("context")
    if context is not None and not (
        isinstance(context, dict) and _is_text(context.get("message_id"))
    ):
        raise _param("Param context['message_id'] must be a valid WhatsApp message id.")
    content = body.get(message_type)
    if message_type == "contacts":
        if not (isinstance(content, list) and content):
            raise _param("The parameter contacts is required.")
        return "message"
    if not isinstance(content, dict):
        raise _param(f"The parameter {message_type} is required.")
    _CHECKS[message_type](message_type, content)
    return "message"


def _check_read(body: Mapping[str, Any]) -> None:
    if body.get("status") != "read":
        raise _param(f'Param status must be one of {{READ}} - got "{body.get("status")}".')
    if not _is_text(body.get("message_id")):
        raise _param("The parameter message_id is required.")
    indicator = body.get("typing_indicator")
    if indicator is not None and not (
        isinstance(indicator, dict) and indicator.get("type") == "text"
    ):
        raise _param("Param typing_indicator['type'] must be one of {TEXT}.")


def _check_text(_: str, text: Mapping[str, Any]) -> None:
    body = text.get("body")
    if not _is_text(body):
        raise _param("The parameter text['body'] is required.")
    assert isinstance(body, str)
    if len(body) > TEXT_BODY_MAX:
        raise _param(f"Param text['body'] must be at most {TEXT_BODY_MAX} characters long.")
    if "preview_url" in text and not isinstance(text["preview_url"], bool):
        raise _param("Param text['preview_url'] must be a boolean.")


def _check_template(_: str, template: Mapping[str, Any]) -> None:
    name = template.get("name")
    if not _is_text(name):
        raise _param("The parameter template['name'] is required.")
    assert isinstance(name, str)
    if not _TEMPLATE_NAME.fullmatch(name):
        raise _param("Param template['name'] must be lower-case letters, digits and underscores.")
    language = template.get("language")
    if not (isinstance(language, dict) and _is_text(language.get("code"))):
        raise _param("The parameter template['language']['code'] is required.")
    if not _TEMPLATE_LANGUAGE.fullmatch(language["code"]):
        raise _param(f"Param template['language']['code'] is invalid: {language['code']!r}.")
    components = template.get("components")
    if components is None:
        return
    if not isinstance(components, list):
        raise _param("Param template['components'] must be an array.")
    for component in components:
        _check_component(component)


def _check_component(component: object) -> None:
    if not isinstance(component, dict) or component.get("type") not in _COMPONENT_TYPES:
        raise _param("Param template['components'][]['type'] must be header, body or button.")
    if component["type"] == "button" and (
        component.get("sub_type") not in ("quick_reply", "url", "copy_code")
        or not str(component.get("index", "")).isdigit()
    ):
        raise _param("A template button component needs a sub_type and an index.")
    parameters = component.get("parameters", [])
    if not isinstance(parameters, list):
        raise _param("Param template['components'][]['parameters'] must be an array.")
    for parameter in parameters:
        kind = parameter.get("type") if isinstance(parameter, dict) else None
        if kind not in _PARAMETER_TYPES:
            raise _param("Param template['components'][]['parameters'][]['type'] is invalid.")
        assert isinstance(parameter, dict)
        if kind == "text":
            text = parameter.get("text")
            if not _is_text(text):
                raise _param("The parameter template parameter['text'] is required.")
            assert isinstance(text, str)
            if _BAD_PARAMETER_TEXT.search(text):
                raise InvalidRequest(
                    132018,
                    "There was an issue with the parameters in your template.",
                    details="Param text cannot have new-line/tab characters or more than 4 "
                    "consecutive spaces",
                )
        elif not isinstance(parameter.get(kind), dict | str):
            raise _param(f"The parameter template parameter['{kind}'] is required.")


def _check_location(_: str, location: Mapping[str, Any]) -> None:
    for axis, bound in (("latitude", 90), ("longitude", 180)):
        value = location.get(axis)
        if not _is_number(value):
            raise _param(f"Param location['{axis}'] must be a number.")
        assert isinstance(value, int | float)
        if not (math.isfinite(value) and -bound <= value <= bound):
            raise _param(f"Param location['{axis}'] must be between -{bound} and {bound}.")
    for name in ("name", "address"):
        if name in location and not isinstance(location[name], str):
            raise _param(f"Param location['{name}'] must be a string.")


def _check_media(media_type: str, media: Mapping[str, Any]) -> None:
    if _is_text(media.get("link")) == _is_text(media.get("id")):
        raise _param(f"Param {media_type} must contain exactly one of id or link.")
    if "caption" in media and media_type not in _CAPTIONED:
        raise _param(f"Param {media_type}['caption'] is not supported for this media type.")


def _check_reaction(_: str, reaction: Mapping[str, Any]) -> None:
    if not _is_text(reaction.get("message_id")):
        raise _param("The parameter reaction['message_id'] is required.")
    if not isinstance(reaction.get("emoji"), str):  # empty removes the reaction
        raise _param("The parameter reaction['emoji'] is required.")


def _text_within(value: object, maximum: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= maximum


def _check_interactive(_: str, interactive: Mapping[str, Any]) -> None:
    kind = interactive.get("type")
    if kind not in INTERACTIVE_TYPES:
        raise _param(f"Param interactive['type'] is invalid: {kind!r}.")
    if kind == "location_request_message":
        _check_location_request(interactive)
        return
    if kind not in ("button", "list"):
        return
    body = interactive.get("body")
    if not isinstance(body, dict) or "text" not in body:
        raise _missing("interactive['body']['text'] is required.")
    limit = BUTTONS_BODY_MAX if kind == "button" else LIST_BODY_MAX
    if not _text_within(body["text"], limit):
        raise _limit(f"Body text length invalid. Min length: 1, Max length: {limit}")
    footer = interactive.get("footer")
    if footer is not None and not (
        isinstance(footer, dict) and _text_within(footer.get("text"), 60)
    ):
        raise _limit("Footer text length invalid. Min length: 1, Max length: 60")
    header = interactive.get("header")
    if isinstance(header, dict) and header.get("type") == "text":
        if not _text_within(header.get("text"), 60):
            raise _limit("Header text length invalid. Min length: 1, Max length: 60")
    elif kind == "list" and header is not None:
        raise _limit("List message header must be of type text.")
    elif header is not None and not (
        isinstance(header, dict) and header.get("type") in _BUTTON_HEADER_TYPES
    ):
        raise _limit("Header type must be text, image, video or document.")
    action = interactive.get("action")
    if not isinstance(action, dict):
        raise _missing("interactive['action'] is required.")
    if kind == "button":
        _check_buttons(action)
    else:
        _check_list(action)


def _check_location_request(interactive: Mapping[str, Any]) -> None:
    body = interactive.get("body")
    if not isinstance(body, dict) or not _text_within(body.get("text"), BUTTONS_BODY_MAX):
        raise _limit("Body text length invalid. Min length: 1, Max length: 1024")
    action = interactive.get("action")
    if not (isinstance(action, dict) and action.get("name") == "send_location"):
        raise _missing("interactive['action']['name'] must be send_location.")


def _check_buttons(action: Mapping[str, Any]) -> None:
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        raise _limit("Buttons count invalid. Min: 1, Max: 3")
    titles: set[str] = set()
    ids: set[str] = set()
    for button in buttons:
        reply = button.get("reply") if isinstance(button, dict) else None
        if (
            not isinstance(button, dict)
            or button.get("type") != "reply"
            or not isinstance(reply, dict)
        ):
            raise _missing("Each button needs type 'reply' and a reply object.")
        title, button_id = reply.get("title"), reply.get("id")
        if not _text_within(title, 20):
            raise _limit("Button title length invalid. Min length: 1, Max length: 20")
        if not _text_within(button_id, 256):
            raise _limit("Button id length invalid. Min length: 1, Max length: 256")
        assert isinstance(title, str)
        assert isinstance(button_id, str)
        if title in titles or button_id in ids:
            raise _limit("Button titles and ids must be unique.")
        titles.add(title)
        ids.add(button_id)


def _check_list(action: Mapping[str, Any]) -> None:
    if not _text_within(action.get("button"), 20):
        raise _limit("Button label length invalid. Min length: 1, Max length: 20")
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
        raise _limit("Sections count invalid. Min: 1, Max: 10")
    row_ids: set[str] = set()
    for section in sections:
        if not isinstance(section, dict) or not isinstance(section.get("rows"), list):
            raise _missing("Each section needs rows.")
        title = section.get("title")
        if (title is not None or len(sections) > 1) and not _text_within(title, 24):
            raise _limit("Section title length invalid. Min length: 1, Max length: 24")
        for row in section["rows"]:
            if not isinstance(row, dict):
                raise _missing("Each row needs an id and a title.")
            row_id = row.get("id")
            if not _text_within(row_id, 200):
                raise _limit("Row id length invalid. Min length: 1, Max length: 200")
            if not _text_within(row.get("title"), 24):
                raise _limit("Row title length invalid. Min length: 1, Max length: 24")
            if "description" in row and not _text_within(row["description"], 72):
                raise _limit("Row description length invalid. Min length: 1, Max length: 72")
            assert isinstance(row_id, str)
            if row_id in row_ids:
                raise _limit("Row ids must be unique.")
            row_ids.add(row_id)
    if not 1 <= len(row_ids) <= 10:
        raise _limit("Total row count invalid. Min: 1, Max: 10")


_CHECKS: Final = {
    "text": _check_text,
    "template": _check_template,
    "interactive": _check_interactive,
    "location": _check_location,
    "reaction": _check_reaction,
    **dict.fromkeys(MEDIA_TYPES, _check_media),
}

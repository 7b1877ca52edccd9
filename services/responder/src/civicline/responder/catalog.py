"""The responder's content catalog: what we answer, per intent and language.

Loaded once from TOML and validated up front, so a broken catalog stops the service at start
instead of failing on a citizen's message. Pure: no I/O beyond reading the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "MAX_TEXT_BODY",
    "NO_REPLY_INTENTS",
    "REPLY_INTENTS",
    "SUPPORTED_TYPES",
    "Catalog",
    "CatalogError",
    "Reply",
    "choose_reply",
    "load_catalog",
    "to_graph_message",
]

CATALOG_VERSION: Final = 1

# Every intent the router can publish that gets a reply. `unknown` doubles as the fallback for
# an intent the catalog does not know, so it must always be present.
REPLY_INTENTS: Final = (
    "voting",
    "shelter",
    "health",
    "food_aid",
    "passport",
    "report_abuse",
    "office_hours",
    "help",
    "opt_out",
    "opt_in",
    "unknown",
)
# A reaction is an emoji on one of our messages: answering it would only start a loop.
NO_REPLY_INTENTS: Final = frozenset({"reaction"})
FALLBACK_INTENT: Final = "unknown"

# Meta rejects text bodies over 4096 characters (reference §5).
MAX_TEXT_BODY: Final = 4096

_PACKAGED_CATALOG: Final = "catalog.toml"
_TOP_LEVEL_KEYS: Final = frozenset({"version", "default_language", "replies"})


class CatalogError(ValueError):
    """The catalog file is unreadable or breaks a rule; the message names the file and key."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One catalog entry, resolved for a citizen: what to send and in which language."""

    intent: str
    language: str
    type: str
    body: str


@dataclass(frozen=True, slots=True)
class Catalog:
    """A validated catalog. `replies[intent][language]` is a `Reply`; read-only mappings."""

    version: int
    default_language: str
    replies: Mapping[str, Mapping[str, Reply]]
    source: str

    def languages(self, intent: str) -> frozenset[str]:
        """The languages that have an entry for `intent` (empty when the intent has none)."""
        return frozenset(self.replies.get(intent, {}))


# --- validation -------------------------------------------------------------------------------


def _utf16_length(text: str) -> int:
    # Meta's limit is enforced on the JSON string, where characters outside the Basic
    # Multilingual Plane (most emoji) take two code units; counting those keeps us under it.
    return len(text.encode("utf-16-le")) // 2


def _is_language_tag(tag: str) -> bool:
    primary, _, rest = tag.partition("-")
    if not (2 <= len(primary) <= 3 and primary.isascii() and primary.isalpha()):
        return False
    if primary != primary.lower():
        return False
    if not rest:
        return True
    return all(
        1 <= len(part) <= 8 and part.isascii() and part.isalnum() for part in rest.split("-")
    )


def _text_body(source: str, key: str, entry: Mapping[str, Any]) -> str:
    _reject_unexpected(source, key, entry, allowed={"type", "body"})
    body = entry.get("body")
    if body is None:
        raise CatalogError(f"{source}: {key}.body is missing (a text reply needs a body)")
    if not isinstance(body, str):
        raise CatalogError(f"{source}: {key}.body must be a string, not {type(body).__name__}")
    # Surrounding whitespace is layout in the TOML file, never content.
    body = body.strip()
    if not body:
        raise CatalogError(f"{source}: {key}.body is empty")
    length = _utf16_length(body)
    if length > MAX_TEXT_BODY:
        raise CatalogError(
            f"{source}: {key}.body is {length} characters long; "
            f"WhatsApp accepts at most {MAX_TEXT_BODY}"
        )
    return body


# One validator per reply type. Interactive buttons and lists, locations and templates are added
# here (and in `to_graph_message`) when the responder learns to send them.
_TYPE_VALIDATORS: Final[Mapping[str, Callable[[str, str, Mapping[str, Any]], str]]] = (
    MappingProxyType({"text": _text_body})
)
SUPPORTED_TYPES: Final = frozenset(_TYPE_VALIDATORS)


def _reject_unexpected(
    source: str, key: str, table: Mapping[str, Any], *, allowed: frozenset[str] | set[str]
) -> None:
    unexpected = sorted(set(table) - set(allowed))
    if unexpected:
        names = ", ".join(f"{key}.{name}" if key else name for name in unexpected)
        raise CatalogError(
            f"{source}: unexpected key(s) {names} (allowed: {', '.join(sorted(allowed))})"
        )


def _parse_entry(source: str, intent: str, language: str, entry: object) -> Reply:
    key = f"replies.{intent}.{language}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{source}: {key} must be a table with `type` and `body`")
    reply_type = entry.get("type")
    if reply_type is None:
        raise CatalogError(f"{source}: {key}.type is missing")
    if not isinstance(reply_type, str) or reply_type not in _TYPE_VALIDATORS:
        raise CatalogError(
            f"{source}: {key}.type is {reply_type!r}, an unknown reply type "
            f"(supported: {', '.join(sorted(SUPPORTED_TYPES))})"
        )
    body = _TYPE_VALIDATORS[reply_type](source, key, entry)
    return Reply(intent=intent, language=language, type=reply_type, body=body)


def _parse_intent(source: str, intent: str, table: object) -> Mapping[str, Reply]:
    if intent in NO_REPLY_INTENTS:
        raise CatalogError(f"{source}: replies.{intent}: intent {intent!r} never gets a reply")
    if intent not in REPLY_INTENTS:
        raise CatalogError(
            f"{source}: replies.{intent}: unknown intent {intent!r} "
            f"(known: {', '.join(REPLY_INTENTS)})"
        )
    if not isinstance(table, dict) or not table:
        raise CatalogError(f"{source}: replies.{intent} must be a table of languages")
    by_language: dict[str, Reply] = {}
    for language, entry in table.items():
        if not _is_language_tag(language):
            raise CatalogError(
                f"{source}: replies.{intent}.{language}: {language!r} is not a lower-case "
                "language code such as 'en', 'ko' or 'ja'"
            )
        by_language[language] = _parse_entry(source, intent, language, entry)
    return MappingProxyType(by_language)


def _parse_catalog(source: str, document: Mapping[str, Any]) -> Catalog:
    _reject_unexpected(source, "", document, allowed=_TOP_LEVEL_KEYS)
    version = document.get("version")
    if version != CATALOG_VERSION or isinstance(version, bool):
        raise CatalogError(
            f"{source}: version is {version!r}; this responder reads version {CATALOG_VERSION}"
        )
    default_language = document.get("default_language")
    if not isinstance(default_language, str) or not _is_language_tag(default_language):
        raise CatalogError(
            f"{source}: default_language is {default_language!r}; "
            "expected a lower-case language code such as 'en'"
        )
    replies = document.get("replies")
    if not isinstance(replies, dict):
        raise CatalogError(f"{source}: replies is missing or not a table")

    parsed = {intent: _parse_intent(source, intent, table) for intent, table in replies.items()}

    uncovered = [
        intent
        for intent in REPLY_INTENTS
        if intent not in parsed or default_language not in parsed[intent]
    ]
    if uncovered:
        keys = ", ".join(f"replies.{intent}.{default_language}" for intent in uncovered)
        raise CatalogError(
            f"{source}: missing {keys} (every intent that gets a reply needs an entry "
            f"in the default language {default_language!r})"
        )
    return Catalog(
        version=CATALOG_VERSION,
        default_language=default_language,
        replies=MappingProxyType(parsed),
        source=source,
    )


# --- loading ----------------------------------------------------------------------------------


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read and validate a catalog; `None` reads the one packaged with the responder.

    Raises `CatalogError` naming the file and the offending key.
    """
    if path is None:
        resource = resources.files(__package__ or "civicline.responder") / _PACKAGED_CATALOG
        source = str(resource)
        try:
            raw = resource.read_bytes()
        except OSError as exc:
            raise CatalogError(f"{source}: cannot read the packaged catalog: {exc}") from exc
    else:
        source = os.fspath(path)
        try:
            with open(source, "rb") as catalog_file:
                raw = catalog_file.read()
        except OSError as exc:
            raise CatalogError(f"{source}: cannot read the catalog: {exc.strerror}") from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{source}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: invalid TOML: {exc}") from exc
    return _parse_catalog(source, document)


# --- choosing and sending ---------------------------------------------------------------------


def _language_candidates(language: str) -> list[str]:
    # Contacts and detectors report "ko", "ko-KR", "ko_KR" or "KO"; the catalog is keyed by
    # lower-case tags, so try the exact tag first, then its primary subtag.
    tag = language.strip().replace("_", "-").lower()
    candidates = [tag] if tag else []
    primary = tag.split("-", 1)[0]
    if primary and primary != tag:
        candidates.append(primary)
    return candidates


def choose_reply(catalog: Catalog, intent: str, language: str) -> Reply:
    """The reply for `intent` in `language`, else in the default language.

    An intent the catalog does not know gets the `unknown` entry, so this never raises; the
    returned `Reply` names the intent and language actually used. Deciding whether a message
    needs a reply at all (reactions, opted-out contacts) is the caller's job.
    """
    by_language = catalog.replies.get(intent) or catalog.replies[FALLBACK_INTENT]
    for candidate in _language_candidates(language):
        reply = by_language.get(candidate)
        if reply is not None:
            return reply
    return by_language[catalog.default_language]


def to_graph_message(reply: Reply, *, to: str, reply_to: str | None) -> dict[str, Any]:
    """The Graph API `POST /{phone-number-id}/messages` body that sends `reply` to `to`.

    `reply_to` is the citizen's wamid; when given, WhatsApp shows our answer quoting it.
    """
    if reply.type != "text":
        raise ValueError(f"no Graph API mapping for reply type {reply.type!r}")
    message: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        # Links stay tappable without a preview card, which would push the answer off screen.
        "text": {"body": reply.body, "preview_url": False},
    }
    if reply_to is not None:
        message["context"] = {"message_id": reply_to}
    return message

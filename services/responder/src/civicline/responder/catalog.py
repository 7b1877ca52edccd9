"""The responder's content catalog: what we answer, per intent and language.

Loaded once from TOML and validated up front, so a broken catalog stops the service at start
instead of failing on a citizen's message (every error names the file and the key). Pure: no
I/O beyond reading the file. The format is documented in README.md ("The content catalog").
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from civicline.common.intents import NO_REPLY_INTENTS, REPLY_INTENTS
from civicline.common.languages import language_candidates
from civicline.common.tomlfile import TomlFileError, describe_type, read_toml

__all__ = [
    "MAX_TEXT_BODY",
    "NO_REPLY_INTENTS",
    "REPLY_INTENTS",
    "SUPPORTED_TYPES",
    "Button",
    "Catalog",
    "CatalogError",
    "Office",
    "Place",
    "Reply",
    "Row",
    "Section",
    "Template",
    "choose_away",
    "choose_reply",
    "choose_template",
    "load_catalog",
    "to_graph_message",
]

CATALOG_VERSION: Final = 1

# `unknown` doubles as the fallback for an intent the catalog does not know, so it must be
# present.
FALLBACK_INTENT: Final = "unknown"

# Meta's limits (shared/reference/whatsapp-cloud-api.md §5). Interactive bodies are held to
# 1024 for lists too: Meta's list page now says 4096, but BSPs and older versions enforce 1024.
MAX_TEXT_BODY: Final = 4096
MAX_INTERACTIVE_BODY: Final = 1024
MAX_HEADER: Final = 60
MAX_FOOTER: Final = 60
MAX_BUTTONS: Final = 3
MAX_BUTTON_TITLE: Final = 20
MAX_BUTTON_ID: Final = 256
MAX_LIST_BUTTON: Final = 20
MAX_SECTIONS: Final = 10
MAX_ROWS: Final = 10
MAX_SECTION_TITLE: Final = 24
MAX_ROW_TITLE: Final = 24
MAX_ROW_DESCRIPTION: Final = 72
MAX_ROW_ID: Final = 200
MAX_TEMPLATE_NAME: Final = 512

_PACKAGED_CATALOG: Final = "catalog.toml"
_TOP_LEVEL_KEYS: Final = frozenset(
    {"version", "default_language", "replies", "templates", "office"}
)
_OFFICE_KEYS: Final = frozenset({"timezone", "hours", "closed_dates", "away"})
_WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)")
_TEMPLATE_NAME = re.compile(r"[a-z0-9_]+")
# Meta's template locale codes: "ko", "ja", "en_US", "pt_BR", "zh_Hant" …
_TEMPLATE_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2}|_[A-Z][a-z]{3})?")
# Meta refuses template parameter text with a newline, a tab or more than 4 spaces in a row.
_BAD_PARAMETER = re.compile(r"[\n\t]| {5,}")


class CatalogError(ValueError):
    """The catalog file is unreadable or breaks a rule; the message names the file and key."""


@dataclass(frozen=True, slots=True)
class Button:
    """An interactive reply button; its `id` comes back in the citizen's button_reply."""

    id: str
    title: str


@dataclass(frozen=True, slots=True)
class Row:
    """A row of an interactive list; its `id` comes back in the citizen's list_reply."""

    id: str
    title: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Section:
    title: str | None
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class Place:
    """A location pin: a shelter, an office."""

    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Template:
    """An approved message template: the only thing WhatsApp delivers outside the 24 h window."""

    name: str
    language: str
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """One catalog entry, resolved for a citizen: what to send and in which language.

    `body` is the text of a text reply, the body of an interactive one, and for a location
    reply the text sent when the citizen has not shared where they are (may be empty).
    """

    intent: str
    language: str
    type: str
    body: str = ""
    header: str | None = None
    footer: str | None = None
    buttons: tuple[Button, ...] = ()
    list_button: str | None = None
    sections: tuple[Section, ...] = ()
    places: tuple[Place, ...] = ()
    template: Template | None = None

    def reply_ids(self) -> tuple[str, ...]:
        """The ids a citizen can tap in this reply (buttons and list rows)."""
        return tuple(b.id for b in self.buttons) + tuple(
            row.id for section in self.sections for row in section.rows
        )


@dataclass(frozen=True, slots=True)
class Office:
    """Opening hours in the office's own time zone, and the away notice sent outside them."""

    zone: ZoneInfo
    # weekday (0 = Monday) -> opening intervals in minutes since local midnight
    hours: Mapping[int, tuple[tuple[int, int], ...]]
    closed_dates: frozenset[date]
    away: Mapping[str, Reply]

    def is_open(self, now: datetime) -> bool:
        """True when `now` falls inside an opening interval on a day that is not closed."""
        moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        local = moment.astimezone(self.zone)
        if local.date() in self.closed_dates:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.hours.get(local.weekday(), ()))


@dataclass(frozen=True, slots=True)
class Catalog:
    """A validated catalog. `replies[intent][language]` is a `Reply`; read-only mappings."""

    version: int
    default_language: str
    replies: Mapping[str, Mapping[str, Reply]]
    source: str
    templates: Mapping[str, Mapping[str, Reply]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    office: Office | None = None

    def languages(self, intent: str) -> frozenset[str]:
        """The languages that have an entry for `intent` (empty when the intent has none)."""
        return frozenset(self.replies.get(intent, {}))

    def reply_ids(self) -> frozenset[str]:
        """Every button and list-row id the catalog can send (the router must know each)."""
        entries = [r for by_language in self.replies.values() for r in by_language.values()]
        if self.office is not None:
            entries += self.office.away.values()
        return frozenset(reply_id for reply in entries for reply_id in reply.reply_ids())


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


class _Table:
    """One TOML table being validated: every error names the file and the full key."""

    def __init__(self, source: str, key: str, table: Mapping[str, Any]) -> None:
        self.source = source
        self.key = key
        self.table = table

    def fail(self, name: str | None, problem: str) -> CatalogError:
        where = f"{self.key}.{name}" if name else self.key
        return CatalogError(f"{self.source}: {where} {problem}")

    def only(self, allowed: frozenset[str] | set[str]) -> None:
        unexpected = sorted(set(self.table) - set(allowed))
        if unexpected:
            names = ", ".join(f"{self.key}.{name}" if self.key else name for name in unexpected)
            raise CatalogError(
                f"{self.source}: unexpected key(s) {names} (allowed: {', '.join(sorted(allowed))})"
            )

    def child(self, name: str, value: object, index: int | None = None) -> _Table:
        key = f"{self.key}.{name}" if index is None else f"{self.key}.{name}[{index}]"
        if not isinstance(value, dict):
            raise CatalogError(f"{self.source}: {key} must be a table, not {describe_type(value)}")
        return _Table(self.source, key, value)

    def text(self, name: str, *, limit: int, required: bool = True) -> str | None:
        """A string field, stripped (surrounding whitespace is layout in the TOML file)."""
        value = self.table.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is missing")
            return None
        if not isinstance(value, str):
            raise self.fail(name, f"must be a string, not {describe_type(value)}")
        stripped = value.strip()
        if not stripped:
            raise self.fail(name, "is empty")
        length = _utf16_length(stripped)
        if length > limit:
            raise self.fail(name, f"is {length} characters long; WhatsApp accepts at most {limit}")
        return stripped

    def required_text(self, name: str, *, limit: int) -> str:
        value = self.text(name, limit=limit)
        assert value is not None
        return value

    def identifier(self, name: str, *, limit: int) -> str:
        """A button or row id: sent back verbatim, so no surrounding whitespace at all."""
        value = self.table.get(name)
        if not isinstance(value, str) or not value:
            raise self.fail(name, "is missing or not a non-empty string")
        if value != value.strip():
            raise self.fail(name, f"{value!r} has surrounding whitespace")
        if len(value) > limit:
            raise self.fail(name, f"is {len(value)} characters long; WhatsApp accepts {limit}")
        return value

    def array(self, name: str, *, minimum: int, maximum: int) -> list[Any]:
        value = self.table.get(name)
        if not isinstance(value, list):
            raise self.fail(name, f"must be an array, not {describe_type(value)}")
        if not minimum <= len(value) <= maximum:
            raise self.fail(name, f"has {len(value)} items; expected {minimum} to {maximum}")
        return value

    def coordinate(self, name: str, *, bound: float) -> float:
        value = self.table.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, not {describe_type(value)}")
        number = float(value)
        if not math.isfinite(number) or not -bound <= number <= bound:
            raise self.fail(name, f"is {value}; expected -{bound:g} to {bound:g}")
        return number


def _text_reply(entry: _Table) -> dict[str, Any]:
    entry.only({"type", "body"})
    return {"body": entry.required_text("body", limit=MAX_TEXT_BODY)}


def _interactive_frame(entry: _Table) -> dict[str, Any]:
    return {
        "body": entry.required_text("body", limit=MAX_INTERACTIVE_BODY),
        "header": entry.text("header", limit=MAX_HEADER, required=False),
        "footer": entry.text("footer", limit=MAX_FOOTER, required=False),
    }


def _buttons_reply(entry: _Table) -> dict[str, Any]:
    entry.only({"type", "body", "header", "footer", "buttons"})
    buttons: list[Button] = []
    for index, item in enumerate(entry.array("buttons", minimum=1, maximum=MAX_BUTTONS)):
        button = entry.child("buttons", item, index)
        button.only({"id", "title"})
        buttons.append(
            Button(
                id=button.identifier("id", limit=MAX_BUTTON_ID),
                title=button.required_text("title", limit=MAX_BUTTON_TITLE),
            )
        )
    for attribute in ("id", "title"):
        values = [getattr(b, attribute) for b in buttons]
        if len(set(values)) != len(values):
            raise entry.fail("buttons", f"repeat a {attribute}; WhatsApp needs them unique")
    return {**_interactive_frame(entry), "buttons": tuple(buttons)}


def _list_reply(entry: _Table) -> dict[str, Any]:
    entry.only({"type", "body", "header", "footer", "button", "sections"})
    raw_sections = entry.array("sections", minimum=1, maximum=MAX_SECTIONS)
    sections: list[Section] = []
    for index, item in enumerate(raw_sections):
        section = entry.child("sections", item, index)
        section.only({"title", "rows"})
        title = section.text("title", limit=MAX_SECTION_TITLE, required=len(raw_sections) > 1)
        rows = []
        for row_index, raw_row in enumerate(section.array("rows", minimum=1, maximum=MAX_ROWS)):
            row = section.child("rows", raw_row, row_index)
            row.only({"id", "title", "description"})
            rows.append(
                Row(
                    id=row.identifier("id", limit=MAX_ROW_ID),
                    title=row.required_text("title", limit=MAX_ROW_TITLE),
                    description=row.text("description", limit=MAX_ROW_DESCRIPTION, required=False),
                )
            )
        sections.append(Section(title=title, rows=tuple(rows)))
    row_ids = [row.id for section in sections for row in section.rows]
    if len(row_ids) > MAX_ROWS:
        raise entry.fail("sections", f"hold {len(row_ids)} rows; WhatsApp allows {MAX_ROWS}")
    if len(set(row_ids)) != len(row_ids):
        raise entry.fail("sections", "repeat a row id; WhatsApp needs them unique")
    return {
        **_interactive_frame(entry),
        "list_button": entry.required_text("button", limit=MAX_LIST_BUTTON),
        "sections": tuple(sections),
    }


_PLACE_KEYS: Final = frozenset({"name", "address", "latitude", "longitude"})


def _place(table: _Table) -> Place:
    return Place(
        latitude=table.coordinate("latitude", bound=90),
        longitude=table.coordinate("longitude", bound=180),
        name=table.text("name", limit=MAX_TEXT_BODY, required=False),
        address=table.text("address", limit=MAX_TEXT_BODY, required=False),
    )


def _location_reply(entry: _Table) -> dict[str, Any]:
    entry.only({"type", "body", "locations", *_PLACE_KEYS})
    inline = _PLACE_KEYS & set(entry.table)
    if "locations" in entry.table:
        if inline:
            raise entry.fail(
                None, "gives both `locations` and a single place's fields; use one or the other"
            )
        items = entry.array("locations", minimum=1, maximum=1000)
        places = []
        for index, item in enumerate(items):
            place = entry.child("locations", item, index)
            place.only(_PLACE_KEYS)
            places.append(_place(place))
    else:
        places = [_place(entry)]
    return {
        "body": entry.text("body", limit=MAX_TEXT_BODY, required=False) or "",
        "places": tuple(places),
    }


def _template(entry: _Table) -> Template:
    name = entry.required_text("name", limit=MAX_TEMPLATE_NAME)
    if not _TEMPLATE_NAME.fullmatch(name):
        raise entry.fail("name", f"{name!r}: template names are lower-case letters, digits and _")
    language = entry.table.get("language")
    if not isinstance(language, str) or not _TEMPLATE_LANGUAGE.fullmatch(language):
        raise entry.fail(
            "language", f"is {language!r}; expected a template language code such as ko or en_US"
        )
    raw = entry.table.get("parameters", [])
    if not isinstance(raw, list):
        raise entry.fail("parameters", f"must be an array of strings, not {describe_type(raw)}")
    parameters = []
    for index, value in enumerate(raw):
        if not isinstance(value, str) or not value.strip():
            raise entry.fail(f"parameters[{index}]", "must be a non-empty string")
        if _BAD_PARAMETER.search(value):
            raise entry.fail(
                f"parameters[{index}]",
                "holds a newline, a tab or more than 4 spaces in a row, which WhatsApp refuses",
            )
        parameters.append(value)
    return Template(name=name, language=language, parameters=tuple(parameters))


def _template_reply(entry: _Table) -> dict[str, Any]:
    entry.only({"type", "name", "language", "parameters"})
    return {"template": _template(entry)}


# One validator per reply type; each returns the type's `Reply` fields.
_TYPE_VALIDATORS: Final[Mapping[str, Callable[[_Table], dict[str, Any]]]] = MappingProxyType(
    {
        "text": _text_reply,
        "buttons": _buttons_reply,
        "list": _list_reply,
        "location": _location_reply,
        "template": _template_reply,
    }
)
SUPPORTED_TYPES: Final = frozenset(_TYPE_VALIDATORS)


def _parse_entry(
    source: str, key: str, intent: str, language: str, entry: object, *, types: frozenset[str]
) -> Reply:
    if not isinstance(entry, dict):
        raise CatalogError(f"{source}: {key} must be a table with `type` and its fields")
    reply_type = entry.get("type")
    if reply_type is None:
        raise CatalogError(f"{source}: {key}.type is missing")
    if not isinstance(reply_type, str) or reply_type not in types:
        raise CatalogError(
            f"{source}: {key}.type is {reply_type!r}, an unknown reply type "
            f"(supported: {', '.join(sorted(types))})"
        )
    fields = _TYPE_VALIDATORS[reply_type](_Table(source, key, entry))
    return Reply(intent=intent, language=language, type=reply_type, **fields)


def _languages(source: str, key: str, table: object) -> dict[str, object]:
    if not isinstance(table, dict) or not table:
        raise CatalogError(f"{source}: {key} must be a table of languages")
    for language in table:
        if not _is_language_tag(language):
            raise CatalogError(
                f"{source}: {key}.{language}: {language!r} is not a lower-case "
                "language code such as 'en', 'ko' or 'ja'"
            )
    return table


def _check_intent(source: str, key: str, intent: str) -> None:
    if intent in NO_REPLY_INTENTS:
        raise CatalogError(f"{source}: {key}: intent {intent!r} never gets a reply")
    if intent not in REPLY_INTENTS:
        raise CatalogError(
            f"{source}: {key}: unknown intent {intent!r} (known: {', '.join(REPLY_INTENTS)})"
        )


def _parse_intent(source: str, intent: str, table: object) -> Mapping[str, Reply]:
    key = f"replies.{intent}"
    _check_intent(source, key, intent)
    by_language = {
        language: _parse_entry(
            source, f"{key}.{language}", intent, language, entry, types=SUPPORTED_TYPES
        )
        for language, entry in _languages(source, key, table).items()
    }
    return MappingProxyType(by_language)


def _parse_templates(source: str, intent: str, table: object) -> Mapping[str, Reply]:
    key = f"templates.{intent}"
    _check_intent(source, key, intent)
    by_language: dict[str, Reply] = {}
    for language, entry in _languages(source, key, table).items():
        entry_key = f"{key}.{language}"
        if not isinstance(entry, dict):
            raise CatalogError(f"{source}: {entry_key} must be a table with name and language")
        checked = _Table(source, entry_key, entry)
        checked.only({"type", "name", "language", "parameters"})
        if entry.get("type", "template") != "template":
            raise checked.fail("type", "must be 'template' (or left out)")
        by_language[language] = Reply(
            intent=intent, language=language, type="template", template=_template(checked)
        )
    return MappingProxyType(by_language)


def _minutes(value: str) -> tuple[int, int] | None:
    match = _HOURS.fullmatch(value.strip())
    if match is None:
        return None
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start_h > 23 or start_m > 59 or end_m > 59 or end > 24 * 60 or start >= end:
        return None
    return start, end


def _parse_office(source: str, value: object, default_language: str) -> Office:
    if not isinstance(value, dict):
        raise CatalogError(f"{source}: office must be a table, not {describe_type(value)}")
    office = _Table(source, "office", value)
    office.only(_OFFICE_KEYS)
    timezone = value.get("timezone")
    if not isinstance(timezone, str) or not timezone:
        raise office.fail("timezone", "is missing (an IANA name such as 'Asia/Seoul')")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise office.fail(
            "timezone", f"{timezone!r} is not a known IANA time zone (is tzdata installed?)"
        ) from None

    hours_table = office.child("hours", value.get("hours"))
    hours_table.only(set(_WEEKDAYS))
    hours: dict[int, tuple[tuple[int, int], ...]] = {}
    for day, name in enumerate(_WEEKDAYS):
        spans = hours_table.table.get(name, [])
        if not isinstance(spans, list):
            raise hours_table.fail(name, f"must be an array of 'HH:MM-HH:MM', not {spans!r}")
        parsed = []
        for index, span in enumerate(spans):
            interval = _minutes(span) if isinstance(span, str) else None
            if interval is None:
                raise hours_table.fail(
                    f"{name}[{index}]", f"is {span!r}; expected 'HH:MM-HH:MM' with start < end"
                )
            parsed.append(interval)
        hours[day] = tuple(sorted(parsed))

    closed: set[date] = set()
    raw_dates = value.get("closed_dates", [])
    if not isinstance(raw_dates, list):
        raise office.fail("closed_dates", "must be an array of dates (2026-12-25)")
    for index, item in enumerate(raw_dates):
        # TOML has a native local-date type; a quoted ISO date is accepted too.
        if isinstance(item, str):
            try:
                item = date.fromisoformat(item)
            except ValueError:
                raise office.fail(f"closed_dates[{index}]", f"{item!r} is not a date") from None
        if not isinstance(item, date) or isinstance(item, datetime):
            raise office.fail(f"closed_dates[{index}]", f"{item!r} is not a date")
        closed.add(item)

    away_key = "office.away"
    away = {
        language: _parse_entry(
            source,
            f"{away_key}.{language}",
            "away",
            language,
            entry,
            types=SUPPORTED_TYPES - {"template"},
        )
        for language, entry in _languages(source, away_key, value.get("away")).items()
    }
    if default_language not in away:
        raise CatalogError(
            f"{source}: missing {away_key}.{default_language} (the away notice needs an entry "
            f"in the default language {default_language!r})"
        )
    return Office(
        zone=zone,
        hours=MappingProxyType(hours),
        closed_dates=frozenset(closed),
        away=MappingProxyType(away),
    )


def _uncovered(
    source: str, table_name: str, parsed: Mapping[str, Mapping[str, Reply]], language: str
) -> None:
    missing = [i for i in REPLY_INTENTS if i not in parsed or language not in parsed[i]]
    if missing:
        keys = ", ".join(f"{table_name}.{intent}.{language}" for intent in missing)
        raise CatalogError(
            f"{source}: missing {keys} (every intent that gets a reply needs an entry "
            f"in the default language {language!r})"
        )


def _parse_catalog(source: str, document: Mapping[str, Any]) -> Catalog:
    _Table(source, "", document).only(_TOP_LEVEL_KEYS)
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
    _uncovered(source, "replies", parsed, default_language)

    templates_table = document.get("templates")
    if not isinstance(templates_table, dict):
        raise CatalogError(
            f"{source}: templates is missing or not a table (each intent needs the approved "
            "template sent outside the 24-hour window)"
        )
    templates = {
        intent: _parse_templates(source, intent, table) for intent, table in templates_table.items()
    }
    _uncovered(source, "templates", templates, default_language)

    office = document.get("office")
    return Catalog(
        version=CATALOG_VERSION,
        default_language=default_language,
        replies=MappingProxyType(parsed),
        source=source,
        templates=MappingProxyType(templates),
        office=None if office is None else _parse_office(source, office, default_language),
    )


# --- loading ----------------------------------------------------------------------------------


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read and validate a catalog; `None` reads the one packaged with the responder.

    Raises `CatalogError` naming the file and the offending key.
    """
    try:
        source, document = read_toml(
            path, package="civicline.responder", packaged=_PACKAGED_CATALOG, what="catalog"
        )
    except TomlFileError as exc:
        raise CatalogError(str(exc)) from exc
    return _parse_catalog(source, document)


# --- choosing and sending ---------------------------------------------------------------------


def _in_language(by_language: Mapping[str, Reply], language: str, default: str) -> Reply:
    for candidate in language_candidates(language):
        reply = by_language.get(candidate)
        if reply is not None:
            return reply
    return by_language[default]


def choose_reply(catalog: Catalog, intent: str, language: str) -> Reply:
    """The reply for `intent` in `language`, else in the default language.

    An intent the catalog does not know gets the `unknown` entry, so this never raises; the
    returned `Reply` names the intent and language actually used. Deciding whether a message
    needs a reply at all (reactions, opted-out contacts) is the caller's job.
    """
    by_language = catalog.replies.get(intent) or catalog.replies[FALLBACK_INTENT]
    return _in_language(by_language, language, catalog.default_language)


def choose_template(catalog: Catalog, intent: str, language: str) -> Reply:
    """The approved template for `intent` (outside the 24-hour window), like `choose_reply`."""
    by_language = catalog.templates.get(intent) or catalog.templates[FALLBACK_INTENT]
    return _in_language(by_language, language, catalog.default_language)


def choose_away(catalog: Catalog, language: str) -> Reply | None:
    """The away notice in `language`; None when the catalog configures no office hours."""
    if catalog.office is None:
        return None
    return _in_language(catalog.office.away, language, catalog.default_language)


def _interactive(reply: Reply, kind: str, action: dict[str, Any]) -> dict[str, Any]:
    interactive: dict[str, Any] = {"type": kind}
    if reply.header is not None:
        interactive["header"] = {"type": "text", "text": reply.header}
    interactive["body"] = {"text": reply.body}
    if reply.footer is not None:
        interactive["footer"] = {"text": reply.footer}
    interactive["action"] = action
    return interactive


def _section(section: Section) -> dict[str, Any]:
    rows = []
    for row in section.rows:
        item = {"id": row.id, "title": row.title}
        if row.description is not None:
            item["description"] = row.description
        rows.append(item)
    return {"title": section.title, "rows": rows} if section.title else {"rows": rows}


def _location(place: Place) -> dict[str, Any]:
    location: dict[str, Any] = {"latitude": place.latitude, "longitude": place.longitude}
    if place.name is not None:
        location["name"] = place.name
    if place.address is not None:
        location["address"] = place.address
    return location


def _template_object(template: Template) -> dict[str, Any]:
    body: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if template.parameters:
        parameters = [{"type": "text", "text": value} for value in template.parameters]
        body["components"] = [{"type": "body", "parameters": parameters}]
    return body


def _content(reply: Reply, place: Place | None) -> tuple[str, dict[str, Any]]:
    """The message `type` and its object for `reply` (reference §5)."""
    if reply.type == "text":
        # Links stay tappable without a preview card, which would push the answer off screen.
        return "text", {"body": reply.body, "preview_url": False}
    if reply.type == "buttons":
        buttons = [
            {"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in reply.buttons
        ]
        return "interactive", _interactive(reply, "button", {"buttons": buttons})
    if reply.type == "list":
        action = {"button": reply.list_button, "sections": [_section(s) for s in reply.sections]}
        return "interactive", _interactive(reply, "list", action)
    if reply.type == "location":
        if place is None and reply.body:
            # The citizen has not shared where they are: the text says how to.
            return "text", {"body": reply.body, "preview_url": False}
        return "location", _location(place if place is not None else reply.places[0])
    if reply.type == "template" and reply.template is not None:
        return "template", _template_object(reply.template)
    raise ValueError(f"no Graph API mapping for reply type {reply.type!r}")


def to_graph_message(
    reply: Reply,
    *,
    to: str,
    reply_to: str | None,
    by_user_id: bool = False,
    place: Place | None = None,
) -> dict[str, Any]:
    """The Graph API `POST /{phone-number-id}/messages` body that sends `reply` to `to`.

    `reply_to` is the citizen's wamid; when given, WhatsApp shows our answer quoting it.
    `by_user_id`: `to` is a business-scoped user id (a citizen known only by a username), which
    Meta takes as `recipient` instead of `to` (reference §3, §5). `place` is the location a
    location reply sends (the nearest one); without it the reply's text, else its first place.
    """
    message_type, content = _content(reply, place)
    message: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        ("recipient" if by_user_id else "to"): to,
        "type": message_type,
        message_type: content,
    }
    if reply_to is not None:
        message["context"] = {"message_id": reply_to}
    return message

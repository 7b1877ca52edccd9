"""Subscription topics: what citizens can subscribe to and what campaigns address.

One TOML file (the packaged `topics.toml`, or `CIVICLINE_TOPICS_PATH`) read by the router, which
recognises "SUBSCRIBE FLOOD" and a tap on a row `sub:<topic>`, and by the responder, which
confirms in the citizen's language, offers the list and expands campaign audiences. Pure apart
from reading the file once at start; every error names the file and the key.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeVar

from civicline.common.languages import language_candidates
from civicline.common.tomlfile import TomlFileError, describe_type, read_toml

TOPICS_VERSION: Final = 1
# A list row's id when the citizen taps a topic in the subscribe / unsubscribe list.
SUBSCRIBE_ID_PREFIX: Final = "sub:"
UNSUBSCRIBE_ID_PREFIX: Final = "unsub:"
MAX_TOPICS: Final = 10  # rows of one WhatsApp list message
MAX_TITLE: Final = 24
MAX_DESCRIPTION: Final = 72
MAX_MENU_BODY: Final = 1024
MAX_MENU_BUTTON: Final = 20
TOPIC_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z0-9]{1,8})*")
_TOPIC_KEYS = frozenset({"keywords", "title", "description"})
T = TypeVar("T")


class TopicsError(ValueError):
    """The topics file is unreadable or breaks a rule; the message names the file and key."""


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    keywords: tuple[str, ...]
    titles: Mapping[str, str]
    descriptions: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Menu:
    body: str
    button: str


@dataclass(frozen=True, slots=True)
class Topics:
    source: str
    default_language: str
    topics: Mapping[str, Topic]
    menus: Mapping[str, Menu]
    # normalised keyword (or name) -> topic name
    keywords: Mapping[str, str]

    def __contains__(self, name: object) -> bool:
        return name in self.topics

    def find(self, text: str) -> str | None:
        """The topic a citizen named ("flood", "홍수", "flood-seoul-mapo"), else None."""
        return self.keywords.get(normalise(text))

    def title(self, name: str, language: str) -> str:
        return _in_language(self.topics[name].titles, language, self.default_language)

    def description(self, name: str, language: str) -> str | None:
        descriptions = self.topics[name].descriptions
        if not descriptions:
            return None
        return _in_language(descriptions, language, self.default_language, required=False)

    def menu(self, language: str) -> Menu:
        return _in_language(self.menus, language, self.default_language)


def normalise(text: str) -> str:
    """NFKC, casefold, single spaces, no surrounding punctuation: how topic names match."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split()).strip(" .,!?;:'\"()[]")


def _in_language(
    by_language: Mapping[str, T], language: str, default: str, *, required: bool = True
) -> T:
    for candidate in language_candidates(language):
        if candidate in by_language:
            return by_language[candidate]
    if default in by_language or required:
        return by_language[default]
    return next(iter(by_language.values()))


def load_topics(path: str | os.PathLike[str] | None = None) -> Topics:
    """Read and validate a topics file; None reads the one packaged with civicline."""
    try:
        source, document = read_toml(
            path, package="civicline.common", packaged="topics.toml", what="topics file"
        )
    except TomlFileError as exc:
        raise TopicsError(str(exc)) from exc
    return _parse(source, document)


def _fail(source: str, key: str, problem: str) -> TopicsError:
    return TopicsError(f"{source}: {key}: {problem}")


def _text(source: str, key: str, text: object, limit: int) -> str:
    if not isinstance(text, str) or not text.strip():
        raise _fail(source, key, "must be a non-empty string")
    if len(text.strip()) > limit:
        raise _fail(source, key, f"is {len(text.strip())} characters; at most {limit}")
    return text.strip()


def _texts(source: str, key: str, value: object, limit: int) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise _fail(source, key, f"must be a table of languages, got {describe_type(value)}")
    texts: dict[str, str] = {}
    for language, text in value.items():
        if not _LANGUAGE.fullmatch(language):
            raise _fail(source, f"{key}.{language}", "is not a lower-case language code")
        texts[language] = _text(source, f"{key}.{language}", text, limit)
    return texts


def _parse(source: str, document: dict[str, object]) -> Topics:
    unknown = set(document) - {"version", "default_language", "topics", "menu"}
    if unknown:
        raise _fail(source, ", ".join(sorted(unknown)), "unknown key")
    if document.get("version") != TOPICS_VERSION:
        raise _fail(source, "version", f"must be {TOPICS_VERSION}")
    default = document.get("default_language")
    if not isinstance(default, str) or not _LANGUAGE.fullmatch(default):
        raise _fail(source, "default_language", "must be a language code such as 'en'")
    table = document.get("topics")
    if not isinstance(table, dict):
        raise _fail(source, "topics", "is missing or not a table")
    if len(table) > MAX_TOPICS:
        raise _fail(source, "topics", f"{len(table)} topics; a WhatsApp list shows {MAX_TOPICS}")
    topics: dict[str, Topic] = {}
    keywords: dict[str, str] = {}
    for name, body in table.items():
        key = f"topics.{name}"
        if not TOPIC_NAME.fullmatch(name):
            raise _fail(source, key, "names are lower-case letters, digits and '-' (≤ 63)")
        if not isinstance(body, dict):
            raise _fail(source, key, f"must be a table, got {describe_type(body)}")
        if set(body) - _TOPIC_KEYS:
            raise _fail(source, key, f"unknown keys {sorted(set(body) - _TOPIC_KEYS)}")
        titles = _texts(source, f"{key}.title", body.get("title"), MAX_TITLE)
        if default not in titles:
            raise _fail(source, f"{key}.title.{default}", "is missing (the default language)")
        descriptions = (
            _texts(source, f"{key}.description", body["description"], MAX_DESCRIPTION)
            if "description" in body
            else {}
        )
        words = body.get("keywords", [])
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise _fail(source, f"{key}.keywords", "must be an array of strings")
        normalised = [normalise(w) for w in words]
        for word in [normalise(name), *normalised]:
            if not word:
                raise _fail(source, f"{key}.keywords", "holds an empty keyword")
            owner = keywords.setdefault(word, name)
            if owner != name:
                raise _fail(source, f"{key}.keywords", f"{word!r} already names topic {owner!r}")
        topics[name] = Topic(
            name=name,
            keywords=tuple(normalised),
            titles=MappingProxyType(titles),
            descriptions=MappingProxyType(descriptions),
        )
    menus_table = document.get("menu")
    if not isinstance(menus_table, dict) or default not in menus_table:
        raise _fail(source, f"menu.{default}", "is missing (the topic list's text)")
    menus: dict[str, Menu] = {}
    for language, entry in menus_table.items():
        if not isinstance(entry, dict):
            raise _fail(source, f"menu.{language}", "must be a table with body and button")
        menus[language] = Menu(
            body=_text(source, f"menu.{language}.body", entry.get("body"), MAX_MENU_BODY),
            button=_text(source, f"menu.{language}.button", entry.get("button"), MAX_MENU_BUTTON),
        )
    return Topics(
        source=source,
        default_language=default,
        topics=MappingProxyType(topics),
        menus=MappingProxyType(menus),
        keywords=MappingProxyType(keywords),
    )

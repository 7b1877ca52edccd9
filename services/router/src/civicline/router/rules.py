"""Intent rules: load and validate the keyword file, and classify an inbound message.

Pure apart from reading the rules file once at start-up; `classify` never raises.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from civicline.common.intents import SUBSCRIPTION_INTENTS
from civicline.common.tomlfile import TomlFileError, describe_type, read_toml
from civicline.common.topics import (
    SUBSCRIBE_ID_PREFIX,
    UNSUBSCRIBE_ID_PREFIX,
    Topics,
    load_topics,
)
from civicline.router.core import INTENTS, URGENT_INTENTS, InboundMessage, Route

__all__ = [
    "INTENTS",
    "KEYWORD_INTENTS",
    "IntentRule",
    "Rules",
    "RulesError",
    "classify",
    "load_rules",
    "normalise_text",
]

RULES_VERSION = 1
# Intents found by keywords and reply ids; the others come from message types (reaction),
# whole-message words (opt_out, opt_in) or are the fallback (unknown).
KEYWORD_INTENTS: frozenset[str] = INTENTS - {
    "opt_out",
    "opt_in",
    "reaction",
    "unknown",
    *SUBSCRIPTION_INTENTS,
}

# Letters of the scripts that separate words with spaces. A keyword made only of these
# matches on word boundaries; any other keyword (Hangul, kana, Han …) matches as a
# substring because Korean and Japanese attach particles without a space.
_SPACED_LETTERS = (
    "0-9a-z"
    "\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"  # Latin-1 letters, Latin Extended-A/B
    "\u0370-\u03ff\u0400-\u052f"  # Greek, Cyrillic
    "\u1e00-\u1eff"  # Latin Extended Additional
)
_SPACED_LETTER = re.compile(f"[{_SPACED_LETTERS}]")
_WILDCARD = "*"
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_TOP_LEVEL_KEYS = frozenset(
    {"version", "message_types", "opt_out", "opt_in", "subscribe", "unsubscribe", "intents"}
)
_INTENT_KEYS = frozenset({"priority", "keywords", "exclude", "reply_ids", "handoff"})
# A hand-off team becomes a routing-key word (`handoff.<team>`): no dots, no wildcards.
_TEAM = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# System notices (e.g. "user changed number") are not written by the citizen: they are
# classified and published, but answering them would be a message out of nowhere.
_UNANSWERED_TYPES = frozenset({"system"})
_OPT_KEYS = frozenset({"words", "reply_ids"})


class RulesError(ValueError):
    """The rules file is missing, not TOML, or breaks the schema; the message says where."""


@dataclass(frozen=True, slots=True)
class IntentRule:
    """The keywords of one intent, compiled for matching normalised text."""

    name: str
    priority: int
    keywords: tuple[str, ...]
    excludes: tuple[str, ...]
    substrings: tuple[str, ...]
    pattern: re.Pattern[str] | None

    def matches(self, normalised: str) -> bool:
        for phrase in self.excludes:
            # A space stands in for the masked phrase so it still separates words.
            normalised = normalised.replace(phrase, " ")
        if any(keyword in normalised for keyword in self.substrings):
            return True
        return self.pattern is not None and self.pattern.search(normalised) is not None


@dataclass(frozen=True, slots=True)
class Rules:
    """A validated rules file. Build it with `load_rules`."""

    source: str
    version: int
    intents: tuple[IntentRule, ...]
    reply_ids: Mapping[str, str]
    reply_id_prefixes: tuple[tuple[str, str], ...]
    opt_out_words: frozenset[str]
    opt_in_words: frozenset[str]
    message_types: Mapping[str, str]
    # intent -> the team that takes it over (`handoff = "<team>"` in the rules file)
    handoffs: Mapping[str, str] = field(default_factory=dict)
    # "<word> <topic>" or "<topic> <word>" (un)subscribes; the word alone asks for the list.
    subscribe_words: tuple[str, ...] = ()
    unsubscribe_words: tuple[str, ...] = ()
    topics: Topics | None = None


def normalise_text(text: str) -> str:
    """NFKC, casefold, straight quotes and single spaces: the form keywords are matched in.

    NFKC turns fullwidth "ＳＴＯＰ" into "STOP" and halfwidth "ﾜｸﾁﾝ" into "ワクチン";
    it runs again after casefold, which can leave a string un-normalised.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.translate(_QUOTES).split())


def _bare(normalised: str) -> str:
    """The message without surrounding punctuation, symbols or emoji: "Stop!" -> "stop"."""
    start, end = 0, len(normalised)
    while start < end and _is_edge_noise(normalised[start]):
        start += 1
    while end > start and _is_edge_noise(normalised[end - 1]):
        end -= 1
    return normalised[start:end]


def _is_edge_noise(char: str) -> bool:
    # Variation selectors (U+FE0F after an emoji) are combining marks, so name them too.
    return unicodedata.category(char)[0] in "PSZC" or "\ufe00" <= char <= "\ufe0f"


def _route(intent: str, rules: Rules, *, needs_reply: bool = True) -> Route:
    return Route(
        intent=intent,
        urgent=intent in URGENT_INTENTS,
        needs_reply=needs_reply and intent != "reaction",
        handoff=rules.handoffs.get(intent),
    )


def classify(message: InboundMessage, rules: Rules) -> Route:
    """Route one inbound message. Total: any message and any text give a Route.

    Order: reactions; an interactive / template reply id we issued; a whole-message
    opt-out or opt-in word; keywords in priority order (report_abuse first); the
    message type (location -> shelter); otherwise unknown, which is answered with the help
    menu. System notices are classified but need no reply. An intent marked for hand-off
    carries its team.
    """
    if message.type == "reaction":
        return _route("reaction", rules)
    subscription = _subscription_reply_id(message.reply_id, rules)
    if subscription is not None:
        return subscription
    intent = _intent_for_reply_id(message.reply_id, rules)
    if intent is None and isinstance(message.text, str):
        subscription = _subscription_text(message.text, rules)
        if subscription is not None:
            return subscription
        intent = _intent_for_text(message.text, rules)
    if intent is None:
        intent = rules.message_types.get(message.type)
    return _route(intent or "unknown", rules, needs_reply=message.type not in _UNANSWERED_TYPES)


def _subscription_reply_id(reply_id: str | None, rules: Rules) -> Route | None:
    """A tap on a row of the topic list: `sub:<topic>` / `unsub:<topic>`."""
    if not isinstance(reply_id, str) or rules.topics is None:
        return None
    for intent, prefix in (
        ("unsubscribe", UNSUBSCRIBE_ID_PREFIX),
        ("subscribe", SUBSCRIBE_ID_PREFIX),
    ):
        if reply_id.startswith(prefix):
            topic = reply_id.removeprefix(prefix)
            return replace(_route(intent, rules), topic=topic if topic in rules.topics else None)
    return None


def _subscription_text(text: str, rules: Rules) -> Route | None:
    """A whole-message opt word wins ("subscribe" alone is START); then "SUBSCRIBE FLOOD",
    "홍수 알림", "洪水 登録": a subscription word before or after a topic's keyword. A word
    alone asks for the topic list; a word with text that names no topic is not a subscription
    ("follow up on my passport")."""
    if rules.topics is None:
        return None
    bare = _bare(normalise_text(text))
    if not bare or bare in rules.opt_out_words or bare in rules.opt_in_words:
        return None
    for intent, words in (
        ("unsubscribe", rules.unsubscribe_words),
        ("subscribe", rules.subscribe_words),
    ):
        for word in words:
            if bare == word:
                return _route(intent, rules)
            for rest in _around(bare, word):
                topic = rules.topics.find(rest)
                if topic is not None:
                    return replace(_route(intent, rules), topic=topic)
    return None


def _around(text: str, word: str) -> list[str]:
    """What is left of `text` when `word` begins or ends it on a word boundary."""
    rests = []
    spaced = _is_spaced(word)
    if text.startswith(word):
        rest = text[len(word) :]
        if not spaced or rest.startswith(" ") or not _SPACED_LETTER.match(rest[:1]):
            rests.append(rest.strip())
    if text.endswith(word):
        rest = text[: -len(word)]
        if not spaced or rest.endswith(" ") or not _SPACED_LETTER.match(rest[-1:]):
            rests.append(rest.strip())
    return [rest for rest in rests if rest]


def _intent_for_reply_id(reply_id: str | None, rules: Rules) -> str | None:
    if not isinstance(reply_id, str):
        return None
    key = normalise_text(reply_id)
    if not key:
        return None
    exact = rules.reply_ids.get(key)
    if exact is not None:
        return exact
    for prefix, intent in rules.reply_id_prefixes:
        if key.startswith(prefix):
            return intent
    return None


def _intent_for_text(text: str, rules: Rules) -> str | None:
    normalised = normalise_text(text)
    bare = _bare(normalised)
    if not bare:
        return None
    # Whole message only, so "how do I stop the abuse" is not an opt-out.
    if bare in rules.opt_out_words:
        return "opt_out"
    if bare in rules.opt_in_words:
        return "opt_in"
    for rule in rules.intents:
        if rule.matches(normalised):
            return rule.name
    return None


# --- loading --------------------------------------------------------------------------


def load_rules(
    path: str | os.PathLike[str] | None = None, *, topics: Topics | None = None
) -> Rules:
    """Load and validate a rules file; None loads the rules.toml shipped with the router.

    `topics` are the subscription topics (default: the packaged topics.toml)."""
    try:
        source, document = read_toml(
            path, package="civicline.router", packaged="rules.toml", what="rules file"
        )
    except TomlFileError as exc:
        raise RulesError(str(exc)) from exc
    rules = _Validator(source).rules(document)
    return replace(rules, topics=topics if topics is not None else load_topics())


class _Validator:
    """Turns a decoded TOML document into Rules, naming the file and key of any problem."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.reply_owner: dict[str, str] = {}

    def fail(self, key: str, problem: str) -> RulesError:
        return RulesError(f"{self.source}: {key}: {problem}")

    def rules(self, document: dict[str, Any]) -> Rules:
        for key in document:
            if key not in _TOP_LEVEL_KEYS:
                raise self.fail(key, f"unknown key (expected one of {_listing(_TOP_LEVEL_KEYS)})")
        version = document.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version != RULES_VERSION:
            raise self.fail("version", f"must be {RULES_VERSION}, got {version!r}")

        opt_out = self.opt_words("opt_out", document.get("opt_out"))
        opt_in = self.opt_words("opt_in", document.get("opt_in"))
        # Optional: without them, citizens subscribe by tapping the topic list only.
        subscribe = unsubscribe = frozenset[str]()
        if "subscribe" in document:
            subscribe = self.opt_words("subscribe", document["subscribe"])
        if "unsubscribe" in document:
            unsubscribe = self.opt_words("unsubscribe", document["unsubscribe"])
        both = opt_out & opt_in
        if both:
            raise self.fail("opt_in.words", f"{_listing(both)} also listed in opt_out.words")

        intents_table = self.table("intents", document.get("intents"), required=True)
        intents = [self.intent(name, body) for name, body in intents_table.items()]
        if not intents:
            raise self.fail("intents", "no intent configured")
        priorities: dict[int, str] = {}
        for rule in intents:
            if rule.priority in priorities:
                raise self.fail(
                    f"intents.{rule.name}.priority",
                    f"{rule.priority} is also the priority of {priorities[rule.priority]!r}",
                )
            priorities[rule.priority] = rule.name
        intents.sort(key=lambda rule: rule.priority)

        exact: dict[str, str] = {}
        prefixes: list[tuple[str, str]] = []
        for reply_id, intent in self.reply_owner.items():
            if reply_id.endswith(_WILDCARD):
                prefixes.append((reply_id[: -len(_WILDCARD)], intent))
            else:
                exact[reply_id] = intent
        prefixes.sort(key=lambda item: len(item[0]), reverse=True)

        return Rules(
            source=self.source,
            version=RULES_VERSION,
            intents=tuple(intents),
            reply_ids=exact,
            reply_id_prefixes=tuple(prefixes),
            opt_out_words=opt_out,
            opt_in_words=opt_in,
            # Longest first: "구독 취소" before "구독".
            subscribe_words=tuple(sorted(subscribe, key=len, reverse=True)),
            unsubscribe_words=tuple(sorted(unsubscribe, key=len, reverse=True)),
            message_types=self.message_types(document.get("message_types")),
            handoffs={
                name: self.handoff(name, body.get("handoff"))
                for name, body in intents_table.items()
                if isinstance(body, dict) and "handoff" in body
            },
        )

    def table(self, key: str, value: object, *, required: bool = False) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {describe_type(value)}")
        return value

    def strings(self, key: str, value: object) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, got {describe_type(value)}")
        result: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{index}]", f"must be a string, got {describe_type(item)}")
            normalised = normalise_text(item)
            stem = normalised.removesuffix(_WILDCARD)
            if not any(char.isalnum() for char in stem):
                raise self.fail(f"{key}[{index}]", f"{item!r} is empty or has no letter or digit")
            if _WILDCARD in stem:
                raise self.fail(f"{key}[{index}]", f"{item!r}: '*' is allowed only at the end")
            result.append(normalised)
        return result

    def opt_words(self, key: str, value: object) -> frozenset[str]:
        table = self.table(key, value, required=True)
        for name in table:
            if name not in _OPT_KEYS:
                raise self.fail(f"{key}.{name}", f"unknown key (expected {_listing(_OPT_KEYS)})")
        words = self.strings(f"{key}.words", table.get("words"))
        for index, word in enumerate(words):
            if word.endswith(_WILDCARD):
                raise self.fail(f"{key}.words[{index}]", "whole-message words take no '*'")
        if not words:
            raise self.fail(f"{key}.words", "must list at least one word")
        self.claim_reply_ids(key, table.get("reply_ids", []))
        return frozenset(_bare(word) for word in words)

    def intent(self, name: str, value: object) -> IntentRule:
        key = f"intents.{name}"
        if name not in KEYWORD_INTENTS:
            if name in ("opt_out", "opt_in"):
                raise self.fail(key, f"{name!r} is configured in its own [{name}] table")
            if name in INTENTS:
                raise self.fail(key, f"{name!r} is built in and takes no keywords")
            raise self.fail(key, f"unknown intent {name!r} (known: {_listing(KEYWORD_INTENTS)})")
        table = self.table(key, value, required=True)
        for field_name in table:
            if field_name not in _INTENT_KEYS:
                raise self.fail(
                    f"{key}.{field_name}", f"unknown key (expected {_listing(_INTENT_KEYS)})"
                )
        priority = table.get("priority")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise self.fail(f"{key}.priority", f"must be an integer, got {describe_type(priority)}")
        keywords = self.by_language(f"{key}.keywords", table.get("keywords"))
        excludes = self.by_language(f"{key}.exclude", table.get("exclude"))
        for phrase in excludes:
            if phrase.endswith(_WILDCARD):
                raise self.fail(f"{key}.exclude", f"{phrase!r}: excluded phrases take no '*'")
        reply_ids = self.claim_reply_ids(key, table.get("reply_ids", []))
        if not keywords and not reply_ids:
            raise self.fail(key, "has neither keywords nor reply_ids")
        return _compile(name, priority, keywords, excludes)

    def by_language(self, key: str, value: object) -> list[str]:
        table = self.table(key, value)
        words: list[str] = []
        for language, entries in table.items():
            words.extend(self.strings(f"{key}.{language}", entries))
        return list(dict.fromkeys(words))

    def claim_reply_ids(self, owner: str, value: object) -> list[str]:
        intent = owner.removeprefix("intents.")
        reply_ids = self.strings(f"{owner}.reply_ids", value)
        for reply_id in reply_ids:
            previous = self.reply_owner.setdefault(reply_id, intent)
            if previous != intent:
                raise self.fail(
                    f"{owner}.reply_ids", f"{reply_id!r} is already a reply id of {previous!r}"
                )
        return reply_ids

    def handoff(self, intent: str, value: object) -> str:
        if not isinstance(value, str) or not _TEAM.fullmatch(value):
            raise self.fail(
                f"intents.{intent}.handoff",
                f"must be a team name of lower-case letters, digits, '_' or '-', got {value!r}",
            )
        return value

    def message_types(self, value: object) -> dict[str, str]:
        table = self.table("message_types", value)
        for message_type, intent in table.items():
            if not isinstance(intent, str) or intent not in INTENTS:
                raise self.fail(
                    f"message_types.{message_type}",
                    f"unknown intent {intent!r} (known: {_listing(INTENTS)})",
                )
        return dict(table)


def _compile(name: str, priority: int, keywords: list[str], excludes: list[str]) -> IntentRule:
    substrings: list[str] = []
    alternatives: list[str] = []
    for keyword in keywords:
        stem = keyword.removesuffix(_WILDCARD)
        if _is_spaced(stem):
            tail = f"[{_SPACED_LETTERS}]*" if keyword.endswith(_WILDCARD) else ""
            alternatives.append(re.escape(stem) + tail)
        else:
            substrings.append(stem)
    pattern = None
    if alternatives:
        pattern = re.compile(
            f"(?<![{_SPACED_LETTERS}])(?:{'|'.join(alternatives)})(?![{_SPACED_LETTERS}])"
        )
    return IntentRule(
        name=name,
        priority=priority,
        keywords=tuple(keywords),
        excludes=tuple(excludes),
        substrings=tuple(substrings),
        pattern=pattern,
    )


def _is_spaced(keyword: str) -> bool:
    """True when every letter of the keyword belongs to a script written with spaces."""
    return all(_SPACED_LETTER.fullmatch(char) or not char.isalnum() for char in keyword)


def _listing(names: frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(names))

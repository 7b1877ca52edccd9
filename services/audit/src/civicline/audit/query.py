"""The auditors' query API, pure: which parameters each endpoint takes, how they are checked
(every mistake is a BadRequest with a message a person can act on), the SQL a filter becomes,
opaque keyset cursors, and what an access event records. No I/O here; api.py does it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from civicline.audit import merkle
from civicline.common.api_tokens import AUDITOR, OPERATOR

ROLES = (AUDITOR, OPERATOR)
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_TEXT = 512
ACCESS_KIND = "audit.access"
ERASURE_KIND = "audit.erasure"
RETENTION_KIND = "audit.retention"

_KIND = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


class BadRequest(ValueError):
    """A request the API refuses with 400; the message says what to change."""


# The query parameters each endpoint accepts; an unknown one is a 400, never ignored (a typo in
# a filter must not silently widen what an auditor sees). openapi.json documents the same.
EVENT_FILTERS = ("citizen", "kind", "intent", "since", "until", "correlation_id")
PARAMETERS: dict[str, tuple[str, ...]] = {
    "events": (*EVENT_FILTERS, "cursor", "limit"),
    "event": (),
    "tree_heads": ("cursor", "limit"),
    "consistency": ("first", "second"),
    "export": ("since", "until", "from_seq", "to_seq"),
    "conversations": ("citizen", "message", "intent", "since", "until", "cursor", "limit"),
    "erasures": (),
    "openapi": (),
}


def check_known(endpoint: str, names: Sequence[str]) -> None:
    """`names`: every query parameter name as sent, repeats included."""
    allowed = PARAMETERS[endpoint]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise BadRequest(f"unknown query parameter {unknown[0]!r} (accepted: {accepted})")
    for name in set(names):
        if names.count(name) > 1:
            raise BadRequest(f"query parameter {name!r} is given more than once")


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not value or len(value) > MAX_TEXT or "\x00" in value:
        raise BadRequest(f"{name} must be 1 to {MAX_TEXT} characters")
    return value


def parse_time(value: str, name: str) -> datetime:
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadRequest(
            f"{name} must be an RFC 3339 time with its offset, e.g. 2026-07-18T00:00:00Z"
        ) from None
    if instant.tzinfo is None:
        raise BadRequest(f"{name} must carry a UTC offset (e.g. Z), got {value!r}")
    try:
        utc = instant.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not 1970 <= utc.year <= 9998:
        raise BadRequest(f"{name} must be between 1970 and 9998")
    return utc


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    value = params.get(name)
    return None if value is None else parse_time(value, name)


def parse_int(value: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise BadRequest(f"{name} must be from {low} to {high}, got {number}")
    return number


MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What /v1/events (and /v1/conversations) select; `subject` is the citizen's pseudonym."""

    subject: bytes | None = None
    kind: str | None = None
    kind_prefix: str | None = None
    intent: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    correlation_ids: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """Names the filter inside a cursor, so a cursor is only accepted by its own query."""
        return hashlib.sha256(orjson.dumps(self.described())).hexdigest()[:16]

    def described(self) -> dict[str, Any]:
        """The filter as an access event records it: the citizen only as a pseudonym."""
        described: dict[str, Any] = {
            "subject": None if self.subject is None else self.subject.hex(),
            "kind": self.kind or (None if self.kind_prefix is None else self.kind_prefix + "*"),
            "intent": self.intent,
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "correlation_id": list(self.correlation_ids) or None,
        }
        return {name: value for name, value in described.items() if value is not None}

    def where(self, after: int) -> tuple[str, list[Any]]:
        """The WHERE clause (seq > after, then each filter) and its arguments."""
        clauses, args = self.clauses(after)
        return " AND ".join(clauses), args

    def clauses(self, after: int) -> tuple[list[str], list[Any]]:
        """Each condition (the first is seq > after) and the arguments they number."""
        clauses = ["seq > $1"]
        args: list[Any] = [after]

        def add(clause: str, value: Any) -> None:
            args.append(value)
            clauses.append(clause.format(f"${len(args)}"))

        if self.subject is not None:
            add("subjects @> ARRAY[{}::bytea]", self.subject)
        if self.kind is not None:
            add("kind = {}", self.kind)
        if self.kind_prefix is not None:
            add("starts_with(kind, {})", self.kind_prefix)
        if self.intent is not None:
            add("intent = {}", self.intent)
        if self.since is not None:
            add("occurred_at >= {}", self.since)
        if self.until is not None:
            add("occurred_at < {}", self.until)
        if len(self.correlation_ids) == 1:
            # Equality, so (correlation_id, seq) hands the rows over already in page order.
            add("correlation_id = {}", self.correlation_ids[0])
        elif self.correlation_ids:
            add("correlation_id = ANY({}::text[])", list(self.correlation_ids))
        return clauses, args


def page_sql(columns: str, selected: EventFilter, after: int, limit: int) -> tuple[str, list[Any]]:
    """The query of one page: the filter, keyset after a seq, one row more than the page to
    know whether another follows."""
    clauses, args = selected.clauses(after)
    page = f"ORDER BY seq LIMIT {int(limit) + 1}"
    if selected.subject is not None:
        # A citizen's events are taken from the GIN index as a set, then each is fetched by
        # its seq, in order. Left to itself the planner may walk the log in seq order testing
        # each row, betting the LIMIT stops it early; for a citizen with few events that reads
        # the whole log (measured: 586 ms median at 1M events; with the log partitioned by
        # month, a merge join over every month's primary key, 41 ms at 200,000). The lateral
        # join, kept from being flattened by its OFFSET 0, leaves it only lookups by seq
        # (2 ms). The cursor's seq > after stays outside the GIN scan, or the planner ANDs its
        # bitmap with a bitmap of the whole primary key; so do the other filters (a kind's
        # bitmap can hold a quarter of the log), tested on the few rows left.
        subject, *others = clauses[1:]
        assert subject.startswith("subjects @>"), clauses
        outer = " AND ".join([clauses[0], *others])
        # Each lookup names the event's month too, so only that month's index is read.
        sql = (
            "WITH matched AS MATERIALIZED ("  # noqa: S608 (filters are bound parameters)
            f"SELECT seq, recorded_at FROM audit_log WHERE {subject}) "
            "SELECT event.* FROM (SELECT seq, recorded_at FROM matched WHERE seq > $1 "
            "ORDER BY seq) AS m, "
            f"LATERAL (SELECT {columns} FROM audit_log WHERE audit_log.seq = m.seq "
            f"AND audit_log.recorded_at = m.recorded_at AND {outer} OFFSET 0) AS event "
            f"ORDER BY m.seq LIMIT {int(limit) + 1}"
        )
    else:
        sql = f"SELECT {columns} FROM audit_log WHERE {' AND '.join(clauses)} {page}"  # noqa: S608 (filters are bound parameters)
    return sql, args


Pseudonymise = Callable[[str], bytes]


def _subject(params: Mapping[str, str], pseudonymise: Pseudonymise | None) -> bytes | None:
    citizen = _text(params, "citizen")
    if citizen is None:
        return None
    if pseudonymise is None:
        raise BadRequest(
            "this log keeps no citizen pseudonyms (AUDIT_PSEUDONYM_KEY is not configured)"
        )
    return pseudonymise(citizen)


def _kind(params: Mapping[str, str]) -> str | None:
    kind = _text(params, "kind")
    if kind is not None and not _KIND.fullmatch(kind):
        raise BadRequest(f"kind must be a routing key such as message.voting, got {kind!r}")
    return kind


def _intent(params: Mapping[str, str]) -> str | None:
    intent = _text(params, "intent")
    if intent is not None and not _KIND.fullmatch(intent):
        raise BadRequest(f"intent must be a word such as report_abuse, got {intent!r}")
    return intent


def _range(params: Mapping[str, str]) -> tuple[datetime | None, datetime | None]:
    since, until = _time(params, "since"), _time(params, "until")
    if since is not None and until is not None and until <= since:
        raise BadRequest("until must be later than since")
    return since, until


def parse_event_filter(params: Mapping[str, str], pseudonymise: Pseudonymise | None) -> EventFilter:
    since, until = _range(params)
    correlation = _text(params, "correlation_id")
    intent = _intent(params)
    return EventFilter(
        subject=_subject(params, pseudonymise),
        kind=_kind(params),
        intent=intent,
        since=since,
        until=until,
        correlation_ids=() if correlation is None else (correlation,),
    )


def parse_conversation_filter(
    params: Mapping[str, str], pseudonymise: Pseudonymise | None
) -> EventFilter:
    """Inbound messages (`message.*`) of a citizen, of an intent, or the one with a message id
    (wamid): "every abuse report last week and the reply each got"."""
    subject = _subject(params, pseudonymise)
    message = _text(params, "message")
    intent = _intent(params)
    if subject is None and message is None and intent is None:
        raise BadRequest(
            "give citizen (a phone number or user id), intent (e.g. report_abuse) or message "
            "(a wamid)"
        )
    since, until = _range(params)
    return EventFilter(
        subject=subject,
        intent=intent,
        kind_prefix="message.",
        since=since,
        until=until,
        correlation_ids=() if message is None else (message,),
    )


def parse_limit(params: Mapping[str, str]) -> int:
    return parse_int(params.get("limit"), "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)


def encode_cursor(after: int, fingerprint: str) -> str:
    raw = orjson.dumps({"after": after, "query": fingerprint})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None, fingerprint: str) -> int:
    """The seq a page starts after (-1 for the first page)."""
    if value is None:
        return -1
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        document = orjson.loads(raw)
        after, query = document["after"], document["query"]
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise BadRequest("cursor is not one this API returned") from None
    if not isinstance(after, int) or isinstance(after, bool) or not -1 <= after <= MAX_SEQ:
        raise BadRequest("cursor is not one this API returned")
    if query != fingerprint:
        raise BadRequest("cursor belongs to another query: repeat the same filters with it")
    return after


@dataclass(frozen=True, slots=True)
class Page:
    rows: Sequence[Any]
    next_cursor: str | None


def page_of(rows: Sequence[Any], limit: int, fingerprint: str, seq: Callable[[Any], int]) -> Page:
    """`rows` were fetched with LIMIT limit + 1: the extra row says a next page exists."""
    if len(rows) <= limit:
        return Page(rows, None)
    kept = rows[:limit]
    return Page(kept, encode_cursor(seq(kept[-1]), fingerprint))


def parse_event_ref(value: str) -> int | uuid.UUID:
    """/v1/events/{ref}: a sequence number or an event id."""
    if value.isascii() and value.isdigit():
        return parse_int(value, "seq", default=0, low=0, high=MAX_SEQ)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(
            "an event is named by its seq (a number) or its event id (a UUID)"
        ) from None


@dataclass(frozen=True, slots=True)
class ConsistencyRequest:
    first: int
    second: int | None


def parse_consistency(params: Mapping[str, str]) -> ConsistencyRequest:
    if "first" not in params:
        raise BadRequest("first (the tree size of the head you hold) is required")
    first = parse_int(params.get("first"), "first", default=0, low=0, high=MAX_SEQ)
    second = None
    if "second" in params:
        second = parse_int(params.get("second"), "second", default=0, low=1, high=MAX_SEQ)
        if second < first:
            raise BadRequest("second must not be smaller than first")
    return ConsistencyRequest(first, second)


@dataclass(frozen=True, slots=True)
class ExportRange:
    """By recorded time (a day) or by seq; the seqs an export covers are one contiguous range."""

    since: datetime | None
    until: datetime | None
    from_seq: int | None
    to_seq: int | None

    def described(self) -> dict[str, Any]:
        described = {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
        }
        return {name: value for name, value in described.items() if value is not None}


def parse_export(params: Mapping[str, str]) -> ExportRange:
    since, until = _range(params)
    from_seq = to_seq = None
    if "from_seq" in params:
        from_seq = parse_int(params.get("from_seq"), "from_seq", default=0, low=0, high=MAX_SEQ)
    if "to_seq" in params:
        to_seq = parse_int(params.get("to_seq"), "to_seq", default=0, low=0, high=MAX_SEQ)
    if (since or until) and (from_seq is not None or to_seq is not None):
        raise BadRequest("export by time (since, until) or by seq (from_seq, to_seq), not both")
    if from_seq is not None and to_seq is not None and to_seq <= from_seq:
        raise BadRequest("to_seq must be greater than from_seq (it is exclusive)")
    return ExportRange(since, until, from_seq, to_seq)


def parse_erasure(body: bytes) -> str:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest(
            'the body must be JSON: {"citizen": "<phone number or user id>"}'
        ) from None
    if not isinstance(document, dict) or set(document) != {"citizen"}:
        raise BadRequest('the body must be {"citizen": "<phone number or user id>"}')
    citizen = document["citizen"]
    if not isinstance(citizen, str) or not citizen.strip() or len(citizen) > MAX_TEXT:
        raise BadRequest("citizen must be a phone number or a user id")
    return citizen


def past_retired(first: int, end: int, retired: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """An export's [first, end) moved past the retired months it starts in; a range that
    would still span a retired month is refused (their events are in their archive)."""
    for low, high in sorted(retired):
        if low <= first < high:
            first = high
    end = max(first, end)
    for low, high in sorted(retired):
        if low < end and first < high:
            raise BadRequest(
                f"events {low} to {high - 1} were retired with their month (see the "
                "audit.retention event): export the ranges before and after them"
            )
    return first, end


def range_proof(
    first: int, end: int, size: int, perfect: merkle.PerfectHash
) -> tuple[list[bytes], list[bytes]]:
    """What a verifier of leaves [first, end) needs besides them to rebuild the root of `size`
    leaves: the perfect subtrees left of the range and right of it (merkle.root_from_range)."""
    left = [perfect(level, index) for level, index in merkle.perfect_ranges(0, first)]
    right = [perfect(level, index) for level, index in merkle.perfect_ranges(end, size)]
    return left, right

"""The query API's pure parts: parameters checked with clear messages, filters as SQL, opaque
cursors bound to their query, and bearer tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from civicline.audit import query
from civicline.audit.query import BadRequest, EventFilter
from civicline.common.api_tokens import bearer_token, token_hash


def pseudonymise(citizen: str) -> bytes:
    return citizen.encode().rjust(32, b"\x00")[:32]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "yesterday"}, "RFC 3339"),
        ({"since": "2026-07-18T00:00:00"}, "UTC offset"),
        ({"since": "9999-12-31T23:59:59-23:59"}, "between"),
        ({"until": "0001-01-01T00:00:00+01:00"}, "between"),
        ({"since": "2026-07-18T00:00:00Z", "until": "2026-07-17T00:00:00Z"}, "later than"),
        ({"kind": "message voting"}, "routing key"),
        ({"kind": ""}, "1 to 512"),
        ({"intent": "Report Abuse!"}, "intent"),
        ({"correlation_id": "x" * 513}, "1 to 512"),
        ({"citizen": "bad\x00"}, "1 to 512"),
    ],
)
def test_bad_filters_say_what_to_change(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        query.parse_event_filter(params, pseudonymise)


def test_a_citizen_filter_without_pseudonyms_is_refused() -> None:
    with pytest.raises(BadRequest, match="AUDIT_PSEUDONYM_KEY"):
        query.parse_event_filter({"citizen": "8210"}, None)


@pytest.mark.parametrize("value", ["0", "1001", "-1", "ten", "1e3", "٣", "9" * 30])
def test_limits_are_checked(value: str) -> None:
    with pytest.raises(BadRequest, match="limit"):
        query.parse_limit({"limit": value})


def test_unknown_and_repeated_parameters_are_refused() -> None:
    with pytest.raises(BadRequest, match="unknown query parameter 'kinds'"):
        query.check_known("events", ["kinds"])
    with pytest.raises(BadRequest, match="more than once"):
        query.check_known("events", ["kind", "kind"])
    query.check_known("events", ["kind", "citizen", "cursor"])


def test_the_filter_becomes_sql_with_its_arguments() -> None:
    since = datetime(2026, 7, 18, tzinfo=UTC)
    selected = query.parse_event_filter(
        {"citizen": "+82 10", "kind": "message.voting", "since": "2026-07-18T00:00:00Z"},
        pseudonymise,
    )
    where, args = selected.where(41)
    assert where == (
        "seq > $1 AND subjects @> ARRAY[$2::bytea] AND kind = $3 AND occurred_at >= $4"
    )
    assert args == [41, pseudonymise("+82 10"), "message.voting", since]


def test_an_access_event_never_names_the_citizen() -> None:
    selected = query.parse_event_filter({"citizen": "821012345678"}, pseudonymise)
    assert "821012345678" not in str(selected.described())
    assert selected.described() == {"subject": pseudonymise("821012345678").hex()}


def test_cursors_round_trip_and_belong_to_their_query() -> None:
    one, other = EventFilter(kind="a.b"), EventFilter(kind="a.c")
    cursor = query.encode_cursor(99, one.fingerprint())
    assert query.decode_cursor(cursor, one.fingerprint()) == 99
    assert query.decode_cursor(None, one.fingerprint()) == -1
    with pytest.raises(BadRequest, match="another query"):
        query.decode_cursor(cursor, other.fingerprint())
    for forged in ["", "!!!", "e30", query.encode_cursor(99, "x")[:-3]]:
        with pytest.raises(BadRequest, match="cursor"):
            query.decode_cursor(forged, one.fingerprint())


def test_pages_end_when_no_row_is_left() -> None:
    full = query.page_of(list(range(11)), 10, "f", lambda row: row)
    assert full.rows == list(range(10))
    assert full.next_cursor is not None
    assert query.decode_cursor(full.next_cursor, "f") == 9
    last = query.page_of(list(range(10)), 10, "f", lambda row: row)
    assert last.next_cursor is None
    assert query.page_of([], 10, "f", lambda row: row).next_cursor is None


def test_export_ranges() -> None:
    assert query.parse_export({"from_seq": "5", "to_seq": "9"}).from_seq == 5
    with pytest.raises(BadRequest, match="not both"):
        query.parse_export({"since": "2026-07-18T00:00:00Z", "from_seq": "1"})
    with pytest.raises(BadRequest, match="greater"):
        query.parse_export({"from_seq": "5", "to_seq": "5"})


def test_consistency_needs_first() -> None:
    with pytest.raises(BadRequest, match="first"):
        query.parse_consistency({})
    with pytest.raises(BadRequest, match="smaller"):
        query.parse_consistency({"first": "5", "second": "4"})


@pytest.mark.parametrize(
    "body", [b"", b"[]", b'{"citizen": 5}', b'{"citizen": " "}', b'{"citizen": "1", "x": 1}']
)
def test_erasure_bodies(body: bytes) -> None:
    with pytest.raises(BadRequest, match="citizen"):
        query.parse_erasure(body)


def test_bearer_tokens() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
    assert len(token_hash("abc")) == 32


RETIRED = [(20, 40), (0, 20)]  # two months retired, listed in any order


@pytest.mark.parametrize(
    ("first", "end", "expected"),
    [
        (0, 100, (40, 100)),  # an export from the start begins after the retired months
        (25, 100, (40, 100)),
        (10, 15, (40, 40)),  # wholly inside them: nothing left to export
        (40, 100, (40, 100)),
        (60, 100, (60, 100)),
    ],
)
def test_an_export_starts_past_the_retired_months(
    first: int, end: int, expected: tuple[int, int]
) -> None:
    assert query.past_retired(first, end, RETIRED) == expected


def test_an_export_across_a_retired_month_is_refused() -> None:
    with pytest.raises(query.BadRequest, match="events 50 to 59 were retired"):
        query.past_retired(40, 100, [(50, 60)])

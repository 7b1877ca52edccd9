"""The verifier's verdicts on a log held in memory: clean, and each kind of tampering named at
the sequence number where it happened."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from civicline.audit import merkle
from civicline.audit.canonical import LogEntry, entry_leaf_hash
from civicline.audit.checkpoint import Checkpoint, Signer, sign_checkpoint
from civicline.audit.verify import (
    LogVerifier,
    Problem,
    RangeProof,
    RangeVerifier,
    Report,
    RetiredLeaf,
    StoredEntry,
    StoredHead,
    verify_entries,
)

SIGNER = Signer.generate("vote.example.gov/audit")
START = datetime(2026, 7, 18, 9, 0, tzinfo=UTC)
SIZE = 40
HEAD_SIZES = (10, 25, 40)


def entry(seq: int) -> LogEntry:
    return LogEntry(
        seq=seq,
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, str(seq)),
        kind="message.voting",
        occurred_at=START + timedelta(seconds=seq),
        recorded_at=START + timedelta(seconds=seq, microseconds=500),
        correlation_id=f"wamid.{seq}",
        schema_version=1,
        payload_json=f'{{"n":{seq}}}',
    )


def stored_log(size: int = SIZE) -> list[StoredEntry]:
    entries = [entry(seq) for seq in range(size)]
    return [StoredEntry(e, entry_leaf_hash(e)) for e in entries]


def head(log: list[StoredEntry], size: int, signer: Signer = SIGNER) -> StoredHead:
    root = merkle.root([s.leaf_hash or b"" for s in log[:size]])
    note = sign_checkpoint(Checkpoint(signer.name, size, root, START), signer)
    return StoredHead(size, root, note)


GENUINE = stored_log()
HEADS = [head(GENUINE, size) for size in HEAD_SIZES]


def verify(
    log: list[StoredEntry],
    heads: list[StoredHead] = HEADS,
    *,
    saved: tuple[str, ...] = (),
    next_seq: int | None = SIZE,
) -> Report:
    return verify_entries(SIGNER.verifier, heads, log, saved_checkpoints=saved, next_seq=next_seq)


def problems(report: Report) -> list[tuple[Problem, int]]:
    """The pinpointed findings (root mismatches they cause are listed apart)."""
    return [(f.problem, f.seq) for f in report.findings if f.problem is not Problem.ROOT_MISMATCH]


def moved(stored: StoredEntry, seq: int) -> StoredEntry:
    """A row renumbered by a superuser: content and stored leaf hash travel with it."""
    return StoredEntry(dataclasses.replace(stored.entry, seq=seq), stored.leaf_hash)


def test_a_clean_log_verifies() -> None:
    report = verify(GENUINE)
    assert report.ok, report.lines()
    assert report.verified_size == SIZE
    assert report.lines()[-1].startswith("OK: 40 events; 3 signed tree heads")


def test_events_after_the_last_head_are_fine_but_reported_as_unsigned() -> None:
    log = stored_log(45)
    report = verify(log, next_seq=45)
    assert report.ok
    assert report.verified_size == SIZE
    assert "the last 5 events are not yet covered" in report.lines()[-1]


def test_an_edited_payload_is_pinpointed() -> None:
    log = list(GENUINE)
    log[17] = StoredEntry(
        dataclasses.replace(log[17].entry, payload_json='{"n":1700}'), log[17].leaf_hash
    )
    report = verify(log)
    assert problems(report) == [(Problem.CHANGED, 17)]
    # Heads before the change still hold; those after it do not, and say why.
    assert report.verified_size == 10
    mismatches = [f for f in report.findings if f.problem is Problem.ROOT_MISMATCH]
    assert len(mismatches) == 2
    assert all("explained by the change at seq 17" in f.detail for f in mismatches)


def test_a_deleted_row_is_pinpointed() -> None:
    log = GENUINE[:12] + GENUINE[13:]
    report = verify(log)
    assert problems(report)[0] == (Problem.REMOVED, 12)
    assert "seq 12 removed" in str(report.findings[0])


def test_a_deleted_row_with_the_rest_renumbered_is_pinpointed() -> None:
    log = GENUINE[:12] + [moved(s, s.entry.seq - 1) for s in GENUINE[13:]]
    report = verify(log, next_seq=SIZE - 1)
    assert problems(report)[0] == (Problem.REMOVED, 12)
    assert "recorded one position later" in str(report.findings[0])


def test_swapped_rows_are_pinpointed() -> None:
    log = list(GENUINE)
    log[20], log[30] = moved(GENUINE[30], 20), moved(GENUINE[20], 30)
    report = verify(log)
    assert problems(report) == [(Problem.REORDERED, 20)]
    assert "seqs 20 and 30 were swapped" in str(report.findings[0])


def test_adjacent_swapped_rows_are_pinpointed() -> None:
    log = list(GENUINE)
    log[5], log[6] = moved(GENUINE[6], 5), moved(GENUINE[5], 6)
    assert problems(verify(log)) == [(Problem.REORDERED, 5)]


def test_a_forged_row_inserted_in_the_middle_is_pinpointed() -> None:
    forged_entry = dataclasses.replace(entry(22), payload_json='{"forged":true}')
    forged = StoredEntry(forged_entry, entry_leaf_hash(forged_entry))
    log = [*GENUINE[:22], forged, *(moved(s, s.entry.seq + 1) for s in GENUINE[22:])]
    report = verify(log, next_seq=SIZE + 1)
    assert problems(report) == [(Problem.INSERTED, 22)]
    assert "seq 22 was inserted" in str(report.findings[0])


def test_a_forged_row_past_the_end_is_pinpointed() -> None:
    forged_entry = entry(SIZE)
    log = [*GENUINE, StoredEntry(forged_entry, entry_leaf_hash(forged_entry))]
    assert problems(verify(log, next_seq=SIZE)) == [(Problem.INSERTED, SIZE)]


def test_a_cut_tail_is_detected_by_the_heads_that_covered_it() -> None:
    report = verify(GENUINE[:30], next_seq=30)
    assert problems(report) == [(Problem.TAIL_CUT, 30)]
    assert "covers 40 events, the log has 30" in str(report.findings[0])


def test_a_cut_tail_with_its_heads_is_detected_by_a_saved_checkpoint() -> None:
    report = verify(GENUINE[:30], HEADS[:2], saved=(HEADS[2].checkpoint,), next_seq=30)
    assert problems(report) == [(Problem.TAIL_CUT, 30)]
    assert "saved checkpoint #1" in str(report.findings[0])


def test_a_rewritten_history_is_caught_by_a_saved_checkpoint() -> None:
    # The operator rewrote seq 3 with a matching leaf hash and re-signed every head.
    log = list(GENUINE)
    rewritten = dataclasses.replace(log[3].entry, payload_json='{"n":"rewritten"}')
    log[3] = StoredEntry(rewritten, entry_leaf_hash(rewritten))
    resigned = [head(log, size) for size in HEAD_SIZES]
    assert verify(log, resigned).ok  # consistent with itself...
    report = verify(log, resigned, saved=(HEADS[0].checkpoint,))
    assert [f.problem for f in report.findings] == [Problem.ROOT_MISMATCH]
    assert "between seq 0 and seq 9" in report.findings[0].detail  # ...not with the auditor


def test_a_head_not_signed_by_the_key_is_rejected() -> None:
    forged = head(GENUINE, 25, Signer.generate(SIGNER.name))
    report = verify(GENUINE, [HEADS[0], forged, HEADS[2]])
    assert [(f.problem, f.seq) for f in report.findings] == [(Problem.BAD_SIGNATURE, 25)]


def test_a_head_whose_columns_disagree_with_its_checkpoint_is_rejected() -> None:
    altered = dataclasses.replace(HEADS[1], root_hash=HEADS[0].root_hash)
    report = verify(GENUINE, [HEADS[0], altered, HEADS[2]])
    assert [f.problem for f in report.findings] == [Problem.BAD_SIGNATURE]


def test_a_log_no_head_of_the_key_signed_fails() -> None:
    report = verify(GENUINE, [])
    assert [f.problem for f in report.findings] == [Problem.UNSIGNED]
    other = verify_entries(Signer.generate("x.example/log").verifier, HEADS, GENUINE)
    assert Problem.UNSIGNED in [f.problem for f in other.findings]


@pytest.mark.parametrize("size", [0, 1, 2])
def test_tiny_logs(size: int) -> None:
    log = stored_log(size)
    heads = [head(log, size)] if size else []
    assert verify(log, heads, next_seq=size).ok


# --- a range of the log (an export of one day) ------------------------------------------------


def verify_range(
    entries: list[StoredEntry],
    first: int,
    end: int,
    *,
    right: list[bytes] | None = None,
    heads: list[StoredHead] | None = None,
) -> Report:
    leaves = [s.leaf_hash or b"" for s in GENUINE]
    perfect = merkle.perfect_from_leaves(leaves)
    proof = RangeProof(
        SIZE,
        tuple(perfect(*piece) for piece in merkle.perfect_ranges(0, first)),
        tuple(right or [perfect(*piece) for piece in merkle.perfect_ranges(end, SIZE)]),
    )
    checker = RangeVerifier(SIGNER.verifier, heads or [HEADS[-1]], first, end, proof)
    for stored in entries:
        checker.add(stored)
    return checker.finish()


def test_a_range_verifies_against_a_signed_head_without_the_rest_of_the_log() -> None:
    report = verify_range(GENUINE[13:29], 13, 29)
    assert report.ok, report.lines()
    assert report.verified_size == SIZE
    assert report.lines()[-1].startswith("OK: events 13 to 28 (16 events) are proven")


def test_only_a_head_of_the_proofs_tree_size_proves_a_range() -> None:
    # A head of another size beside it is no evidence either way, not a mismatch.
    report = verify_range(GENUINE[13:29], 13, 29, heads=[HEADS[0], HEADS[-1]])
    assert report.ok, report.lines()
    assert report.verified_size == SIZE
    # Without one, the range is not proven, and the report does not call it tampered.
    alone = verify_range(GENUINE[13:29], 13, 29, heads=[HEADS[0]])
    assert problems(alone) == [(Problem.UNSIGNED, 0)]
    assert alone.verified_size == 0


def test_a_changed_or_missing_event_in_a_range_is_named() -> None:
    changed = list(GENUINE[13:29])
    changed[3] = StoredEntry(dataclasses.replace(changed[3].entry, kind="x"), changed[3].leaf_hash)
    assert problems(verify_range(changed, 13, 29)) == [(Problem.CHANGED, 16)]
    assert problems(verify_range(GENUINE[13:27], 13, 29)) == [(Problem.TAIL_CUT, 27)]
    gap = GENUINE[13:20] + GENUINE[21:29]
    assert problems(verify_range(gap, 13, 29))[0] == (Problem.REMOVED, 20)


def test_a_range_whose_leaves_and_hashes_were_rewritten_fails_at_the_root() -> None:
    rewritten = [StoredEntry(dataclasses.replace(s.entry, kind="x"), None) for s in GENUINE[13:29]]
    rewritten = [StoredEntry(s.entry, entry_leaf_hash(s.entry)) for s in rewritten]
    report = verify_range(rewritten, 13, 29)
    assert [f.problem for f in report.findings] == [Problem.ROOT_MISMATCH]
    assert not verify_range(GENUINE[13:29], 13, 29, right=[b"\x00" * 32] * 2).ok


# --- retired months -------------------------------------------------------------------------


def retention_at(
    seq: int,
    first: int,
    end: int,
    *,
    month: tuple[int | None, int | None] | None = None,
    before: Sequence[tuple[int, int]] = (),
) -> StoredEntry:
    """The audit.retention event that retires [first, end), logged at `seq`, after the ranges
    `before`; `month`: the seconds after START its month ran from and until (entry(n) is
    recorded at n s; None: unbounded), by default exactly [first, end)'s (from the log's start
    for 0)."""
    payload: dict[str, Any] = {"partition": "audit_log_2026_05", "first_seq": first}
    payload["end_seq"] = end
    payload["retired"] = [*map(list, before), [first, end]]
    low, high = month or (first or None, end)
    if low is not None:
        payload["recorded_from"] = (START + timedelta(seconds=low)).isoformat()
    if high is not None:
        payload["recorded_until"] = (START + timedelta(seconds=high)).isoformat()
    e = dataclasses.replace(
        entry(seq), kind="audit.retention", payload_json=orjson.dumps(payload).decode()
    )
    return StoredEntry(e, entry_leaf_hash(e))


def retired_log(
    first: int, end: int, *, named: bool = True, month: tuple[int | None, int | None] | None = None
) -> tuple[list[Any], list[StoredHead]]:
    """A log of 40 whose rows [first, end) are retired (leaves only) and whose last event,
    seq 39, names that range (or another one, if not `named`)."""
    event = retention_at(39, first, end, month=month) if named else retention_at(39, 0, 1)
    full = [*GENUINE[:39], event]
    heads = [head(full, size) for size in HEAD_SIZES]
    items: list[Any] = [
        RetiredLeaf(s.entry.seq, s.leaf_hash or b"") if first <= s.entry.seq < end else s
        for s in full
    ]
    return items, heads


def verify_retired(
    items: list[Any], heads: list[StoredHead], retired: list[tuple[int, int]]
) -> Report:
    checker = LogVerifier(SIGNER.verifier, heads, (), SIZE, retired)
    for item in items:
        checker.feed(item)
    return checker.finish()


def test_a_retired_month_named_by_its_retention_event_verifies_by_its_leaves() -> None:
    items, heads = retired_log(0, 20)
    report = verify_retired(items, heads, [(0, 20)])
    assert report.ok, report.lines()
    assert (report.retired, report.verified_size) == (20, SIZE)
    assert "20 of them are in retired months" in "\n".join(report.lines())


def test_a_retired_range_no_retention_event_names_is_a_removal() -> None:
    items, heads = retired_log(0, 20, named=False)
    assert problems(verify_retired(items, heads, [(0, 20)])) == [(Problem.REMOVED, 0)]


def test_a_leaf_without_its_row_outside_every_retired_range_is_a_removal() -> None:
    items, heads = retired_log(0, 20)
    items[25] = RetiredLeaf(25, GENUINE[25].leaf_hash or b"")
    assert problems(verify_retired(items, heads, [(0, 20)])) == [(Problem.REMOVED, 25)]


def test_a_retired_leaf_that_was_changed_breaks_the_heads() -> None:
    items, heads = retired_log(0, 20)
    items[7] = RetiredLeaf(7, bytes(32))
    report = verify_retired(items, heads, [(0, 20)])
    assert not report.ok
    assert {f.problem for f in report.findings} == {Problem.ROOT_MISMATCH}
    assert report.verified_size == 0


def test_a_retired_range_that_is_a_whole_month_verifies() -> None:
    items, heads = retired_log(5, 10, month=(5, 10))  # seqs 5-9 are all of that month
    report = verify_retired(items, heads, [(5, 10)])
    assert report.ok, report.lines()


@pytest.mark.parametrize("month", [(5, 20), (4, 10)])
def test_events_cut_out_of_a_month_and_called_retired_are_a_removal(
    month: tuple[int, int],
) -> None:
    """Seq 10 (or seq 4), kept, was recorded inside the month the event says was retired."""
    items, heads = retired_log(5, 10, month=month)
    assert problems(verify_retired(items, heads, [(5, 10)])) == [(Problem.REMOVED, 5)]


def test_a_retention_event_naming_later_events_is_an_insertion() -> None:
    full = [*GENUINE[:30], retention_at(30, 32, 35), *GENUINE[31:]]
    heads = [head(full, size) for size in HEAD_SIZES]
    items: list[Any] = [
        RetiredLeaf(s.entry.seq, s.leaf_hash or b"") if 32 <= s.entry.seq < 35 else s for s in full
    ]
    found = problems(verify_retired(items, heads, [(32, 35)]))
    assert (Problem.INSERTED, 30) in found
    assert (Problem.REMOVED, 32) in found


def test_overlapping_retired_ranges_are_a_removal() -> None:
    items, heads = retired_log(0, 20)
    assert (Problem.REMOVED, 10) in problems(verify_retired(items, heads, [(0, 20), (10, 20)]))


@pytest.mark.parametrize(
    "month",
    [
        (5, None),  # no end: nothing to check the event kept after it against
        (None, 10),  # "from the log's start", for a range that begins at seq 5
    ],
)
def test_a_retention_event_without_its_months_bounds_names_nothing(
    month: tuple[int | None, int | None],
) -> None:
    # Only the owner can append one (the bus refuses audit.* kinds), but a log must not take
    # a month's word for it: without bounds, any one event could be called a retired month.
    items, heads = retired_log(5, 10, month=month)
    assert problems(verify_retired(items, heads, [(5, 10)])) == [
        (Problem.REMOVED, 5),
        (Problem.CHANGED, 39),
    ]


def retire(full: list[StoredEntry], *ranges: tuple[int, int]) -> list[Any]:
    """`full` with the rows in `ranges` retired: their leaves only."""
    return [
        RetiredLeaf(s.entry.seq, s.leaf_hash or b"")
        if any(first <= s.entry.seq < end for first, end in ranges)
        else s
        for s in full
    ]


def test_months_retired_one_after_another_verify() -> None:
    first = retention_at(30, 0, 5)
    second = retention_at(39, 10, 20, before=[(0, 5)])
    full = [*GENUINE[:30], first, *GENUINE[31:39], second]
    heads = [head(full, size) for size in HEAD_SIZES]
    items = retire(full, (0, 5), (10, 20))
    report = verify_retired(items, heads, [(0, 5), (10, 20)])
    assert report.ok, report.lines()

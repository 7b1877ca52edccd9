"""Independent verification of an audit log: pure, fed row by row from any source.

With only the log's public key, `LogVerifier` recomputes every leaf from what is stored, rebuilds
the RFC 6962 tree, checks every stored tree head's signature and root and every checkpoint an
auditor saved earlier, and says exactly what differs: which sequence number was changed,
removed, inserted or reordered, or that the tail was cut. Memory stays O(log n) plus the rows
that do not match.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from civicline.audit.canonical import LogEntry, entry_leaf_hash
from civicline.audit.checkpoint import Checkpoint, CheckpointError, Verifier, open_checkpoint
from civicline.audit.merkle import CompactRange, ProofError, perfect_ranges
from civicline.audit.query import RETENTION_KIND

# Rows whose stored leaf hash disagrees with their content are kept to explain them; past this
# many the log is plainly rewritten wholesale and the rest are only counted.
MAX_EXPLAINED = 10_000


class Problem(StrEnum):
    CHANGED = "changed"
    REMOVED = "removed"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TAIL_CUT = "tail_cut"
    ROOT_MISMATCH = "root_mismatch"
    BAD_SIGNATURE = "bad_signature"
    UNSIGNED = "unsigned"


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    seq: int
    problem: Problem
    detail: str

    def __str__(self) -> str:
        return f"{self.problem.value.upper()}: {self.detail}"


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One row as read back: its content and the leaf hash stored beside it (None if absent)."""

    entry: LogEntry
    leaf_hash: bytes | None


@dataclass(frozen=True, slots=True)
class RetiredLeaf:
    """An event of a retired month: its row was detached and archived, its leaf hash kept."""

    seq: int
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class StoredHead:
    tree_size: int
    root_hash: bytes
    checkpoint: str


@dataclass(frozen=True, slots=True)
class Report:
    events: int
    verified_size: int
    heads_checked: int
    saved_checked: int
    findings: tuple[Finding, ...]
    first_seq: int = 0
    ranged: bool = False  # a range export: it verifies [first_seq, first_seq + events)
    retired: int = 0  # events counted by their leaf alone: their month was retired

    @property
    def ok(self) -> bool:
        return not self.findings

    def lines(self) -> list[str]:
        result = [str(finding) for finding in self.findings]
        verdict = "OK" if self.ok else f"FAILED ({len(self.findings)} problems)"
        if self.ranged:
            end = self.first_seq + self.events
            proven = "proven" if self.verified_size else "NOT proven"
            result.append(
                f"{verdict}: events {self.first_seq} to {end - 1} ({self.events} events) are "
                f"{proven} by the signed tree head of {self.verified_size or '?'} events"
            )
            return result
        result.append(
            f"{verdict}: {self.events} events; {self.heads_checked} signed tree heads and "
            f"{self.saved_checked} saved checkpoints checked; the first {self.verified_size} "
            "events are proven by a signed tree head"
        )
        if self.retired:
            result.append(
                f"note: {self.retired} of them are in retired months: their leaves are checked, "
                "their content is in the archived exports the audit.retention events name"
            )
        unsigned = self.events - self.verified_size
        if self.ok and unsigned > 0:
            result.append(f"note: the last {unsigned} events are not yet covered by a tree head")
        return result


@dataclass(slots=True)
class _Target:
    """A root the log must reproduce at `size`: a stored head or an auditor's checkpoint."""

    size: int
    root_hash: bytes
    label: str


@dataclass(slots=True)
class LogVerifier:
    """Feed it every row in seq order with `add`, then `finish` for the report."""

    verifier: Verifier
    heads: Sequence[StoredHead]
    saved_checkpoints: Sequence[str] = ()
    next_seq: int | None = None
    # [first, end) ranges whose rows the source says were retired: fed by `add_retired`, and
    # each must be named by an audit.retention event of the log itself.
    retired: Sequence[tuple[int, int]] = ()
    _findings: list[Finding] = field(default_factory=list, init=False)
    _named: set[tuple[int, int]] = field(default_factory=set, init=False)
    _months: dict[tuple[int, int], Retention] = field(default_factory=dict, init=False)
    _edges: frozenset[int] = field(default=frozenset(), init=False)  # kept seqs beside them
    _beside: dict[int, datetime] = field(default_factory=dict, init=False)
    _retired_seen: int = field(default=0, init=False)
    _targets: list[_Target] = field(default_factory=list, init=False)
    _roots: dict[int, bytes] = field(default_factory=dict, init=False)
    _tree: CompactRange = field(default_factory=CompactRange, init=False)
    _expected: int = field(default=0, init=False)
    _broken_at: int | None = field(default=None, init=False)
    _mismatched: dict[int, StoredEntry] = field(default_factory=dict, init=False)
    _unexplained: int = field(default=0, init=False)
    _heads_ok: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._edges = frozenset(s for first, end in self.retired for s in (first - 1, end))
        for head in self.heads:
            label = f"stored tree head of size {head.tree_size}"
            checkpoint = self._open(head.checkpoint, label, head.tree_size)
            if checkpoint is None:
                continue
            if (checkpoint.tree_size, checkpoint.root_hash) != (head.tree_size, head.root_hash):
                self._add(
                    head.tree_size,
                    Problem.BAD_SIGNATURE,
                    f"{label}: its columns say size {head.tree_size} root "
                    f"{head.root_hash.hex()}, its signed checkpoint says size "
                    f"{checkpoint.tree_size} root {checkpoint.root_hash.hex()}",
                )
                continue
            self._targets.append(_Target(head.tree_size, head.root_hash, label))
            self._heads_ok += 1
        for number, note in enumerate(self.saved_checkpoints, 1):
            label = f"saved checkpoint #{number}"
            checkpoint = self._open(note, label, None)
            if checkpoint is not None:
                size = checkpoint.tree_size
                self._targets.append(_Target(size, checkpoint.root_hash, f"{label} (size {size})"))

    def _open(self, note: str, label: str, size: int | None) -> Checkpoint | None:
        try:
            return open_checkpoint(note, self.verifier)
        except CheckpointError as exc:
            self._add(size or 0, Problem.BAD_SIGNATURE, f"{label}: {exc}")
            return None

    def _add(self, seq: int, problem: Problem, detail: str) -> None:
        self._findings.append(Finding(seq, problem, detail))

    def _arrive(self, seq: int) -> bool:
        """Note a gap or a step back before `seq`; False if it is to be skipped."""
        if seq < self._expected:
            self._add(
                seq, Problem.REORDERED, f"seq {seq} appears again after seq {self._expected - 1}"
            )
            if self._broken_at is None or seq < self._broken_at:
                self._broken_at = seq
            return False
        if seq > self._expected:
            missing = (
                f"seq {self._expected}"
                if seq == self._expected + 1
                else f"seqs {self._expected} to {seq - 1}"
            )
            self._add(self._expected, Problem.REMOVED, f"{missing} removed (the log has a gap)")
            if self._broken_at is None:
                self._broken_at = self._expected
            self._expected = seq
        return True

    def _grow(self, seq: int, leaf: bytes) -> None:
        self._expected = seq + 1
        if self._broken_at is None:
            self._tree.append(leaf)
            self._roots_at_targets()

    def add(self, stored: StoredEntry) -> None:
        """Feed the next row, in the order the source keeps them (by seq)."""
        seq = stored.entry.seq
        if not self._arrive(seq):
            return
        leaf = entry_leaf_hash(stored.entry)
        if stored.leaf_hash != leaf:
            if len(self._mismatched) < MAX_EXPLAINED:
                self._mismatched[seq] = stored
            else:
                self._unexplained += 1
        elif stored.entry.kind == RETENTION_KIND:
            self._note_retention(seq, stored.entry)
        if seq in self._edges:
            self._beside[seq] = stored.entry.recorded_at
        self._grow(seq, leaf)

    def _note_retention(self, seq: int, entry: LogEntry) -> None:
        said = retention(entry.payload_json)
        if said is None:
            self._add(seq, Problem.CHANGED, f"seq {seq}: an audit.retention event names no range")
            return
        later = [r for r in said.retired if r[1] > seq]
        if later:
            self._add(
                seq,
                Problem.INSERTED,
                f"the audit.retention event at seq {seq} names events recorded after it "
                f"(seqs {later[0][0]} to {later[0][1] - 1})",
            )
            return
        # A month's bounds are what keep one event from being cut out and passed off as a
        # retired month (`_check_retired_ranges`): `retire` always writes them, and only the
        # legacy partition, the log's start, has no lower one.
        if said.recorded_until is None or (said.recorded_from is None and said.first_seq != 0):
            self._add(
                seq,
                Problem.CHANGED,
                f"the audit.retention event at seq {seq} does not say which month it retired",
            )
            return
        # The ranges retired before, which it lists too, are taken by name: the events that
        # retired them may be gone with a month retired since (one retired in March lives in
        # March), so their bounds cannot always be read.
        self._named.update(said.retired)
        self._months[said.first_seq, said.end_seq] = said

    def feed(self, item: StoredEntry | RetiredLeaf) -> None:
        """`add` a row or `add_retired` a leaf, whichever the source gave."""
        if isinstance(item, RetiredLeaf):
            self.add_retired(item)
        else:
            self.add(item)

    def add_retired(self, retired: RetiredLeaf) -> None:
        """Feed the leaf of an event whose row was retired with its month, in seq order among
        the rows. Only its leaf hash remains, so the tree is checked, not the content."""
        if not any(first <= retired.seq < end for first, end in self.retired):
            self._add(
                retired.seq,
                Problem.REMOVED,
                f"seq {retired.seq} has a leaf hash but no row, outside every retired range",
            )
            if self._broken_at is None:
                self._broken_at = retired.seq
            self._expected = max(self._expected, retired.seq + 1)
            return
        if not self._arrive(retired.seq):
            return
        self._retired_seen += 1
        self._grow(retired.seq, retired.leaf_hash)

    def _roots_at_targets(self) -> None:
        size = self._tree.size
        if any(target.size == size for target in self._targets):
            self._roots[size] = self._tree.root()

    def finish(self) -> Report:
        self._explain_mismatches()
        self._check_retired_ranges()
        events = self._expected
        if self.next_seq is not None and self.next_seq > events:
            self._add(
                events,
                Problem.TAIL_CUT,
                f"the tail was cut: the log state counts {self.next_seq} events, the rows end "
                f"at seq {events - 1}",
            )
        elif self.next_seq is not None and self.next_seq < events:
            self._add(
                self.next_seq,
                Problem.INSERTED,
                f"seqs {self.next_seq} to {events - 1} were inserted past the log's end "
                f"(the log state counts {self.next_seq} events)",
            )
        verified = 0
        matched: list[int] = []
        pinpointed = sorted(f.seq for f in self._findings if f.problem is not Problem.BAD_SIGNATURE)
        for target in sorted(self._targets, key=lambda t: t.size):
            if target.size > events:
                self._add(
                    events,
                    Problem.TAIL_CUT,
                    f"the tail was cut: {target.label} covers {target.size} events, the log "
                    f"has {events} (seqs {events} to {target.size - 1} are gone)",
                )
                continue
            if target.size == 0:
                continue
            if self._roots.get(target.size) == target.root_hash:
                verified = max(verified, target.size)
                matched.append(target.size)
                continue
            earlier = [seq for seq in pinpointed if seq < target.size]
            if earlier:
                seq, cause = earlier[0], f"explained by the change at seq {earlier[0]} above"
            else:
                seq = max((size for size in matched if size < target.size), default=0)
                cause = (
                    f"a leaf between seq {seq} and seq {target.size - 1} was rewritten together "
                    "with its stored leaf hash, or the tree head was signed over another history"
                )
            self._add(seq, Problem.ROOT_MISMATCH, f"{target.label} does not match the log: {cause}")
        if self._heads_ok == 0 and events > 0:
            self._add(
                0,
                Problem.UNSIGNED,
                f"no stored tree head is signed by {self.verifier.name} "
                f"({self.verifier.key_id.hex()}): nothing proves this log",
            )
        return Report(
            events=events,
            verified_size=verified,
            heads_checked=len(self.heads),
            saved_checked=len(self.saved_checkpoints),
            findings=tuple(sorted(self._findings)),
            retired=self._retired_seen,
        )

    def _check_retired_ranges(self) -> None:
        """Every range said to be retired is named by an audit.retention event of the log, the
        ranges do not overlap, and each is a whole month: the events kept on either side were
        recorded outside the month its event names, so no single event can be cut out and
        passed off as a retired month."""
        claimed = sorted(set(self.retired))
        for (_, end), (first, _) in itertools.pairwise(claimed):
            if first < end:
                self._add(first, Problem.REMOVED, f"retired ranges overlap at seq {first}")
        for first, end in claimed:
            problem = None
            if (first, end) not in self._named:
                problem = "no audit.retention event of the log names that range"
            elif (month := self._months.get((first, end))) is not None:
                before, after = self._beside.get(first - 1), self._beside.get(end)
                if (
                    before is not None
                    and month.recorded_from is not None
                    and (before >= month.recorded_from)
                ):
                    problem = f"seq {first - 1}, kept, was recorded inside that month"
                elif (
                    after is not None
                    and month.recorded_until is not None
                    and (after < month.recorded_until)
                ):
                    problem = f"seq {end}, kept, was recorded inside that month"
            if problem is not None:
                self._add(
                    first,
                    Problem.REMOVED,
                    f"seqs {first} to {end - 1} are missing, said to be retired, but {problem}",
                )
                if self._broken_at is None or first < self._broken_at:
                    self._broken_at = first

    def _explain_mismatches(self) -> None:
        """Say what each row whose content no longer matches its stored leaf hash is: a row
        moved from another seq (its content still hashes to its leaf at that seq) or changed."""
        origin: dict[int, int] = {}
        for seq, stored in self._mismatched.items():
            candidates = [seq - 1, seq + 1, *self._mismatched]
            for candidate in candidates:
                if candidate < 0 or candidate == seq or stored.leaf_hash is None:
                    continue
                moved = dataclasses.replace(stored.entry, seq=candidate)
                if entry_leaf_hash(moved) == stored.leaf_hash:
                    origin[seq] = candidate
                    break
        reported: set[int] = set()
        for run_start, run_end, offset in _runs(origin):
            if offset == -1:
                inserted = run_start - 1
                reported.update(range(inserted, run_end))
                self._add(
                    inserted,
                    Problem.INSERTED,
                    f"seq {inserted} was inserted: the events now at seqs {run_start} to "
                    f"{run_end - 1} were recorded one position earlier",
                )
            elif offset == 1:
                reported.update(range(run_start, run_end))
                self._add(
                    run_start,
                    Problem.REMOVED,
                    f"seq {run_start} was removed: the events now at seqs {run_start} to "
                    f"{run_end - 1} were recorded one position later",
                )
        for seq, source in sorted(origin.items()):
            if seq in reported:
                continue
            if origin.get(source) == seq:
                reported.update((seq, source))
                self._add(
                    min(seq, source),
                    Problem.REORDERED,
                    f"seqs {min(seq, source)} and {max(seq, source)} were swapped",
                )
            else:
                reported.add(seq)
                self._add(
                    seq,
                    Problem.REORDERED,
                    f"the event at seq {seq} was recorded at seq {source}",
                )
        for seq, stored in sorted(self._mismatched.items()):
            if seq in reported:
                continue
            what = "no stored leaf hash" if stored.leaf_hash is None else "its stored leaf hash"
            self._add(
                seq,
                Problem.CHANGED,
                f"seq {seq} (event {stored.entry.event_id}) was changed: its content no longer "
                f"matches {what}",
            )
        if self._unexplained:
            self._add(
                max(self._mismatched, default=0),
                Problem.CHANGED,
                f"{self._unexplained} more rows no longer match their stored leaf hashes",
            )


@dataclass(frozen=True, slots=True)
class Retention:
    """What an audit.retention event says: the range it retired, recorded from `recorded_from`
    (None: the start of the log) until `recorded_until`, and every range retired so far."""

    first_seq: int
    end_seq: int
    recorded_from: datetime | None
    recorded_until: datetime | None
    retired: tuple[tuple[int, int], ...]


def _seq_range(value: Any) -> tuple[int, int] | None:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    ):
        return value[0], value[1]
    return None


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def retention(payload_json: str | None) -> Retention | None:
    """An audit.retention event's payload, read; None if it is not one."""
    try:
        payload = orjson.loads(payload_json or "")
        own = _seq_range([payload["first_seq"], payload["end_seq"]])
    except (ValueError, TypeError, KeyError):
        return None
    if own is None:
        return None
    listed = payload.get("retired") or [list(own)]
    ranges = tuple(r for r in map(_seq_range, listed) if r is not None)
    return Retention(
        own[0],
        own[1],
        _instant(payload.get("recorded_from")),
        _instant(payload.get("recorded_until")),
        tuple(sorted({*ranges, own})),
    )


def _runs(origin: dict[int, int]) -> Iterable[tuple[int, int, int]]:
    """Maximal runs of consecutive seqs moved by the same offset of ±1, as (start, end, offset);
    a run of one whose partner moved back the other way is a swap, not a run."""
    seqs = sorted(s for s, o in origin.items() if abs(o - s) == 1 and origin.get(o) != s)
    start: int | None = None
    run_offset = 0
    for position, seq in enumerate(seqs):
        offset = origin[seq] - seq
        if start is None:
            start, run_offset = seq, offset
        nxt = seqs[position + 1] if position + 1 < len(seqs) else None
        if nxt is None or nxt != seq + 1 or origin[nxt] - nxt != run_offset:
            yield start, seq + 1, run_offset
            start = None


@dataclass(frozen=True, slots=True)
class RangeProof:
    """The perfect subtrees left and right of an exported range, in the tree of `tree_size`."""

    tree_size: int
    left: tuple[bytes, ...]
    right: tuple[bytes, ...]


@dataclass(slots=True)
class RangeVerifier:
    """Verifies a contiguous slice of the log, [first_seq, end_seq) — an export of one day —
    against a signed head: every leaf recomputed, then the head's root rebuilt from them and
    the range proof (merkle.root_from_range). Memory O(log n), like LogVerifier."""

    verifier: Verifier
    heads: Sequence[StoredHead]
    first_seq: int
    end_seq: int
    proof: RangeProof | None
    saved_checkpoints: Sequence[str] = ()
    _findings: list[Finding] = field(default_factory=list, init=False)
    _expected: int = field(default=0, init=False)
    _tree: CompactRange | None = field(default=None, init=False)
    _broken: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._expected = self.first_seq
        if self.proof is not None:
            if len(self.proof.left) != self.first_seq.bit_count():
                self._add(self.first_seq, Problem.ROOT_MISMATCH, "the range proof is malformed")
            else:
                self._tree = CompactRange(self.first_seq, list(self.proof.left))

    def _add(self, seq: int, problem: Problem, detail: str) -> None:
        self._findings.append(Finding(seq, problem, detail))
        self._broken = True

    def add(self, stored: StoredEntry) -> None:
        seq = stored.entry.seq
        if seq != self._expected:
            problem = Problem.REMOVED if seq > self._expected else Problem.REORDERED
            self._add(
                self._expected, problem, f"seq {seq} found where seq {self._expected} belongs"
            )
            self._expected = max(self._expected, seq + 1)
            return
        leaf = entry_leaf_hash(stored.entry)
        if stored.leaf_hash != leaf:
            self._add(
                seq,
                Problem.CHANGED,
                f"seq {seq} (event {stored.entry.event_id}) was changed: its content no longer "
                "matches its stored leaf hash",
            )
        if self._tree is not None:
            self._tree.append(leaf)
        self._expected = seq + 1

    def finish(self) -> Report:
        if self._expected < self.end_seq:
            self._add(
                self._expected,
                Problem.TAIL_CUT,
                f"the export stops at seq {self._expected - 1}; its header says it holds seqs "
                f"up to {self.end_seq - 1}",
            )
        verified = 0
        roots: list[tuple[str, bytes]] = []
        for head in self.heads:
            try:
                checkpoint = open_checkpoint(head.checkpoint, self.verifier)
            except CheckpointError as exc:
                self._add(head.tree_size, Problem.BAD_SIGNATURE, f"tree head: {exc}")
                continue
            # Only a head of the proof's tree covers the range; one of another size is not
            # evidence either way (the export's header names the one it was made against).
            if self.proof is not None and checkpoint.tree_size == self.proof.tree_size:
                roots.append(
                    (f"signed tree head of size {checkpoint.tree_size}", checkpoint.root_hash)
                )
        for number, note in enumerate(self.saved_checkpoints, 1):
            try:
                checkpoint = open_checkpoint(note, self.verifier)
            except CheckpointError as exc:
                self._add(0, Problem.BAD_SIGNATURE, f"saved checkpoint #{number}: {exc}")
                continue
            if self.proof is not None and checkpoint.tree_size == self.proof.tree_size:
                roots.append((f"saved checkpoint #{number}", checkpoint.root_hash))
        if self.proof is None or not roots:
            self._add(
                0,
                Problem.UNSIGNED,
                "no signed tree head of the range proof's tree size covers this range",
            )
        elif not self._broken and self._tree is not None:
            tree = self._tree
            try:
                for (level, _), element in zip(
                    perfect_ranges(self.end_seq, self.proof.tree_size),
                    self.proof.right,
                    strict=True,
                ):
                    tree.append_subtree(level, element)
                root = tree.root()
            except (ValueError, ProofError):
                root = b""
            for label, expected in roots:
                if root != expected:
                    self._add(
                        self.first_seq,
                        Problem.ROOT_MISMATCH,
                        f"{label} does not match these events and the range proof",
                    )
            if not self._broken:
                verified = self.proof.tree_size
        return Report(
            events=self._expected - self.first_seq,
            verified_size=verified,
            heads_checked=len(self.heads),
            saved_checked=len(self.saved_checkpoints),
            findings=tuple(sorted(self._findings)),
            first_seq=self.first_seq,
            ranged=True,
        )


def verify_entries(
    verifier: Verifier,
    heads: Sequence[StoredHead],
    entries: Iterable[StoredEntry],
    *,
    saved_checkpoints: Sequence[str] = (),
    next_seq: int | None = None,
) -> Report:
    checker = LogVerifier(verifier, heads, saved_checkpoints, next_seq)
    for stored in entries:
        checker.add(stored)
    return checker.finish()

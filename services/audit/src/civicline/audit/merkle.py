"""The RFC 6962 Merkle tree (RFC 9162 §2.1): hashing, roots, inclusion and consistency proofs.

Pure functions, no I/O. Proof generation works on ranges of leaves: a proof is a list of
subtree hashes, each the hash of a range [start, end) that this module names, and the caller
supplies the hash of any *perfect* subtree (2**level leaves starting at a multiple of 2**level),
from memory or from storage. So a proof for a log of millions of leaves needs only the
O(log n) perfect subtrees it names, never a rehash of the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

# Hash of the perfect subtree with 2**level leaves starting at leaf index * 2**level.
PerfectHash = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof that does not verify, or a request for a proof that cannot exist."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(size: int) -> int:
    """The largest power of two smaller than `size` (size > 1): RFC 6962's k."""
    return 1 << ((size - 1).bit_length() - 1)


def perfect_ranges(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) as the aligned perfect subtrees (level, index) it is made of, left to right.

    Every range a proof names is of this kind: it starts at a multiple of the largest power of
    two that fits into it, so the decomposition is the binary expansion of its size.
    """
    pieces: list[tuple[int, int]] = []
    while start < end:
        level = (end - start).bit_length() - 1
        alignment = (start & -start).bit_length() - 1 if start else level
        level = min(level, alignment)
        pieces.append((level, start >> level))
        start += 1 << level
    return pieces


def range_hash(start: int, end: int, perfect: PerfectHash) -> bytes:
    """MTH of leaves [start, end), from the perfect subtrees it decomposes into."""
    if start >= end:
        raise ProofError(f"empty range [{start}, {end})")
    pieces = perfect_ranges(start, end)
    result = perfect(*pieces[-1])
    for level, index in reversed(pieces[:-1]):
        result = node_hash(perfect(level, index), result)
    return result


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a list of leaf hashes, exactly as RFC 6962 §2.1 defines it."""
    if not leaf_hashes:
        return EMPTY_ROOT
    builder = CompactRange()
    for leaf in leaf_hashes:
        builder.append(leaf)
    return builder.root()


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose hashes make the audit path of leaf `index` in a tree of `size`
    (RFC 6962 §2.1.1 PATH), bottom-up."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The ranges whose hashes make the consistency proof between trees of sizes `first` and
    `second` (RFC 6962 §2.1.2 SUBPROOF), in proof order."""
    if not 0 <= first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    ranges: list[tuple[int, int]] = []
    start, end, complete = 0, second, True
    m = first
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
            complete = False
    if not complete:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, size: int, perfect: PerfectHash) -> list[bytes]:
    return [range_hash(s, e, perfect) for s, e in inclusion_ranges(index, size)]


def consistency_proof(first: int, second: int, perfect: PerfectHash) -> list[bytes]:
    return [range_hash(s, e, perfect) for s, e in consistency_ranges(first, second)]


def perfect_from_leaves(leaf_hashes: Sequence[bytes]) -> PerfectHash:
    """A PerfectHash over leaves held in memory (tests, small trees)."""

    def perfect(level: int, index: int) -> bytes:
        width = 1 << level
        return root(leaf_hashes[index * width : (index + 1) * width])

    return perfect


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` leads to from `leaf` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    _check_hash("leaf hash", leaf)
    fn, sn, result = index, size - 1, leaf
    for position, sibling in enumerate(proof):
        _check_hash(f"proof[{position}]", sibling)
        if sn == 0:
            raise ProofError("proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the tree is high")
    return result


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Raise ProofError unless `proof` shows leaf `index` of the tree of `size` is `leaf`."""
    _check_hash("root", expected_root)
    if root_from_inclusion_proof(index, size, leaf, proof) != expected_root:
        raise ProofError("inclusion proof does not lead to the expected root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless `proof` shows the tree of `first` leaves with `first_root` is a
    prefix of the tree of `second` leaves with `second_root` (RFC 9162 §2.1.4.2)."""
    _check_hash("first root", first_root)
    _check_hash("second root", second_root)
    if not 0 <= first <= second:
        raise ProofError(f"size {second} is smaller than size {first}: the log shrank")
    if first == second or first == 0:
        if proof:
            raise ProofError("a consistency proof for these sizes must be empty")
        if first == second and first_root != second_root:
            raise ProofError("same size, different roots")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    for position, element in enumerate(proof):
        _check_hash(f"proof[{position}]", element)
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for element in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(element, fr)
            sr = node_hash(element, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != first_root:
        raise ProofError("consistency proof does not lead to the first root")
    if sr != second_root:
        raise ProofError("consistency proof does not lead to the second root")


def root_from_range(
    first: int, leaves: Sequence[bytes], left: Sequence[bytes], right: Sequence[bytes], size: int
) -> bytes:
    """The root of the tree of `size` leaves whose leaves [first, first + len(leaves)) are
    `leaves`, given the perfect subtrees left of them (`perfect_ranges(0, first)`, largest
    first) and right of them (`perfect_ranges(end, size)`, in order): a contiguous slice of
    the log, a day say, is then verified against a signed head without the rest of the log."""
    end = first + len(leaves)
    if not 0 <= first <= end <= size:
        raise ProofError(f"leaves [{first}, {end}) are not in a tree of size {size}")
    if len(left) != first.bit_count():
        raise ProofError(f"{len(left)} left hashes, {first.bit_count()} expected")
    pieces = perfect_ranges(end, size)
    if len(right) != len(pieces):
        raise ProofError(f"{len(right)} right hashes, {len(pieces)} expected")
    for position, element in enumerate([*left, *right]):
        _check_hash(f"range proof[{position}]", element)
    tree = CompactRange(first, list(left))
    for leaf in leaves:
        tree.append(leaf)
    for (level, _), element in zip(pieces, right, strict=True):
        tree.append_subtree(level, element)
    return tree.root()


@dataclass(frozen=True, slots=True)
class Subtree:
    """A perfect subtree completed by an append: 2**level leaves from index * 2**level."""

    level: int
    index: int
    hash: bytes


@dataclass(slots=True)
class CompactRange:
    """The right edge of a tree of `size` leaves: one hash per set bit of `size`, largest
    (leftmost) first. Appending a leaf merges equal-sized subtrees like a binary counter, so
    the whole tree is carried in at most 64 hashes and every completed subtree is seen once."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    @classmethod
    def decode(cls, size: int, frontier: bytes) -> CompactRange:
        count = size.bit_count()
        if len(frontier) != count * HASH_SIZE:
            raise ValueError(
                f"a frontier for {size} leaves holds {count} hashes, got {len(frontier)} bytes"
            )
        hashes = [frontier[i : i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)]
        return cls(size, hashes)

    def encode(self) -> bytes:
        return b"".join(self.hashes)

    def append(self, leaf: bytes) -> list[Subtree]:
        """Add one leaf hash; returns the perfect subtrees of two or more leaves it completed."""
        completed: list[Subtree] = []
        current = leaf
        level = 0
        position = self.size
        while position & 1:
            current = node_hash(self.hashes.pop(), current)
            level += 1
            position >>= 1
            completed.append(Subtree(level, position, current))
        self.hashes.append(current)
        self.size += 1
        return completed

    def append_subtree(self, level: int, subtree_hash: bytes) -> None:
        """Add the hash of a perfect subtree of 2**level leaves that starts at `size` (which
        must be a multiple of 2**level): the right-hand part of a range proof."""
        if self.size % (1 << level):
            raise ProofError(f"a subtree of level {level} cannot start at leaf {self.size}")
        current = subtree_hash
        position = self.size >> level
        while position & 1:
            current = node_hash(self.hashes.pop(), current)
            position >>= 1
        self.hashes.append(current)
        self.size += 1 << level

    def extend(self, leaves: Iterable[bytes]) -> list[Subtree]:
        completed: list[Subtree] = []
        for leaf in leaves:
            completed.extend(self.append(leaf))
        return completed

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        result = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            result = node_hash(left, result)
        return result

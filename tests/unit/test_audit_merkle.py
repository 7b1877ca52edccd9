"""The RFC 6962 tree against published known answers (the eight-leaf reference tree of the
transparency-dev/merkle project), against a naive recursive MTH, and the proof mutations those
projects check: every one of them must be rejected."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from civicline.audit import merkle
from civicline.audit.merkle import CompactRange, ProofError

LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
LEAVES = [merkle.leaf_hash(data) for data in LEAF_INPUTS]
# ROOTS[n - 1] is the root of the tree of the first n leaves.
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
EMPTY_ROOT = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (leaf index, tree size, proof): the published inclusion vectors.
INCLUSION_VECTORS = [
    (
        0,
        8,
        h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (0, 1, []),
]

# (size1, size2, proof): the published consistency vectors.
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]


def naive_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, transcribed literally."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(naive_root(leaves[:k]), naive_root(leaves[k:]))


def test_hashing_is_domain_separated() -> None:
    assert merkle.leaf_hash(b"") == bytes.fromhex(
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert merkle.node_hash(b"N123", b"N456") == hashlib.sha256(b"\x01N123N456").digest()
    assert merkle.leaf_hash(b"L123456") == hashlib.sha256(b"\x00L123456").digest()


def test_empty_tree_root() -> None:
    assert merkle.root([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size: int) -> None:
    assert merkle.root(LEAVES[:size]) == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_reference_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    perfect = merkle.perfect_from_leaves(LEAVES)
    assert merkle.inclusion_proof(index, size, perfect) == proof
    merkle.verify_inclusion(index, size, LEAVES[index], proof, ROOTS[size - 1])


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY_VECTORS)
def test_reference_consistency_proofs(first: int, second: int, proof: list[bytes]) -> None:
    perfect = merkle.perfect_from_leaves(LEAVES)
    assert merkle.consistency_proof(first, second, perfect) == proof
    merkle.verify_consistency(first, second, ROOTS[first - 1], ROOTS[second - 1], proof)


def test_every_proof_in_the_reference_tree_verifies() -> None:
    perfect = merkle.perfect_from_leaves(LEAVES)
    for size in range(1, 9):
        for index in range(size):
            proof = merkle.inclusion_proof(index, size, perfect)
            merkle.verify_inclusion(index, size, LEAVES[index], proof, ROOTS[size - 1])
        for first in range(size + 1):
            proof = merkle.consistency_proof(first, size, perfect)
            first_root = ROOTS[first - 1] if first else EMPTY_ROOT
            merkle.verify_consistency(first, size, first_root, ROOTS[size - 1], proof)


def inclusion_mutations(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> dict[str, tuple[int, int, bytes, list[bytes], bytes]]:
    probes = {
        "index - 1": (index - 1, size, leaf, proof, root),
        "index + 1": (index + 1, size, leaf, proof, root),
        "index ^ 2": (index ^ 2, size, leaf, proof, root),
        "size * 2": (index, size * 2, leaf, proof, root),
        "size / 2": (index, size // 2, leaf, proof, root),
        "wrong leaf": (index, size, hashlib.sha256(b"WrongLeaf").digest(), proof, root),
        "empty root": (index, size, leaf, proof, EMPTY_ROOT),
        "random root": (index, size, leaf, proof, SOME_HASH),
        "trailing garbage": (index, size, leaf, [*proof, b""], root),
        "trailing root": (index, size, leaf, [*proof, root], root),
        "preceding garbage": (index, size, leaf, [b"", *proof], root),
        "preceding root": (index, size, leaf, [root, *proof], root),
    }
    for position in range(len(proof)):
        flipped = list(proof)
        flipped[position] = bytes([flipped[position][0] ^ 8]) + flipped[position][1:]
        probes[f"proof[{position}] bit flipped"] = (index, size, leaf, flipped, root)
    if proof:
        probes["removed element"] = (index, size, leaf, proof[:-1], root)
    if len(proof) > 1:
        probes["inserted element"] = (index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root)
    return probes


def consistency_mutations(
    first: int, second: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> dict[str, tuple[int, int, bytes, bytes, list[bytes]]]:
    wrong = hashlib.sha256(b"WrongRoot").digest()
    probes = {
        "size1 - 1": (first - 1, second, root1, root2, proof),
        "size1 + 1": (first + 1, second, root1, root2, proof),
        "size1 ^ 2": (first ^ 2, second, root1, root2, proof),
        "size2 * 2": (first, second * 2, root1, root2, proof),
        "size2 / 2": (first, second // 2, root1, root2, proof),
        "wrong root1": (first, second, wrong, root2, proof),
        "wrong root2": (first, second, root1, wrong, proof),
        "swapped roots": (first, second, root2, root1, proof),
        "empty proof": (first, second, root1, root2, []),
        "trailing garbage": (first, second, root1, root2, [*proof, b""]),
        "trailing root1": (first, second, root1, root2, [*proof, root1]),
        "trailing root2": (first, second, root1, root2, [*proof, root2]),
        "preceding garbage": (first, second, root1, root2, [b"", *proof]),
        "preceding root1": (first, second, root1, root2, [root1, *proof]),
        "preceding root2": (first, second, root1, root2, [root2, *proof]),
        "preceding proof[0]": (first, second, root1, root2, [proof[0], *proof]),
        "truncated proof": (first, second, root1, root2, proof[:-1]),
    }
    for position in range(len(proof)):
        flipped = list(proof)
        flipped[position] = bytes([flipped[position][0] ^ 16]) + flipped[position][1:]
        probes[f"proof[{position}] bit flipped"] = (first, second, root1, root2, flipped)
    return probes


def rejects(check: Callable[..., None], *arguments: object) -> bool:
    try:
        check(*arguments)
    except ProofError:
        return True
    return False


@pytest.mark.parametrize(("index", "size", "proof"), [v for v in INCLUSION_VECTORS if v[2]])
def test_every_inclusion_mutation_is_rejected(index: int, size: int, proof: list[bytes]) -> None:
    probes = inclusion_mutations(index, size, LEAVES[index], proof, ROOTS[size - 1])
    accepted = [
        name for name, probe in probes.items() if not rejects(merkle.verify_inclusion, *probe)
    ]
    assert accepted == []


@pytest.mark.parametrize(("first", "second", "proof"), [v for v in CONSISTENCY_VECTORS if v[2]])
def test_every_consistency_mutation_is_rejected(
    first: int, second: int, proof: list[bytes]
) -> None:
    probes = consistency_mutations(first, second, ROOTS[first - 1], ROOTS[second - 1], proof)
    accepted = [
        name for name, probe in probes.items() if not rejects(merkle.verify_consistency, *probe)
    ]
    assert accepted == []


ROOT1, ROOT2 = hashlib.sha256(b"don't care 1").digest(), hashlib.sha256(b"don't care 2").digest()


@pytest.mark.parametrize(
    ("first", "second", "root1", "root2", "proof", "valid"),
    [
        (0, 0, ROOT1, ROOT2, [], False),
        (1, 1, ROOT1, ROOT2, [], False),
        (0, 0, ROOT1, ROOT1, [], True),
        (0, 1, ROOT1, ROOT2, [], True),
        (1, 1, ROOT2, ROOT2, [], True),
        (1, 0, ROOT1, ROOT2, [], False),  # time travel to the past
        (2, 1, ROOT1, ROOT2, [], False),
        (1, 2, ROOT1, ROOT2, [], False),  # empty proof
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),  # equal, but a proof given
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    ],
)
def test_trivial_consistency_cases(
    first: int, second: int, root1: bytes, root2: bytes, proof: list[bytes], valid: bool
) -> None:
    assert rejects(merkle.verify_consistency, first, second, root1, root2, proof) is not valid


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (-1, 4)])
def test_inclusion_of_a_leaf_outside_the_tree_is_rejected(index: int, size: int) -> None:
    assert rejects(merkle.verify_inclusion, index, size, SOME_HASH, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        merkle.inclusion_ranges(index, size)


def test_single_leaf_tree_needs_an_empty_proof_and_exact_hashes() -> None:
    leaf = merkle.leaf_hash(b"data")
    merkle.verify_inclusion(0, 1, leaf, [], leaf)
    assert rejects(merkle.verify_inclusion, 0, 1, b"", [], leaf)
    assert rejects(merkle.verify_inclusion, 0, 1, leaf, [], b"")


@given(st.integers(min_value=1, max_value=300), st.data())
def test_proofs_agree_with_the_naive_tree(size: int, data: st.DataObject) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    root = naive_root(leaves)
    perfect = merkle.perfect_from_leaves(leaves)
    assert merkle.root(leaves) == root
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    merkle.verify_inclusion(
        index, size, leaves[index], merkle.inclusion_proof(index, size, perfect), root
    )
    first = data.draw(st.integers(min_value=0, max_value=size))
    proof = merkle.consistency_proof(first, size, perfect)
    merkle.verify_consistency(first, size, naive_root(leaves[:first]), root, proof)


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=1, max_value=2**20))
def test_perfect_ranges_tile_a_proof_range_exactly(start: int, length: int) -> None:
    # Ranges in proofs start at a multiple of the largest power of two they hold; any range
    # decomposes anyway, into aligned blocks that tile it.
    pieces = merkle.perfect_ranges(start, start + length)
    position = start
    for level, index in pieces:
        assert index << level == position
        position += 1 << level
    assert position == start + length


def test_compact_range_reports_each_completed_subtree_once() -> None:
    tree = CompactRange()
    completed = tree.extend(LEAVES)
    assert [(s.level, s.index) for s in completed] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (1, 2),
        (1, 3),
        (2, 1),
        (3, 0),
    ]
    perfect = merkle.perfect_from_leaves(LEAVES)
    assert all(s.hash == perfect(s.level, s.index) for s in completed)
    assert tree.root() == ROOTS[7]


def test_compact_range_survives_encoding_at_every_size() -> None:
    tree = CompactRange()
    for size, leaf in enumerate(LEAVES, 1):
        tree.append(leaf)
        decoded = CompactRange.decode(size, tree.encode())
        assert decoded == tree
        assert decoded.root() == ROOTS[size - 1]
    with pytest.raises(ValueError, match="holds"):
        CompactRange.decode(3, tree.encode())

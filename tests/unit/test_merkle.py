"""The RFC 6962 Merkle tree: published test vectors, a naive reference, and the storage-facing API."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.store import merkle as mk

# ---------------------------------------------------------------------------------------------------------------
# Known answers: the Certificate Transparency reference vectors, copied from
# transparency-dev/merkle proof/verify_test.go (commit 02194e9afb6c1d95b5381350007963aa70fff472), variables
# `leaves`, `roots`, `inclusionProofs`, `consistencyProofs`, `sha256EmptyTreeHash`. The same values appear in
# google/trillian and google/certificate-transparency-go. In inclusionProofs the leaf number is 1-based.

CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
CT_EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CT_ROOTS = {  # size -> MTH(D[0:size])
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
CT_INCLUSION = [  # (leaf number, 1-based; size; proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]

CT_NODES = mk.perfect_nodes([mk.leaf_hash(d) for d in CT_LEAVES])


def ct_get(size: int):
    """A getter over the reference tree's first `size` leaves; reading a node outside them fails."""
    return {node: h for node, h in CT_NODES.items() if (node[1] + 1) << node[0] <= size}.__getitem__


def hexes(hashes: list[bytes]) -> list[str]:
    return [h.hex() for h in hashes]


def test_empty_root():
    assert mk.EMPTY_ROOT.hex() == CT_EMPTY_ROOT
    assert mk.root(0, ct_get(0)) == mk.EMPTY_ROOT


@pytest.mark.parametrize("size", sorted(CT_ROOTS))
def test_reference_roots(size):
    assert mk.root(size, ct_get(size)).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("leaf", "size", "proof"), CT_INCLUSION)
def test_reference_inclusion_proofs(leaf, size, proof):
    index = leaf - 1
    assert hexes(mk.inclusion_proof(index, size, ct_get(size))) == proof
    root = bytes.fromhex(CT_ROOTS[size])
    path = [bytes.fromhex(h) for h in proof]
    assert mk.verify_inclusion(mk.leaf_hash(CT_LEAVES[index]), index, size, path, root)


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_reference_consistency_proofs(old, new, proof):
    assert hexes(mk.consistency_proof(old, new, ct_get(new))) == proof
    path = [bytes.fromhex(h) for h in proof]
    assert mk.verify_consistency(old, new, bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new]), path)


# ---------------------------------------------------------------------------------------------------------------
# A naive reference, straight from RFC 6962 §2.1 over a list of entries


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + d[0])
    k = largest_power_of_two_below(n)
    return sha(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = largest_power_of_two_below(n)
    if m < k:
        return naive_path(m, d[:k]) + [naive_mth(d[k:])]
    return naive_path(m - k, d[k:]) + [naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return naive_subproof(m, d[:k], b) + [naive_mth(d[k:])]
    return naive_subproof(m - k, d[k:], False) + [naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    return naive_subproof(m, d, True)


DATA = [b"entry %d" % i for i in range(300)]  # distinct entries
LEAF_HASHES = [mk.leaf_hash(x) for x in DATA]


def tree(size: int):
    """A getter over the stored nodes of the first `size` entries; anything else raises KeyError."""
    return mk.perfect_nodes(LEAF_HASHES[:size]).__getitem__


def flip(hashes: list[bytes], i: int) -> list[bytes]:
    out = list(hashes)
    out[i] = bytes([out[i][0] ^ 1]) + out[i][1:]
    return out


def flipped(h: bytes) -> bytes:
    return flip([h], 0)[0]


def test_naive_reference_agrees_with_the_vectors():
    assert naive_mth([]).hex() == CT_EMPTY_ROOT
    for size, want in CT_ROOTS.items():
        assert naive_mth(CT_LEAVES[:size]).hex() == want


@st.composite
def size_and_index(draw):
    size = draw(st.integers(1, 300))
    return size, draw(st.integers(0, size - 1))


@settings(max_examples=150, deadline=None)
@given(size_and_index())
def test_root_and_inclusion_match_the_rfc(case):
    size, index = case
    get = tree(size)
    root = mk.root(size, get)
    assert root == naive_mth(DATA[:size])
    proof = mk.inclusion_proof(index, size, get)
    assert proof == naive_path(index, DATA[:size])
    leaf = LEAF_HASHES[index]
    assert mk.verify_inclusion(leaf, index, size, proof, root)
    for i in range(len(proof)):
        assert not mk.verify_inclusion(leaf, index, size, flip(proof, i), root)
    for wrong in {index - 1, index + 1, index ^ 2} - {index}:
        assert not mk.verify_inclusion(leaf, wrong, size, proof, root)
    for wrong_size in {size // 2, size * 2} - {size}:  # as upstream: size ± 1 can share the same path
        assert not mk.verify_inclusion(leaf, index, wrong_size, proof, root)
    assert not mk.verify_inclusion(leaf, index, size, proof, flipped(root))
    assert not mk.verify_inclusion(flipped(leaf), index, size, proof, root)
    assert not mk.verify_inclusion(leaf, index, size, proof + [root], root)
    assert not mk.verify_inclusion(leaf, index, size, [root] + proof, root)
    if proof:
        assert not mk.verify_inclusion(leaf, index, size, proof[:-1], root)


@st.composite
def old_and_new(draw):
    new = draw(st.integers(1, 300))
    return draw(st.integers(0, new)), new


@settings(max_examples=150, deadline=None)
@given(old_and_new())
def test_consistency_matches_the_rfc(case):
    old, new = case
    get = tree(new)
    old_root, new_root = naive_mth(DATA[:old]), naive_mth(DATA[:new])
    proof = mk.consistency_proof(old, new, get)
    assert proof == ([] if old == 0 else naive_proof(old, DATA[:new]))
    assert mk.verify_consistency(old, new, old_root, new_root, proof)
    assert not mk.verify_consistency(old, new, flipped(old_root), new_root, proof)
    if 0 < old < new:  # (the empty tree is a prefix of any tree: new_root is not checked for old == 0)
        assert not mk.verify_consistency(old, new, old_root, flipped(new_root), proof)
        assert not mk.verify_consistency(old, new, new_root, old_root, proof)
        assert not mk.verify_consistency(old, new, old_root, new_root, proof + [new_root])
    if proof:
        for i in range(len(proof)):
            assert not mk.verify_consistency(old, new, old_root, new_root, flip(proof, i))
        for wrong in {old - 1, old + 1, old ^ 2} - {old}:
            assert not mk.verify_consistency(wrong, new, old_root, new_root, proof)
        for wrong_new in {new // 2, new * 2}:  # as upstream: new ± 1 can share the same proof
            assert not mk.verify_consistency(old, wrong_new, old_root, new_root, proof)
        assert not mk.verify_consistency(old, new, old_root, new_root, proof[:-1])
        assert not mk.verify_consistency(old, new, old_root, new_root, [proof[0]] + proof)
        assert not mk.verify_consistency(old, new, old_root, new_root, [])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n), max_size=12))))
def test_append_in_batches_builds_exactly_the_perfect_nodes(case):
    total, cuts = case
    bounds = sorted({0, total, *cuts})
    stored: dict[mk.Node, bytes] = {}
    for size, end in zip(bounds, bounds[1:], strict=False):
        batch = LEAF_HASHES[size:end]
        needed = mk.left_siblings_needed(size, len(batch))
        assert mk.nodes_needed(mk.append_nodes, size, batch) == needed
        assert needed <= stored.keys()
        assert len({level for level, _ in needed}) == len(needed)  # at most one per level
        created = mk.append_nodes(size, batch, {n: stored[n] for n in needed}.__getitem__)
        assert not created.keys() & stored.keys()
        stored.update(created)
        assert mk.root(end, stored.__getitem__) == naive_mth(DATA[:end])
    assert stored == mk.perfect_nodes(LEAF_HASHES[:total])


# ---------------------------------------------------------------------------------------------------------------
# Storage access stays logarithmic


@pytest.mark.parametrize("size", [1_000_000, 2**20, 2**40 - 1, 2**40, 987_654_321_123])
def test_nodes_needed_is_small(size):
    calls = []

    def counting(node):
        calls.append(node)
        assert node[0] >= 0 and node[1] >= 0 and (node[1] + 1) << node[0] <= size  # inside the tree
        return bytes(32)

    for fn, args in [(mk.root, (size,)), (mk.inclusion_proof, (size // 3, size)),
                     (mk.inclusion_proof, (size - 1, size)), (mk.consistency_proof, (size // 2 + 1, size)),
                     (mk.consistency_proof, (size - 1, size)), (mk.consistency_proof, (1, size))]:
        needed = mk.nodes_needed(fn, *args)
        # a path of ~log2(size) perfect siblings plus at most one non-perfect subtree of ~log2(size) nodes
        assert 0 < len(needed) <= 2 * size.bit_length()
        if size <= 1_000_000:
            assert len(needed) <= 40
        calls.clear()
        fn(*args, get=counting)
        assert len(calls) == len(needed)  # no node is read twice
        fn(*args, get={n: bytes(32) for n in needed}.__getitem__)  # the fetched set suffices
    assert mk.nodes_needed(mk.root, 2**40) == {(40, 0)}
    assert len(mk.left_siblings_needed(size, 1)) <= 41


def test_fetch_once_then_compute():
    size = 77
    stored = mk.perfect_nodes(LEAF_HASHES[:size])
    needed = mk.nodes_needed(mk.consistency_proof, 20, size)
    fetched = {n: stored[n] for n in needed}
    assert mk.consistency_proof(20, size, fetched.__getitem__) == naive_proof(20, DATA[:size])
    assert mk.nodes_needed(mk.root, 0) == set()


# ---------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(("fn", "args"), [
    (mk.root, (-1,)),
    (mk.inclusion_proof, (0, 0)),
    (mk.inclusion_proof, (5, 5)),
    (mk.inclusion_proof, (-1, 5)),
    (mk.consistency_proof, (6, 5)),
    (mk.consistency_proof, (-1, 5)),
    (mk.left_siblings_needed, (-1, 1)),
    (mk.left_siblings_needed, (1, -1)),
])
def test_invalid_arguments_raise(fn, args):
    with pytest.raises(ValueError):
        fn(*args, **({} if fn is mk.left_siblings_needed else {"get": tree(5)}))


def test_append_rejects_bad_arguments():
    with pytest.raises(ValueError):
        mk.append_nodes(-1, [LEAF_HASHES[0]], tree(0))
    with pytest.raises(ValueError):
        mk.append_nodes(0, [b"short"], tree(0))


def test_verifiers_reject_malformed_input():
    root5 = naive_mth(DATA[:5])
    proof = mk.inclusion_proof(1, 5, tree(5))
    leaf = LEAF_HASHES[1]
    assert mk.verify_inclusion(leaf, 1, 5, proof, root5)
    for args in [(leaf, 1, 5, proof[:-1] + [b"short"], root5), (leaf, 1, 5, proof[:-1] + [None], root5),
                 (leaf, 1, 5, None, root5), (b"", 1, 5, proof, root5), (leaf, 1, 5, proof, b""),
                 (leaf, -1, 5, proof, root5), (leaf, 5, 5, proof, root5), (leaf, 0, 0, [], mk.EMPTY_ROOT),
                 (leaf, "1", 5, proof, root5), (leaf, 1, 5.0, proof, root5)]:
        assert mk.verify_inclusion(*args) is False
    root3 = naive_mth(DATA[:3])
    cproof = mk.consistency_proof(3, 5, tree(5))
    assert mk.verify_consistency(3, 5, root3, root5, cproof)
    for args in [(3, 5, root3, root5, cproof + [b""]), (3, 5, root3, root5, [None]), (3, 5, root3, root5, None),
                 (5, 3, root5, root3, cproof), (-1, 5, root3, root5, cproof), (3, 5, b"x", root5, cproof),
                 (0, 5, root3, root5, []), (0, 5, mk.EMPTY_ROOT, root5, cproof), (0, 0, mk.EMPTY_ROOT, root5, []),
                 (5, 5, root5, root5, cproof), (5, 5, root3, root5, [])]:
        assert mk.verify_consistency(*args) is False
    assert mk.verify_consistency(0, 0, mk.EMPTY_ROOT, mk.EMPTY_ROOT, [])
    assert mk.verify_consistency(0, 5, mk.EMPTY_ROOT, root5, [])
    assert mk.verify_consistency(5, 5, root5, root5, [])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=130))
def test_a_frontier_gives_the_root_of_every_prefix(entries):
    """The verifier's incremental root (a chain's rows walked once) is RFC 6962's MTH of every prefix."""
    frontier = mk.Frontier()
    assert frontier.root() == naive_mth([])
    for n, entry in enumerate(entries, 1):
        frontier.append(mk.leaf_hash(entry))
        assert frontier.size == n
        assert frontier.root() == naive_mth(entries[:n])

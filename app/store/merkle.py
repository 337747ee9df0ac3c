"""A Merkle tree hashed as in RFC 6962 §2.1 / RFC 9162 §2.1 (Certificate Transparency): roots, inclusion and
consistency proofs, their verification, and incremental appends.

The tree is not held in memory. Its storage is the hashes of the *perfect aligned subtrees*: the node
``(level, idx)`` is the subtree of ``2**level`` leaves starting at leaf ``idx * 2**level`` (level 0 is a leaf
hash). Every function reads them through a getter, at most about 2*log2(n) of them and never all leaves, so a
caller can list them with :func:`nodes_needed`, fetch them in one query and call again with a dict getter.
:func:`append_nodes` gives the new nodes to store when leaves are appended. Only ``hashlib`` is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

Node = tuple[int, int]  # (level, idx): the perfect subtree of 2**level leaves starting at leaf idx * 2**level
Getter = Callable[[Node], bytes]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_PLACEHOLDER = bytes(HASH_SIZE)


def leaf_hash(leaf: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The interior node SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _split(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2): where MTH(D[0:n]) splits."""
    return 1 << ((n - 1).bit_length() - 1)


def _decompose(start: int, n: int) -> list[Node]:
    """The perfect aligned nodes covering leaves [start, start + n), largest (leftmost) first.

    ``start`` must be a multiple of the largest power of two <= n, which holds for every subtree that the
    RFC 6962 recursion visits. MTH of the range is then the right fold of these nodes.
    """
    top = n.bit_length() - 1
    if n < 1 or start % (1 << top):
        raise AssertionError(f"range [{start}, {start + n}) is not an RFC 6962 subtree")  # internal misuse
    nodes = []
    for level in range(top, -1, -1):
        if n >> level & 1:
            nodes.append((level, start >> level))
            start += 1 << level
    return nodes


def _mth(start: int, n: int, get: Getter) -> bytes:
    """MTH(D[start:start + n]) from its perfect nodes: popcount(n) getter calls."""
    nodes = _decompose(start, n)
    h = get(nodes[-1])
    for node in reversed(nodes[:-1]):
        h = node_hash(get(node), h)
    return h


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---------------------------------------------------------------------------------------------------------------
# Roots and proofs


def root(size: int, get: Getter) -> bytes:
    """MTH(D[0:size]); the empty tree's root is SHA-256("")."""
    _check_size("size", size)
    return _mth(0, size, get) if size else EMPTY_ROOT


def inclusion_proof(index: int, size: int, get: Getter) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 6962 §2.1.1, the sibling nearest the leaf first."""
    _check_size("index", index)
    _check_size("size", size)
    if index >= size:
        raise ValueError(f"index {index} is not in a tree of size {size}")
    siblings = []  # outermost first; PATH(m, D[n]) = PATH(m', subtree) : sibling
    start, n, m = 0, size, index
    while n > 1:
        k = _split(n)
        if m < k:
            siblings.append(_mth(start + k, n - k, get))
            n = k
        else:
            siblings.append(_mth(start, k, get))
            start, n, m = start + k, n - k, m - k
    siblings.reverse()
    return siblings


def consistency_proof(old: int, new: int, get: Getter) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 6962 §2.1.2. Empty when old == new or old == 0 (the empty tree is a prefix
    of every tree)."""
    _check_size("old", old)
    _check_size("new", new)
    if old > new:
        raise ValueError(f"old size {old} is larger than new size {new}")
    if old in (0, new):
        return []
    parts = []  # outermost first; SUBPROOF(m, D[n], b) = SUBPROOF(m', subtree, b') : MTH(other half)
    start, n, m, whole = 0, new, old, True
    while m != n:
        k = _split(n)
        if m <= k:
            parts.append(_mth(start + k, n - k, get))
            n = k
        else:
            parts.append(_mth(start, k, get))
            start, n, m, whole = start + k, n - k, m - k, False
    if not whole:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        parts.append(_mth(start, n, get))
    parts.reverse()
    return parts


def nodes_needed(fn: Callable[..., Any], *args: Any) -> set[Node]:
    """The nodes ``fn(*args, get=...)`` reads, found by running it with a recording getter.

    The nodes read depend only on the sizes and indices, never on the hash values, so the caller can fetch
    exactly these (in one query) and call ``fn`` again with a dict getter.
    """
    seen: set[Node] = set()

    def record(node: Node) -> bytes:
        seen.add(node)
        return _PLACEHOLDER

    fn(*args, get=record)
    return seen


# ---------------------------------------------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2); malformed input gives False, never an exception


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows the leaf hash at ``index`` in the tree of ``size`` leaves with ``root``."""
    if not (_is_size(index) and _is_size(size) and index < size and _is_hash(leaf_hash) and _is_hash(root)):
        return False
    if not isinstance(proof, list | tuple) or not all(_is_hash(p) for p in proof):
        return False
    fn, sn, r = index, size - 1, bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """Whether ``proof`` shows the tree of ``old`` leaves with ``old_root`` is a prefix of the tree of ``new``
    leaves with ``new_root``. For old == 0, old_root must be the empty root and the proof empty."""
    if not (_is_size(old) and _is_size(new) and old <= new and _is_hash(old_root) and _is_hash(new_root)):
        return False
    if not isinstance(proof, list | tuple) or not all(_is_hash(p) for p in proof):
        return False
    if old == 0:
        return not proof and old_root == EMPTY_ROOT and (new > 0 or new_root == EMPTY_ROOT)
    if old == new:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is the first node of the path
        path.insert(0, bytes(old_root))
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root


# ---------------------------------------------------------------------------------------------------------------
# Building the stored nodes


def perfect_nodes(leaf_hashes: list[bytes]) -> dict[Node, bytes]:
    """Every perfect aligned subtree hash of the tree of these leaf hashes (for tests and small trees)."""
    nodes: dict[Node, bytes] = {}
    row = list(leaf_hashes)
    level = 0
    while row:
        for idx, h in enumerate(row):
            nodes[(level, idx)] = h
        row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row) - 1, 2)]
        level += 1
    return nodes


def left_siblings_needed(size: int, count: int) -> set[Node]:
    """The nodes that existed at ``size`` and that :func:`append_nodes` reads to append ``count`` leaves: the
    left child of each new parent whose left half was already complete, at most one per level."""
    _check_size("size", size)
    _check_size("count", count)
    new_size = size + count
    needed = set()
    level = 1
    while size >> level < new_size >> level:  # level `level` gains nodes
        if size >> (level - 1) & 1:  # its first new node's left child is an old node
            needed.add((level - 1, (size >> (level - 1)) - 1))
        level += 1
    return needed


def append_nodes(size: int, new_leaf_hashes: list[bytes], get: Getter) -> dict[Node, bytes]:
    """The perfect nodes created by appending these leaf hashes to a tree of ``size`` leaves: the new leaves
    and every parent whose right child gets completed. Old left siblings are read through ``get``, exactly the
    nodes of :func:`left_siblings_needed`."""
    _check_size("size", size)
    for i, h in enumerate(new_leaf_hashes):
        if not _is_hash(h):
            raise ValueError(f"new leaf hash {i} is not a {HASH_SIZE}-byte hash")
    new_size = size + len(new_leaf_hashes)
    created: dict[Node, bytes] = {(0, size + i): bytes(h) for i, h in enumerate(new_leaf_hashes)}
    level = 1
    while size >> level < new_size >> level:
        for idx in range(size >> level, new_size >> level):
            left = (level - 1, 2 * idx)
            left_hash = created[left] if left in created else get(left)
            created[(level, idx)] = node_hash(left_hash, created[(level - 1, 2 * idx + 1)])
        level += 1
    return created


class Frontier:
    """A tree grown one leaf at a time, held as its perfect subtrees (at most one per level): the root of the
    first n leaves for any n, without storing the leaves (what a verifier walking a chain needs)."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (level, hash), largest first

    def append(self, leaf_hash_: bytes) -> None:
        level, node = 0, leaf_hash_
        stack = self._stack
        while stack and stack[-1][0] == level:
            node = node_hash(stack.pop()[1], node)
            level += 1
        stack.append((level, node))
        self.size += 1

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        if not self._stack:
            return EMPTY_ROOT
        root = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            root = node_hash(left, root)
        return root


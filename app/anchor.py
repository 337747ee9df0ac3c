"""The audit trail anchored outside the database: Merkle trees over the chains, signed checkpoints, proofs.

Each chain's rows, in sequence order, are the leaves of a Merkle tree hashed as RFC 6962 does (the leaf of
a row is its ``row_hash``, 32 bytes). The tree's perfect subtrees are kept in ``merkle_nodes``, appended
outside any portfolio lock by the checkpointer, which then signs a checkpoint::

    {"trail": "<uuid>", "chain": "default", "size": 1234, "root": "<hex>", "at": "<UTC ISO 8601>",
     "key_id": "<hex>"}

(canonical JSON: sorted keys, no spaces) with an Ed25519 key, and appends it, with its signature, to the
sink: a directory of append-only files, one a day (``checkpoints-YYYY-MM-DD.jsonl``), to be kept on WORM
storage. A copy goes to ``audit_checkpoints`` to serve proofs; verification trusts the sink's. The trail id
(``audit_trail``, made with the schema) tells one database's checkpoints from another's: a sink serves one.

A decision's proof is its row as hashed, the inclusion proof of its leaf and a signed checkpoint that covers
it: anyone with the public key checks it with no database (:func:`check_proof`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, text, union_all
from sqlalchemy.orm import Session

from .risk.config import canonical_json
from .store import audit, merkle
from .store import models as m

log = logging.getLogger("rpm.anchor")

PROOF_FORMAT = "rpm-decision-proof/1"
# leaves read per query when a tree is extended
_LEAF_BATCH = 50_000
# one checkpointer at a time, whatever the number of processes and hosts (pg_try_advisory_xact_lock)
_LOCK = 0x52504D43  # "RPMC" (and the chain: pg_try_advisory_xact_lock(int, int))


# -- keys -----------------------------------------------------------------------------------

def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A public key from a PEM file (SubjectPublicKeyInfo); a private key's file gives its public key."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise ValueError(f"{path}: not a PEM Ed25519 key (public, or unencrypted private)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 key")
    return key


@dataclass
class Signer:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data)).decode()

    @classmethod
    def from_file(cls, path: str | Path, *, create: bool = False) -> Signer:
        """The private key of a PEM file (PKCS8, unencrypted); made (0600) if missing and ``create``, with its
        public key beside it (``<name>.pub``)."""
        path = Path(path)
        if not path.exists() and create:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            # written aside and linked into place: two processes starting at once keep one key
            aside = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(aside, path)
                path.with_name(path.name + ".pub").write_text(public_pem(key.public_key()))
            except FileExistsError:
                pass
            finally:
                aside.unlink()
            log.warning("audit signing key created at %s (public key: %s.pub); give production a key of its own "
                        "with RPM_AUDIT_SIGNING_KEY", path, path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key)


# -- statements -----------------------------------------------------------------------------

def statement_bytes(statement: dict[str, Any]) -> bytes:
    """What is signed: the statement's canonical JSON."""
    return canonical_json(statement).encode()


def _keys(public: Ed25519PublicKey | list[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    return {key_id(k): k for k in (public if isinstance(public, list) else [public])}


def signature_valid(checkpoint: Any, public: Ed25519PublicKey | list[Ed25519PublicKey]) -> bool:
    """Whether ``checkpoint`` is a statement signed by one of the keys (the one its ``key_id`` names)."""
    try:
        statement = checkpoint["statement"]
        key = _keys(public).get(statement["key_id"])
        if key is None:
            return False
        key.verify(base64.b64decode(checkpoint["signature"], validate=True), statement_bytes(statement))
    except (InvalidSignature, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


class Sink:
    """A directory of append-only files of signed checkpoints, one JSON line each, a file a UTC day."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def append(self, checkpoint: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        day = checkpoint["statement"]["at"][:10]
        line = (json.dumps(checkpoint, sort_keys=True, separators=(",", ":")) + "\n").encode()
        # O_APPEND: each line is one write, appended whole, whichever process writes it
        fd = os.open(self.directory / f"checkpoints-{day}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> Iterator[dict[str, Any]]:
        """Every checkpoint, file by file, line by line; a line that is not a JSON object is given as
        ``{"bad": text}``."""
        for path in sorted(self.directory.glob("checkpoints-*.jsonl")):
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if line.strip():
                    try:
                        found = json.loads(line)
                    except json.JSONDecodeError:
                        found = None
                    where = f"{path.name}:{number}"
                    yield {**found, "file": where} if isinstance(found, dict) else {"bad": line, "file": where}


# -- the trees --------------------------------------------------------------------------------

def _leaves(session: Session, chain: str, after: int, upto: int) -> list[tuple[int, str]]:
    """(audit_seq, row_hash) of a chain's rows after ``after`` up to ``upto``, in order, from every chained table."""
    parts = [select(model.audit_seq, model.row_hash).where(audit.on_chain(model, chain), model.audit_seq > after,
                                                          model.audit_seq <= upto) for model in audit.AUDITED]
    return [(seq, digest) for seq, digest in session.execute(union_all(*parts).order_by("audit_seq"))]


class BrokenChain(LookupError):
    """A chain whose rows are not each there once: its tree cannot grow past the gap."""


leaf_of = audit.leaf_of


def nodes(session: Session, chain: str, wanted: set[merkle.Node]) -> dict[merkle.Node, bytes]:
    if not wanted:
        return {}
    levels = [level for level, _ in wanted]
    indexes = [idx for _, idx in wanted]
    rows = session.execute(text(
        "SELECT n.level, n.idx, n.hash FROM unnest(CAST(:levels AS int[]), CAST(:idxs AS bigint[])) AS w(level, idx) "
        "JOIN merkle_nodes n ON n.chain = :chain AND n.level = w.level AND n.idx = w.idx"),
        {"chain": chain, "levels": levels, "idxs": indexes}).all()
    found = {(level, idx): bytes(digest) for level, idx, digest in rows}
    missing = wanted - found.keys()
    if missing:
        raise LookupError(f"the Merkle tree of {chain} lacks {len(missing)} node(s), e.g. {min(missing)}")
    return found


def computed(session: Session, chain: str, fn: Any, *args: int) -> Any:
    """``fn(*args, get=...)`` of the merkle module over the stored tree of ``chain``: its nodes in one query."""
    found = nodes(session, chain, merkle.nodes_needed(fn, *args))
    return fn(*args, get=found.__getitem__)


def tree_size(session: Session, chain: str) -> int:
    found = session.execute(text("SELECT max(idx) FROM merkle_nodes WHERE chain = :chain AND level = 0"),
                            {"chain": chain}).scalar()
    return 0 if found is None else found + 1


def extend_tree(session: Session, chain: str, head: int) -> int:
    """Append the chain's rows up to ``head`` to its tree; its size. The caller holds the checkpointer's lock."""
    size = tree_size(session, chain)
    while size < head:
        upto = min(head, size + _LEAF_BATCH)
        rows = _leaves(session, chain, size, upto)
        seqs = [seq for seq, _ in rows]
        if seqs != list(range(size + 1, upto + 1)):
            raise BrokenChain(f"the chain {chain} is broken between sequence numbers {size + 1} and {upto} (rows missing "
                              "or repeated): nothing past it can be anchored or proven; run `rpm audit verify`")
        leaves = [leaf_of(digest) for _, digest in rows]
        siblings = nodes(session, chain, merkle.left_siblings_needed(size, len(leaves)))
        new = merkle.append_nodes(size, leaves, get=siblings.__getitem__)
        session.execute(text("INSERT INTO merkle_nodes (chain, level, idx, hash) "
                             "SELECT :chain, * FROM unnest(CAST(:levels AS int[]), CAST(:idxs AS bigint[]), "
                             "CAST(:hashes AS bytea[]))"),
                        {"chain": chain, "levels": [lv for lv, _ in new], "idxs": [i for _, i in new],
                         "hashes": list(new.values())})
        size = upto
    return size


def checkpoint_chain(session: Session, chain: str, head: int, signer: Signer, now: datetime) -> dict[str, Any] | None:
    """Extend the chain's tree to ``head`` and sign a checkpoint of it, unless one of that size exists (the
    caller commits, then appends it to the sink)."""
    size = extend_tree(session, chain, head)
    last = session.execute(text("SELECT max(size) FROM audit_checkpoints WHERE chain = :c"), {"c": chain}).scalar()
    if size == 0 or (last is not None and last >= size):
        return None
    root = computed(session, chain, merkle.root, size)
    statement = {"trail": trail_id(session), "chain": chain, "size": size, "root": root.hex(),
                 "at": now.isoformat(timespec="microseconds"), "key_id": key_id(signer.public)}
    checkpoint = {"statement": statement, "signature": signer.sign(statement_bytes(statement))}
    session.add(m.AuditCheckpoint(chain=chain, size=size, root=statement["root"], at=now,
                                  statement=statement_bytes(statement).decode(), signature=checkpoint["signature"]))
    return checkpoint


def trail_id(session: Session) -> str | None:
    """The trail's id (None: the table audit_trail is empty, which no migration leaves it)."""
    return session.execute(text("SELECT min(id) FROM audit_trail")).scalar()


def due(session: Session, every_records: int, every_seconds: float, now: datetime) -> dict[str, int]:
    """The chains a checkpoint is due for: grown by ``every_records`` since their last, or at all and
    ``every_seconds`` after it (their heads, by chain)."""
    last = {chain: (size, at) for chain, size, at in session.execute(text(
        "SELECT DISTINCT ON (chain) chain, size, at FROM audit_checkpoints ORDER BY chain, size DESC"))}
    out = {}
    for chain, (head, _digest) in audit.chain_heads(session).items():
        size, at = last.get(chain, (0, None))
        grown = head - size
        if grown > 0 and (grown >= every_records or at is None or (now - at).total_seconds() >= every_seconds):
            out[chain] = head
    return out


PARTITIONS_EVERY_S = 3600.0


class Anchor:
    """Makes checkpoints: on demand, and every so many records or seconds in a background thread."""

    def __init__(self, uow: Any, signer: Signer, sink: Sink, every_records: int, every_seconds: float,
                 trusted: list[Ed25519PublicKey] | None = None):
        self.uow, self.signer, self.sink = uow, signer, sink
        # the keys whose checkpoints verify accepts: the signing key's, and earlier ones (a key rotated)
        self.trusted = [signer.public, *(trusted or [])]
        self.every_records, self.every_seconds = every_records, every_seconds
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def checkpoint(self, chains: dict[str, int] | None = None, *, force: bool = False, wait: bool = False,
                   strict: bool = False) -> list[dict[str, Any]]:
        """Checkpoints of the given chains (by head), or of those due (every chain with ``force``), each in a
        transaction of its own under the chain's advisory lock (a chain another process is anchoring now is
        skipped, unless ``wait``: then waited for, within the lock timeout), appended to the sink once committed.
        A broken chain is logged and skipped (the others are still anchored), or with ``strict`` raised."""
        if chains is None:
            with self.uow.reading() as session:
                now = self.uow.clock()
                chains = ({c: head for c, (head, _) in audit.chain_heads(session).items()} if force
                          else due(session, self.every_records, self.every_seconds, now))
        made = []
        for chain, head in sorted(chains.items()):
            try:
                with self.uow.session() as session:
                    lock = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
                    if session.execute(text(f"SELECT {lock}(CAST(:k AS int), hashtext(:c))::text"),
                                       {"k": _LOCK, "c": chain}).scalar() == "false":
                        continue
                    checkpoint = checkpoint_chain(session, chain, head, self.signer, self.uow.clock())
            except BrokenChain as exc:
                if strict:
                    raise
                log.error("audit: %s", exc)
                continue
            if checkpoint is not None:
                try:
                    self.sink.append(checkpoint)
                except OSError:
                    log.error("audit: the checkpoint of %s (size %s) could not be written to the sink %s", chain,
                              checkpoint["statement"]["size"], self.sink.directory, exc_info=True)
                made.append(checkpoint)
        return made

    def start(self) -> None:
        """Checkpoints in the background (each process; one at a time through the advisory lock)."""
        if self.every_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="rpm-checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        poll = min(1.0, self.every_seconds)
        partitioned = time.monotonic()  # (`rpm serve` made them before it started)
        while not self._stop.wait(poll):
            if time.monotonic() - partitioned > PARTITIONS_EVERY_S:
                partitioned = time.monotonic()
                try:  # the months ahead of the decisions' partitions (made at start too: this is for a long run)
                    self.uow.ensure_partitions()
                except Exception as exc:  # another worker at it, no right to create tables: logged, not fatal
                    log.info("partitions not made now: %s", exc)
            try:
                self.checkpoint()
            except Exception:  # a database away: the next round tries again
                log.warning("checkpoint failed; retrying in %.0f s", poll, exc_info=True)
                time.sleep(poll)


# -- verification against the sink ---------------------------------------------------------------

def signed_statements(sink: Sink, public: Ed25519PublicKey | list[Ed25519PublicKey],
                      trail: str | None) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The sink's checkpoints of ``trail`` signed by one of the keys, by chain (sorted by size), and a finding for
    each other line: not a signed checkpoint, another trail's (a sink serves one database)."""
    by_chain: dict[str, list[dict[str, Any]]] = {}
    findings = []
    for c in sink.read():
        statement = c.get("statement") if isinstance(c.get("statement"), dict) else {}
        chain = str(statement.get("chain") or "?")
        if "bad" in c or not signature_valid(c, public) or not _well_formed(statement):
            findings.append({"chain": chain, "table": "checkpoints", "row": {"file": c["file"]},
                             "problem": "bad signature", "detail": f"{c['file']}: not a checkpoint signed by a "
                                                                   "trusted key"})
            continue
        if statement.get("trail") != trail:
            findings.append({"chain": chain, "table": "checkpoints", "row": {"file": c["file"]},
                             "problem": "another trail", "detail": f"{c['file']}: a checkpoint of audit trail "
                             f"{statement.get('trail')}, not of this database's ({trail}): a sink serves one "
                             "database, or this database's trail id was changed"})
            continue
        by_chain.setdefault(chain, []).append(statement)
    for statements in by_chain.values():
        statements.sort(key=lambda s: s["size"])
    return by_chain, findings


def _well_formed(statement: dict[str, Any]) -> bool:
    return (isinstance(statement.get("chain"), str) and type(statement.get("size")) is int and statement["size"] > 0
            and isinstance(statement.get("root"), str) and len(statement["root"]) == 64
            and isinstance(statement.get("at"), str))


class Roots:
    """The tree roots of the first ``size`` rows of a chain, for each of some sizes, as its rows go by."""

    def __init__(self, sizes: list[int]):
        self.wanted = set(sizes)
        self.frontier = merkle.Frontier()
        self.roots: dict[int, bytes] = {}

    @property
    def count(self) -> int:
        return self.frontier.size

    def add(self, row_hash: str | bytes) -> None:
        """A row's hash (hex), or the leaf of an archived row (bytes)."""
        self.frontier.append(row_hash if isinstance(row_hash, bytes) else leaf_of(row_hash))
        if self.frontier.size in self.wanted:
            self.roots[self.frontier.size] = self.frontier.root()


def compared(chain: str, statements: list[dict[str, Any]], roots: Roots | None) -> list[dict[str, Any]]:
    """Findings of a chain against its signed checkpoints (sorted by size): a chain shorter than a checkpoint,
    or a root that differs — located to the first checkpoint interval that differs."""
    if roots is None:
        return [{"chain": chain, "table": "checkpoints", "row": {}, "problem": "missing",
                 "detail": f"chain {chain} is in the checkpoints but not in the database"}]
    previous = 0
    for s in statements:
        size = s["size"]
        if size > roots.count:
            return [{"chain": chain, "table": "checkpoints", "row": {"size": size}, "problem": "missing",
                     "detail": f"the chain has {roots.count} rows; the checkpoint of {s['at']} says {size}"}]
        if roots.roots[size].hex() != s["root"]:
            return [{"chain": chain, "table": "checkpoints", "row": {"size": size}, "problem": "rewritten",
                     "first_seq": previous + 1, "last_seq": size,
                     "detail": f"rows {previous + 1}..{size} differ from the checkpoint of {s['at']} (size {size}): "
                               "the chain was rewritten there"}]
        previous = size
    return []


# -- proofs ------------------------------------------------------------------------------------

def decision_proof(session: Session, decision: m.Decision, checkpoint: m.AuditCheckpoint,
                   nodes: dict[merkle.Node, bytes] | None = None) -> dict[str, Any]:
    """A decision's proof against a checkpoint that covers it (``nodes``: the tree's nodes it needs, fetched before
    for many decisions at once; else read now)."""
    values = {c: getattr(decision, c) for c in audit.COLUMNS[m.Decision]}
    canonical = audit.canonical("decision", values)
    index = decision.audit_seq - 1
    path = (computed(session, decision.portfolio_id, merkle.inclusion_proof, index, checkpoint.size) if nodes is None
            else merkle.inclusion_proof(index, checkpoint.size, get=nodes.__getitem__))
    return {
        "format": PROOF_FORMAT,
        "decision_id": decision.id,
        "chain": decision.portfolio_id,
        "audit_seq": decision.audit_seq,
        # the row as its hash covers it: sha256(prev_hash || canonical) = row_hash; its leaf: RFC 6962's leaf
        # hash of row_hash's 32 bytes, at index audit_seq - 1
        "prev_hash": decision.prev_hash,
        "canonical": canonical,
        "row_hash": decision.row_hash,
        "leaf_index": index,
        "inclusion_proof": [h.hex() for h in path],
        "checkpoint": {"statement": json.loads(checkpoint.statement), "signature": checkpoint.signature},
    }


class ProofError(ValueError):
    """Why a proof does not hold."""


def check_proof(proof: Any, public: Ed25519PublicKey) -> dict[str, Any]:
    """Check a decision's proof with nothing but the public key; its statement when it holds, else ProofError."""
    try:
        if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT:
            raise ProofError(f"not a decision proof of format {PROOF_FORMAT}")
        checkpoint = proof["checkpoint"]
        statement = checkpoint["statement"]
        if not signature_valid(checkpoint, public) or not _well_formed(statement):
            raise ProofError("the checkpoint's signature is not valid for this public key (a tampered checkpoint, "
                             "or another key)")
        row_hash, prev_hash = proof["row_hash"], proof["prev_hash"]
        recomputed = hashlib.sha256((prev_hash + proof["canonical"]).encode()).hexdigest()
        if len(prev_hash) != 64 or recomputed != row_hash:
            raise ProofError("the decision as given does not hash to its row_hash (the decision was edited)")
        decision = json.loads(proof["canonical"])
        index = proof["leaf_index"]
        if not (isinstance(decision, dict) and decision.get("kind") == "decision"
                and decision.get("id") == proof["decision_id"] and decision.get("portfolio_id") == statement["chain"]
                and type(index) is int and decision.get("audit_seq") == str(index + 1)):
            raise ProofError("the row proven is not the decision, chain and place the proof names")
        path = [bytes.fromhex(h) for h in proof["inclusion_proof"]]
        if not merkle.verify_inclusion(leaf_of(row_hash), index, statement["size"], path,
                                       bytes.fromhex(statement["root"])):
            raise ProofError("the inclusion proof does not lead to the checkpoint's root (the decision is not in the "
                             "trail the checkpoint signs)")
    except ProofError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProofError(f"a malformed proof: {exc!r}") from None
    return {"decision": decision, "checkpoint": statement}


def consistency(session: Session, chain: str, old: int, new: int) -> list[str]:
    """The consistency proof between two sizes of a chain's tree (hex)."""
    return [h.hex() for h in computed(session, chain, merkle.consistency_proof, old, new)]

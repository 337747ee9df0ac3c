"""The tamper-evident audit trail: one hash chain per portfolio over its decisions, kill-switch
events and admin actions (and a `_system` chain for actions on no portfolio, such as keys).

    row_hash = sha256(prev_hash || canonical_json(row))

with canonical JSON = sorted keys, fixed separators, decimals as plain strings, times in UTC
ISO 8601 with microseconds. Computed inside the transaction that holds the chain's lock, so
sequence numbers are gap-free. Verification walks each chain in sequence order.

A decision's two bulky documents, its breakdown and the state it saw, are stored as their JSON
text (a JSONB string, `document_text`): the row's hash covers that text as it is, so they need no
canonical form (which cost more than deciding). Rows written before hold the documents
themselves, hashed through their canonical form. Each row's hash covers what the row holds, so
both kinds verify alike; readers take either form through `document`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

import orjson
from sqlalchemy import Numeric, Table, select, text
from sqlalchemy.orm import Session

from . import merkle
from . import models as m

GENESIS = "0" * 64
SYSTEM_CHAIN = "_system"
PROGRESS_EVERY = 1000  # positions walked between two calls of a verification's progress callback
AUDITED = (m.Decision, m.SwitchEventRow, m.AdminAction, m.ConfigVersion, m.LedgerEntry, m.Fill, m.EquityPoint,
           m.MarkUpdate, m.RiskEvent)
# the columns a row's hash covers: all but its surrogate id (for tables whose id the database assigns)
# and the hash itself
_EXCLUDED = {"row_hash"}


def _hashed_columns(model: type) -> list[str]:
    table: Table = model.__table__
    skip = set(_EXCLUDED)
    if model is not m.Decision:
        skip.add("id")
    if model is m.RiskEvent:  # (numbered by the database at commit: app/store/events.py)
        skip.add("seq")
    return [c.name for c in table.columns if c.name not in skip]


COLUMNS = {model: _hashed_columns(model) for model in AUDITED}


def column_unit(column: Any) -> Decimal:
    """The unit of a NUMERIC column's last digit (NUMERIC(28, 10): 1E-10)."""
    return Decimal(1).scaleb(-column.type.scale)


def _scaled_columns(model: type) -> dict[str, Decimal]:
    """The NUMERIC columns with a scale, and the unit of their last digit."""
    table: Table = model.__table__
    return {c.name: column_unit(c) for c in table.columns if isinstance(c.type, Numeric) and c.type.scale is not None}


SCALED = {model: _scaled_columns(model) for model in AUDITED}
_WIDE = Context(prec=80)  # quantize within any NUMERIC(28, s): an overflow is the database's to refuse


def to_scale(value: Any, unit: Decimal) -> Decimal:
    """``value`` as its NUMERIC column will store it: rounded to the column's scale.

    The hash must cover what is stored, or a price of 1.123456789012345 (kept as 1.1234567890)
    would read back as an edited row.
    """
    number = value if isinstance(value, Decimal) else Decimal(value) if isinstance(value, int) else \
        Decimal(repr(float(value)))
    # PostgreSQL rounds NUMERIC halves away from zero (ROUND_HALF_UP): a value rounded here and the same value
    # rounded by the server (a position's average price, and its ledger entry's) are equal
    return number.quantize(unit, rounding=ROUND_HALF_UP, context=_WIDE)


KIND = {m.Decision: "decision", m.SwitchEventRow: "switch_event", m.AdminAction: "admin_action",
        m.ConfigVersion: "config_version", m.LedgerEntry: "ledger_entry", m.Fill: "fill", m.EquityPoint: "equity_point",
        m.MarkUpdate: "mark_update", m.RiskEvent: "risk_event"}


def _plain(value: Any) -> Any:
    """One representation per value, whichever way it went through the database.

    Every number becomes its normalized decimal string: NUMERIC columns come back as Decimal with
    trailing zeros, and JSONB keeps numbers as numeric, so -0.0 comes back as 0 and 1e16 as an int.
    """
    if value is None or value is True or value is False or isinstance(value, str):
        return value
    kind = type(value)
    if kind is float:
        return _float_text(value)
    if kind is dict:  # (strings, the most common values, are taken as they are without a call)
        return {k if type(k) is str else str(k): v if type(v) is str else _plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:  # (lists of floats are common: histories)
        return [_float_text(v) if type(v) is float else v if type(v) is str else _plain(v) for v in value]
    if kind is int and -_EXACT < value < _EXACT:  # within the decimal context's 28 digits
        return str(value)
    if isinstance(value, (int, float, Decimal)):
        return _decimal_text(value if isinstance(value, Decimal) else Decimal(repr(value)))
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_EXACT = 10**27


def _decimal_text(number: Decimal) -> str:
    text = format(number.normalize(), "f")
    return "0" if text == "-0" else text


def _float_text(value: float) -> str:
    """``_decimal_text(Decimal(repr(value)))`` without the Decimal for the common case.

    repr gives the shortest round-tripping digits: without an exponent its only non-normal
    form is a trailing ".0" (the property tests compare both ways over all floats).
    """
    text = repr(value)
    if "e" in text or "n" in text:  # exponent, nan, inf
        return _decimal_text(Decimal(text))
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def canonical(kind: str, values: dict[str, Any]) -> str:
    body = {"kind": kind, **{k: _plain(v) for k, v in values.items()}}
    return _dumps(body)


def _dumps(body: dict[str, Any]) -> str:
    """``json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``, by orjson when
    that gives the same text: an ASCII result without DEL, which only json.dumps escapes (a property
    test compares both)."""
    try:
        text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # a value orjson does not write (json.dumps writes str() of it)
        text = None
    if text is None or not text.isascii() or "\x7f" in text:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=str)
    return text


def _decimal_default(value: Any) -> str:
    if isinstance(value, Decimal):  # its exact text: PostgreSQL parses NUMERIC exactly
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def json_bytes(value: Any) -> bytes:
    """``value`` as JSON, by orjson: decimals as their exact text, keys that are not strings made strings
    (what the decision transaction sends for the server to parse, and a decision's documents)."""
    return orjson.dumps(value, default=_decimal_default, option=orjson.OPT_NON_STR_KEYS)


def document_text(document: Any) -> str:
    """A decision's document (breakdown, state before) as the JSON text its column stores."""
    return json_bytes(document).decode()


def document(value: Any) -> Any:
    """A stored document as JSON values, whichever form its row holds (text, or the document)."""
    return orjson.loads(value) if isinstance(value, str) else value


def row_hash(prev_hash: str, kind: str, values: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(kind, values)).encode()).hexdigest()


@dataclass
class Chain:
    """The head of one chain, held under the chain's lock for the length of a transaction."""

    owner: Any  # the locked Portfolio row, or the AuditHead row of the system chain

    def seal(self, model: type, values: dict[str, Any]) -> dict[str, Any]:
        """Give ``values`` (a row of ``model``) the next place on the chain: seq, previous hash, hash."""
        owner = self.owner
        values["audit_seq"] = owner.audit_seq + 1
        values["prev_hash"] = owner.audit_head or GENESIS
        for name, unit in SCALED[model].items():
            if values.get(name) is not None:
                values[name] = to_scale(values[name], unit)
        hashed = {name: values.get(name) for name in COLUMNS[model]}
        values["row_hash"] = row_hash(values["prev_hash"], KIND[model], hashed)
        owner.audit_seq = values["audit_seq"]
        owner.audit_head = values["row_hash"]
        return values

    def append(self, session: Session, model: type, **values: Any) -> Any:
        row = model(**self.seal(model, values))
        session.add(row)
        return row


def system_chain(session: Session) -> Chain:
    head = session.execute(
        select(m.AuditHead).where(m.AuditHead.chain == SYSTEM_CHAIN).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = m.AuditHead(chain=SYSTEM_CHAIN, audit_seq=0, audit_head=GENESIS)
        session.add(head)
        session.flush()
    return Chain(head)


# -- verification -------------------------------------------------------------------------

@dataclass
class ChainReport:
    chain: str
    ok: bool = True
    count: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    first_broken_seq: int | None = None
    problem: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    archived: int = 0  # positions whose rows an archive took (`rpm audit archive`): their leaves stand for them

    def fail(self, seq: int, problem: str, **details: Any) -> None:
        if self.ok:
            self.ok = False
            self.first_broken_seq = seq
            self.problem = problem
            self.details = details

    def to_dict(self) -> dict[str, Any]:
        out = {"chain": self.chain, "ok": self.ok, "count": self.count, "head_seq": self.head_seq,
               "head_hash": self.head_hash}
        if self.archived:
            out["archived"] = self.archived
        if not self.ok:
            out.update(first_broken_seq=self.first_broken_seq, problem=self.problem, details=self.details)
        return out


def on_chain(model: type, chain: str) -> Any:
    """The rows of a chained table that are on ``chain``: the portfolio's, or for `_system`, those of no portfolio."""
    owner = model.portfolio_id
    return owner.is_(None) if chain == SYSTEM_CHAIN else owner == chain


def _rows(session: Session, model: type, chain: str) -> Iterator[tuple[int, str, type, dict[str, Any]]]:
    cond = on_chain(model, chain)
    columns = [getattr(model, c) for c in COLUMNS[model]] + [model.row_hash]
    # (rows of tables chained later, written before they were, hold no place: NULL)
    query = select(*columns).where(cond, model.audit_seq.isnot(None)).order_by(model.audit_seq).execution_options(
        yield_per=2000)
    for row in session.execute(query):
        values = dict(zip(COLUMNS[model], row[:-1], strict=True))
        yield values["audit_seq"], KIND[model], row[-1], values


ARCHIVED = "archived"


def leaf_of(row_hash: str) -> bytes:
    """The Merkle leaf of a chain's row: RFC 6962's leaf hash of its row_hash's 32 bytes."""
    return merkle.leaf_hash(bytes.fromhex(row_hash))


def _archived_leaves(session: Session, chain: str, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, str, bytes, None]]:
    """(seq, ARCHIVED, leaf, None) for every position of the chain's archived ranges, from its Merkle tree (which
    an archive requires to cover them, under a signed checkpoint)."""
    query = text(
        "SELECT n.idx + 1, n.hash FROM merkle_nodes n WHERE n.chain = :c AND n.level = 0 AND EXISTS ("
        "SELECT 1 FROM unnest(CAST(:firsts AS bigint[]), CAST(:lasts AS bigint[])) AS r(first_seq, last_seq) "
        "WHERE n.idx + 1 BETWEEN r.first_seq AND r.last_seq) ORDER BY n.idx").execution_options(yield_per=5000)
    for seq, leaf in session.execute(query, {"c": chain, "firsts": [f for f, _ in ranges],
                                             "lasts": [last for _, last in ranges]}):
        yield seq, ARCHIVED, bytes(leaf), None


@dataclass
class Archived:
    """What the archives took of one chain: how many positions, within which ranges."""

    rows: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)


def archive_records(session: Session) -> Iterator[dict[str, Any]]:
    """What each archive recorded of itself (`rpm audit archive`: the ``after`` of its admin action on the `_system`
    chain: month, file, SHA-256, rows, what it took of each chain), oldest first."""
    actions = session.execute(select(m.AdminAction.after).where(
        m.AdminAction.portfolio_id.is_(None), m.AdminAction.action == "audit_archived").order_by(m.AdminAction.audit_seq))
    return (after for (after,) in actions if isinstance(after, dict))


def archived_positions(session: Session) -> dict[str, Archived]:
    """What the archives took of each chain, as their admin actions on the `_system` chain record it (`rpm audit
    archive`): read from those hashed records, not from any table a tamperer could add a row to unseen."""
    out: dict[str, Archived] = {}
    for after in archive_records(session):
        for chain, took in (after.get("chains") or {}).items():
            archived = out.setdefault(chain, Archived())
            archived.rows += int(took["rows"])
            archived.ranges.append((int(took["first_seq"]), int(took["last_seq"])))
    return out


def verify_chain(session: Session, chain: str, expected_head: tuple[int, str] | None,
                 seen: Callable[[str | bytes], None] | None = None, archived: Archived | None = None,
                 progress: Callable[[int], None] | None = None) -> ChainReport:
    """Walk one chain in sequence order: every row's hash, link and sequence number.

    ``expected_head`` is (seq, hash) from the chain's owner row; ``seen`` is given each row's hash in turn (the
    leaf, as bytes, of an archived position). ``archived``: how many positions the archives took — a position
    of an archived range counts as archived only if no row holds it, and the archived positions found must be
    exactly that many (a row deleted inside an archived range is missing); the row after an archived one must
    name, as its previous hash, the hash whose leaf the tree holds there. ``progress`` is given the positions
    walked so far, every PROGRESS_EVERY of them and at the end.
    """
    report = ChainReport(chain)
    streams = [_rows(session, model, chain) for model in AUDITED]
    archived = archived or Archived()
    if archived.ranges:
        streams.append(_archived_leaves(session, chain, archived.ranges))
    prev_hash: str | None = GENESIS
    prev_leaf = b""
    expected_seq = 1
    for seq, kind, stored_hash, values in heapq.merge(*streams, key=lambda r: (r[0], r[1] is ARCHIVED)):
        if kind is ARCHIVED:
            if seq < expected_seq:  # a row is there (a record of a table not archived)
                continue
            if seq > expected_seq:
                report.fail(expected_seq, "missing", detail=f"sequence numbers {expected_seq}..{seq - 1} are missing",
                            next_present=seq)
            report.archived += 1
            if seen is not None:
                seen(stored_hash)
            if progress is not None and (report.count + report.archived) % PROGRESS_EVERY == 0:
                progress(report.count + report.archived)
            prev_hash, prev_leaf = None, stored_hash
            expected_seq = seq + 1
            report.head_seq = seq
            continue
        report.count += 1
        if seq != expected_seq:
            if seq < expected_seq:
                report.fail(seq, "duplicated", detail=f"sequence number {seq} appears twice", kind=kind)
            else:
                report.fail(expected_seq, "missing", detail=f"sequence numbers {expected_seq}..{seq - 1} are missing",
                            next_present=seq)
        recomputed = row_hash(values["prev_hash"], kind, values)
        if recomputed != stored_hash:
            report.fail(seq, "edited", detail=f"the {kind} at sequence {seq} does not match its hash", kind=kind)
        elif (values["prev_hash"] != prev_hash if prev_hash is not None
              else leaf_of(values["prev_hash"]) != prev_leaf):
            report.fail(seq, "reordered", detail=f"the {kind} at sequence {seq} does not link to its predecessor",
                        kind=kind)
        if seen is not None:
            seen(stored_hash)
        if progress is not None and (report.count + report.archived) % PROGRESS_EVERY == 0:
            progress(report.count + report.archived)
        prev_hash = stored_hash
        expected_seq = seq + 1
        report.head_seq = seq
        report.head_hash = stored_hash
    if progress is not None:
        progress(report.count + report.archived)
    if report.archived != archived.rows:
        report.fail(0, "missing", detail=f"{report.archived} position(s) of the chain's archived ranges hold no row, "
                    f"the archives took {archived.rows}: rows were deleted there")
    if prev_hash is None:  # the chain ends on an archived row: the head names the hash of its leaf
        report.head_hash = expected_head[1] if expected_head and leaf_of(expected_head[1]) == prev_leaf else ""
    if expected_head is not None and report.ok:
        head_seq, head_hash = expected_head
        if head_seq > report.head_seq:
            report.fail(report.head_seq + 1, "missing",
                        detail=f"the chain ends at {report.head_seq} but its head says {head_seq}")
        elif head_seq < report.head_seq or (head_seq and head_hash != report.head_hash):
            report.fail(head_seq, "edited", detail="the chain does not end at the recorded head hash",
                        recorded_head_hash=head_hash)
    return report


def chain_heads(session: Session) -> dict[str, tuple[int, str]]:
    heads = {row.id: (row.audit_seq, row.audit_head or GENESIS) for row in session.scalars(select(m.Portfolio))}
    system = session.get(m.AuditHead, SYSTEM_CHAIN)
    if system is not None:
        heads[SYSTEM_CHAIN] = (system.audit_seq, system.audit_head)
    return heads


# how far long work is, told now and then: ``progress(what, done, total)`` (verify, replay, the EOD report, archive;
# `rpm` draws it as a bar)
Progress = Callable[[str, int, int], None]


def verify_all(session: Session, portfolios: tuple[str, ...] | None = None,
               seen: Callable[[str], Callable[[str], None] | None] | None = None,
               progress: Progress | None = None) -> list[ChainReport]:
    """Verify every chain (those of ``portfolios`` only, unless None) against its recorded head.

    ``seen(chain)``: what is given each row's hash of that chain, in order (None: nothing). ``progress(what,
    done, total)``: the positions walked of every chain, of as many as their heads name, now and then.
    """
    heads = chain_heads(session)
    if portfolios is not None:
        heads = {chain: head for chain, head in heads.items() if chain in portfolios}
    archived = archived_positions(session)
    total = sum(seq for seq, _ in heads.values())
    reports: list[ChainReport] = []
    walked = 0
    for chain, head in sorted(heads.items()):
        advanced = None if progress is None else (lambda n, walked=walked: progress("verifying", walked + n, total))
        report = verify_chain(session, chain, head, None if seen is None else seen(chain), archived.get(chain),
                              advanced)
        reports.append(report)
        walked += report.count + report.archived
    return reports

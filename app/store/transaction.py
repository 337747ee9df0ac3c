"""The portfolio transaction: the one way to lock, read and write portfolios' state, in two round trips
with psycopg's pipeline mode. Every use case that changes a portfolio (a decision, a batch, marks, a fill,
a close, a halt, a resume, a configuration, the portfolio's creation) runs in one, and so do the reads of
its state (without the lock, and never committed).

    round trip 1: BEGIN; lock each portfolio row; read, in one statement, its positions,
                  marks, the ATR histories of the symbols decided on, and which intent ids
                  were already decided            (one pipeline, one wait; the stored rows
                  of those intents, for their replays, take one more round trip)
    round trip 2: the engine decides each intent in memory; its decision, ledger entry and
                  switch events are queued and sent every FLUSH_ROWS rows, each table's as
                  one JSON array, so the server writes them while the next are decided;
                  then what changed of positions, ATR histories and marks, the portfolio
                  row, and COMMIT                                    (one pipeline, one wait)

The read is sent after the lock statement in the same pipeline: PostgreSQL runs them in
order, each with a snapshot taken when it starts, so the read sees everything committed by the
transaction that held the lock before us (folded into the locking statement, it would not: that
statement's snapshot is taken before it waits for the lock). Rows are queued (``add``) and sent in batches,
each table's as one JSON array, in an order that respects their references (``_ORDER``); what changed of
the state follows (``save``), then the portfolio row, then COMMIT. Reading what is not a portfolio's state
(the decision history, keys, equity curves) goes through the ORM (app/services/unit_of_work.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from types import SimpleNamespace
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types import json as pg_json
from sqlalchemy import JSON, Table

from app.risk import PortfolioState, RPMConfig, accounting, firm
from app.risk.model import FIRM, Book, Level, LevelState, Limits, Position, SwitchEvent, SwitchState

from . import events as risk_events
from . import models as m
from .audit import GENESIS, SYSTEM_CHAIN, Chain, json_bytes
from .repository import (
    cached_config,
    cached_histories,
    equity_point_values,
    event_values,
    forget_config,
    ledger_values,
    mark_history_hash,
    state_changes,
    to_state,
)

_PORTFOLIO_COLUMNS = [c.name for c in m.Portfolio.__table__.columns]
_SELECT_PORTFOLIOS = f"SELECT {', '.join(_PORTFOLIO_COLUMNS)} FROM portfolios"
_SELECT_PORTFOLIO = _SELECT_PORTFOLIOS + " WHERE id = %s"
_SELECT_ATR = "SELECT symbol, history FROM atr_histories WHERE portfolio_id = %s AND symbol = ANY(%s)"
# The decisions of a portfolio with some of the given intent ids: one lookup in decision_intents' primary key
# (portfolio_id, intent_id) per id, then the decision by (id, decided_at) in its month's partition alone
# (pruned at run time), whatever the tables' statistics. Before the table has any
# (autovacuum off, a new database), the planner guesses that an id matches 0.5% of the rows: given
# `intent_id = ANY(100 ids)` it read the whole table (38 ms under the lock for a batch of 100 at
# 100,000 decisions, and growing with them), and given a condition on portfolio_id as well, it walked
# a (portfolio_id, ...) index through every decision of the portfolio. A LATERAL subquery with a
# LIMIT is not merged into a join, so each id is one index lookup.
# An intent id whose decision's month was archived is found without its decision (its columns NULL): a retry of
# it is refused, never decided again.
_DECIDED = ("FROM unnest(%(i)s::text[]) AS ids(intent_id), LATERAL (SELECT k.decision_id AS intent_decision_id, "
            "k.decided_at AS intent_decided_at, d.* FROM decision_intents k "
            "LEFT JOIN decisions d ON d.id = k.decision_id AND d.decided_at = k.decided_at "
            "WHERE k.portfolio_id = %(p)s AND k.intent_id = ids.intent_id LIMIT 1) d")
_SELECT_DECIDED = "SELECT ids.intent_id AS intent_key, d.* " + _DECIDED
def _newest_marks(owner: str) -> str:
    """The marks a portfolio (``owner``, an SQL expression) reads: for each symbol the newer of its own and the
    firm's (its own on a tie), price and history together — the rule, in one place."""
    return ("(SELECT DISTINCT ON (symbol) symbol, price, history_hash FROM (SELECT symbol, price, history_hash, "
            f"updated_at, 1 AS own FROM marks WHERE portfolio_id = {owner} UNION ALL SELECT symbol, price, "
            "history_hash, updated_at, 0 FROM firm_marks) AS both_ ORDER BY symbol, updated_at DESC, own DESC) AS newest")


# what the engine reads besides the portfolio row, in one statement (one per table costs the server and
# psycopg more than the statement's work): positions and marks as parallel arrays (aggregates over the
# same rows keep their order), the ATR histories of the symbols decided on, and which of the intent
# ids were already decided here (their rows are read only then, a retry being rare)
_SELECT_STATE = (
    "SELECT pos.symbols, pos.units, pos.avg_prices, pos.opened, mk.symbols, mk.prices, mk.hashes, atr.histories, "
    "decided.ids FROM "
    "(SELECT array_agg(symbol), array_agg(units), array_agg(avg_price), array_agg(opened_at) FROM positions "
    "WHERE portfolio_id = %(p)s) AS pos(symbols, units, avg_prices, opened), "
    f"(SELECT array_agg(symbol), array_agg(price), array_agg(history_hash) FROM {_newest_marks('%(p)s')}) "
    "AS mk(symbols, prices, hashes), "
    "(SELECT jsonb_object_agg(symbol, history) FROM atr_histories WHERE portfolio_id = %(p)s AND symbol = ANY(%(s)s)) "
    "AS atr(histories), "
    f"(SELECT array_agg(ids.intent_id) {_DECIDED}) AS decided(ids)")
# The statements of a decision transaction are prepared (psycopg prepares what a connection runs
# five times), but for a transaction of one intent PostgreSQL kept planning them again at every
# execution (a one-element array makes a custom plan look cheaper than the generic one): the server's
# CPU per lone decision fell from ~0.83 to ~0.57 ms without it (in-process; ~190 us was the state read's
# planning, under the portfolio lock). Their generic plans are the ones wanted whatever the parameters
# (index lookups on the portfolio; one probe per intent id), so the transaction asks for them, for
# itself only.
_GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"
_SELECT_HEAD = ("SELECT last_seq, last_ledger_seq, audit_seq, audit_head, counters, config_version FROM portfolios "
                "WHERE id = %s FOR UPDATE")
_MUTABLE = ["starting_capital", "realised_pnl", "peak_equity", "day_key", "day_start_equity", "day_peak_equity", "week_key",
            "week_start_equity", "trading_state", "switches", "memory", "counters", "last_seq",
            "last_ledger_seq", "audit_seq", "audit_head", "config_version", "updated_at"]
_JSON_COLUMNS = {c.name for c in m.Portfolio.__table__.columns if isinstance(c.type, JSON)}


def _field(name: str, json: bool) -> str:
    """Column ``name`` of a record taken apart by jsonb_populate_record(set) (alias ``r``): it gives SQL
    NULL for a JSON null, so a JSON column is given JSON null back, as the ORM writes it."""
    return f"coalesce(r.{name}, 'null'::jsonb)" if json else f"r.{name}"


# the new values as one JSON object, as the inserts
_SET = ", ".join(_field(c, c in _JSON_COLUMNS) for c in _MUTABLE)
_UPDATE_PORTFOLIO = (f"UPDATE portfolios AS p SET ({', '.join(_MUTABLE)}) = ({_SET}) "
                     "FROM jsonb_populate_record(NULL::portfolios, %s) AS r WHERE p.id = %s")
# what the decisions changed, one statement per table, the rows as one JSON array (as the inserts)
_UPSERT_POSITIONS = (
    "INSERT INTO positions (portfolio_id, symbol, units, avg_price, opened_at, updated_at) "
    "SELECT r.portfolio_id, r.symbol, r.units, r.avg_price, r.opened_at, r.updated_at "
    "FROM jsonb_populate_recordset(NULL::positions, %s) r ON CONFLICT (portfolio_id, symbol) DO UPDATE SET "
    "units = excluded.units, avg_price = excluded.avg_price, opened_at = excluded.opened_at, "
    "updated_at = excluded.updated_at")
_UPSERT_ATRS = (
    "INSERT INTO atr_histories (portfolio_id, symbol, history, updated_at) "
    "SELECT r.portfolio_id, r.symbol, r.history, r.updated_at FROM jsonb_populate_recordset(NULL::atr_histories, %s) r "
    "ON CONFLICT (portfolio_id, symbol) DO UPDATE SET history = excluded.history, updated_at = excluded.updated_at")
_DELETE_POSITIONS = "DELETE FROM positions WHERE portfolio_id = %s AND symbol = ANY(%s)"
_UPSERT_MARK = (
    "INSERT INTO marks (portfolio_id, symbol, price, history, history_hash, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (portfolio_id, symbol) DO UPDATE SET "
    "price = excluded.price, history = excluded.history, history_hash = excluded.history_hash, "
    "updated_at = excluded.updated_at")
_INSERT_SNAPSHOT = ("INSERT INTO mark_snapshots (hash, symbol, prices, created_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (hash) DO NOTHING")
# JSONB parameters encoded as the rows are (json_bytes; PostgreSQL parses them: the stored values are the same)
Jsonb = partial(pg_json.Jsonb, dumps=json_bytes)


def _insert(model: type) -> str:
    """INSERT of rows given as one JSON array of objects (a parameter the server takes apart)."""
    table: Table = model.__table__
    columns = [c for c in table.columns if not (c.primary_key and c.autoincrement is True)]
    fields = ", ".join(_field(c.name, isinstance(c.type, JSON)) for c in columns)
    return (f"INSERT INTO {table.name} ({', '.join(c.name for c in columns)}) SELECT {fields} "
            f"FROM jsonb_populate_recordset(NULL::{table.name}, %s) r")


def _array(rows: list[bytes]) -> str:
    return (b"[" + b",".join(rows) + b"]").decode()


def _rows(rows: Iterable[dict[str, Any]]) -> str:
    """Rows as the JSON array a jsonb_populate_recordset parameter takes."""
    return _array([json_bytes(values) for values in rows])


# rows queued before they are sent: the server writes one batch while the next decisions are made
FLUSH_ROWS = 16


# the tables rows are queued for, in the order they are sent: a row's references first (a decision before its
# ledger entry, events and fills; a portfolio before all)
_ORDER = (m.Portfolio, m.ConfigVersion, m.Decision, m.LedgerEntry, m.SwitchEventRow, m.Fill, m.EquityPoint,
          m.MarkUpdate, m.AdminAction)
_INSERTS = {model: _insert(model) for model in _ORDER}
_SELECT_STORED_DECISION = ("SELECT d.*, EXISTS (SELECT 1 FROM fills f WHERE f.decision_id = d.id) AS filled "
                           "FROM decisions d WHERE d.id = %s AND d.portfolio_id = %s")
_SELECT_LATENCIES = ("SELECT latency_ms FROM (SELECT latency_ms FROM decisions WHERE portfolio_id = %s "
                     "ORDER BY seq DESC LIMIT 10000) d WHERE latency_ms IS NOT NULL")


# -- the groups and the firm above the portfolios (app/risk/firm.py) ---------------------------------
# A transaction that changes portfolios locks the groups above them, after the portfolios (so, in the same order
# everywhere: portfolios by id, groups by id, the firm last): a group's members decide one transaction at a time,
# which is what keeps two of them from breaching its limits together. The firm is locked the same way when it has
# limits; without any it is only share-locked, for its halt: a halt waits for the decisions in flight, and every
# decision after it sees it. (Its two statements choose by its limits as they are when each runs: one of them
# finds it, unless its limits changed between the two, and then the transaction reads again.)
_GROUP_COLUMNS = [c.name for c in m.Group.__table__.columns]
_SELECT_GROUPS = f"SELECT {', '.join(_GROUP_COLUMNS)} FROM groups"
_UP = ("WITH RECURSIVE up(id) AS (SELECT group_id FROM portfolios WHERE id = ANY(%(p)s) AND group_id IS NOT NULL "
       "UNION SELECT g.parent_id FROM groups g JOIN up ON g.id = up.id WHERE g.parent_id IS NOT NULL) ")
_LOCK_GROUPS = _UP + _SELECT_GROUPS + " WHERE id IN (SELECT id FROM up) AND id <> 'firm' ORDER BY id"
_LOCK_FIRM_HELD = _SELECT_GROUPS + " WHERE id = 'firm' AND limits <> '{}'::jsonb"
_LOCK_FIRM_SHARED = _SELECT_GROUPS + " WHERE id = 'firm' AND limits = '{}'::jsonb"
_SELECT_TREE = "SELECT id, parent_id FROM groups"
# the portfolios whose books the locked levels with limits measure: those under the same groups (and every one when
# the firm has limits: one more round trip), read after the locks: what they show is what the other members committed
_SELECT_MEMBERS = (
    _UP + ", down(id) AS (SELECT id FROM up WHERE id <> 'firm' UNION SELECT g.id FROM groups g JOIN down ON "
    "g.parent_id = down.id) "
    "SELECT id, group_id FROM portfolios WHERE group_id IN (SELECT id FROM down)")
# (an index lookup above: a scan of the portfolios table reads every version of their rows not yet vacuumed, and
# each transaction of a portfolio leaves one. Every portfolio is the firm's: read only when the firm has limits)
_SELECT_EVERY_PORTFOLIO = "SELECT id, group_id FROM portfolios"
# the books of other portfolios, in one statement (their marks as ``_SELECT_STATE`` reads them)
_SELECT_BOOKS = (
    "SELECT p.id, p.starting_capital, p.realised_pnl, p.config_version, pos.symbols, pos.units, pos.avg_prices, "
    "pos.opened, mk.symbols, mk.prices FROM portfolios p, "
    "LATERAL (SELECT array_agg(symbol), array_agg(units), array_agg(avg_price), array_agg(opened_at) FROM positions "
    "WHERE portfolio_id = p.id) AS pos(symbols, units, avg_prices, opened), "
    f"LATERAL (SELECT array_agg(symbol), array_agg(price) FROM {_newest_marks('p.id')}) AS mk(symbols, prices) "
    "WHERE p.id = ANY(%s)")
_UPDATE_GROUP = ("UPDATE groups SET switches = %s, peak_equity = %s, day_key = %s, day_start_equity = %s, "
                 "day_peak_equity = %s, week_key = %s, week_start_equity = %s, updated_at = %s WHERE id = %s")
_LOCK_SYSTEM_HEAD = "SELECT audit_seq, audit_head FROM audit_heads WHERE chain = %s FOR UPDATE"
_MAKE_SYSTEM_HEAD = ("INSERT INTO audit_heads (chain, audit_seq, audit_head) VALUES (%s, 0, %s) "
                     "ON CONFLICT (chain) DO NOTHING")
_UPDATE_SYSTEM_HEAD = "UPDATE audit_heads SET audit_seq = %s, audit_head = %s WHERE chain = %s"


class LevelsChanged(Exception):
    """The firm's limits changed between the two statements that lock it: the transaction reads again."""


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value).normalize()


@dataclass
class GroupRow:
    """A group or the firm as a transaction read it: its place in the tree, limits, switch state (and the state it
    read, to know what to write), and whether the transaction holds it for update."""

    id: str
    parent_id: str | None
    currency: str
    limits: Limits
    state: LevelState
    initial: LevelState
    for_update: bool
    read_tripped: frozenset[str] = frozenset()  # its switches tripped when read (what its events start from)

    @classmethod
    def of(cls, values: tuple[Any, ...], for_update: bool) -> GroupRow:
        row = dict(zip(_GROUP_COLUMNS, values, strict=True))
        state = LevelState({k: SwitchState.from_dict(v) for k, v in (row["switches"] or {}).items()},
                           _dec(row["peak_equity"]), row["day_key"], _dec(row["day_start_equity"]),
                           _dec(row["day_peak_equity"]), row["week_key"], _dec(row["week_start_equity"]))
        return cls(row["id"], row["parent_id"], row["currency"], Limits.from_dict(row["limits"]), state,
                   state.clone(), for_update, frozenset(state.switches))

    @property
    def held(self) -> bool:
        """Measured (its aggregate, its switches): it has limits. Its new state is written only when the transaction
        holds it for update."""
        return self.limits.any


def release_rows(row: Any, state: PortfolioState, now: datetime) -> list[tuple[type, dict[str, Any]]]:
    """The rows of the approvals ``state`` released (then forgotten), on the chain of ``row``: for each, a fill of
    nothing (so that no later fill is taken) and a ledger entry of what it gave back (none when it gave nothing
    back: its position was closed since, or corrected)."""
    rows: list[tuple[type, dict[str, Any]]] = []
    chain = Chain(row)
    for release in state.released:
        booking = release.approval.booking
        rows.append((m.Fill, chain.seal(m.Fill, dict(
            portfolio_id=row.id, decision_id=booking.decision_id, filled_units=Decimal(0), fill_price=booking.price,
            realised_delta=release.realised_delta, at=now,
            **{risk_events.RELEASED: {"symbol": booking.symbol, "units": booking.units, "direction": booking.direction,
                                        "voided": release.voided, "note": release.note or None}}))))
        if not release.note:
            rows.append((m.LedgerEntry, chain.seal(m.LedgerEntry, ledger_values(
                row, kind="expire", symbol=booking.symbol, units=-booking.units * booking.direction,  # (opens only)
                price=booking.price, realised=release.realised_delta, state=state, at=now, actor="expiry",
                decision_id=booking.decision_id))))
    state.released.clear()
    return rows


def _decided(cursor: Any) -> dict[str, SimpleNamespace]:
    """The stored decisions an intent-id lookup found (``_SELECT_DECIDED``), by intent id."""
    earlier = {}
    for data in cursor.fetchall() if cursor is not None else ():
        intent_id = data.pop("intent_key")
        archived = Archived(data.pop("intent_decision_id"), _utc(data.pop("intent_decided_at")))
        if data["id"] is None:  # (its month archived)
            earlier[intent_id] = archived
            continue
        data["decided_at"] = _utc(data["decided_at"])
        earlier[intent_id] = SimpleNamespace(**data)
    return earlier


@dataclass(frozen=True)
class Archived:
    """A decision an intent id got, in a month since archived: found in the archive's file, not here."""

    id: str
    decided_at: datetime


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _portfolio_row(values: tuple[Any, ...]) -> SimpleNamespace:
    row = SimpleNamespace(**dict(zip(_PORTFOLIO_COLUMNS, values, strict=True)))
    row.created_at, row.updated_at = _utc(row.created_at), _utc(row.updated_at)
    return row


@dataclass
class Wanted:
    """What a transaction needs read of one portfolio besides its row, positions and marks: the ATR histories
    of the symbols it decides on, and which of its intent ids were decided already (retries). Nothing, for
    a use case that decides no intent."""

    intent_ids: list[str] = field(default_factory=list)
    symbols: set[str] = field(default_factory=set)


@dataclass
class Loaded:
    """A portfolio as read: its row (counters, sequence numbers, chain head), its marks as stored (their
    histories' hashes), the engine's state and the configuration."""

    row: SimpleNamespace
    marks: dict[str, SimpleNamespace]
    state: PortfolioState
    config: RPMConfig


@dataclass
class Locked:
    """One portfolio as read under its lock: the engine's view, and the intents it already decided."""

    loaded: Loaded
    initial: PortfolioState
    decided: dict[str, SimpleNamespace]


@dataclass
class PortfolioTransaction:
    """One or more portfolios: locked and read in one round trip, written and committed in one."""

    conn: Connection
    database: str  # the URL without password: the key of the configuration cache
    _cursor: Any = None
    _queued: dict[type, list[bytes]] = field(default_factory=dict)
    _count: int = 0
    _created: list[str] = field(default_factory=list)  # portfolios this transaction inserted
    _pointed: set[str] = field(default_factory=set)  # portfolios given a point of their equity curve
    _committed: bool = False
    # the groups and the firm above the portfolios locked, by id; the books of their other members, by level
    groups: dict[str, GroupRow] = field(default_factory=dict)
    _parents: dict[str, str | None] = field(default_factory=dict)
    _group_of: dict[str, str | None] = field(default_factory=dict)  # portfolio -> its group (None: the firm)
    _base: dict[str, Book] = field(default_factory=dict)
    _mine: dict[str, Locked] = field(default_factory=dict)  # the portfolios this transaction locked
    _level_events: list[tuple[SwitchEvent, str | None]] = field(default_factory=list)
    _now: datetime | None = None
    # the causes of risk events recorded, by chain; the events sealed (inserted at COMMIT); those committed
    _causes: risk_events.Causes = field(default_factory=risk_events.Causes)
    _events: list[dict[str, Any]] = field(default_factory=list)
    committed_events: list[dict[str, Any]] = field(default_factory=list)
    _system_head: SimpleNamespace | None = None  # the `_system` chain's head, once locked
    unsafe_groups: bool = False  # TEST ONLY: the groups read without their lock (the race tests)

    def lock(self, requests: dict[str, Wanted], *, lock: bool = True,
             levels: bool | None = None) -> dict[str, Locked | None]:
        """Lock the portfolios (in sorted order: no deadlock) and read them; None for one that does not exist.
        ``levels`` (by default when locking): the groups and the firm above them too, locked after them, and the
        books of their other members; each state is given its levels (``PortfolioState.levels``)."""
        levels = lock if levels is None else levels
        for _attempt in range(3):
            try:
                return self._lock(requests, lock, levels)
            except LevelsChanged:
                if self._created:  # (a portfolio made in this transaction would be lost with it)
                    raise RuntimeError("the firm's limits changed while a portfolio was being made") from None
                self.conn.rollback()
        raise RuntimeError("the firm's limits kept changing")

    def _lock(self, requests: dict[str, Wanted], lock: bool, levels: bool) -> dict[str, Locked | None]:
        conn = self.conn
        cursors = {}
        suffix = " FOR UPDATE" if lock else ""
        ids = sorted(requests)
        with conn.pipeline():
            conn.execute(_GENERIC_PLANS)
            for portfolio_id in ids:
                wanted = requests[portfolio_id]
                cursors[portfolio_id] = (
                    conn.execute(_SELECT_PORTFOLIO + suffix, (portfolio_id,)),
                    conn.execute(_SELECT_STATE, {"p": portfolio_id, "s": sorted(wanted.symbols),
                                                 "i": wanted.intent_ids}),
                )
            if levels:
                held = lock and not self.unsafe_groups
                found = (conn.execute(_LOCK_GROUPS + (" FOR NO KEY UPDATE" if held else ""), {"p": ids}),
                         conn.execute(_LOCK_FIRM_HELD + (" FOR NO KEY UPDATE" if held else "")),
                         conn.execute(_LOCK_FIRM_SHARED + (" FOR SHARE" if lock else "")),
                         conn.execute(_SELECT_TREE), conn.execute(_SELECT_MEMBERS, {"p": ids}))
        locked = {pid: self._locked(*found_) for pid, found_ in cursors.items()}
        if levels:
            self._read_levels(locked, *found, held=held)
        return locked

    def _read_levels(self, locked: dict[str, Locked | None], groups: Any, firm_held: Any, firm_shared: Any,
                     tree: Any, members: Any, held: bool) -> None:
        """The groups and the firm as locked, the books of their other members (one more round trip when a level
        has limits), and each locked portfolio's levels."""
        rows = [GroupRow.of(v, held) for v in groups.fetchall()]
        rows += [GroupRow.of(v, held) for v in firm_held.fetchall()]
        rows += [GroupRow.of(v, False) for v in firm_shared.fetchall()]
        if sum(1 for r in rows if r.id == FIRM) != 1:
            raise LevelsChanged
        self._parents.update(tree.fetchall())
        for row in rows:
            self.groups.setdefault(row.id, row)
        for lk in locked.values():
            if lk is not None:
                self._mine[lk.loaded.row.id] = lk
                self._group_of[lk.loaded.row.id] = lk.loaded.row.group_id
        found = members.fetchall()
        if self.groups[FIRM].held:
            found = self.conn.execute(_SELECT_EVERY_PORTFOLIO).fetchall()
        others = {pid: gid for pid, gid in found if pid not in self._mine}
        self._group_of.update(others)
        measured = {g.id for g in self.groups.values() if g.held}
        wanted = sorted(pid for pid in others if measured & set(self.ancestors(pid)))
        if wanted:
            for pid, (state, config) in self._read_books(wanted).items():
                for level_id in measured & set(self.ancestors(pid)):
                    currency = self.groups[level_id].currency
                    self._base[level_id] = self._base.get(level_id, Book()).plus(firm.book_of(state, config, currency))
        for lk in self._mine.values():
            self.give_levels(lk)

    def books_of(self, ids: list[str]) -> dict[str, tuple[PortfolioState, RPMConfig]]:
        """Other portfolios' books as committed (``_read_books``), for the firm's use cases."""
        return self._read_books(ids) if ids else {}

    def _read_books(self, ids: list[str]) -> dict[str, tuple[PortfolioState, RPMConfig]]:
        """What a level's aggregate needs of other portfolios — capital, realised PnL, positions, marks (the newer of
        each's own and the firm's) — as committed, in one statement."""
        books = {}
        for (pid, capital, realised, version, symbols, units, avgs, opened, mark_symbols,
             prices) in self.conn.execute(_SELECT_BOOKS, (ids,)):
            row = SimpleNamespace(id=pid, config_version=version)
            positions = {sym: Position(sym, _dec(u), _dec(a), _utc(at))
                         for sym, u, a, at in zip(symbols or (), units or (), avgs or (), opened or (), strict=True)}
            marks = {sym: _dec(price) for sym, price in zip(mark_symbols or (), prices or (), strict=True)}
            state = PortfolioState(pid, _dec(capital), realised_pnl=_dec(realised), positions=positions, marks=marks)
            books[pid] = (state, self._config(row))
        return books

    def _read_states(self, ids: list[str]) -> dict[str, Locked | None]:
        """Portfolios' states as committed (their books, for a level's aggregate), in one round trip."""
        conn = self.conn
        cursors = {}
        with conn.pipeline():
            for portfolio_id in ids:
                cursors[portfolio_id] = (conn.execute(_SELECT_PORTFOLIO, (portfolio_id,)),
                                         conn.execute(_SELECT_STATE, {"p": portfolio_id, "s": [], "i": []}))
        return {pid: self._locked(*found) for pid, found in cursors.items()}

    def ancestors(self, portfolio_id: str) -> list[str]:
        """The groups above a portfolio, nearest first, and the firm."""
        out: list[str] = []
        node = self._group_of.get(portfolio_id)
        while node is not None and node != FIRM and node not in out:
            out.append(node)
            node = self._parents.get(node)
        return [*out, FIRM]

    def give_levels(self, lk: Locked) -> None:
        """Set a locked portfolio's levels from the transaction's: each level's state as it now is, and the books
        of its other members (those read, and those of this transaction as they now are)."""
        pid = lk.loaded.row.id
        levels = []
        for level_id in self.ancestors(pid):
            row = self.groups.get(level_id)
            if row is None:
                continue
            others = self._base.get(level_id, Book())
            if row.held:
                for other, olk in self._mine.items():
                    if other != pid and level_id in self.ancestors(other):
                        others = others.plus(firm.book_of(olk.loaded.state, olk.loaded.config, row.currency))
            levels.append(Level(level_id, row.currency, row.limits, row.state, others, row.held))
        lk.loaded.state.levels = tuple(levels)

    def take_levels(self, state: PortfolioState) -> None:
        """The levels' states after an operation of the engine on ``state``: the transaction's from now on."""
        for level in state.levels:
            row = self.groups.get(level.id)
            if row is not None and row.for_update:
                row.state = level.state

    def level_events(self, events: list[SwitchEvent], decision_id: str | None) -> list[SwitchEvent]:
        """Of ``events``, those of a portfolio; the levels' are kept, for the `_system` chain at commit."""
        mine = []
        for event in events:
            if firm.of_level(event):
                self._level_events.append((event, decision_id))
            else:
                mine.append(event)
        return mine

    # -- the firm's own use cases (app/services/firm.py) ---------------------------------------
    def all_groups(self, lock: str | None = None) -> dict[str, GroupRow]:
        """Every group and the firm, by id (the transaction's levels from now on); ``lock``: that one locked for
        update first (empty when it does not exist)."""
        if lock is not None and self.conn.execute("SELECT id FROM groups WHERE id = %s FOR NO KEY UPDATE",
                                                  (lock,)).fetchone() is None:
            return {}
        rows = {v[0]: GroupRow.of(v, v[0] == lock) for v in self.conn.execute(_SELECT_GROUPS + " ORDER BY id")}
        self.groups = rows
        self._parents = {gid: row.parent_id for gid, row in rows.items()}
        return rows

    def all_portfolios(self) -> dict[str, Locked]:
        """Every portfolio's state as committed, by id (their groups known to ``ancestors``)."""
        ids = [pid for (pid,) in self.conn.execute("SELECT id FROM portfolios ORDER BY id")]
        states = {pid: lk for pid, lk in self._read_states(ids).items() if lk is not None}
        self._group_of.update({pid: lk.loaded.row.group_id for pid, lk in states.items()})
        return states

    def save_groups(self, now: datetime) -> None:
        """Write what changed of the levels' states (inside ``writing``)."""
        self._save_levels(now)

    def _save_levels(self, now: datetime) -> None:
        """The levels' states that changed, and their events on the `_system` chain."""
        for row in self.groups.values():
            if row.for_update and row.state.to_dict() != row.initial.to_dict():
                st = row.state
                self._send(_UPDATE_GROUP, (Jsonb({k: v.to_dict() for k, v in sorted(st.switches.items())}),
                                           st.peak_equity, st.day_key, st.day_start_equity, st.day_peak_equity,
                                           st.week_key, st.week_start_equity, now, row.id))
                row.initial = st.clone()
        if self._level_events:
            self.add(self.system_rows([(m.SwitchEventRow, event_values(None, e, d)) for e, d in self._level_events]))
            self._level_events.clear()

    def system_rows(self, rows: list[tuple[type, dict[str, Any]]]) -> list[tuple[type, dict[str, Any]]]:
        """``rows`` sealed on the `_system` chain, whose head this transaction locks (after everything else; the
        head is written at COMMIT)."""
        chain = Chain(self._system_owner())
        return [(model, chain.seal(model, values)) for model, values in rows]

    def _system_owner(self) -> SimpleNamespace:
        if self._system_head is None:
            self.conn.execute(_MAKE_SYSTEM_HEAD, (SYSTEM_CHAIN, GENESIS))
            seq, head = self.conn.execute(_LOCK_SYSTEM_HEAD, (SYSTEM_CHAIN,)).fetchone()
            self._system_head = SimpleNamespace(audit_seq=seq, audit_head=head)
        return self._system_head

    def _seal_events(self, chain: str, owner: Any, tripped: Any) -> None:
        """The risk events of a chain's causes recorded so far, sealed on it after them (app/store/events.py)."""
        causes = self._causes.take(chain)
        if causes:
            sealer = Chain(owner)
            self._events += [sealer.seal(m.RiskEvent, e) for e in risk_events.derive(causes, tripped)]

    def _locked(self, portfolio, state) -> Locked | None:
        values = portfolio.fetchone()
        if values is None:
            return None
        row = _portfolio_row(values)
        (symbols, units, avg_prices, opened, mark_symbols, prices, hashes, atr,
         decided_ids) = state.fetchone()
        position_rows = {
            symbol: SimpleNamespace(symbol=symbol, units=u, avg_price=avg, opened_at=_utc(at))
            for symbol, u, avg, at in zip(symbols or (), units or (), avg_prices or (), opened or (), strict=True)
        }
        mark_rows = {symbol: SimpleNamespace(symbol=symbol, price=price, history_hash=digest)
                     for symbol, price, digest in zip(mark_symbols or (), prices or (), hashes or (), strict=True)}
        old = {s for s, k in mark_rows.items() if k.history_hash is None}  # written before mark snapshots existed
        if old:  # (the portfolio's own: a firm mark always has its history's name)
            for symbol, history in self.conn.execute(
                    "SELECT symbol, history FROM marks WHERE portfolio_id = %s AND symbol = ANY(%s)",
                    (row.id, sorted(old))):
                mark_rows[symbol].history_hash = mark_history_hash(symbol, history or [])
                mark_rows[symbol].history = tuple(history or ())
        found = cached_histories({k.history_hash for s, k in mark_rows.items() if s not in old}, self._snapshots)
        histories = {s: k.history if s in old else found[k.history_hash] for s, k in mark_rows.items()}
        config = self._config(row)
        state = to_state(row, position_rows, mark_rows, histories, {s: tuple(h) for s, h in (atr or {}).items()})
        loaded = Loaded(row, mark_rows, state, config)
        decided = (self.conn.cursor(row_factory=dict_row).execute(_SELECT_DECIDED, {"i": decided_ids, "p": row.id})
                   if decided_ids else None)
        return Locked(loaded, state, _decided(decided))

    def read_more(self, locked: dict[str, Locked], requests: dict[str, Wanted]) -> None:
        """Intents that joined after the lock was taken: read what they need that ``lock`` did not
        (the ATR histories of other symbols, whether their intent ids were decided), in one round trip."""
        conn = self.conn
        cursors = {}
        with conn.pipeline():
            for portfolio_id in sorted(requests):
                wanted, state = requests[portfolio_id], locked[portfolio_id].initial
                symbols = sorted(wanted.symbols - set(state.atr_history))
                cursors[portfolio_id] = (
                    conn.execute(_SELECT_ATR, (portfolio_id, symbols)) if symbols else None,
                    conn.cursor(row_factory=dict_row).execute(_SELECT_DECIDED,
                                                              {"i": wanted.intent_ids, "p": portfolio_id})
                    if wanted.intent_ids else None,
                )
        for portfolio_id, (atr, decided) in cursors.items():
            lk = locked[portfolio_id]
            # (before any decision: the state read under the lock is also the one decisions start from)
            for symbol, history in atr.fetchall() if atr is not None else ():
                lk.initial.atr_history[symbol] = tuple(history)
            lk.decided.update(_decided(decided))

    def _snapshots(self, missing: list[str]) -> list[tuple[str, list[float]]]:
        return self.conn.execute("SELECT hash, prices FROM mark_snapshots WHERE hash = ANY(%s)", (missing,)).fetchall()

    def stored_decision(self, portfolio_id: str, decision_id: str) -> SimpleNamespace | None:
        """A decision of the portfolio, and whether it was filled (``filled``); None when it has none such."""
        found = self.conn.cursor(row_factory=dict_row).execute(_SELECT_STORED_DECISION,
                                                                (decision_id, portfolio_id)).fetchone()
        if found is None:
            return None
        found["decided_at"] = _utc(found["decided_at"])
        return SimpleNamespace(**found)

    def config_version(self, portfolio_id: str, version: int) -> dict[str, Any]:
        """A configuration version's row."""
        found = self.conn.cursor(row_factory=dict_row).execute(
            "SELECT * FROM config_versions WHERE portfolio_id = %s AND version = %s", (portfolio_id, version)).fetchone()
        found["created_at"] = _utc(found["created_at"])
        return found

    def latencies(self, portfolio_id: str) -> list[float]:
        """The decision latencies (ms) of the portfolio's last 10,000 decisions, newest first."""
        return [float(v) for (v,) in self.conn.execute(_SELECT_LATENCIES, (portfolio_id,))]

    def create(self, portfolio: dict[str, Any], config: dict[str, Any]) -> bool:
        """Insert a portfolio row and its first configuration version now (not queued: the portfolio is then
        locked and read like any other); False when it exists already (made meanwhile by another transaction,
        whose commit this one waited for)."""
        head = SimpleNamespace(audit_seq=0, audit_head=None)
        config = Chain(head).seal(m.ConfigVersion, dict(config))  # the first row of the portfolio's chain
        portfolio = {**portfolio, "audit_seq": head.audit_seq, "audit_head": head.audit_head}
        created = self.conn.execute(_insert(m.Portfolio) + " ON CONFLICT (id) DO NOTHING RETURNING id",
                                    (_rows([portfolio]),)).fetchone()
        if created is not None:
            self.conn.execute(_INSERTS[m.ConfigVersion], (_rows([config]),))
            self._created.append(portfolio["id"])
        return created is not None

    def forget_uncommitted(self) -> None:
        """At the end of the transaction: the configurations of portfolios it made are forgotten by the
        process's cache unless it committed (read back under the lock, they were never stored)."""
        if not self._committed:
            for portfolio_id in self._created:
                forget_config(self.database, portfolio_id, 1)

    def listed(self, allowed: tuple[str, ...] | None) -> list[tuple[SimpleNamespace, RPMConfig]]:
        """Every portfolio (those of ``allowed`` only, unless None), by id: its row and configuration."""
        where = "" if allowed is None else " WHERE id = ANY(%s)"
        found = self.conn.execute(_SELECT_PORTFOLIOS + where + " ORDER BY id",
                                  () if allowed is None else (list(allowed),)).fetchall()
        rows = [_portfolio_row(values) for values in found]
        return [(row, self._config(row)) for row in rows]

    def _config(self, row: SimpleNamespace) -> RPMConfig:
        return cached_config(self.database, row.id, row.config_version, lambda: self.conn.execute(
            "SELECT body FROM config_versions WHERE portfolio_id = %s AND version = %s",
            (row.id, row.config_version)).fetchone()[0])

    def refresh_head(self, row: SimpleNamespace) -> None:
        """TEST ONLY (the unsafe mode): lock the row now and take its fresh counters and chain head."""
        (row.last_seq, row.last_ledger_seq, row.audit_seq, row.audit_head,
         row.counters, row.config_version) = self.conn.execute(_SELECT_HEAD, (row.id,)).fetchone()

    # -- writes (sent as they come, in one pipeline that COMMIT ends) -------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Open the pipeline the writes go into: the server inserts the rows queued (a decision's, say) while
        the next are made."""
        with self.conn.pipeline(), self.conn.cursor() as cursor:
            self._cursor = cursor
            try:
                yield
            finally:
                self._cursor = None

    def _send(self, sql: str, params: tuple[Any, ...]) -> None:
        self._cursor.execute(sql, params)

    def add(self, rows: list[tuple[type, dict[str, Any]]]) -> None:
        """Queue rows, all or none (each is encoded before any is queued); rows go out in batches, each
        table's as one JSON array that the server takes apart (jsonb_populate_recordset): orjson writes it
        at C speed where psycopg would adapt each value in Python, and one statement carries several rows."""
        encoded = [(model, json_bytes(values)) for model, values in rows]
        self._causes.note(rows)
        self._pointed.update(values["portfolio_id"] for model, values in rows if model is m.EquityPoint)
        for model, row in encoded:
            self._queued.setdefault(model, []).append(row)
        self._count += len(encoded)
        if self._cursor is not None and self._count >= FLUSH_ROWS:  # (queued before ``writing``: sent by ``save``)
            self.flush()

    def flush(self) -> None:
        """Send the queued rows, each table's in ``_ORDER``."""
        for model in _ORDER:
            rows = self._queued.pop(model, None)
            if rows:
                self._send(_INSERTS[model], (_array(rows),))
        if self._queued:  # a table missing from _ORDER: its rows would never be written
            raise RuntimeError(f"rows queued for tables not in _ORDER: {sorted(t.__name__ for t in self._queued)}")
        self._count = 0

    def save(self, locked: Locked, now: datetime) -> None:
        """Write what the use case changed of the state (positions, marks, ATR histories), the rows it queued,
        and the portfolio row (its counters, sequence numbers, chain head, configuration version)."""
        loaded = locked.loaded
        row = loaded.row
        self.take_levels(loaded.state)
        self._now = now
        changes = state_changes(locked.initial, loaded.state)
        if changes.closed:
            self._send(_DELETE_POSITIONS, (row.id, sorted(changes.closed)))
        if changes.positions:
            self._send(_UPSERT_POSITIONS, (_rows(
                dict(portfolio_id=row.id, symbol=symbol, units=pos.units, avg_price=pos.avg_price,
                     opened_at=pos.opened_at, updated_at=now) for symbol, pos in changes.positions.items()),))
        if changes.atr:
            self._send(_UPSERT_ATRS, (_rows(
                dict(portfolio_id=row.id, symbol=symbol, history=history, updated_at=now)
                for symbol, history in changes.atr.items()),))
        for symbol, (price, history) in changes.marks.items():
            digest = mark_history_hash(symbol, history)
            self._send(_INSERT_SNAPSHOT, (digest, symbol, Jsonb(list(history)), now))
            self._send(_UPSERT_MARK, (row.id, symbol, price, Jsonb(list(history)), digest, now))
        # (releases made after the transaction's start: those due then were written first, by the unit of work)
        self.add(release_rows(row, loaded.state, now))
        if loaded.state.peak_equity != locked.initial.peak_equity and row.id not in self._pointed:
            # the peak moved (a decision's booking, a resume's re-basing): a point says where to, on the chain,
            # so that the stored peak is derived from the chain
            equity = accounting.equity(loaded.state, loaded.config)
            self.add([(m.EquityPoint, Chain(row).seal(m.EquityPoint, equity_point_values(row.id, loaded.state, equity,
                                                                                         now)))])
        self._seal_events(row.id, row, lambda _level: set(locked.initial.switches))
        for column, value in changes.portfolio.items():
            setattr(row, column, value)
        row.updated_at = now
        self.flush()
        self._send(_UPDATE_PORTFOLIO, (json_bytes({c: getattr(row, c) for c in _MUTABLE}).decode(), row.id))

    def commit(self) -> None:
        """COMMIT: the pipeline's last statement; its answer is the one round trip waited for."""
        if self.groups:
            self._save_levels(self._now or datetime.now(UTC))
        if SYSTEM_CHAIN in self._causes.by_chain:
            groups = self.groups
            self._seal_events(SYSTEM_CHAIN, self._system_owner(),
                              lambda level: set(groups[level].read_tripped) if level in groups else set())
        if self._causes.by_chain:  # a portfolio's causes recorded after its state was saved: events lost
            raise RuntimeError(f"risk events not derived for {sorted(self._causes.by_chain)}")
        if self._system_head is not None:
            self._send(_UPDATE_SYSTEM_HEAD, (self._system_head.audit_seq, self._system_head.audit_head, SYSTEM_CHAIN))
        self.flush()
        inserted = None
        if self._events:  # the last lock taken, held only until COMMIT: ids in commit order
            self._send(risk_events.LOCK_SQL, ())
            inserted = self.conn.cursor()
            inserted.execute(risk_events.INSERT_SQL, (_rows(self._events),))
        self.conn.commit()
        self._committed = True
        if inserted is not None:
            numbered = {(chain, audit_seq): (eid, seq) for eid, chain, seq, audit_seq in inserted.fetchall()}
            for e in self._events:
                e["id"], e["seq"] = numbered[(e["chain"], e["audit_seq"])]
            self.committed_events = self._events
            self._events = []

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

from app.risk import PortfolioState, RPMConfig, accounting

from . import models as m
from .audit import Chain, json_bytes
from .repository import (
    cached_config,
    cached_histories,
    equity_point_values,
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
# The decisions of a portfolio with some of the given intent ids: one lookup in the unique index on
# (portfolio_id, intent_id) per id, whatever the table's statistics. Before the table has any
# (autovacuum off, a new database), the planner guesses that an id matches 0.5% of the rows: given
# `intent_id = ANY(100 ids)` it read the whole table (38 ms under the lock for a batch of 100 at
# 100,000 decisions, and growing with them), and given a condition on portfolio_id as well, it walked
# a (portfolio_id, ...) index through every decision of the portfolio. A LATERAL subquery with a
# LIMIT is not merged into a join, so each id is one index lookup.
_DECIDED = ("FROM unnest(%(i)s::text[]) AS ids(intent_id), LATERAL (SELECT * FROM decisions d "
            "WHERE d.portfolio_id = %(p)s AND d.intent_id = ids.intent_id LIMIT 1) d")
_SELECT_DECIDED = "SELECT d.* " + _DECIDED
# what the engine reads besides the portfolio row, in one statement (one per table costs the server and
# psycopg more than the statement's work): positions and marks as parallel arrays (aggregates over the
# same rows keep their order), the ATR histories of the symbols decided on, and which of the intent
# ids were already decided here (their rows are read only then, a retry being rare)
_SELECT_STATE = (
    "SELECT pos.symbols, pos.units, pos.avg_prices, pos.opened, mk.symbols, mk.prices, mk.hashes, atr.histories, "
    "decided.ids FROM "
    "(SELECT array_agg(symbol), array_agg(units), array_agg(avg_price), array_agg(opened_at) FROM positions "
    "WHERE portfolio_id = %(p)s) AS pos(symbols, units, avg_prices, opened), "
    "(SELECT array_agg(symbol), array_agg(price), array_agg(history_hash) FROM marks WHERE portfolio_id = %(p)s) "
    "AS mk(symbols, prices, hashes), "
    "(SELECT jsonb_object_agg(symbol, history) FROM atr_histories WHERE portfolio_id = %(p)s AND symbol = ANY(%(s)s)) "
    "AS atr(histories), "
    f"(SELECT array_agg(d.intent_id) {_DECIDED}) AS decided(ids)")
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
            realised_delta=release.realised_delta, at=now))))
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
        data["decided_at"] = _utc(data["decided_at"])
        earlier[data["intent_id"]] = SimpleNamespace(**data)
    return earlier


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

    def lock(self, requests: dict[str, Wanted], *, lock: bool = True) -> dict[str, Locked | None]:
        """Lock the portfolios (in sorted order: no deadlock) and read them; None for one that does not exist."""
        conn = self.conn
        cursors = {}
        suffix = " FOR UPDATE" if lock else ""
        with conn.pipeline():
            conn.execute(_GENERIC_PLANS)
            for portfolio_id in sorted(requests):
                wanted = requests[portfolio_id]
                cursors[portfolio_id] = (
                    conn.execute(_SELECT_PORTFOLIO + suffix, (portfolio_id,)),
                    conn.execute(_SELECT_STATE, {"p": portfolio_id, "s": sorted(wanted.symbols),
                                                 "i": wanted.intent_ids}),
                )
        return {pid: self._locked(*found) for pid, found in cursors.items()}

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
        if any(k.history_hash is None for k in mark_rows.values()):  # written before mark snapshots existed
            for symbol, history in self.conn.execute(
                    "SELECT symbol, history FROM marks WHERE portfolio_id = %s", (row.id,)):
                mark_rows[symbol].history_hash = mark_history_hash(symbol, history or [])
                mark_rows[symbol].history = tuple(history or ())
            histories = {s: k.history for s, k in mark_rows.items()}
        else:
            found = cached_histories({k.history_hash for k in mark_rows.values()}, self._snapshots)
            histories = {s: found[k.history_hash] for s, k in mark_rows.items()}
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
        for column, value in changes.portfolio.items():
            setattr(row, column, value)
        row.updated_at = now
        self.flush()
        self._send(_UPDATE_PORTFOLIO, (json_bytes({c: getattr(row, c) for c in _MUTABLE}).decode(), row.id))

    def commit(self) -> None:
        """COMMIT: the pipeline's last statement; its answer is the one round trip waited for."""
        self.flush()
        self.conn.commit()
        self._committed = True

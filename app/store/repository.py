"""Loading a portfolio's engine state under its lock, and writing back what changed."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import String, cast, func, literal, select, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.orm import Session, make_transient_to_detached

from app.risk import PortfolioState, RPMConfig
from app.risk.config import canonical_json
from app.risk.model import Position as EnginePosition
from app.risk.model import SwitchEvent, SwitchState, recent_intents_of

from . import models as m
from .audit import Chain, document

# configuration versions are immutable: cache them per database, portfolio and version
_CONFIG_CACHE: dict[tuple[str, str, int], RPMConfig] = {}


class PortfolioNotFound(LookupError):
    pass


@dataclass
class Loaded:
    """A portfolio locked for this transaction: its rows, its engine state and configuration."""

    row: m.Portfolio
    positions: dict[str, m.Position]
    marks: dict[str, m.Mark]
    state: PortfolioState
    config: RPMConfig


def lock_portfolio(session: Session, portfolio_id: str) -> m.Portfolio:
    """Lock the portfolio row first: every change of a portfolio is serialized on it."""
    row = session.execute(
        select(m.Portfolio).where(m.Portfolio.id == portfolio_id).with_for_update().execution_options(
            populate_existing=True)
    ).scalar_one_or_none()
    if row is None:
        raise PortfolioNotFound(portfolio_id)
    return row


def _portfolio_row(session: Session, portfolio_id: str, lock: bool) -> m.Portfolio:
    if lock:
        return lock_portfolio(session, portfolio_id)
    row = session.get(m.Portfolio, portfolio_id)
    if row is None:
        raise PortfolioNotFound(portfolio_id)
    return row


def load(session: Session, portfolio_id: str, *, lock: bool = True) -> Loaded:
    return _load_in_two_round_trips(session, portfolio_id, lock)


def _atr(session: Session, portfolio_id: str) -> dict[str, tuple[float, ...]]:
    return {symbol: tuple(history) for symbol, history in session.execute(
        select(m.AtrHistory.symbol, m.AtrHistory.history).where(m.AtrHistory.portfolio_id == portfolio_id))}


def _rows_json(model: type, columns: list[str], portfolio_id: str):
    """A subquery: the portfolio's rows of ``model`` as one JSON array (text for exact decimals)."""
    table = model.__table__
    pairs = []
    for name in columns:
        column = table.c[name]
        pairs += [literal(name), cast(column, String)]
    return (select(func.coalesce(func.json_agg(func.json_build_object(*pairs)), text("'[]'::json")))
            .where(table.c.portfolio_id == portfolio_id).scalar_subquery())


_POSITION_COLUMNS = ["symbol", "units", "avg_price", "opened_at", "updated_at"]
_MARK_COLUMNS = ["symbol", "price", "history_hash", "updated_at"]
# mark histories by content address: immutable, so any process may keep them (bounded)
_HISTORIES: OrderedDict[str, tuple[float, ...]] = OrderedDict()
_HISTORIES_MAX = 20_000


def _remember_history(digest: str, prices: tuple[float, ...]) -> None:
    _HISTORIES[digest] = prices
    _HISTORIES.move_to_end(digest)
    while len(_HISTORIES) > _HISTORIES_MAX:
        _HISTORIES.popitem(last=False)


def _histories(session: Session, digests: set[str]) -> dict[str, tuple[float, ...]]:
    def fetch(missing: list[str]):
        return session.execute(select(m.MarkSnapshot.hash, m.MarkSnapshot.prices)
                               .where(m.MarkSnapshot.hash.in_(missing))).all()

    return cached_histories(digests, fetch)


def cached_histories(digests: set[str], fetch: Any) -> dict[str, tuple[float, ...]]:
    """Mark histories by hash, from the process cache, ``fetch`` giving (hash, prices) of those missing."""
    missing = [d for d in digests if d not in _HISTORIES]
    if missing:
        for digest, prices in fetch(missing):
            _remember_history(digest, tuple(prices))
    return {d: _HISTORIES[d] for d in digests}


def _load_in_two_round_trips(session: Session, portfolio_id: str, lock: bool) -> Loaded:
    """PostgreSQL: lock the portfolio row, then read its positions and marks in one statement.

    Two statements, not one: under READ COMMITTED a statement reads with the snapshot it started
    with, so positions read in the statement that waited for the lock could predate the commit
    of the transaction that held it (the race test catches exactly that). The positions and marks
    become persistent ORM objects without another query, so the unit of work writes only what changed.
    """
    row = _portfolio_row(session, portfolio_id, lock)
    position_rows, mark_rows = session.execute(select(
        _rows_json(m.Position, _POSITION_COLUMNS, portfolio_id), _rows_json(m.Mark, _MARK_COLUMNS, portfolio_id))
    ).one()
    positions = {}
    for data in position_rows:
        position = m.Position(portfolio_id=row.id, symbol=data["symbol"], units=Decimal(data["units"]),
                              avg_price=Decimal(data["avg_price"]), opened_at=_ts(data["opened_at"]),
                              updated_at=_ts(data["updated_at"]))
        positions[position.symbol] = _attach(session, position)
    if any(data["history_hash"] is None for data in mark_rows):  # written before mark snapshots existed
        marks = {k.symbol: k for k in session.scalars(select(m.Mark).where(m.Mark.portfolio_id == row.id))}
        config = config_for(session, row.id, row.config_version)
        return Loaded(row, positions, marks, to_state(row, positions, marks, atr=_atr(session, row.id)), config)
    marks = {}
    for data in mark_rows:
        # `history` is not read: it comes from the snapshot its hash names (cached in process)
        mark = m.Mark(portfolio_id=row.id, symbol=data["symbol"], price=Decimal(data["price"]),
                      history_hash=data["history_hash"], updated_at=_ts(data["updated_at"]))
        marks[mark.symbol] = _attach(session, mark)
    found = _histories(session, {k.history_hash for k in marks.values()})
    histories = {s: found[k.history_hash] for s, k in marks.items()}
    config = config_for(session, row.id, row.config_version)
    return Loaded(row, positions, marks, to_state(row, positions, marks, histories, _atr(session, row.id)), config)


def _ts(value: str | None) -> datetime | None:
    # timestamptz cast to text: "2026-03-02 12:00:00+00"
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def _attach(session: Session, obj: Any) -> Any:
    """Make a row built from data already read a persistent object of the session, without a query."""
    existing = session.identity_map.get(sa_inspect(obj).mapper.identity_key_from_instance(obj))
    if existing is not None:
        return existing
    make_transient_to_detached(obj)
    session.add(obj)
    return obj


def config_for(session: Session, portfolio_id: str, version: int) -> RPMConfig:
    def fetch() -> dict[str, Any]:
        return session.execute(
            select(m.ConfigVersion.body).where(m.ConfigVersion.portfolio_id == portfolio_id,
                                               m.ConfigVersion.version == version)
        ).scalar_one()

    return cached_config(session.get_bind().url.render_as_string(hide_password=True), portfolio_id, version, fetch)


def cached_config(database: str, portfolio_id: str, version: int, fetch: Any) -> RPMConfig:
    """Configuration versions are immutable: each is read once per process (``fetch`` gives its body)."""
    key = (database, portfolio_id, version)
    config = _CONFIG_CACHE.get(key)
    if config is None:
        config = _CONFIG_CACHE[key] = RPMConfig.from_dict(fetch())
    return config


def to_state(row: m.Portfolio, positions: dict[str, m.Position], marks: dict[str, m.Mark],
             histories: dict[str, tuple[float, ...]] | None = None,
             atr: dict[str, tuple[float, ...]] | None = None) -> PortfolioState:
    """The engine's state from the rows. ``atr``: the ATR histories read (the decision path reads
    only those of the symbols it decides on: the engine reads no other)."""
    memory = row.memory or {}
    switches = row.switches or {}
    return PortfolioState(
        portfolio_id=row.id,
        starting_capital=_norm(row.starting_capital),
        realised_pnl=_norm(row.realised_pnl),
        peak_equity=_norm(row.peak_equity),
        day_key=row.day_key,
        day_start_equity=_norm(row.day_start_equity),
        day_peak_equity=_norm(row.day_peak_equity),
        week_key=row.week_key,
        week_start_equity=_norm(row.week_start_equity),
        positions={
            s: EnginePosition(s, _norm(p.units), _norm(p.avg_price), p.opened_at) for s, p in positions.items()
        },
        marks={s: _norm(k.price) for s, k in marks.items()},
        mark_history=histories if histories is not None else {s: tuple(k.history or ()) for s, k in marks.items()},
        atr_history=dict(atr or {}),
        recent_confidences=tuple(memory.get("recent_confidences", ())),
        recent_intents=recent_intents_of(memory, unpack_times),
        switches={k: SwitchState.from_dict(v) for k, v in switches.get("portfolio", {}).items()},
        symbol_halts={k: SwitchState.from_dict(v) for k, v in switches.get("symbols", {}).items()},
    )


def _norm(value: Decimal | None) -> Decimal | None:
    """NUMERIC(28, 10) pads with zeros: strip them so values read back look as the engine wrote them."""
    if value is None:
        return None
    value = Decimal(value).normalize()
    return value.quantize(Decimal(1)) if value.as_tuple().exponent > 0 else value


@dataclass
class Changes:
    """What a new engine state changes in the stored one: portfolio columns, positions, marks."""

    portfolio: dict[str, Any]
    positions: dict[str, EnginePosition]  # new or changed
    closed: list[str]
    atr: dict[str, tuple[float, ...]]  # symbol -> ATR history, new or changed
    marks: dict[str, tuple[Decimal, tuple[float, ...]]]  # symbol -> (price, history), new or changed


def state_changes(old: PortfolioState, new: PortfolioState) -> Changes:
    portfolio = {
        "realised_pnl": new.realised_pnl, "peak_equity": new.peak_equity, "day_key": new.day_key,
        "day_start_equity": new.day_start_equity, "day_peak_equity": new.day_peak_equity,
        "week_key": new.week_key, "week_start_equity": new.week_start_equity,
        "trading_state": "HALTED" if new.switches else "ACTIVE",
    }
    if new.switches != old.switches or new.symbol_halts != old.symbol_halts:
        portfolio["switches"] = switches_json(new)
    if new.recent_confidences != old.recent_confidences or new.recent_intents != old.recent_intents:
        portfolio["memory"] = memory_json(new)
    marks = {}
    for symbol, price in new.marks.items():
        history = new.mark_history.get(symbol, ())
        if old.marks.get(symbol) != price or old.mark_history.get(symbol, ()) != history:
            marks[symbol] = (price, history)
    return Changes(
        portfolio,
        {s: p for s, p in new.positions.items() if old.positions.get(s) != p},
        sorted(old.positions.keys() - new.positions.keys()),
        {s: h for s, h in new.atr_history.items() if old.atr_history.get(s) != h},
        marks,
    )


def switches_json(state: PortfolioState) -> dict[str, Any]:
    return {
        "portfolio": {k: v.to_dict() for k, v in sorted(state.switches.items())},
        "symbols": {k: v.to_dict() for k, v in sorted(state.symbol_halts.items())},
    }


def memory_json(state: PortfolioState) -> dict[str, Any]:
    return {
        "recent_confidences": list(state.recent_confidences),
        "recent_intents": [list(p) for p in state.recent_intents],
    }


def save(session: Session, loaded: Loaded, new: PortfolioState, now: datetime) -> None:
    """Write every change the engine made to the state (within the caller's transaction)."""
    row = loaded.row
    changes = state_changes(loaded.state, new)
    for column, value in changes.portfolio.items():
        setattr(row, column, value)
    row.updated_at = now
    for symbol in changes.closed:
        position = loaded.positions.pop(symbol)
        if sa_inspect(position).persistent:
            session.delete(position)
        else:  # opened earlier in this transaction (a batch) and closed again: never written
            session.expunge(position)
    for symbol, pos in changes.positions.items():
        existing = loaded.positions.get(symbol)
        if existing is None:
            loaded.positions[symbol] = existing = m.Position(portfolio_id=row.id, symbol=symbol,
                                                             opened_at=pos.opened_at)
            session.add(existing)
        existing.units = pos.units
        existing.avg_price = pos.avg_price
        existing.opened_at = pos.opened_at
        existing.updated_at = now
    for symbol, history in changes.atr.items():
        _upsert(session, m.AtrHistory, ["portfolio_id", "symbol"],
                dict(portfolio_id=row.id, symbol=symbol, history=list(history), updated_at=now))
    for symbol, (price, history) in changes.marks.items():
        existing = loaded.marks.get(symbol)
        if existing is None:
            loaded.marks[symbol] = existing = m.Mark(portfolio_id=row.id, symbol=symbol)
            session.add(existing)
        existing.price = price
        existing.history = list(history)
        existing.history_hash = store_mark_snapshot(session, symbol, history, now)
        existing.updated_at = now


def _upsert(session: Session, model: type, keys: list[str], values: dict[str, Any]) -> None:
    statement = postgresql_insert(model).values(**values)
    session.execute(statement.on_conflict_do_update(
        index_elements=keys, set_={k: statement.excluded[k] for k in values if k not in keys}))


def mark_history_hash(symbol: str, prices: tuple[float, ...] | list[float]) -> str:
    return hashlib.sha256(canonical_json({"symbol": symbol, "prices": list(prices)}).encode()).hexdigest()


def store_mark_snapshot(session: Session, symbol: str, prices: tuple[float, ...], now: datetime) -> str:
    digest = mark_history_hash(symbol, prices)
    session.execute(postgresql_insert(m.MarkSnapshot).values(hash=digest, symbol=symbol, prices=list(prices),
                                                           created_at=now).on_conflict_do_nothing(index_elements=["hash"]))
    # (not remembered here: the transaction may still roll back; the next load fetches it)
    return digest


_PACKED = "f64le:"


def pack_times(times: tuple[float, ...]) -> str:
    """A series of floats (an ATR history) as one string:
    ``f64le:`` + base64 of little-endian doubles.

    Exact, and one value instead of one JSON number per element: at hundreds of decisions a
    second, hashing and storing them number by number cost more than deciding.
    """
    return _PACKED + base64.b64encode(struct.pack(f"<{len(times)}d", *times)).decode("ascii")


def unpack_times(value: str | list[float] | None) -> tuple[float, ...]:
    if isinstance(value, str) and value.startswith(_PACKED):
        raw = base64.b64decode(value[len(_PACKED):])
        return struct.unpack(f"<{len(raw) // 8}d", raw)
    return tuple(value or ())  # a list: written before the packed form


def audit_state(loaded: Loaded, reduced: PortfolioState) -> dict[str, Any]:
    """What a decision record keeps of the state it saw: mark histories by reference."""
    data = reduced.to_dict()
    data["atr_history"] = {s: pack_times(h) for s, h in reduced.atr_history.items()}
    histories = data.pop("mark_history")
    data["mark_history_refs"] = {s: loaded.marks[s].history_hash or mark_history_hash(s, h)
                                 for s, h in histories.items()}
    return data


def resolve_state(session: Session, stored: str | dict[str, Any]) -> PortfolioState:
    """The engine state of a decision record (its text, or the document of an older row), its mark
    histories fetched back by reference."""
    data = dict(document(stored))
    if "recent_intent_times" in data:  # (records before the buckets: packed or a list)
        data["recent_intent_times"] = unpack_times(data["recent_intent_times"])
    data["atr_history"] = {s: unpack_times(h) for s, h in (data.get("atr_history") or {}).items()}
    refs = data.pop("mark_history_refs", None)
    if refs is not None:
        found = _histories(session, set(refs.values()))
        data["mark_history"] = {s: list(found[h]) for s, h in refs.items()}
    return PortfolioState.from_dict(data)


def event_values(portfolio_id: str, e: SwitchEvent, decision_id: str | None = None) -> dict[str, Any]:
    return dict(portfolio_id=portfolio_id, switch=e.switch, action=e.action, symbol=e.symbol, at=e.at,
                value=_num(e.value), threshold=_num(e.threshold), cooldown_until=e.cooldown_until,
                reason=e.reason, detail=dict(e.detail), decision_id=decision_id)


def add_events(session: Session, chain: Chain, portfolio_id: str, events: list[SwitchEvent],
               decision_id: str | None = None) -> None:
    for e in events:
        chain.append(session, m.SwitchEventRow, **event_values(portfolio_id, e, decision_id))


def ledger_values(row: Any, *, kind: str, symbol: str, units: Decimal, price: Decimal, realised: Decimal,
                  state: PortfolioState, at: datetime, actor: str | None,
                  decision_id: str | None = None) -> dict[str, Any]:
    """One change of the books, numbered in the portfolio's ledger (the caller holds its lock)."""
    row.last_ledger_seq += 1
    position = state.positions.get(symbol)
    return dict(portfolio_id=row.id, seq=row.last_ledger_seq, kind=kind, symbol=symbol, decision_id=decision_id,
                units=units, price=price, realised_pnl=realised,
                position_units=position.units if position else Decimal(0),
                position_avg_price=position.avg_price if position else None, at=at, actor=actor)


def add_ledger(session: Session, row: m.Portfolio, **values: Any) -> None:
    session.add(m.LedgerEntry(**ledger_values(row, **values)))


def _num(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(repr(float(value)))


def add_admin_action(session: Session, chain: Chain, actor: Any, *, portfolio_id: str | None, action: str,
                     at: datetime, reason: str | None, before: Any = None, after: Any = None) -> m.AdminAction:
    """Who (``actor``: name, role, key id) did what, when, why, with before and after: on the chain."""
    return chain.append(session, m.AdminAction, portfolio_id=portfolio_id, action=action, actor=actor.name,
                        actor_role=actor.role, actor_key_id=actor.key_id, at=at, reason=reason, before=before,
                        after=after)


def create_portfolio(session: Session, portfolio_id: str, config: RPMConfig, now: datetime,
                     capital: Decimal | None = None, created_by: str = "system") -> m.Portfolio:
    start = Decimal(repr(config.total_capital)) if capital is None else capital
    row = m.Portfolio(
        id=portfolio_id, account_currency=config.account_currency, starting_capital=start,
        realised_pnl=Decimal(0), peak_equity=start, trading_state="ACTIVE", switches={}, memory={}, counters={},
        config_version=1, last_seq=0, last_ledger_seq=0, audit_seq=0, created_at=now, updated_at=now,
    )
    session.add(row)
    session.flush()
    session.add(m.ConfigVersion(portfolio_id=portfolio_id, version=1, body=config.to_dict(),
                                config_hash=config.config_hash, created_at=now, created_by=created_by,
                                reason="portfolio created"))
    session.flush()
    return row

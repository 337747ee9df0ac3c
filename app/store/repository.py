"""What a portfolio's rows mean to the engine: its state from them, what changed of it, and the values of the rows
that record a change (ledger entries, switch events, admin actions, a new portfolio)."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Invalid
from app.risk import PortfolioState, RPMConfig, domain
from app.risk.config import canonical_json
from app.risk.kill_switches import drawdown
from app.risk.model import Approval, SwitchEvent, SwitchState, recent_intents_of
from app.risk.model import Position as EnginePosition

from . import models as m
from .audit import Chain, document

# configuration versions are immutable: cache them per database, portfolio and version
_CONFIG_CACHE: dict[tuple[str, str, int], RPMConfig] = {}


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
    found = {d: _HISTORIES[d] for d in digests if d in _HISTORIES}
    missing = [d for d in digests if d not in found]
    if missing:  # (taken from what was fetched, not read back: remembering one may evict another of this call)
        for digest, prices in fetch(missing):
            found[digest] = tuple(prices)
            _remember_history(digest, found[digest])
    return found


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


def forget_config(database: str, portfolio_id: str, version: int) -> None:
    """Drop a configuration read in a transaction that did not commit (a portfolio made, then rolled back)."""
    _CONFIG_CACHE.pop((database, portfolio_id, version), None)


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
        open_approvals=tuple(Approval.from_dict(a) for a in memory.get("open_approvals", ())),
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
        "starting_capital": new.starting_capital,  # (capital changes)
        "realised_pnl": new.realised_pnl, "peak_equity": new.peak_equity, "day_key": new.day_key,
        "day_start_equity": new.day_start_equity, "day_peak_equity": new.day_peak_equity,
        "week_key": new.week_key, "week_start_equity": new.week_start_equity,
        "trading_state": "HALTED" if new.switches else "ACTIVE",
    }
    if new.switches != old.switches or new.symbol_halts != old.symbol_halts:
        portfolio["switches"] = switches_json(new)
    if (new.recent_confidences != old.recent_confidences or new.recent_intents != old.recent_intents
            or new.open_approvals != old.open_approvals):
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
        **({"open_approvals": [a.to_dict() for a in state.open_approvals]} if state.open_approvals else {}),
    }


def mark_history_hash(symbol: str, prices: tuple[float, ...] | list[float]) -> str:
    return hashlib.sha256(canonical_json({"symbol": symbol, "prices": list(prices)}).encode()).hexdigest()


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


def audit_state(loaded: Any, reduced: PortfolioState) -> dict[str, Any]:
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


def equity_point_values(portfolio_id: str, state: PortfolioState, equity: Decimal, at: datetime) -> dict[str, Any]:
    """A point of the equity curve: equity, drawdown and the peak equity, after a change."""
    return dict(portfolio_id=portfolio_id, at=at, equity=equity, drawdown=Decimal(repr(drawdown(state, equity))),
                peak_equity=state.peak_equity)


def _num(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(repr(float(value)))


def admin_values(actor: Any, *, portfolio_id: str | None, action: str, at: datetime, reason: str | None,
                 before: Any = None, after: Any = None) -> dict[str, Any]:
    """An admin action's row: who (``actor``: name, role, key id) did what, when, why, with before and after (None
    for ``portfolio_id``: the `_system` chain's). Every admin action is made here, whether asked over HTTP or by an
    `rpm` command: its reason is checked here too."""
    if reason is not None and not 1 <= len(reason) <= domain.REASON_LENGTH:
        raise Invalid("invalid reason", {"reason": [f"Length must be between 1 and {domain.REASON_LENGTH}."]})
    return dict(portfolio_id=portfolio_id, action=action, actor=actor.name, actor_role=actor.role,
                actor_key_id=actor.key_id, at=at, reason=reason, before=before, after=after)


def add_admin_action(session: Session, chain: Chain, actor: Any, *, portfolio_id: str | None, action: str,
                     at: datetime, reason: str | None, before: Any = None, after: Any = None) -> m.AdminAction:
    """An admin action (``admin_values``) appended to the chain through the ORM (keys, webhooks)."""
    return chain.append(session, m.AdminAction, **admin_values(actor, portfolio_id=portfolio_id, action=action, at=at,
                                                               reason=reason, before=before, after=after))


def new_portfolio(portfolio_id: str, config: RPMConfig, now: datetime,
                  created_by: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rows of a new portfolio: the portfolio, its capital the configuration's, and its first configuration."""
    start = Decimal(repr(config.total_capital))
    portfolio = dict(
        id=portfolio_id, account_currency=config.account_currency, starting_capital=start,
        realised_pnl=Decimal(0), peak_equity=start, trading_state="ACTIVE", switches={}, memory={}, counters={},
        config_version=1, last_seq=0, last_ledger_seq=0, audit_seq=0, created_at=now, updated_at=now,
    )
    version = dict(portfolio_id=portfolio_id, version=1, body=config.to_dict(), config_hash=config.config_hash,
                   created_at=now, created_by=created_by, reason="portfolio created")
    return portfolio, version


def decision_by_id(session: Session, decision_id: str) -> m.Decision | None:
    """A decision by its id alone (its primary key is (id, decided_at): one probe per month's partition)."""
    return session.execute(select(m.Decision).where(m.Decision.id == decision_id).limit(1)).scalar_one_or_none()

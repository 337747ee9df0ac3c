"""The books: marks, fills and closes, each one portfolio transaction (lock, let the engine decide, write,
commit, answer), and the equity curve they draw."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from app.errors import Conflict, Invalid, NotFound
from app.risk import FillError, OutOfRange, engine
from app.risk.model import Booking, symbol_error
from app.store import models as m
from app.store.repository import mark_history_hash

from .unit_of_work import Actor, Portfolio, UnitOfWork


def _changed(p: Portfolio, outcome: engine.Outcome) -> dict[str, Any]:
    return {"portfolio_state": engine.portfolio_summary(outcome.state, p.config),
            "events": [e.to_dict() for e in outcome.events]}


def apply_marks(uow: UnitOfWork, portfolio_id: str, prices: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """New prices: unrealised PnL, equity and drawdown move, and the switches they trip."""
    with uow.portfolio(portfolio_id) as p:
        errors = {s: [problem] for s in prices if (problem := symbol_error(s, p.config))}
        if errors:
            raise Invalid("invalid symbols", {"prices": errors})
        now = uow.clock()
        try:
            outcome = engine.mark(p.state, prices, p.config, now)
        except OutOfRange as exc:
            raise Invalid("marks out of range", {"prices": [f"at these marks, {exc}"]}) from None
        s = outcome.state
        p.add((m.MarkUpdate, p.sealed(m.MarkUpdate, dict(
            portfolio_id=portfolio_id, at=now, prices={symbol: str(s.marks[symbol]) for symbol in sorted(prices)},
            history_hashes={symbol: mark_history_hash(symbol, s.mark_history[symbol]) for symbol in sorted(prices)}))))
        p.equity_point(outcome, now)
        p.events(outcome.events)
        p.commit(outcome.state, now)
        return {**_changed(p, outcome), "tripped": [e.switch for e in outcome.events if e.action == "TRIPPED"]}


def record_fill(uow: UnitOfWork, portfolio_id: str, decision_id: str, units: Any, price: Any,
                actor: Actor) -> dict[str, Any]:
    """What execution filled of an approved decision: the position is booked at the fill (once, final)."""
    with uow.portfolio(portfolio_id) as p:
        decision = p.stored_decision(decision_id)
        if decision is None:
            raise NotFound(f"unknown decision {decision_id!r}")
        if decision.status != "APPROVED" or decision.booking is None:
            raise Conflict("only an approved decision can be filled", decision_id=decision_id)
        if decision.filled:
            raise Conflict("this decision was already filled, or expired unfilled: a fill is final",
                           decision_id=decision_id)
        now = uow.clock()
        try:
            outcome = engine.fill(p.state, Booking.from_dict(decision.booking), decision.decided_at, units, price,
                                  p.config, now)
        except FillError as exc:
            raise Conflict(str(exc), decision_id=decision_id) from None
        except OutOfRange as exc:
            raise Invalid("fill out of range", {"fill_price": [f"at this fill, {exc}"]}) from None
        filled, at = Decimal(repr(units)), Decimal(repr(price))
        p.add((m.Fill, p.sealed(m.Fill, dict(portfolio_id=portfolio_id, decision_id=decision_id, filled_units=filled,
                                             fill_price=at, realised_delta=outcome.realised_pnl, at=now))))
        p.ledger(kind="fill", symbol=decision.symbol, units=filled, price=at, realised=outcome.realised_pnl,
                 state=outcome.state, at=now, actor=actor.name, decision_id=decision_id)
        p.equity_point(outcome, now)
        p.events(outcome.events, decision_id)
        p.commit(outcome.state, now)
        return {"decision_id": decision_id, "filled_units": float(units), "fill_price": float(price),
                "released_units": float(Decimal(decision.booking["units"]) - filled),
                "realised_pnl_change": float(outcome.realised_pnl), **_changed(p, outcome)}


def close_position(uow: UnitOfWork, portfolio_id: str, symbol: str, price: Any, actor: Actor,
                   units: Any = None) -> dict[str, Any]:
    """Close a position at a price — ``units`` of it, or all of it: its PnL realised."""
    with uow.portfolio(portfolio_id) as p:
        closed = p.state.positions.get(symbol)
        if closed is None:
            raise NotFound(f"no open position in {symbol!r}")
        now = uow.clock()
        try:
            outcome = engine.close(p.state, symbol, price, p.config, now, units)
        except KeyError:  # held only by an approval that expired now
            raise NotFound(f"no open position in {symbol!r}") from None
        except engine.PriceRefused as exc:
            raise Invalid("close price refused", {"price": [str(exc)]}) from None
        except OutOfRange as exc:
            raise Invalid("close out of range", {"price": [f"at this price, {exc}"]}) from None
        done = outcome.extra["closed_units"]
        if done <= 0:
            raise Invalid("less than one lot", {"units": [f"{units} is less than one lot of {symbol}"]})
        p.ledger(kind="close", symbol=symbol, units=-done * closed.direction, price=Decimal(repr(price)),
                 realised=outcome.realised_pnl, state=outcome.state, at=now, actor=actor.name)
        p.equity_point(outcome, now)
        p.events(outcome.events)
        p.commit(outcome.state, now)
        return {"closed": outcome.extra["closed"], "closed_units": float(done), "price": float(price),
                "realised_pnl": float(outcome.realised_pnl), **_changed(p, outcome)}


def equity_curve(uow: UnitOfWork, portfolio_id: str, since: datetime | None, limit: int = 500) -> dict[str, Any]:
    """Equity, drawdown and the peak it is measured from, over time (after each mark, fill and close), at most
    ``limit`` points (the peak is null on points stored before it was kept)."""
    uow.known(portfolio_id)
    with uow.reading() as session:
        query = select(m.EquityPoint.at, m.EquityPoint.equity, m.EquityPoint.drawdown, m.EquityPoint.peak_equity
                       ).where(m.EquityPoint.portfolio_id == portfolio_id)
        if since is not None:
            query = query.where(m.EquityPoint.at >= since)
        rows = session.execute(query.order_by(m.EquityPoint.at)).all()
    step = max(1, -(-len(rows) // limit))
    picked = rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])
    return {"portfolio_id": portfolio_id, "points": [
        {"at": at.isoformat(), "equity": float(eq), "drawdown": float(dd),
         "peak_equity": None if peak is None else float(peak)} for at, eq, dd, peak in picked]}

"""The books: valuation, equity, exposures, marks, fills and closes. Exact Decimal arithmetic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from .config import RPMConfig
from .domain import BOOKS_LIMIT
from .instruments import instrument, quote_to_account_rate
from .model import ONE, ZERO, Booking, PortfolioState, Position, to_decimal

MONEY = Decimal("0.00000001")


class FillError(ValueError):
    """A fill that cannot be reconciled with its decision (over-fill, position changed...)."""


class CapitalError(ValueError):
    """A capital change the books cannot take (a withdrawal of more than the equity)."""


class OutOfRange(ValueError):
    """A change that would take equity or realised PnL beyond what the books may hold (app/risk/domain.py)."""

    def __init__(self, equity: Decimal, realised_pnl: Decimal):
        super().__init__(f"equity would be {float(equity):.6g} and realised PnL {float(realised_pnl):.6g}, beyond "
                         f"the ±{float(BOOKS_LIMIT):.0e} the books are kept within")
        self.equity = equity
        self.realised_pnl = realised_pnl


def account_rate(state: PortfolioState, symbol: str, price: Decimal, config: RPMConfig) -> Decimal:
    info = instrument(symbol, config)
    rate = quote_to_account_rate(info, price, state.marks, config.account_currency)
    # a position can only be opened with a known rate, and marks are never forgotten,
    # so a missing rate here means an in-process user built the state by hand
    return ONE if rate is None else rate


@dataclass(frozen=True, slots=True)
class Exposures:
    """Account-currency valuation of the open positions: unrealised PnL and exposures
    per symbol (signed), per non-account currency (net), gross and net."""

    unrealised: Decimal
    by_symbol: Mapping[str, Decimal]
    by_currency: Mapping[str, Decimal]
    gross: Decimal
    net: Decimal


def exposures(state: PortfolioState, config: RPMConfig) -> Exposures:
    """Value every open position at its latest mark, in one pass."""
    unrealised = ZERO
    by_symbol: dict[str, Decimal] = {}
    by_currency: dict[str, Decimal] = {}
    gross = ZERO
    net = ZERO
    account = config.account_currency
    marks = state.marks
    for symbol, pos in sorted(state.positions.items()):
        info = instrument(symbol, config)
        price = marks.get(symbol) or pos.avg_price
        rate = quote_to_account_rate(info, price, marks, account)
        scale = info.multiplier * (ONE if rate is None else rate)
        if price != pos.avg_price:
            unrealised += (price - pos.avg_price) * pos.units * scale
        signed = pos.units * price * scale
        by_symbol[symbol] = signed
        gross += abs(signed)
        net += signed
        for currency, sign in info.legs:
            if currency != account:
                by_currency[currency] = by_currency.get(currency, ZERO) + sign * signed
    return Exposures(unrealised, by_symbol, by_currency, gross, net)


def exposures_view(exp: Any, equity: Decimal) -> dict[str, Any]:
    """Exposures (a portfolio's ``Exposures``, or a level's ``Book``) as the views show them, against ``equity``."""
    return {
        "symbol": {k: float(v) for k, v in sorted(exp.by_symbol.items())},
        "currency": {k: float(v) for k, v in sorted(exp.by_currency.items())},
        "gross": float(exp.gross),
        "net": float(exp.net),
        "gross_pct": float(exp.gross / equity) if equity > 0 else None,
        "net_pct": float(exp.net / equity) if equity > 0 else None,
    }


def unrealised_pnl(state: PortfolioState, config: RPMConfig) -> Decimal:
    """Unrealised PnL alone: cheaper than a full valuation (positions at their entry price are skipped)."""
    total = ZERO
    marks = state.marks
    for symbol, pos in sorted(state.positions.items()):
        price = marks.get(symbol)
        if price is None or price == pos.avg_price:
            continue
        info = instrument(symbol, config)
        rate = quote_to_account_rate(info, price, marks, config.account_currency)
        # the same expression as in exposures(): both give the same equity to the last digit
        total += (price - pos.avg_price) * pos.units * (info.multiplier * (ONE if rate is None else rate))
    return total


def equity(state: PortfolioState, config: RPMConfig) -> Decimal:
    return state.starting_capital + state.realised_pnl + unrealised_pnl(state, config)


def apply_marks(state: PortfolioState, prices: Mapping[str, Any], config: RPMConfig) -> None:
    """Record the latest prices and their bounded history (mutates ``state``)."""
    keep = config.mark_history_size
    for symbol, raw in prices.items():
        price = to_decimal(raw)
        state.marks[symbol] = price
        history = state.mark_history.get(symbol, ()) + (float(price),)
        state.mark_history[symbol] = history[-keep:]


def book_open(state: PortfolioState, symbol: str, direction: int, units: Decimal, price: Decimal, now: datetime) -> None:
    """Add an approved risk-increasing trade to its position at the intent's price."""
    pos = state.positions.get(symbol)
    if pos is None:
        state.positions[symbol] = Position(symbol, units * direction, price, now)
        return
    old = abs(pos.units)
    new = old + units
    avg = (pos.avg_price * old + price * units) / new
    state.positions[symbol] = Position(symbol, new * direction, avg.quantize(MONEY), pos.opened_at)


def realise_close(state: PortfolioState, symbol: str, price: Decimal, config: RPMConfig,
                  units: Decimal | None = None) -> tuple[Decimal, Position]:
    """Close ``units`` of a position (all of it when None, or when they are as many or more: a position never
    flips) at ``price``; returns the realised PnL (account currency) and the position as it was."""
    pos = state.positions[symbol]
    size = abs(pos.units)
    closed = size if units is None else min(units, size)
    info = instrument(symbol, config)
    pnl = ((price - pos.avg_price) * closed * pos.direction * info.multiplier
           * account_rate(state, symbol, price, config))
    if closed == size:
        del state.positions[symbol]
    else:
        state.positions[symbol] = Position(symbol, (size - closed) * pos.direction, pos.avg_price, pos.opened_at)
    state.realised_pnl += pnl
    return pnl, pos


def apply_fill(
    state: PortfolioState, booking: Booking, booked_at: datetime, filled_units: Any, fill_price: Any, config: RPMConfig
) -> Decimal:
    """Reconcile what a decision booked with what was executed (mutates ``state``).

    A fill is final: units not filled are released. Returns the change in realised PnL.
    """
    filled = to_decimal(filled_units)
    price = to_decimal(fill_price)
    if filled < 0:
        raise FillError("filled units must be >= 0")
    if filled > booking.units:
        raise FillError(f"over-fill: {filled} units filled but only {booking.units} approved")
    if price <= 0:
        raise FillError("fill price must be > 0")
    symbol = booking.symbol
    pos = state.positions.get(symbol)
    info = instrument(symbol, config)
    if booking.kind == "open":
        if pos is None or pos.direction != booking.direction or pos.opened_at > booked_at:
            raise FillError("the position this decision opened has since been closed; reconcile manually")
        size = abs(pos.units)
        new_size = size - booking.units + filled
        if new_size < 0:
            raise FillError("the position is smaller than the booked trade; reconcile manually")
        if new_size == 0:
            del state.positions[symbol]
            return ZERO
        cost = pos.avg_price * size - booking.price * booking.units + price * filled
        avg = (cost / new_size).quantize(MONEY)
        state.positions[symbol] = Position(symbol, new_size * booking.direction, avg, pos.opened_at)
        return ZERO
    # a reducing trade: it realised PnL at the intent's price on all the units it closed
    side = -booking.direction  # the sign of the position it closed
    rate = account_rate(state, symbol, price, config) * info.multiplier
    entry = booking.entry_price
    delta = ((price - entry) * filled - (booking.price - entry) * booking.units) * side * rate
    rest = booking.units - filled
    if rest > 0:
        if pos is not None and pos.direction != side:
            raise FillError("an opposite position was opened since; reconcile manually")
        if pos is None:
            state.positions[symbol] = Position(symbol, rest * side, entry, booked_at)
        else:
            size = abs(pos.units)
            avg = ((pos.avg_price * size + entry * rest) / (size + rest)).quantize(MONEY)
            state.positions[symbol] = Position(symbol, (size + rest) * side, avg, pos.opened_at)
    state.realised_pnl += delta
    return delta

"""The firm above portfolios (SPEC §12): the aggregate of a group or of the firm, its limits, its kill switches.

A portfolio belongs to a group or directly to the firm; a group to the firm (the tree is open to more levels:
a level is a node with its parent). Each level measures the portfolios under it in the firm's currency:

- exposures: signed notional by symbol, netted across portfolios; by currency leg (the firm's currency left
  out); gross, the sum of every position's size (not netted); net; open positions, one per portfolio and symbol;
- equity, the sum of its portfolios' (each converted at the latest mark of its account currency's pair);
  peak equity, drawdown and the trading day's PnL, as a portfolio's, on the level's own references.

A decision that adds risk checks its portfolio's limits and then each level's, nearest first, with the same
adjust-down rule (``level_constraints``); a halted level (a manual halt, its drawdown or daily-loss switch)
rejects it with ``HALTED`` and the level; a reducing trade passes every level, as it passes a halted portfolio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from . import accounting, kill_switches
from .config import RPMConfig
from .constraints import Rejection, _room_signed, _Steps
from .instruments import InstrumentInfo, instrument, quote_to_account_rate
from .model import (
    FIRM,
    ONE,
    ZERO,
    Book,
    Level,
    LevelState,
    Limits,
    PortfolioState,
    ReasonCode,
    SwitchEvent,
    div_floor,
)

# the switches a level has: an admin's halt, and two on its aggregate
MANUAL = kill_switches.MANUAL
DRAWDOWN = kill_switches.DRAWDOWN
DAILY_LOSS = kill_switches.DAILY_LOSS
# a level's trading day and cooldown are SPEC §4's defaults: the day rolls at 00:00 UTC
CALENDAR = RPMConfig()


def currency_rate(currency: str, into: str, marks: Mapping[str, Decimal]) -> Decimal | None:
    """The value in ``into`` of one unit of ``currency``, from the marks of their pair (None: no mark)."""
    if currency == into:
        return ONE
    direct = marks.get(currency + into)
    if direct:
        return direct
    inverse = marks.get(into + currency)
    return ONE / inverse if inverse else None


def book_of(state: PortfolioState, config: RPMConfig, currency: str) -> Book:
    """One portfolio's positions and equity in ``currency`` (a level's)."""
    marks = state.marks
    by_symbol: dict[str, Decimal] = {}
    by_currency: dict[str, Decimal] = {}
    gross = net = unrealised = ZERO
    missing = None
    for symbol, pos in sorted(state.positions.items()):
        info = instrument(symbol, config)
        price = marks.get(symbol) or pos.avg_price
        rate = quote_to_account_rate(info, price, marks, currency)
        if rate is None:
            missing = missing or info.currency
            continue
        scale = info.multiplier * rate
        signed = pos.units * price * scale
        unrealised += (price - pos.avg_price) * pos.units * scale
        by_symbol[symbol] = signed
        gross += abs(signed)
        net += signed
        for leg, sign in info.legs:
            if leg != currency:
                by_currency[leg] = by_currency.get(leg, ZERO) + sign * signed
    rate = currency_rate(config.account_currency, currency, marks)
    if rate is None:
        missing = missing or config.account_currency
        rate = ZERO
    return Book(by_symbol, by_currency, gross, net, len(state.positions),
                accounting.equity(state, config) * rate, state.starting_capital * rate, state.realised_pnl * rate,
                unrealised, missing)


def total(books: Iterable[Book]) -> Book:
    out = Book()
    for book in books:
        out = out.plus(book)
    return out


def of_level(event: SwitchEvent) -> bool:
    """Whether a switch event is a level's (recorded on the `_system` chain) rather than the portfolio's."""
    return "level" in event.detail


def _tag(level: Level, events: list[SwitchEvent]) -> list[SwitchEvent]:
    """Events of a level: its id in their detail (they are recorded on the firm's chain, not a portfolio's)."""
    return [SwitchEvent(e.switch, e.action, e.at, e.value, e.threshold, e.cooldown_until, e.symbol, e.reason,
                        {**e.detail, "level": level.id}) for e in events]


def measurements(level: Level, equity: Decimal) -> dict[str, tuple[float, float, bool]]:
    """Each automatic switch of the level that has a limit: (current value, threshold, condition holds)."""
    out = {}
    limits, s = level.limits, level.state
    if limits.drawdown is not None:
        dd = kill_switches.drawdown(s, equity)  # (duck-typed: peak_equity)
        out[DRAWDOWN] = (dd, limits.drawdown, dd >= limits.drawdown)
    if limits.daily_loss is not None:
        pnl = float(kill_switches.daily_pnl(s, equity))
        out[DAILY_LOSS] = (pnl, -float(limits.daily_loss), pnl <= -float(limits.daily_loss))
    return out


def settle(level: Level, own: Book, now: datetime) -> list[SwitchEvent]:
    """Measure a held level with the portfolio's book ``own`` added to the others': roll its trading day, move its
    peaks, clear what its cooldown allows and trip what its limits say (mutates ``level.state``)."""
    if not level.held:
        return []
    removed = drop_removed(level, now)
    book = level.others.plus(own)
    if book.missing_rate is not None:  # an aggregate that could not be measured is not acted on
        return removed
    eq, s = book.equity, level.state
    events = [*removed, *kill_switches.roll_calendar(s, eq, now, CALENDAR)]
    kill_switches.update_peaks(s, eq)
    held = measurements(level, eq)
    tripped = s.switches.get(DRAWDOWN)
    if tripped is not None and tripped.cooldown_until is not None and now >= tripped.cooldown_until \
            and not held[DRAWDOWN][2]:  # (drawdown clears after its cooldown once under the limit)
        events += kill_switches._clear(s, DRAWDOWN, now, "cooldown over")
    for name, (value, threshold, holds) in held.items():
        if holds and name not in s.switches:
            events.append(kill_switches.trip(s, name, value, threshold, now, CALENDAR,
                                             reason=f"{level.name}: {name} {value:.6g} breached {threshold:.6g}"))
    return _tag(level, events)


def move(level: Level, before: Decimal, amount: Decimal) -> None:
    """A flow into (> 0) or out of (< 0) a level whose equity was ``before``, in its currency (a deposit, a
    withdrawal, a portfolio moved in or out): not performance, so its references move with it."""
    kill_switches.move_references(level.state, before, amount)


def drop_removed(level: Level, now: datetime) -> list[SwitchEvent]:
    """Clear the level's automatic switches whose limit is gone (mutates ``level.state``)."""
    limits = {DRAWDOWN: level.limits.drawdown, DAILY_LOSS: level.limits.daily_loss}
    events: list[SwitchEvent] = []
    for name, limit in limits.items():
        if limit is None and name in level.state.switches:
            events += kill_switches._clear(level.state, name, now, "limit removed")
    return _tag(level, events)


def halted(levels: tuple[Level, ...]) -> Level | None:
    """The nearest halted level, if any."""
    return next((level for level in levels if level.state.switches), None)


def halt(level: Level, reason: str, now: datetime) -> list[SwitchEvent]:
    return _tag(level, kill_switches.halt(level.state, reason, now))


def resume(level: Level, own: Book, now: datetime, force: bool = False, reason: str | None = None) -> list[SwitchEvent]:
    """An admin's resume of the level: as a portfolio's (SPEC §4), its references re-based to its equity now."""
    equity = level.others.plus(own).equity
    return _tag(level, kill_switches.resume(level.state, equity, now, CALENDAR, force=force, reason=reason))


def level_constraints(symbol: str, direction: int, units: Decimal, per_unit: Decimal, info: InstrumentInfo,
                      state: PortfolioState, config: RPMConfig, own: dict[str, Book] | None = None,
                      ) -> tuple[Decimal, list[dict[str, Any]], Rejection | None]:
    """Each held level's limits on the size ``units`` (already within the portfolio's), nearest level first: the
    size adjusted down to what every level allows, or the first level's rejection. ``per_unit``: the account
    currency's notional of one unit; ``own``: the portfolio's book by currency, where already known."""
    steps: list[dict[str, Any]] = []
    own = {} if own is None else own
    for level in state.levels:
        if not (level.held and level.limits.exposure):
            continue
        if level.currency not in own:
            own[level.currency] = book_of(state, config, level.currency)
        book = level.others.plus(own[level.currency])
        rate = currency_rate(config.account_currency, level.currency, state.marks)
        where = {"level": level.id}
        if book.missing_rate is not None or rate is None:
            missing = book.missing_rate or config.account_currency
            step = {"name": "level_fx_rate", **where, "missing": missing, "result": "REJECTED"}
            steps.append(step)
            return ZERO, steps, Rejection(ReasonCode.NO_FX_RATE, f"{level.name}: no mark to convert {missing} into "
                                          f"{level.currency}", step)
        units, rejection = _level_caps(level, book, symbol, direction, units, per_unit * rate, info, state, steps)
        if rejection is not None:
            return ZERO, steps, rejection
    return units, steps, None


def _level_caps(level: Level, book: Book, symbol: str, direction: int, units: Decimal, per_unit: Decimal,
                info: InstrumentInfo, state: PortfolioState, out: list[dict[str, Any]]
                ) -> tuple[Decimal, Rejection | None]:
    limits = level.limits
    steps = _Steps(units, info.lot)
    where = {"level": level.id}

    def named(rejection: Rejection | None) -> Rejection | None:
        out.extend(steps.steps)
        steps.steps.clear()
        if rejection is None:
            return None
        return Rejection(rejection.code, f"{level.name}: {rejection.message}", {**rejection.context, **where})

    if limits.positions is not None:
        new = symbol not in state.positions
        full = new and book.positions >= limits.positions
        out.append({"name": "max_positions", **where, "limit": limits.positions, "current": book.positions,
                    "before": float(units), "after": 0.0 if full else float(units),
                    "result": "REJECTED" if full else "PASS"})
        if full:
            return ZERO, Rejection(ReasonCode.MAX_POSITIONS, f"{level.name}: {book.positions} positions open, the "
                                   f"maximum is {limits.positions}", {**out[-1]})
    checks: list[tuple[str, Decimal | None, ReasonCode, Decimal | None, Decimal, dict[str, Any]]] = []
    if limits.symbol_exposure is not None:
        current = book.by_symbol.get(symbol, ZERO)
        checks.append(("symbol_exposure", _room_signed(current, direction * per_unit, limits.symbol_exposure),
                       ReasonCode.SYMBOL_EXPOSURE, limits.symbol_exposure, current, {"symbol": symbol}))
    if limits.currency_exposure is not None:
        for currency, sign in info.legs:
            if currency == level.currency:
                continue
            current = book.by_currency.get(currency, ZERO)
            checks.append(("currency_exposure", _room_signed(current, sign * direction * per_unit,
                                                             limits.currency_exposure),
                           ReasonCode.CURRENCY_EXPOSURE, limits.currency_exposure, current, {"currency": currency}))
    if limits.gross_exposure is not None:
        checks.append(("gross_exposure", div_floor(limits.gross_exposure - book.gross, per_unit),
                       ReasonCode.GROSS_EXPOSURE, limits.gross_exposure, book.gross, {}))
    if limits.net_exposure is not None:
        checks.append(("net_exposure", _room_signed(book.net, direction * per_unit, limits.net_exposure),
                       ReasonCode.NET_EXPOSURE, limits.net_exposure, book.net, {}))
    for name, room, code, limit, current, extra in checks:
        rejection = named(steps.cap(name, room, code, limit, current, **where, **extra))
        if rejection is not None:
            return ZERO, rejection
    return steps.units, None


def level_rejection(level: Level) -> tuple[ReasonCode, str, dict[str, Any]]:
    """The HALTED rejection of a halted level."""
    tripped = sorted(level.state.switches)
    why = "; ".join(f"{name}: {level.state.switches[name].reason}" for name in tripped)
    return (ReasonCode.HALTED, f"trading halted by {level.name} ({why}): only reducing trades are allowed",
            {"level": level.id, "tripped_switches": tripped,
             "switches": {k: level.state.switches[k].to_dict() for k in tripped}})


def level_summary(level_id: str, currency: str, limits: Limits, state: LevelState, book: Book,
                  now: datetime, members_daily: Decimal | None = None) -> dict[str, Any]:
    """A level's view, in the shape of a portfolio's: aggregated positions, exposures, equity, PnL, drawdown,
    limits and how much of each is used, switch states. A level without limits keeps no references of its own:
    its day's PnL is then its portfolios' (``members_daily``)."""
    eq = book.equity
    peak = state.peak_equity if state.peak_equity is not None and state.peak_equity > eq else eq
    view = LevelState(state.switches, peak, state.day_key, state.day_start_equity, state.day_peak_equity)
    if view.day_key != kill_switches.trading_day(now, CALENDAR).isoformat():  # (a day not rolled yet: none lost)
        view.day_start_equity = eq
    daily = members_daily if not limits.any and members_daily is not None else kill_switches.daily_pnl(view, eq)
    drawdown = kill_switches.drawdown(view, eq)
    used: dict[str, Any] = {}
    current = {"gross_exposure": book.gross, "net_exposure": abs(book.net),
               "symbol_exposure": max((abs(v) for v in book.by_symbol.values()), default=ZERO),
               "currency_exposure": max((abs(v) for v in book.by_currency.values()), default=ZERO),
               "positions": book.positions, "daily_loss": max(-daily, ZERO), "drawdown": drawdown}
    for name, limit in limits.to_dict().items():
        value = current[name]
        pct = float(value) / limit * 100 if limit else (100.0 if value else 0.0)  # (a limit of 0 positions)
        used[name] = {"limit": limit, "current": float(value), "used_pct": pct}
    return {
        "level": "firm" if level_id == FIRM else "group",
        "id": level_id,
        "currency": currency,
        "starting_capital": float(book.capital),
        "equity": float(eq),
        "realised_pnl": float(book.realised),
        "unrealised_pnl": float(book.unrealised),
        "peak_equity": float(peak),
        "drawdown": drawdown,
        "drawdown_pct": drawdown * 100,
        "daily_pnl": float(daily),
        "trading_state": "HALTED" if state.switches else "ACTIVE",
        "switches": {k: v.to_dict() for k, v in sorted(state.switches.items())},
        "open_positions": book.positions,
        "limits": limits.to_dict(),
        "limits_used": used,
        "exposures": accounting.exposures_view(book, eq),
        **({"missing_rate": book.missing_rate} if book.missing_rate else {}),
    }


"""The decision pipeline (SPEC §3) and the other state transitions of a portfolio.

Every function takes the state, the configuration and the time, and returns the
new state without touching the one it was given: deterministic for the same
inputs, and cheap to run as a what-if.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from . import accounting, domain, firm, kill_switches
from .config import RPMConfig
from .constraints import apply_constraints
from .instruments import instrument, notional_per_unit, quote_to_account_rate, rate_needed
from .model import (
    ZERO,
    Approval,
    Booking,
    Decision,
    PortfolioState,
    Position,
    ReasonCode,
    Release,
    SwitchEvent,
    TradeApprovalStatus,
    TradeIntent,
    floor_units,
    throttle_bucket,
    throttle_window,
    to_decimal,
)
from .sizing import size_position


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a state transition: the new state and the switch events it caused."""

    state: PortfolioState
    events: list[SwitchEvent]
    equity: Decimal
    decision: Decision | None = None
    booking: Booking | None = None
    realised_pnl: Decimal = ZERO
    extra: Mapping[str, Any] = field(default_factory=dict)


def _begin(state: PortfolioState, now: datetime, config: RPMConfig,
           books: dict[str, Any] | None = None) -> tuple[PortfolioState, Decimal, list[SwitchEvent]]:
    """A private copy of the state, the approvals due released, its equity, and the calendar rolled to ``now``
    (``books``: given the portfolio's book in each level's currency, as it is now)."""
    s = state.clone()
    _expire(s, now, config)
    eq = accounting.equity(s, config)
    events = kill_switches.roll_calendar(s, eq, now, config)
    kill_switches.update_peaks(s, eq)
    if s.levels:
        events += _settle_levels(s, config, now, books)
    return s, eq, events


def _settle_levels(s: PortfolioState, config: RPMConfig, now: datetime,
                   own: dict[str, Any] | None = None) -> list[SwitchEvent]:
    """The groups and the firm above the portfolio measured with its book as it is now (app/risk/firm.py); ``own``
    is given that book in each level's currency."""
    events: list[SwitchEvent] = []
    own = {} if own is None else own
    for level in s.levels:
        if level.held:
            if level.currency not in own:
                own[level.currency] = firm.book_of(s, config, level.currency)
            events += firm.settle(level, own[level.currency], now)
    return events


def _expire(s: PortfolioState, now: datetime, config: RPMConfig) -> None:
    """Release the approvals whose time is up: their units given back as a fill of nothing would (``released``)."""
    due = [a for a in s.open_approvals if a.expires_at <= now]
    if not due:
        return
    s.open_approvals = tuple(a for a in s.open_approvals if a.expires_at > now)
    for approval in due:
        try:
            delta = accounting.apply_fill(s, approval.booking, approval.booked_at, ZERO, approval.booking.price, config)
            s.released.append(Release(approval, delta))
        except accounting.FillError as exc:  # the position it opened was reduced or closed since: nothing is left
            s.released.append(Release(approval, ZERO, f"nothing released: {exc}"))


def price_refusal(s: PortfolioState, symbol: str, price: Decimal, config: RPMConfig,
                  checks: list[dict[str, Any]]) -> tuple[ReasonCode, str, dict[str, Any]] | None:
    """Whether a price may trade: a multiple of the instrument's tick, and within the collar (or the instrument's
    tighter band) of the latest mark. For openings, reductions and closes alike: a price far from the market
    would book PnL that never was. The checks made are appended to ``checks``."""
    info = instrument(symbol, config)
    if info.tick is not None:
        off_tick = price % info.tick != 0
        checks.append({"name": "tick_size", "price": float(price), "tick_size": float(info.tick),
                       "result": "REJECTED" if off_tick else "PASS"})
        if off_tick:
            return (ReasonCode.INSTRUMENT_LIMIT, f"price {price} is not a multiple of {symbol}'s tick size {info.tick}",
                    {"price": float(price), "tick_size": float(info.tick)})
    mark = s.marks.get(symbol)
    if mark is None:
        checks.append({"name": "price_collar", "mark": None, "result": "PASS"})
        return None
    # the instrument's price band where it is tighter than the configuration's collar
    limit = config.price_collar_pct if info.price_band is None else min(config.price_collar_pct, float(info.price_band))
    deviation = float(abs(price - mark) / mark)
    collar = deviation > limit
    checks.append({"name": "price_collar", "mark": float(mark), "deviation": deviation, "limit": limit,
                   "result": "REJECTED" if collar else "PASS"})
    if collar:
        return (ReasonCode.PRICE_COLLAR, f"price {float(price)} is {deviation:.2%} from the latest mark {float(mark)}",
                {"mark": float(mark), "deviation": deviation, "limit": limit})
    return None


class PriceRefused(ValueError):
    """A close at a price that may not trade (off the tick, outside the collar)."""


def expire(state: PortfolioState, config: RPMConfig, now: datetime) -> PortfolioState:
    """The state with the approvals due at ``now`` released (in its ``released``), before anything else happens."""
    s = state.clone()
    _expire(s, now, config)
    return s


def expires_at(intent: TradeIntent, config: RPMConfig, now: datetime) -> datetime | None:
    """When an approval of ``intent`` expires: the configuration's time to live, or the intent's, if shorter."""
    limits = [t for t in (config.approval_ttl_seconds, intent.time_in_force_seconds) if t is not None]
    return now + timedelta(seconds=min(limits)) if limits else None


def _settle(s: PortfolioState, now: datetime, config: RPMConfig, events: list[SwitchEvent],
            eq: Decimal | None = None) -> Decimal:
    """After a change of the books: new equity (``eq`` when already known), peaks, and every switch evaluated."""
    if eq is None:
        eq = accounting.equity(s, config)
    kill_switches.update_peaks(s, eq)
    events += kill_switches.evaluate(s, eq, now, config)
    if s.levels:
        events += _settle_levels(s, config, now)
    return eq


def _held(s: PortfolioState, config: RPMConfig) -> Decimal:
    """Equity after a change of the books, which must stay within what they may hold (app/risk/domain.py)."""
    eq = accounting.equity(s, config)
    if not domain.within_books(eq, s.realised_pnl):
        raise accounting.OutOfRange(eq, s.realised_pnl)
    return eq


@dataclass(frozen=True, slots=True)
class _Undo:
    """What a booking of ``symbol`` changes: its position (None: none was open) and the realised PnL."""

    symbol: str
    position: Position | None
    realised_pnl: Decimal


class _Decider:
    """One run of the pipeline; collects the breakdown as it goes."""

    def __init__(self, state: PortfolioState, intent: TradeIntent, config: RPMConfig, now: datetime, decision_id: str):
        self.intent = intent
        self.config = config
        self.now = now
        self.decision_id = decision_id
        # equity alone to begin with: many intents are rejected before the constraints need exposures
        # the portfolio's book in its levels' currencies, until a booking changes it
        self.books: dict[str, Any] = {}
        self.s, self.equity, self.events = _begin(state, now, config, self.books)
        self.breakdown: dict[str, Any] = {"equity": float(self.equity)}
        self.risk_capital = ZERO

    def finish(self, status: TradeApprovalStatus, units: Decimal, code: ReasonCode | None, message: str,
               context: dict[str, Any] | None = None, reducing: bool = False, booking: Booking | None = None,
               realised: Decimal = ZERO, booked_equity: Decimal | None = None) -> Outcome:
        # only a booking changes the books; a rejection was evaluated before the pipeline ran
        eq = _settle(self.s, self.now, self.config, self.events, booked_equity) if booking is not None else self.equity
        # only an approval that adds risk expires: releasing a reduction would put back risk no limit checked
        until = expires_at(self.intent, self.config, self.now) if booking is not None and not reducing else None
        if until is not None:  # unfilled at ``until``, it is released
            self.s.open_approvals += (Approval(booking, self.now, until),)
            self.breakdown["final"]["expires_at"] = until.isoformat()
        decision = Decision(
            id=self.decision_id,
            status=status,
            reason_code=code,
            message=message,
            decided_at=self.now,
            intent=self.intent,
            units=units,
            risk_capital=self.risk_capital,
            reducing=reducing,
            breakdown=self.breakdown,
            config_hash=self.config.config_hash,
            context=context or {},
        )
        return Outcome(self.s, self.events, eq, decision, booking, realised)

    def reject(self, code: ReasonCode, message: str, context: dict[str, Any] | None = None) -> Outcome:
        self.breakdown["final"] = {"result": "REJECTED", "reason_code": code.value}
        return self.finish(TradeApprovalStatus.REJECTED, ZERO, code, message, context)

    # -- the pipeline -----------------------------------------------------------
    def run(self) -> Outcome:
        s, intent, config = self.s, self.intent, self.config
        position = s.positions.get(intent.symbol)
        reducing = position is not None and position.direction != intent.direction
        self.breakdown["reducing"] = reducing
        if reducing:
            return self.reduce(position)
        if intent.reduce_only:
            held = "no position" if position is None else f"a {'long' if position.direction > 0 else 'short'} position"
            return self.reject(ReasonCode.NOTHING_TO_REDUCE, f"reduce_only, and {intent.symbol} has {held} that this "
                               "intent would reduce", {"position": position.to_dict() if position else None})

        self.events += kill_switches.expire(s, self.equity, self.now, config)
        window = config.confidence_collapse_window
        s.recent_confidences = (s.recent_confidences + (intent.confidence_score,))[-window:]
        self.events += kill_switches.evaluate(s, self.equity, self.now, config)

        # 1. kill switches
        tripped = sorted(s.switches)
        symbol_halt = s.symbol_halts.get(intent.symbol)
        self.breakdown["kill_switches"] = {
            "tripped": tripped,
            "symbol_halted": symbol_halt is not None,
            "result": "REJECTED" if tripped or symbol_halt else "PASS",
        }
        if tripped:
            return self.reject(
                ReasonCode.HALTED,
                f"trading halted by {', '.join(tripped)}: only reducing trades are allowed",
                {"tripped_switches": tripped, "switches": {k: s.switches[k].to_dict() for k in tripped}},
            )
        stopped = firm.halted(s.levels)
        if stopped is not None:
            self.breakdown["kill_switches"].update(result="REJECTED", level=stopped.id,
                                                   level_tripped=sorted(stopped.state.switches))
            return self.reject(*firm.level_rejection(stopped))
        if symbol_halt is not None:
            return self.reject(
                ReasonCode.SYMBOL_HALTED,
                f"{intent.symbol} halted by a volatility shock until {symbol_halt.cooldown_until.isoformat()}",
                {"switch": symbol_halt.to_dict()},
            )

        # 2. intent checks
        rejection = self.intent_checks()
        if rejection is not None:
            return rejection

        # 3. regime restrictions
        rejection = self.regime_check()
        if rejection is not None:
            return rejection

        # 4. sizing
        info = instrument(intent.symbol, config)
        rate = quote_to_account_rate(info, intent.current_price, s.marks, config.account_currency)
        if rate is None:
            needed = rate_needed(info, config.account_currency)
            self.breakdown["sizing"] = {"result": "REJECTED", "missing_rate": needed}
            return self.reject(ReasonCode.NO_FX_RATE, f"no mark for {needed} to convert {info.currency}",
                               {"currency": info.currency, "needed": needed})
        units, self.risk_capital, factors = size_position(intent, self.equity, rate, info.multiplier, config, info.lot)
        if intent.units is not None:  # what was asked for, at most
            requested = floor_units(intent.units, info.lot)
            factors["requested_units"] = float(requested)
            if requested < units:
                units = factors["units"] = requested
        self.breakdown["sizing"] = factors

        # 5. portfolio constraints
        per_unit = notional_per_unit(info, intent.current_price, s.marks, config.account_currency)
        exposures = accounting.exposures(s, config)  # positions and marks are as they were at the start
        units, steps, rejection = apply_constraints(intent, units, per_unit, exposures, self.equity, s, config)
        self.breakdown["constraints"] = steps
        if rejection is not None:
            return self.reject(rejection.code, rejection.message, rejection.context)
        if s.levels:  # then each group's and the firm's, nearest first
            units, steps, rejection = firm.level_constraints(intent.symbol, intent.direction, units, per_unit, info,
                                                             s, config, self.books)
            if steps:
                self.breakdown["levels"] = steps
            if rejection is not None:
                return self.reject(rejection.code, rejection.message, rejection.context)

        # 6. final validation
        minimum = info.min_quantity if info.min_quantity is not None else config.dec("min_position_units")
        if units < minimum or units <= 0:
            return self.reject(
                ReasonCode.SIZE_BELOW_MINIMUM,
                f"size {float(units):,.2f} is below the minimum of {float(minimum):,.2f} units",
                {"units": float(units), "min_position_units": float(minimum)},
            )
        undo = self.undo_of(intent.symbol)
        accounting.book_open(s, intent.symbol, intent.direction, units, intent.current_price, self.now)
        booked = self.held_or_undone(undo)
        if booked is None:
            return self.out_of_range(units)
        self.breakdown["final"] = {"result": "APPROVED", "units": float(units), "min_position_units": float(minimum)}
        booking = Booking(self.decision_id, intent.symbol, "open", intent.direction, units, intent.current_price)
        return self.finish(TradeApprovalStatus.APPROVED, units, None, "approved", booking=booking, booked_equity=booked)

    def reduce(self, position) -> Outcome:
        """An intent opposite to a position closes it, in every trading state (reduce-only)."""
        s, intent = self.s, self.intent
        self.breakdown["kill_switches"] = {
            "tripped": sorted(s.switches),
            "symbol_halted": intent.symbol in s.symbol_halts,
            "result": "REDUCE_ONLY" if s.switches or intent.symbol in s.symbol_halts or firm.halted(s.levels)
            else "PASS",
        }
        checks: list[dict[str, Any]] = []
        self.breakdown["intent_checks"] = checks
        refused = price_refusal(s, intent.symbol, intent.current_price, self.config, checks)
        if refused is not None:
            return self.reject(*refused)
        held = abs(position.units)
        units = held
        message = "approved: closes the open position"
        if intent.units is not None:  # a partial reduction: at most what was asked, never past flat
            asked = floor_units(intent.units, instrument(intent.symbol, self.config).lot)
            if asked <= 0:
                return self.reject(ReasonCode.SIZE_BELOW_MINIMUM, f"{intent.units} units is less than one lot",
                                   {"units": float(intent.units)})
            if asked < held:
                units, message = asked, f"approved: reduces the position by {asked} of {held}"
            elif asked > held:
                message = (f"approved: closes the open position ({held}); the {asked - held} units asked beyond it "
                           "are not traded: a position never flips in one intent")
        undo = self.undo_of(intent.symbol)
        realised, closed = accounting.realise_close(s, intent.symbol, intent.current_price, self.config, units)
        booked = self.held_or_undone(undo)
        if booked is None:
            return self.out_of_range(units)
        self.breakdown["reduce"] = {
            "closed_units": float(units),
            "position_units": float(held),
            "entry_price": float(closed.avg_price),
            "exit_price": float(intent.current_price),
            "realised_pnl": float(realised),
        }
        self.breakdown["final"] = {"result": "APPROVED", "units": float(units)}
        booking = Booking(self.decision_id, intent.symbol, "reduce", intent.direction, units,
                          intent.current_price, closed.avg_price)
        return self.finish(TradeApprovalStatus.APPROVED, units, None, message,
                           reducing=True, booking=booking, realised=realised, booked_equity=booked)

    # -- the books' range (app/risk/domain.py) -------------------------------------------
    def undo_of(self, symbol: str) -> _Undo:
        return _Undo(symbol, self.s.positions.get(symbol), self.s.realised_pnl)

    def held_or_undone(self, undo: _Undo) -> Decimal | None:
        """Equity after a booking; None, the booking undone, when the books could not hold it."""
        try:
            return _held(self.s, self.config)
        except accounting.OutOfRange as exc:
            if undo.position is None:
                self.s.positions.pop(undo.symbol, None)
            else:
                self.s.positions[undo.symbol] = undo.position
            self.s.realised_pnl = undo.realised_pnl
            self.breakdown["books"] = {"equity": float(exc.equity), "realised_pnl": float(exc.realised_pnl),
                                       "limit": float(domain.BOOKS_LIMIT), "result": "REJECTED"}
            return None

    def out_of_range(self, units: Decimal) -> Outcome:
        books = self.breakdown["books"]
        intent = self.intent
        return self.reject(
            ReasonCode.OUT_OF_RANGE,
            f"{float(units):,.2f} {intent.symbol} at {float(intent.current_price):g} would take equity to "
            f"{books['equity']:.6g} and realised PnL to {books['realised_pnl']:.6g}, beyond the "
            f"±{books['limit']:.0e} the books are kept within",
            {"units": float(units), **books},
        )

    def intent_checks(self) -> Outcome | None:
        s, intent, config, now = self.s, self.intent, self.config, self.now
        checks: list[dict[str, Any]] = []
        self.breakdown["intent_checks"] = checks

        restricted = intent.symbol in config.restricted_symbols
        checks.append({"name": "restricted_symbol", "result": "REJECTED" if restricted else "PASS"})
        if restricted:
            return self.reject(ReasonCode.RESTRICTED_SYMBOL, f"{intent.symbol} is on the restricted list",
                               {"symbol": intent.symbol})

        # intents counted in 10 ms buckets: the window is the last second plus what remains of the
        # bucket it starts in (up to 10 ms more: never fewer intents than the exact second holds)
        ts = now.timestamp()
        window, count = throttle_window(s.recent_intents, ts)
        here = throttle_bucket(ts)
        if window and window[-1][0] == here:
            s.recent_intents = window[:-1] + ((here, window[-1][1] + 1),)
        else:
            s.recent_intents = window + ((here, 1),)
        limit = config.max_intents_per_second
        throttled = count >= limit
        checks.append({"name": "throttle", "count": count, "limit": limit,
                       "result": "REJECTED" if throttled else "PASS"})
        if throttled:
            return self.reject(ReasonCode.THROTTLED, f"more than {limit} intents in the last second",
                               {"count": count, "limit": limit})

        refused = price_refusal(s, intent.symbol, intent.current_price, config, checks)
        if refused is not None:
            return self.reject(*refused)

        low = intent.confidence_score < config.min_confidence_threshold
        checks.append({"name": "confidence", "value": intent.confidence_score,
                       "threshold": config.min_confidence_threshold, "result": "REJECTED" if low else "PASS"})
        if low:
            return self.reject(
                ReasonCode.CONFIDENCE_TOO_LOW,
                f"confidence {intent.confidence_score:.2f} below {config.min_confidence_threshold:.2f}",
                {"confidence_score": intent.confidence_score, "threshold": config.min_confidence_threshold},
            )

        atr = float(intent.atr)
        history = s.atr_history.get(intent.symbol, ())
        baseline = config.volatility_baselines.get(intent.symbol)
        source = "config"
        if baseline is None and len(history) >= config.volatility_baseline_min_samples:
            baseline, source = sum(history) / len(history), "running_average"
        s.atr_history[intent.symbol] = (history + (atr,))[-config.volatility_baseline_window:]
        if baseline is None:
            checks.append({"name": "volatility_shock", "baseline": None, "samples": len(history), "result": "PASS"})
            return None
        threshold = baseline * config.volatility_shock_multiplier
        shock = atr > threshold
        checks.append({"name": "volatility_shock", "baseline": baseline, "baseline_source": source,
                       "threshold": threshold, "atr": atr, "result": "REJECTED" if shock else "PASS"})
        if shock:
            self.events.append(kill_switches.trip_symbol(s, intent.symbol, atr, threshold, now, config))
            return self.reject(
                ReasonCode.VOLATILITY_SHOCK,
                f"ATR {atr:.6g} is above {config.volatility_shock_multiplier}x the baseline {baseline:.6g}; "
                f"{intent.symbol} halted for {config.cooldown_seconds}s",
                {"atr": atr, "baseline": baseline, "threshold": threshold},
            )
        return None

    def regime_check(self) -> Outcome | None:
        s, intent, config = self.s, self.intent, self.config
        new_position = intent.symbol not in s.positions
        open_count = len(s.positions)
        result: dict[str, Any] = {"regime": intent.regime, "new_position": new_position, "open_positions": open_count}
        self.breakdown["regime"] = result
        if new_position and intent.regime in config.disallowed_regimes:
            result["result"] = "REJECTED"
            return self.reject(ReasonCode.REGIME_RESTRICTED,
                               f"new positions are not allowed in {intent.regime} regime", {"regime": intent.regime})
        if new_position and intent.regime == "STRESSED" and open_count >= config.stressed_max_positions:
            result["result"] = "REJECTED"
            return self.reject(
                ReasonCode.REGIME_RESTRICTED,
                f"at most {config.stressed_max_positions} positions in STRESSED regime, {open_count} open",
                {"regime": intent.regime, "open_positions": open_count, "limit": config.stressed_max_positions},
            )
        result["result"] = "PASS"
        return None


def decide(state: PortfolioState, intent: TradeIntent, config: RPMConfig, now: datetime, decision_id: str) -> Outcome:
    """Run the pipeline of SPEC §3 for one intent. ``state`` is not modified."""
    return _Decider(state, intent, config, now, decision_id).run()


def decision_inputs(state: PortfolioState, intent: TradeIntent, now: datetime) -> PortfolioState:
    """The part of a state a decision on ``intent`` at ``now`` reads: what an audit record must keep.

    ``decide`` on it gives the same decision as on the whole state (a property test says so):
    mark histories of the symbols the correlation check can read, the intent symbol's ATR
    history, and the intent times of the last second.
    """
    read = {intent.symbol, *state.positions}
    reduced = state.clone()
    reduced.mark_history = {s: h for s, h in state.mark_history.items() if s in read}
    reduced.atr_history = {s: h for s, h in state.atr_history.items() if s == intent.symbol}
    # the throttle reads only how many intents its window holds: one pair says it
    ts = now.timestamp()
    _window, count = throttle_window(state.recent_intents, ts)
    reduced.recent_intents = ((throttle_bucket(ts - 1.0), count),) if count else ()
    return reduced


def mark(state: PortfolioState, prices: Mapping[str, Any], config: RPMConfig, now: datetime) -> Outcome:
    """New prices: revalue, move peaks, evaluate every switch."""
    s, _eq, events = _begin(state, now, config)
    accounting.apply_marks(s, prices, config)
    eq = _settle(s, now, config, events, _held(s, config))
    return Outcome(s, events, eq)


def fill(state: PortfolioState, booking: Booking, booked_at: datetime, units: Any, price: Any,
         config: RPMConfig, now: datetime) -> Outcome:
    s, _eq, events = _begin(state, now, config)
    if any(r.approval.booking.decision_id == booking.decision_id for r in s.released):
        raise accounting.FillError("this approval expired before its fill: what it still booked was released")
    s.open_approvals = tuple(a for a in s.open_approvals if a.booking.decision_id != booking.decision_id)
    delta = accounting.apply_fill(s, booking, booked_at, units, price, config)
    eq = _settle(s, now, config, events, _held(s, config))
    return Outcome(s, events, eq, realised_pnl=delta)


def close(state: PortfolioState, symbol: str, price: Any, config: RPMConfig, now: datetime,
          units: Any = None) -> Outcome:
    """Close a position at a price — ``units`` of it (rounded down to the lot), or all of it — realising its PnL.
    KeyError when there is none."""
    s, _eq, events = _begin(state, now, config)
    if symbol not in s.positions:  # (none, or only an approval that expired)
        raise KeyError(symbol)
    price = to_decimal(price)
    refused = price_refusal(s, symbol, price, config, [])
    if refused is not None:
        raise PriceRefused(refused[1])
    closing = None if units is None else floor_units(to_decimal(units), instrument(symbol, config).lot)
    pnl, closed = accounting.realise_close(s, symbol, price, config, closing)
    eq = _settle(s, now, config, events, _held(s, config))
    done = abs(closed.units) if closing is None else min(closing, abs(closed.units))
    return Outcome(s, events, eq, realised_pnl=pnl, extra={"closed": closed.to_dict(), "closed_units": done})


def move_capital(state: PortfolioState, amount: Any, config: RPMConfig, now: datetime) -> Outcome:
    """A deposit (> 0) or a withdrawal (< 0): capital moves, equity with it, and it is not performance.

    As a fund administrator adjusts for flows: the day's and week's start equities move by the amount, so daily and
    weekly PnL are what they were; the peaks scale with equity, so the drawdowns (fractions) are what they were;
    the loss limits, fractions of the capital, follow it. CapitalError for a change that would leave no equity, or
    a capital outside the domain.
    """
    amount = to_decimal(amount)
    s, eq, events = _begin(state, now, config)
    if eq + amount <= 0:
        raise accounting.CapitalError(f"a withdrawal of {-amount} would leave no equity (equity {eq})")
    if not domain.CAPITAL.contains(s.starting_capital + amount):
        raise accounting.CapitalError(f"it would take the capital ({s.starting_capital}) to "
                                      f"{s.starting_capital + amount}, outside {domain.CAPITAL.description}")
    # the groups above see the same flow, in their currency: their references move with it (what is measured there
    # is the aggregate's performance, not money coming in or out)
    for level in s.levels:
        rate = firm.currency_rate(config.account_currency, level.currency, s.marks)
        if level.held and rate is not None:
            firm.move(level, level.others.plus(firm.book_of(s, config, level.currency)).equity, amount * rate)
    s.starting_capital += amount
    kill_switches.move_references(s, eq, amount)
    eq = _settle(s, now, config, events, _held(s, config))
    return Outcome(s, events, eq)


def correct(state: PortfolioState, symbol: str, units: Any, avg_price: Any, config: RPMConfig,
            now: datetime) -> Outcome:
    """Set a position to the broker's (``units`` signed, 0: none; ``avg_price`` its entry): no PnL is realised, the
    equity and every switch follow."""
    units, price = to_decimal(units), to_decimal(avg_price)
    s, _eq, events = _begin(state, now, config)
    # the broker's position is the truth: the symbol's approvals still open are void (final, nothing given back)
    void = [a for a in s.open_approvals if a.booking.symbol == symbol]
    s.open_approvals = tuple(a for a in s.open_approvals if a.booking.symbol != symbol)
    s.released += [Release(a, ZERO, "voided by a correction of the position", voided=True) for a in void]
    before = s.positions.get(symbol)
    if units == 0:
        s.positions.pop(symbol, None)
    else:
        opened = before.opened_at if before is not None and before.direction == (1 if units > 0 else -1) else now
        s.positions[symbol] = Position(symbol, units, price, opened)
    eq = _settle(s, now, config, events, _held(s, config))
    return Outcome(s, events, eq, extra={"before": before.to_dict() if before else None,
                                         "after": s.positions[symbol].to_dict() if units != 0 else None})


def halt(state: PortfolioState, reason: str, config: RPMConfig, now: datetime) -> Outcome:
    s, _eq, events = _begin(state, now, config)
    events += kill_switches.halt(s, reason, now)
    eq = _settle(s, now, config, events)
    return Outcome(s, events, eq)


def resume(state: PortfolioState, config: RPMConfig, now: datetime, force: bool = False,
           reason: str | None = None) -> Outcome:
    s, eq_before, events = _begin(state, now, config)
    events += kill_switches.resume(s, eq_before, now, config, force=force, reason=reason)
    eq = _settle(s, now, config, events)
    return Outcome(s, events, eq)


def tick(state: PortfolioState, config: RPMConfig, now: datetime) -> Outcome:
    """Let time pass: roll the calendar and clear switches whose cooldown is over."""
    s, _eq, events = _begin(state, now, config)
    eq = _settle(s, now, config, events)
    return Outcome(s, events, eq)


def portfolio_summary(state: PortfolioState, config: RPMConfig) -> dict[str, Any]:
    """Positions, exposures, equity, PnL and drawdown, JSON-ready."""
    exp = accounting.exposures(state, config)
    unrealised = exp.unrealised
    eq = state.starting_capital + state.realised_pnl + unrealised
    positions = []
    for symbol, pos in sorted(state.positions.items()):
        price = state.marks.get(symbol) or pos.avg_price
        positions.append({
            "symbol": symbol,
            "direction": pos.direction,
            "units": float(pos.units),
            "avg_price": float(pos.avg_price),
            "mark": float(price),
            "notional": float(exp.by_symbol[symbol]),
            "opened_at": pos.opened_at.isoformat(),
        })
    return {
        "portfolio_id": state.portfolio_id,
        "account_currency": config.account_currency,
        "starting_capital": float(state.starting_capital),
        "equity": float(eq),
        "realised_pnl": float(state.realised_pnl),
        "unrealised_pnl": float(unrealised),
        "peak_equity": float(state.peak_equity if state.peak_equity is not None else eq),
        "drawdown": kill_switches.drawdown(state, eq),
        "drawdown_pct": kill_switches.drawdown(state, eq) * 100,
        "daily_pnl": float(kill_switches.daily_pnl(state, eq)),
        "weekly_pnl": float(kill_switches.weekly_pnl(state, eq)),
        "trading_day": state.day_key,
        "trading_state": trading_state(state),
        "open_positions": len(state.positions),
        "positions": positions,
        # approvals that expire, not yet filled: what is still booked of each, and until when
        "open_approvals": [{"decision_id": a.booking.decision_id, "symbol": a.booking.symbol, "kind": a.booking.kind,
                            "direction": a.booking.direction, "units": float(a.booking.units),
                            "booked_at": a.booked_at.isoformat(), "expires_at": a.expires_at.isoformat()}
                           for a in state.open_approvals],
        "exposures": accounting.exposures_view(exp, eq),
    }


def trading_state(state: PortfolioState) -> str:
    """ACTIVE, or HALTED (reduce-only) when any portfolio switch is tripped."""
    return "HALTED" if state.switches else "ACTIVE"


def health(state: PortfolioState, config: RPMConfig, now: datetime) -> dict[str, Any]:
    eq = accounting.equity(state, config)
    return {
        "health": "HALTED" if state.switches else ("DEGRADED" if state.symbol_halts else "HEALTHY"),
        "trading_state": trading_state(state),
        "kill_switches": kill_switches.switch_status(state, eq, now, config),
        "portfolio_state": portfolio_summary(state, config),
    }


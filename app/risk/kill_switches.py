"""Kill switches (SPEC §4) as explicit state transitions. The time is always an argument."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from .accounting import MONEY
from .config import RPMConfig
from .model import ONE, ZERO, PortfolioState, Switch, SwitchEvent, SwitchState, iso

# plain strings on the hot path (Enum attribute access is slow)
DRAWDOWN = Switch.DRAWDOWN.value
DAILY_DRAWDOWN = Switch.DAILY_DRAWDOWN.value
DAILY_LOSS = Switch.DAILY_LOSS.value
WEEKLY_LOSS = Switch.WEEKLY_LOSS.value
CONFIDENCE_COLLAPSE = Switch.CONFIDENCE_COLLAPSE.value
MANUAL = Switch.MANUAL.value
VOLATILITY_SHOCK = Switch.VOLATILITY_SHOCK.value


class CooldownActive(Exception):
    """A manual resume during an automatic switch's cooldown, without force."""

    def __init__(self, switches: dict[str, str]):
        super().__init__("cooldown active for " + ", ".join(f"{k} until {v}" for k, v in switches.items()))
        self.switches = switches


class ResumeError(ValueError):
    """A resume that is not allowed as asked (force without a reason...)."""


# -- the trading calendar -----------------------------------------------------

@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def trading_day(now: datetime, config: RPMConfig) -> date:
    """The trading day ``now`` belongs to, labelled by the calendar day it started on."""
    local = now.astimezone(_zone(config.trading_timezone))
    rollover = config.rollover_time
    return (local - timedelta(hours=rollover.hour, minutes=rollover.minute)).date()


def trading_week(day: date, config: RPMConfig) -> date:
    """The first trading day of the week ``day`` belongs to."""
    return day - timedelta(days=(day.weekday() - config.trading_week_start) % 7)


@lru_cache(maxsize=4096)
def _day_bounds(day_key: str, zone: str, rollover: str) -> tuple[float, float]:
    """POSIX seconds at which a trading day starts and ends (the next one starts)."""
    hours, minutes = (int(x) for x in rollover.split(":"))
    day = date.fromisoformat(day_key)
    tz = _zone(zone)
    start = datetime(day.year, day.month, day.day, hours, minutes, tzinfo=tz)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, hours, minutes, tzinfo=tz)
    return start.timestamp(), end.timestamp()


def roll_calendar(state: PortfolioState, equity: Decimal, now: datetime, config: RPMConfig) -> list[SwitchEvent]:
    """Start a new trading day / week when ``now`` has passed the rollover (mutates ``state``)."""
    events: list[SwitchEvent] = []
    if state.day_key is not None:
        start, end = _day_bounds(state.day_key, config.trading_timezone, config.trading_day_rollover)
        if start <= now.timestamp() < end:
            return events  # still the same trading day: the common case, without time-zone arithmetic
    day = trading_day(now, config)
    day_key = day.isoformat()
    if state.day_key != day_key:
        if state.day_key is not None and state.day_key > day_key:
            return events  # a clock running backwards never rolls a day back
        state.day_key = day_key
        state.day_start_equity = equity
        state.day_peak_equity = equity
        for name in (DAILY_DRAWDOWN, DAILY_LOSS):
            events += _clear(state, name, now, "new trading day")
        week_key = trading_week(day, config).isoformat()
        if state.week_key != week_key:
            state.week_key = week_key
            state.week_start_equity = equity
            events += _clear(state, WEEKLY_LOSS, now, "new trading week")
    return events


def update_peaks(state: PortfolioState, equity: Decimal) -> None:
    if state.peak_equity is None or equity > state.peak_equity:
        state.peak_equity = equity
    if state.day_peak_equity is None or equity > state.day_peak_equity:
        state.day_peak_equity = equity


def move_references(state: Any, equity: Decimal, amount: Decimal) -> None:
    """Money in (> 0) or out (< 0) that is not performance, from an equity of ``equity`` (a portfolio's, or a
    level's: app/risk/firm.py): the day's and week's PnL are amounts, so their references move by it; the drawdowns
    are fractions, so the peaks scale with equity. A flow changes neither."""
    for name in ("day_start_equity", "week_start_equity"):
        if getattr(state, name) is not None:
            setattr(state, name, getattr(state, name) + amount)
    for name in ("peak_equity", "day_peak_equity"):
        value = getattr(state, name)
        if value is not None:  # (with no equity left, a fraction cannot be kept: the peaks move by the amount)
            setattr(state, name, (value * (equity + amount) / equity).quantize(MONEY) if equity > 0
                    else value + amount)


# -- measurements ----------------------------------------------------------------

def drawdown(state: PortfolioState, equity: Decimal) -> float:
    return _below(state.peak_equity, equity)


def daily_drawdown(state: PortfolioState, equity: Decimal) -> float:
    return _below(state.day_peak_equity, equity)


def _below(peak: Decimal | None, equity: Decimal) -> float:
    """1 - equity / peak, against a peak of at least one unit of the account currency: a resume re-bases the
    peak to the equity of the moment, which may be a fraction of a cent, and a loss measured against that
    would be a ratio past anything stored (app/risk/domain.py)."""
    if not peak or peak <= 0:
        return 0.0
    return max(0.0, float(1 - equity / max(peak, ONE)))


def daily_pnl(state: PortfolioState, equity: Decimal) -> Decimal:
    return equity - state.day_start_equity if state.day_start_equity is not None else ZERO


def weekly_pnl(state: PortfolioState, equity: Decimal) -> Decimal:
    return equity - state.week_start_equity if state.week_start_equity is not None else ZERO


def mean_confidence(state: PortfolioState) -> float | None:
    window = state.recent_confidences
    # fsum: twenty intents at exactly the threshold (0.6) must not average to 0.5999999999999999
    return math.fsum(window) / len(window) if window else None


def measurements(state: PortfolioState, equity: Decimal, config: RPMConfig) -> dict[str, tuple[float | None, float, bool]]:
    """Each portfolio switch: (current value, threshold, condition holds)."""
    capital = float(state.starting_capital)
    dd = drawdown(state, equity)
    ddd = daily_drawdown(state, equity)
    dpnl = float(daily_pnl(state, equity))
    wpnl = float(weekly_pnl(state, equity))
    conf = mean_confidence(state)
    full = len(state.recent_confidences) >= config.confidence_collapse_window
    daily_limit = -config.daily_loss_limit * capital
    weekly_limit = -config.weekly_loss_limit * capital
    return {
        DRAWDOWN: (dd, config.max_drawdown, dd >= config.max_drawdown),
        DAILY_DRAWDOWN: (ddd, config.max_daily_drawdown, ddd >= config.max_daily_drawdown),
        DAILY_LOSS: (dpnl, daily_limit, dpnl <= daily_limit),
        WEEKLY_LOSS: (wpnl, weekly_limit, wpnl <= weekly_limit),
        CONFIDENCE_COLLAPSE: (
            conf, config.confidence_collapse_threshold,
            full and conf is not None and conf < config.confidence_collapse_threshold,
        ),
    }


# -- transitions --------------------------------------------------------------------

def _cooldown_end(now: datetime, config: RPMConfig) -> datetime:
    return now + timedelta(seconds=config.cooldown_seconds)


def _clear(state: PortfolioState, name: str, now: datetime, why: str) -> list[SwitchEvent]:
    tripped = state.switches.pop(name, None)
    if tripped is None:
        return []
    if name == CONFIDENCE_COLLAPSE:
        state.recent_confidences = ()  # measure a fresh window, not the one that tripped
    return [SwitchEvent(name, "CLEARED", now, tripped.value, tripped.threshold, reason=why)]


def expire(state: PortfolioState, equity: Decimal, now: datetime, config: RPMConfig) -> list[SwitchEvent]:
    """Clear the automatic switches whose cooldown is over (and whose condition is gone)."""
    if not state.switches and not state.symbol_halts:
        return []
    events: list[SwitchEvent] = []
    for name in (DRAWDOWN, CONFIDENCE_COLLAPSE):
        tripped = state.switches.get(name)
        if tripped is not None and tripped.cooldown_until is not None and now >= tripped.cooldown_until:
            if name == DRAWDOWN and drawdown(state, equity) >= config.max_drawdown:
                continue  # drawdown clears only once it is back under the limit
            events += _clear(state, name, now, "cooldown over")
    for symbol, halt in list(state.symbol_halts.items()):
        if halt.cooldown_until is not None and now >= halt.cooldown_until:
            del state.symbol_halts[symbol]
            events.append(SwitchEvent(VOLATILITY_SHOCK, "CLEARED", now, halt.value, halt.threshold,
                                      symbol=symbol, reason="cooldown over"))
    return events


def evaluate(state: PortfolioState, equity: Decimal, now: datetime, config: RPMConfig) -> list[SwitchEvent]:
    """Clear what the rules allow, then trip every switch whose condition holds (mutates ``state``)."""
    events = expire(state, equity, now, config)
    for name, (value, threshold, holds) in measurements(state, equity, config).items():
        if holds and name not in state.switches:
            events.append(trip(state, name, value, threshold, now, config))
    return events


def trip(state: PortfolioState, name: str, value: float | None, threshold: float | None, now: datetime,
         config: RPMConfig, reason: str = "") -> SwitchEvent:
    until = _cooldown_end(now, config)
    why = reason or f"{name} {value:.6g} breached {threshold:.6g}"
    state.switches[name] = SwitchState(name, now, value, threshold, until, why)
    return SwitchEvent(name, "TRIPPED", now, value, threshold, until, reason=why)


def trip_symbol(state: PortfolioState, symbol: str, value: float, threshold: float, now: datetime,
                config: RPMConfig) -> SwitchEvent:
    until = _cooldown_end(now, config)
    why = f"ATR {value:.6g} above {threshold:.6g} ({config.volatility_shock_multiplier}x baseline)"
    state.symbol_halts[symbol] = SwitchState(VOLATILITY_SHOCK, now, value, threshold, until, why, symbol)
    return SwitchEvent(VOLATILITY_SHOCK, "TRIPPED", now, value, threshold, until, symbol, why)


def halt(state: PortfolioState, reason: str, now: datetime) -> list[SwitchEvent]:
    """A manual halt: holds until a manual resume."""
    if not reason or not reason.strip():
        raise ResumeError("a halt needs a reason")
    name = MANUAL
    if name in state.switches:
        return []
    state.switches[name] = SwitchState(name, now, None, None, None, reason.strip(), automatic=False)
    return [SwitchEvent(name, "TRIPPED", now, reason=reason.strip())]


def resume(state: PortfolioState, equity: Decimal, now: datetime, config: RPMConfig,
           force: bool = False, reason: str | None = None) -> list[SwitchEvent]:
    """A manual resume: clears every tripped switch and re-bases the loss references.

    Refused (CooldownActive) while an automatic switch is in its cooldown, unless forced
    with a reason.
    """
    cooling = {
        name: iso(s.cooldown_until)
        for name, s in list(state.switches.items()) + [(f"volatility_shock:{k}", v) for k, v in state.symbol_halts.items()]
        if s.automatic and s.cooldown_until is not None and now < s.cooldown_until
    }
    if force and not (reason and reason.strip()):
        raise ResumeError("a forced resume needs a reason")
    if cooling and not force:
        raise CooldownActive(cooling)
    why = (reason or "manual resume").strip()
    events: list[SwitchEvent] = []
    for name in list(state.switches):
        events += _clear(state, name, now, why)
    for symbol, s in list(state.symbol_halts.items()):
        del state.symbol_halts[symbol]
        events.append(SwitchEvent(s.switch, "CLEARED", now, s.value, s.threshold, symbol=symbol, reason=why))
    before: dict[str, Any] = {
        "peak_equity": _s(state.peak_equity),
        "day_start_equity": _s(state.day_start_equity),
        "day_peak_equity": _s(state.day_peak_equity),
        "week_start_equity": _s(state.week_start_equity),
        "recent_confidences": len(state.recent_confidences),
    }
    state.peak_equity = equity
    state.day_start_equity = equity
    state.day_peak_equity = equity
    state.week_start_equity = equity
    state.recent_confidences = ()
    after = {k: _s(equity) for k in before if k != "recent_confidences"} | {"recent_confidences": 0}
    events.append(SwitchEvent("references", "REBASED", now, reason=why,
                              detail={"before": before, "after": after, "forced": bool(force and cooling)}))
    return events


def _s(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def switch_status(state: PortfolioState, equity: Decimal, now: datetime, config: RPMConfig) -> dict[str, Any]:
    """Each kill switch with its current value, threshold and state (for health)."""
    out: dict[str, Any] = {}
    for name, (value, threshold, _holds) in measurements(state, equity, config).items():
        tripped = state.switches.get(name)
        entry: dict[str, Any] = {
            "current": value,
            "threshold": threshold,
            "state": "TRIPPED" if tripped else "OK",
            "tripped_at": iso(tripped.tripped_at) if tripped else None,
            "cooldown_until": iso(tripped.cooldown_until) if tripped else None,
            "cooldown_remaining_s": (
                max(0.0, (tripped.cooldown_until - now).total_seconds()) if tripped and tripped.cooldown_until else 0.0
            ),
        }
        if name in (DRAWDOWN, DAILY_DRAWDOWN):
            entry["current_pct"] = value * 100
            entry["threshold_pct"] = threshold * 100
        out[name] = entry
    out[VOLATILITY_SHOCK] = {
        "state": "TRIPPED" if state.symbol_halts else "OK",
        "threshold": config.volatility_shock_multiplier,
        "halted_symbols": {k: v.to_dict() for k, v in sorted(state.symbol_halts.items())},
    }
    manual = state.switches.get(MANUAL)
    out[MANUAL] = {
        "state": "TRIPPED" if manual else "OK",
        "reason": manual.reason if manual else None,
        "tripped_at": iso(manual.tripped_at) if manual else None,
    }
    return out

"""Portfolio constraints (SPEC §3 step 5): each passes, adjusts the size down, or rejects."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .accounting import Exposures
from .config import RPMConfig
from .instruments import InstrumentInfo, instrument
from .model import ZERO, PortfolioState, ReasonCode, TradeIntent, div_floor, floor_units


@dataclass(frozen=True, slots=True)
class Rejection:
    code: ReasonCode
    message: str
    context: dict[str, Any]


def _room_signed(current: Decimal, per_unit: Decimal, limit: Decimal) -> Decimal | None:
    """Largest u >= 0 with |current + per_unit*u| <= limit (None: unbounded)."""
    if per_unit > 0:
        return div_floor(limit - current, per_unit)
    if per_unit < 0:
        return div_floor(limit + current, -per_unit)
    return None


class _Steps:
    def __init__(self, units: Decimal, lot: Decimal):
        self.units = units
        self.lot = lot  # the instrument's: every size is a multiple of it
        self.steps: list[dict[str, Any]] = []

    def cap(
        self, name: str, room: Decimal | None, code: ReasonCode, limit: Decimal, current: Decimal, **extra: Any
    ) -> Rejection | None:
        before = self.units
        step = {"name": name, "limit": float(limit), "current": float(current), "before": float(before), **extra}
        if room is not None and floor_units(room, self.lot) <= 0:
            step.update(after=0.0, result="REJECTED")
            self.steps.append(step)
            return Rejection(code, f"{name.replace('_', ' ')} limit reached: {float(current):,.2f} of {float(limit):,.2f}", step)
        if room is not None and room < before:
            self.units = floor_units(room, self.lot)
            step.update(after=float(self.units), result="ADJUSTED")
        else:
            step.update(after=float(before), result="PASS")
        self.steps.append(step)
        return None


def apply_constraints(
    intent: TradeIntent,
    units: Decimal,
    per_unit: Decimal,
    exp: Exposures,
    equity: Decimal,
    state: PortfolioState,
    config: RPMConfig,
) -> tuple[Decimal, list[dict[str, Any]], Rejection | None]:
    """``per_unit`` is the account-currency notional of one unit at the intent's price."""
    symbol, direction = intent.symbol, intent.direction
    info = instrument(symbol, config)
    steps = _Steps(units, info.lot)
    existing = state.positions.get(symbol)

    # max concurrent positions: a new symbol beyond it is rejected
    count = len(state.positions)
    if existing is None and count >= config.max_concurrent_positions:
        step = {"name": "max_positions", "limit": config.max_concurrent_positions, "current": count,
                "before": float(units), "after": 0.0, "result": "REJECTED"}
        steps.steps.append(step)
        return ZERO, steps.steps, Rejection(
            ReasonCode.MAX_POSITIONS, f"{count} positions open, the maximum is {config.max_concurrent_positions}", step)
    steps.steps.append({"name": "max_positions", "limit": config.max_concurrent_positions, "current": count,
                        "before": float(units), "after": float(units), "result": "PASS"})

    held = abs(existing.units) if existing is not None else ZERO
    max_units = config.dec("max_units_per_symbol")
    rejection = steps.cap("symbol_units", max_units - held, ReasonCode.SYMBOL_EXPOSURE, max_units, held)
    if rejection:
        return ZERO, steps.steps, rejection

    # the instrument's own caps: units and notional per order, notional per position
    symbol_now = abs(exp.by_symbol.get(symbol, ZERO))
    for name, limit, current in (("instrument_order_units", info.max_units, None),
                                 ("instrument_order_notional", info.max_notional_order, None),
                                 ("instrument_position_notional", info.max_notional_position, symbol_now)):
        if limit is None:
            continue
        if name == "instrument_order_units":
            room = limit
        else:
            room = div_floor(limit - (current or ZERO), per_unit)
        rejection = steps.cap(name, room, ReasonCode.INSTRUMENT_LIMIT, limit, current or ZERO)
        if rejection:
            return ZERO, steps.steps, rejection

    symbol_limit = equity * config.dec("max_symbol_exposure_pct")
    rejection = steps.cap("symbol_exposure", div_floor(symbol_limit - symbol_now, per_unit), ReasonCode.SYMBOL_EXPOSURE,
                          symbol_limit, symbol_now)
    if rejection:
        return ZERO, steps.steps, rejection

    currency_limit = equity * config.dec("max_currency_exposure_pct")
    for currency, sign in info.legs:
        if currency == config.account_currency:
            continue
        current = exp.by_currency.get(currency, ZERO)
        room = _room_signed(current, sign * direction * per_unit, currency_limit)
        rejection = steps.cap("currency_exposure", room, ReasonCode.CURRENCY_EXPOSURE, currency_limit, current,
                              currency=currency)
        if rejection:
            return ZERO, steps.steps, rejection

    gross_limit = equity * config.dec("max_gross_exposure_pct")
    rejection = steps.cap("gross_exposure", div_floor(gross_limit - exp.gross, per_unit), ReasonCode.GROSS_EXPOSURE,
                          gross_limit, exp.gross)
    if rejection:
        return ZERO, steps.steps, rejection

    net_limit = equity * config.dec("max_net_exposure_pct")
    rejection = steps.cap("net_exposure", _room_signed(exp.net, direction * per_unit, net_limit),
                          ReasonCode.NET_EXPOSURE, net_limit, exp.net)
    if rejection:
        return ZERO, steps.steps, rejection

    correlated = find_correlated(symbol, direction, info, state, config)
    before = steps.units
    if correlated is not None:
        steps.units = floor_units(before * config.dec("correlation_size_multiplier"), steps.lot)
    steps.steps.append({
        "name": "correlation", "limit": config.correlation_threshold, "before": float(before),
        "after": float(steps.units), "result": "ADJUSTED" if correlated else "PASS",
        "correlated_with": correlated,
    })
    return steps.units, steps.steps, None


def find_correlated(
    symbol: str, direction: int, info: InstrumentInfo, state: PortfolioState, config: RPMConfig
) -> dict[str, Any] | None:
    """The first open position the new trade would add correlated risk to, or None."""
    history = state.mark_history.get(symbol, ())
    for other, pos in sorted(state.positions.items()):
        if other == symbol:
            continue
        rho = correlation(history, state.mark_history.get(other, ()), config.correlation_min_samples)
        if rho is not None:
            if abs(rho) >= config.correlation_threshold and rho * direction * pos.direction > 0:
                return {"symbol": other, "rho": round(rho, 6), "basis": "returns"}
            continue
        shared = _shared_leg(info, direction, instrument(other, config), pos.direction)
        if shared:
            return {"symbol": other, "currency": shared, "basis": "shared_currency_leg"}
    return None


def _shared_leg(a: InstrumentInfo, dir_a: int, b: InstrumentInfo, dir_b: int) -> str | None:
    if not (a.is_fx and b.is_fx):
        return None
    legs_b = {currency: sign * dir_b for currency, sign in b.legs}
    for currency, sign in a.legs:
        if legs_b.get(currency) == sign * dir_a:
            return currency
    return None


_CORRELATIONS: dict[tuple[int, int, int], tuple[tuple[float, ...], tuple[float, ...], float | None]] = {}


def correlation(a: tuple[float, ...], b: tuple[float, ...], min_samples: int) -> float | None:
    """Pearson correlation of the returns of two mark histories, memoised by identity.

    Histories are immutable tuples replaced on every mark, so the same pair of
    objects always has the same correlation; the memo holds references to the
    tuples, so their ids cannot be reused while an entry lives.
    """
    key = (id(a), id(b), min_samples)
    hit = _CORRELATIONS.get(key)
    if hit is not None and hit[0] is a and hit[1] is b:
        return hit[2]
    if len(_CORRELATIONS) >= 4096:
        _CORRELATIONS.clear()
    rho = _pearson_of_returns(a, b, min_samples)
    _CORRELATIONS[key] = (a, b, rho)
    return rho


def _pearson_of_returns(a: tuple[float, ...], b: tuple[float, ...], min_samples: int) -> float | None:
    """Pearson correlation of the simple returns of two aligned mark histories (tails)."""
    n = min(len(a), len(b))
    if n - 1 < min_samples:
        return None
    a, b = a[-n:], b[-n:]
    ra = [a[i + 1] / a[i] - 1.0 for i in range(n - 1)]
    rb = [b[i + 1] / b[i] - 1.0 for i in range(n - 1)]
    ma = math.fsum(ra) / len(ra)
    mb = math.fsum(rb) / len(rb)
    da = [x - ma for x in ra]
    db = [y - mb for y in rb]
    var_a = math.fsum(x * x for x in da)
    var_b = math.fsum(y * y for y in db)
    if var_a == 0 or var_b == 0:
        return None
    return math.fsum(x * y for x, y in zip(da, db, strict=False)) / math.sqrt(var_a * var_b)

"""The domain model: intents, decisions, positions, switch states, portfolio state.

Money and units are ``Decimal``; ratios and statistics (confidence, percentiles,
correlations) are ``float``. Times are timezone-aware UTC ``datetime``s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Context, Decimal
from enum import StrEnum
from itertools import compress
from operator import itemgetter
from typing import Any

from . import domain
from .config import REGIMES, RPMConfig

CENT = Decimal("0.01")
ZERO = Decimal(0)
ONE = Decimal(1)


class TradeApprovalStatus(StrEnum):
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"

    def __str__(self) -> str:
        return self.value


class ReasonCode(StrEnum):
    HALTED = "HALTED"
    RESTRICTED_SYMBOL = "RESTRICTED_SYMBOL"
    THROTTLED = "THROTTLED"
    PRICE_COLLAR = "PRICE_COLLAR"
    CONFIDENCE_TOO_LOW = "CONFIDENCE_TOO_LOW"
    VOLATILITY_SHOCK = "VOLATILITY_SHOCK"
    SYMBOL_HALTED = "SYMBOL_HALTED"
    REGIME_RESTRICTED = "REGIME_RESTRICTED"
    MAX_POSITIONS = "MAX_POSITIONS"
    SYMBOL_EXPOSURE = "SYMBOL_EXPOSURE"
    CURRENCY_EXPOSURE = "CURRENCY_EXPOSURE"
    GROSS_EXPOSURE = "GROSS_EXPOSURE"
    NET_EXPOSURE = "NET_EXPOSURE"
    SIZE_BELOW_MINIMUM = "SIZE_BELOW_MINIMUM"
    NO_FX_RATE = "NO_FX_RATE"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    INSTRUMENT_LIMIT = "INSTRUMENT_LIMIT"
    NOTHING_TO_REDUCE = "NOTHING_TO_REDUCE"

    def __str__(self) -> str:
        return self.value


class Switch(StrEnum):
    """Portfolio-wide kill switches (volatility shock is per symbol, see ``symbol_halts``)."""

    DRAWDOWN = "drawdown"
    DAILY_DRAWDOWN = "daily_drawdown"
    DAILY_LOSS = "daily_loss"
    WEEKLY_LOSS = "weekly_loss"
    CONFIDENCE_COLLAPSE = "confidence_collapse"
    MANUAL = "manual_halt"
    VOLATILITY_SHOCK = "volatility_shock"

    def __str__(self) -> str:
        return self.value


# metric categories of SPEC §3 ("drawdown, loss limit, exposure, volatility, regime,
# confidence, manual"), plus "intent" and "sizing" for the checks the SPEC adds.
SWITCH_CATEGORY = {
    Switch.DRAWDOWN: "drawdown",
    Switch.DAILY_DRAWDOWN: "drawdown",
    Switch.DAILY_LOSS: "loss_limit",
    Switch.WEEKLY_LOSS: "loss_limit",
    Switch.CONFIDENCE_COLLAPSE: "confidence",
    Switch.MANUAL: "manual",
    Switch.VOLATILITY_SHOCK: "volatility",
}
REASON_CATEGORY = {
    ReasonCode.RESTRICTED_SYMBOL: "manual",
    ReasonCode.THROTTLED: "intent",
    ReasonCode.PRICE_COLLAR: "intent",
    ReasonCode.CONFIDENCE_TOO_LOW: "confidence",
    ReasonCode.VOLATILITY_SHOCK: "volatility",
    ReasonCode.SYMBOL_HALTED: "volatility",
    ReasonCode.REGIME_RESTRICTED: "regime",
    ReasonCode.MAX_POSITIONS: "exposure",
    ReasonCode.SYMBOL_EXPOSURE: "exposure",
    ReasonCode.CURRENCY_EXPOSURE: "exposure",
    ReasonCode.GROSS_EXPOSURE: "exposure",
    ReasonCode.NET_EXPOSURE: "exposure",
    ReasonCode.SIZE_BELOW_MINIMUM: "sizing",
    ReasonCode.NO_FX_RATE: "sizing",
    ReasonCode.OUT_OF_RANGE: "sizing",
    ReasonCode.INSTRUMENT_LIMIT: "instrument",
    ReasonCode.NOTHING_TO_REDUCE: "intent",
}


def to_decimal(value: Any) -> Decimal:
    """Exact decimal of a number as a person wrote it (1.1 -> Decimal('1.1'))."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    return Decimal(repr(float(value)))


# a size before its caps can reach ~1e44 units at the edges of the domain (tiny ATR, rates and
# multipliers: app/risk/domain.py); quantizing it to cents needs that many digits, exactly
_WIDE = Context(prec=64, rounding=ROUND_FLOOR)


def floor_units(value: Decimal, lot: Decimal = CENT) -> Decimal:
    """Units are floored to a multiple of the instrument's lot size (0.01 by default): never rounded up past a
    limit."""
    if lot == CENT:
        return ZERO.quantize(CENT) if value <= 0 else value.quantize(CENT, context=_WIDE)
    if value <= 0:
        return ZERO * lot
    return _WIDE.divide_int(value, lot) * lot


_FLOOR = Context(prec=28, rounding=ROUND_FLOOR)


def div_floor(numerator: Decimal, denominator: Decimal) -> Decimal:
    """A quotient rounded toward negative infinity at 28 digits: a size never rounds up past a limit."""
    return _FLOOR.divide(numerator, denominator)


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class IntentError(ValueError):
    """An invalid trade intent; ``errors`` maps each bad field to a message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


REQUIRED_INTENT_FIELDS = ("symbol", "direction", "confidence_score", "regime", "atr", "vol_percentile",
                          "current_price")
INTENT_FIELDS = frozenset(REQUIRED_INTENT_FIELDS) | {"intent_id", "portfolio_id", "units", "reduce_only",
                                                     "time_in_force_seconds"}
_INTENT_NUMBERS = (("confidence_score", domain.UNIT_INTERVAL), ("vol_percentile", domain.UNIT_INTERVAL),
                   ("atr", domain.ATR), ("current_price", domain.PRICE), ("units", domain.QUANTITY),
                   ("time_in_force_seconds", domain.TIME_IN_FORCE))


@dataclass(frozen=True, slots=True)
class TradeIntent:
    symbol: str
    direction: int
    confidence_score: float
    regime: str
    atr: Decimal
    vol_percentile: float
    current_price: Decimal
    intent_id: str | None = None
    portfolio_id: str = domain.DEFAULT_PORTFOLIO
    # the quantity asked for: at most this much is approved (a reduction: at most this much is closed)
    units: Decimal | None = None
    # only a reduction of an opposite position may be approved
    reduce_only: bool = False
    # the approval stands unfilled this long at most (shorter than the configuration's approval_ttl_seconds)
    time_in_force_seconds: float | None = None

    @classmethod
    def create(cls, config: RPMConfig | None = None, **fields: Any) -> TradeIntent:
        """Validate raw fields against the domain (app/risk/domain.py; every error at once) and build an intent."""
        errors: dict[str, str] = {}
        for name in sorted(set(fields) - INTENT_FIELDS):
            errors[name] = "unknown field"
        for name in REQUIRED_INTENT_FIELDS:
            if fields.get(name) is None:
                errors.setdefault(name, "required")
        symbol = fields.get("symbol")
        if symbol is not None:
            message = symbol_error(symbol, config)
            if message:
                errors["symbol"] = message
        direction = fields.get("direction")
        if direction is not None and (type(direction) is not int or direction not in (1, -1)):
            errors["direction"] = "must be 1 (long) or -1 (short)"
        for name, bounds in _INTENT_NUMBERS:
            value = fields.get(name)
            if value is not None and not bounds.contains(value):
                errors[name] = f"must be {bounds.description}"
        regime = fields.get("regime")
        if regime is not None and regime not in REGIMES:
            errors["regime"] = f"must be one of {', '.join(REGIMES)}"
        if fields.get("reduce_only") not in (None, True, False):
            errors["reduce_only"] = "must be true or false"
        intent_id = fields.get("intent_id")
        if intent_id is not None and not domain.INTENT_ID.matches(intent_id):
            errors["intent_id"] = f"must be {domain.INTENT_ID.description}"
        portfolio_id = fields.get("portfolio_id") or domain.DEFAULT_PORTFOLIO
        if not domain.PORTFOLIO_ID.matches(portfolio_id):
            errors["portfolio_id"] = f"must be {domain.PORTFOLIO_ID.description}"
        if errors:
            raise IntentError(errors)
        return cls.from_dict({**fields, "portfolio_id": portfolio_id})

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "direction": self.direction,
            "confidence_score": self.confidence_score,
            "regime": self.regime,
            "atr": float(self.atr),
            "vol_percentile": self.vol_percentile,
            "current_price": float(self.current_price),
            "intent_id": self.intent_id,
            "portfolio_id": self.portfolio_id,
            # (written only when given: an intent without them keeps the request hash it had)
            **({"units": float(self.units)} if self.units is not None else {}),
            **({"reduce_only": True} if self.reduce_only else {}),
            **({"time_in_force_seconds": self.time_in_force_seconds} if self.time_in_force_seconds is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TradeIntent:
        """An intent from fields already validated (a request, or a stored decision: its intent is kept as
        it was accepted, whatever the domain accepts today)."""
        return cls(
            symbol=data["symbol"],
            direction=data["direction"],
            confidence_score=float(data["confidence_score"]),
            regime=data["regime"],
            atr=to_decimal(data["atr"]),
            vol_percentile=float(data["vol_percentile"]),
            current_price=to_decimal(data["current_price"]),
            intent_id=data.get("intent_id"),
            portfolio_id=data.get("portfolio_id") or domain.DEFAULT_PORTFOLIO,
            units=None if data.get("units") is None else to_decimal(data["units"]),
            reduce_only=bool(data.get("reduce_only", False)),
            time_in_force_seconds=None if data.get("time_in_force_seconds") is None
            else float(data["time_in_force_seconds"]),
        )


def symbol_error(symbol: Any, config: RPMConfig | None) -> str | None:
    """Why a symbol is not tradable under a configuration, or None."""
    if not domain.SYMBOL.matches(symbol):
        return f"must be {domain.SYMBOL.description}"
    if config is not None and symbol in config.instruments:
        return None
    if domain.FX_PAIR.matches(symbol):
        if symbol[:3] == symbol[3:]:
            return "an FX pair needs two different currencies"
        return None
    return "unknown instrument: not a six-letter FX pair and not in the configuration's instrument table"


# Position.to_dict by identity; an entry holds its position, so its id is not reused while it lives
_POSITION_DOCS: dict[int, tuple[Position, dict[str, Any]]] = {}


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    units: Decimal  # signed: > 0 long, < 0 short
    avg_price: Decimal
    opened_at: datetime

    @property
    def direction(self) -> int:
        return 1 if self.units > 0 else -1

    def to_dict(self) -> dict[str, Any]:
        """Its document, converted once per position (a copy each time): every decision's audit record
        holds the portfolio's open positions, and most of them are the same objects from one decision
        to the next (a position is replaced, never changed, so the same object has the same document)."""
        hit = _POSITION_DOCS.get(id(self))
        if hit is None or hit[0] is not self:
            if len(_POSITION_DOCS) >= 4096:
                _POSITION_DOCS.clear()
            hit = _POSITION_DOCS[id(self)] = (self, {
                "symbol": self.symbol,
                "units": str(self.units),
                "avg_price": str(self.avg_price),
                "opened_at": iso(self.opened_at),
            })
        return dict(hit[1])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Position:
        return cls(
            symbol=data["symbol"],
            units=Decimal(data["units"]),
            avg_price=Decimal(data["avg_price"]),
            opened_at=parse_ts(data["opened_at"]),
        )


@dataclass(frozen=True, slots=True)
class SwitchState:
    """A tripped kill switch: when, at what value against which threshold, until when."""

    switch: str
    tripped_at: datetime
    value: float | None
    threshold: float | None
    cooldown_until: datetime | None
    reason: str
    symbol: str | None = None
    automatic: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "switch": self.switch,
            "tripped_at": iso(self.tripped_at),
            "value": self.value,
            "threshold": self.threshold,
            "cooldown_until": iso(self.cooldown_until),
            "reason": self.reason,
            "symbol": self.symbol,
            "automatic": self.automatic,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SwitchState:
        return cls(
            switch=data["switch"],
            tripped_at=parse_ts(data["tripped_at"]),
            value=data.get("value"),
            threshold=data.get("threshold"),
            cooldown_until=parse_ts(data.get("cooldown_until")),
            reason=data.get("reason", ""),
            symbol=data.get("symbol"),
            automatic=data.get("automatic", True),
        )


@dataclass(frozen=True, slots=True)
class SwitchEvent:
    """A kill-switch transition (tripped or cleared), for the append-only log."""

    switch: str
    action: str  # TRIPPED | CLEARED | REBASED
    at: datetime
    value: float | None = None
    threshold: float | None = None
    cooldown_until: datetime | None = None
    symbol: str | None = None
    reason: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "switch": self.switch,
            "action": self.action,
            "at": iso(self.at),
            "value": self.value,
            "threshold": self.threshold,
            "cooldown_until": iso(self.cooldown_until),
            "symbol": self.symbol,
            "reason": self.reason,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True, slots=True)
class Booking:
    """What an approved decision booked, so that a later fill can reconcile it."""

    decision_id: str
    symbol: str
    kind: str  # "open" (adds risk) or "reduce" (closes a position)
    direction: int  # the trade's direction
    units: Decimal
    price: Decimal
    entry_price: Decimal | None = None  # reduce: the average entry of the position it closed

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "symbol": self.symbol,
            "kind": self.kind,
            "direction": self.direction,
            "units": str(self.units),
            "price": str(self.price),
            "entry_price": None if self.entry_price is None else str(self.entry_price),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Booking:
        return cls(
            decision_id=data["decision_id"],
            symbol=data["symbol"],
            kind=data["kind"],
            direction=int(data["direction"]),
            units=Decimal(data["units"]),
            price=Decimal(data["price"]),
            entry_price=None if data.get("entry_price") is None else Decimal(data["entry_price"]),
        )


@dataclass(frozen=True, slots=True)
class Approval:
    """An approval not yet filled, which expires: what it booked, when, and until when it stands."""

    booking: Booking
    booked_at: datetime
    expires_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"booking": self.booking.to_dict(), "booked_at": iso(self.booked_at), "expires_at": iso(self.expires_at)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Approval:
        return cls(Booking.from_dict(data["booking"]), parse_ts(data["booked_at"]), parse_ts(data["expires_at"]))


@dataclass(frozen=True, slots=True)
class Release:
    """An approval released at its expiry (or voided by a correction of its position): its units given back (a fill
    of nothing), the PnL that moved."""

    approval: Approval
    realised_delta: Decimal
    note: str = ""
    voided: bool = False


FIRM = "firm"  # the root of the tree: every portfolio is under it


def _money(value: Any) -> str | None:
    return None if value is None else str(value)


def _money_of(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of a group or of the firm, on the aggregate of the portfolios under it, in the firm's currency
    (SPEC §12): exposures and the daily loss as amounts, the drawdown as a fraction of the level's peak equity,
    the open positions as a count. None: no such limit."""

    gross_exposure: Decimal | None = None
    net_exposure: Decimal | None = None
    currency_exposure: Decimal | None = None
    symbol_exposure: Decimal | None = None
    positions: int | None = None
    daily_loss: Decimal | None = None
    drawdown: float | None = None

    AMOUNTS = ("gross_exposure", "net_exposure", "currency_exposure", "symbol_exposure", "daily_loss")

    @property
    def exposure(self) -> bool:
        """Whether a decision has to add its size to the level's aggregate (an exposure or position limit)."""
        return any(getattr(self, n) is not None for n in (*self.AMOUNTS[:4], "positions"))

    @property
    def any(self) -> bool:
        return self.exposure or self.daily_loss is not None or self.drawdown is not None

    def to_dict(self) -> dict[str, Any]:
        """The limits set, JSON-ready (amounts as numbers)."""
        out: dict[str, Any] = {}
        for name in (*self.AMOUNTS, "positions", "drawdown"):
            value = getattr(self, name)
            if value is not None:
                out[name] = float(value) if isinstance(value, Decimal) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Limits:
        """Limits from their JSON form; ValueError naming what is wrong (unknown names, values out of range)."""
        data = dict(data or {})
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name in cls.AMOUNTS:
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or (isinstance(value, float) and not math.isfinite(value)) \
                        or not 0 < value <= domain.BOOKS_LIMIT:
                    errors[name] = f"an amount above 0, at most {float(domain.BOOKS_LIMIT):.0e}, or null"
                else:
                    values[name] = Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
            elif name == "positions":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
                    errors[name] = "a whole number from 0 to 1,000,000, or null"
                else:
                    values[name] = value
            elif name == "drawdown":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1 \
                        or (isinstance(value, float) and math.isnan(value)):
                    errors[name] = "a fraction above 0, at most 1, or null"
                else:
                    values[name] = float(value)
            else:
                errors[name] = f"unknown limit (known: {', '.join((*cls.AMOUNTS, 'positions', 'drawdown'))})"
        if errors:
            raise LimitsError(errors)
        return cls(**values)


class LimitsError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Book:
    """Positions and equity of some portfolios, in a level's currency: signed notional by symbol (netted across the
    portfolios) and by currency leg (the level's currency left out), gross (not netted: the sum of every
    position's size), net, open positions (one per portfolio and symbol), equity, capital and PnL. ``missing_rate``:
    a currency that could not be converted (its amounts are left out)."""

    by_symbol: Mapping[str, Decimal] = field(default_factory=dict)
    by_currency: Mapping[str, Decimal] = field(default_factory=dict)
    gross: Decimal = ZERO
    net: Decimal = ZERO
    positions: int = 0
    equity: Decimal = ZERO
    capital: Decimal = ZERO
    realised: Decimal = ZERO
    unrealised: Decimal = ZERO
    missing_rate: str | None = None

    def plus(self, other: Book) -> Book:
        by_symbol = dict(self.by_symbol)
        for k, v in other.by_symbol.items():
            by_symbol[k] = by_symbol.get(k, ZERO) + v
        by_currency = dict(self.by_currency)
        for k, v in other.by_currency.items():
            by_currency[k] = by_currency.get(k, ZERO) + v
        return Book(by_symbol, by_currency, self.gross + other.gross, self.net + other.net,
                    self.positions + other.positions, self.equity + other.equity, self.capital + other.capital,
                    self.realised + other.realised, self.unrealised + other.unrealised,
                    self.missing_rate or other.missing_rate)

    def to_dict(self) -> dict[str, Any]:
        return {"by_symbol": {k: str(v) for k, v in sorted(self.by_symbol.items())},
                "by_currency": {k: str(v) for k, v in sorted(self.by_currency.items())},
                "gross": str(self.gross), "net": str(self.net), "positions": self.positions,
                "equity": str(self.equity), "capital": str(self.capital), "realised": str(self.realised),
                "unrealised": str(self.unrealised), "missing_rate": self.missing_rate}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Book:
        return cls({k: Decimal(v) for k, v in data["by_symbol"].items()},
                   {k: Decimal(v) for k, v in data["by_currency"].items()}, Decimal(data["gross"]),
                   Decimal(data["net"]), int(data["positions"]), Decimal(data["equity"]), Decimal(data["capital"]),
                   Decimal(data["realised"]), Decimal(data["unrealised"]), data.get("missing_rate"))


@dataclass(slots=True)
class LevelState:
    """A group's or the firm's kill-switch state: tripped switches and the references they measure from (the
    attributes the portfolio switches' transitions read: app/risk/kill_switches.py works on either)."""

    switches: dict[str, SwitchState] = field(default_factory=dict)
    peak_equity: Decimal | None = None
    day_key: str | None = None
    day_start_equity: Decimal | None = None
    day_peak_equity: Decimal | None = None
    week_key: str | None = None
    week_start_equity: Decimal | None = None
    symbol_halts: dict[str, SwitchState] = field(default_factory=dict)  # (none at a level)
    recent_confidences: tuple[float, ...] = ()  # (none at a level)

    def clone(self) -> LevelState:
        return LevelState(dict(self.switches), self.peak_equity, self.day_key, self.day_start_equity,
                          self.day_peak_equity, self.week_key, self.week_start_equity)

    def to_dict(self) -> dict[str, Any]:
        return {"switches": {k: s.to_dict() for k, s in sorted(self.switches.items())},
                "peak_equity": _money(self.peak_equity), "day_key": self.day_key,
                "day_start_equity": _money(self.day_start_equity), "day_peak_equity": _money(self.day_peak_equity),
                "week_key": self.week_key, "week_start_equity": _money(self.week_start_equity)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LevelState:
        return cls({k: SwitchState.from_dict(v) for k, v in (data.get("switches") or {}).items()},
                   _money_of(data.get("peak_equity")), data.get("day_key"), _money_of(data.get("day_start_equity")),
                   _money_of(data.get("day_peak_equity")), data.get("week_key"),
                   _money_of(data.get("week_start_equity")))


@dataclass(slots=True)
class Level:
    """A group, or the firm, above a portfolio, as a decision of that portfolio sees it: its limits, its switches,
    and the aggregate of its other portfolios (``others``, as committed and as the transaction has them).

    ``held``: the level is locked for the transaction (it has limits, or is a group): its aggregate is measured and
    its drawdown and daily-loss switches evaluated. A level not held is read for its halts alone.
    """

    id: str
    currency: str
    limits: Limits
    state: LevelState
    others: Book
    held: bool = True

    @property
    def name(self) -> str:
        return "the firm" if self.id == FIRM else f"group {self.id}"

    def clone(self) -> Level:
        return Level(self.id, self.currency, self.limits, self.state.clone(), self.others, self.held)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "currency": self.currency, "limits": self.limits.to_dict(), "state": self.state.to_dict(),
                "others": self.others.to_dict(), "held": self.held}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Level:
        return cls(data["id"], data["currency"], Limits.from_dict(data["limits"]), LevelState.from_dict(data["state"]),
                   Book.from_dict(data["others"]), data.get("held", True))


THROTTLE_BUCKETS_PER_SECOND = 100  # the throttle counts intents in 10 ms buckets


def throttle_bucket(ts: float) -> int:
    """The 10 ms bucket of a POSIX time."""
    return math.floor(ts * THROTTLE_BUCKETS_PER_SECOND)


def intents_by_bucket(times: Any) -> tuple[tuple[int, int], ...]:
    """Intent times (POSIX seconds, as states kept them before the buckets) as (bucket, intents) pairs."""
    pairs: list[list[int]] = []
    for ts in times:
        b = throttle_bucket(ts)
        if pairs and pairs[-1][0] == b:
            pairs[-1][1] += 1
        else:
            pairs.append([b, 1])
    return tuple((b, n) for b, n in pairs)


def throttle_window(recent: tuple[tuple[int, int], ...], ts: float) -> tuple[tuple[tuple[int, int], ...], int]:
    """The (bucket, intents) pairs of the throttle's window at ``ts``, and how many intents they hold:
    the last second plus what remains of the bucket it starts in."""
    start = throttle_bucket(ts - 1.0)
    window = tuple(compress(recent, map(start.__le__, map(_BUCKET, recent))))
    return window, sum(map(_COUNT, window))


_BUCKET, _COUNT = itemgetter(0), itemgetter(1)


def recent_intents_of(data: Mapping[str, Any], times: Any = tuple) -> tuple[tuple[int, int], ...]:
    """The throttle's pairs as stored in ``data``; from ``recent_intent_times`` (read by ``times``)
    when it was written before the buckets."""
    if "recent_intents" in data:
        return tuple(tuple(p) for p in data["recent_intents"])
    return intents_by_bucket(times(data.get("recent_intent_times") or ()))


@dataclass(slots=True)
class PortfolioState:
    """Everything the engine reads to decide. Copied, never shared, between decisions."""

    portfolio_id: str
    starting_capital: Decimal
    realised_pnl: Decimal = ZERO
    peak_equity: Decimal | None = None
    day_key: str | None = None
    day_start_equity: Decimal | None = None
    day_peak_equity: Decimal | None = None
    week_key: str | None = None
    week_start_equity: Decimal | None = None
    positions: dict[str, Position] = field(default_factory=dict)
    marks: dict[str, Decimal] = field(default_factory=dict)
    mark_history: dict[str, tuple[float, ...]] = field(default_factory=dict)
    atr_history: dict[str, tuple[float, ...]] = field(default_factory=dict)
    recent_confidences: tuple[float, ...] = ()
    # the throttle's window: (10 ms bucket, intents) pairs of the last second, oldest first
    recent_intents: tuple[tuple[int, int], ...] = ()
    switches: dict[str, SwitchState] = field(default_factory=dict)
    symbol_halts: dict[str, SwitchState] = field(default_factory=dict)
    # approvals that expire, not yet filled, by expiry
    open_approvals: tuple[Approval, ...] = ()
    # the approvals released at their expiry in this transaction (not kept: the transaction writes them)
    released: list[Release] = field(default_factory=list, compare=False)
    # the groups and the firm above the portfolio, nearest first (SPEC §12)
    levels: tuple[Level, ...] = ()

    @classmethod
    def new(cls, config: RPMConfig, portfolio_id: str = domain.DEFAULT_PORTFOLIO, capital: Any = None) -> PortfolioState:
        start = to_decimal(config.total_capital if capital is None else capital)
        return cls(portfolio_id=portfolio_id, starting_capital=start, peak_equity=start)

    def clone(self) -> PortfolioState:
        return PortfolioState(
            portfolio_id=self.portfolio_id,
            starting_capital=self.starting_capital,
            realised_pnl=self.realised_pnl,
            peak_equity=self.peak_equity,
            day_key=self.day_key,
            day_start_equity=self.day_start_equity,
            day_peak_equity=self.day_peak_equity,
            week_key=self.week_key,
            week_start_equity=self.week_start_equity,
            positions=dict(self.positions),
            marks=dict(self.marks),
            mark_history=dict(self.mark_history),
            atr_history=dict(self.atr_history),
            recent_confidences=self.recent_confidences,
            recent_intents=self.recent_intents,
            switches=dict(self.switches),
            symbol_halts=dict(self.symbol_halts),
            open_approvals=self.open_approvals,
            released=list(self.released),  # (a transaction's releases, whichever of its operations made them)
            levels=tuple(level.clone() for level in self.levels),
        )

    @property
    def halted(self) -> bool:
        return bool(self.switches)

    def to_dict(self) -> dict[str, Any]:
        def dec(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            "portfolio_id": self.portfolio_id,
            "starting_capital": str(self.starting_capital),
            "realised_pnl": str(self.realised_pnl),
            "peak_equity": dec(self.peak_equity),
            "day_key": self.day_key,
            "day_start_equity": dec(self.day_start_equity),
            "day_peak_equity": dec(self.day_peak_equity),
            "week_key": self.week_key,
            "week_start_equity": dec(self.week_start_equity),
            "positions": {k: p.to_dict() for k, p in sorted(self.positions.items())},
            "marks": {k: str(v) for k, v in sorted(self.marks.items())},
            "mark_history": {k: list(v) for k, v in sorted(self.mark_history.items())},
            "atr_history": {k: list(v) for k, v in sorted(self.atr_history.items())},
            "recent_confidences": list(self.recent_confidences),
            "recent_intents": [list(p) for p in self.recent_intents],
            "switches": {k: s.to_dict() for k, s in sorted(self.switches.items())},
            "symbol_halts": {k: s.to_dict() for k, s in sorted(self.symbol_halts.items())},
            # (only when some: the document of a state without them is as it was)
            **({"open_approvals": [a.to_dict() for a in self.open_approvals]} if self.open_approvals else {}),
            **({"levels": [level.to_dict() for level in self.levels]} if self.levels else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PortfolioState:
        def dec(v: str | None) -> Decimal | None:
            return None if v is None else Decimal(v)

        return cls(
            portfolio_id=data["portfolio_id"],
            starting_capital=Decimal(data["starting_capital"]),
            realised_pnl=Decimal(data.get("realised_pnl", "0")),
            peak_equity=dec(data.get("peak_equity")),
            day_key=data.get("day_key"),
            day_start_equity=dec(data.get("day_start_equity")),
            day_peak_equity=dec(data.get("day_peak_equity")),
            week_key=data.get("week_key"),
            week_start_equity=dec(data.get("week_start_equity")),
            positions={k: Position.from_dict(v) for k, v in data.get("positions", {}).items()},
            marks={k: Decimal(v) for k, v in data.get("marks", {}).items()},
            mark_history={k: tuple(v) for k, v in data.get("mark_history", {}).items()},
            atr_history={k: tuple(v) for k, v in data.get("atr_history", {}).items()},
            recent_confidences=tuple(data.get("recent_confidences", ())),
            recent_intents=recent_intents_of(data),
            switches={k: SwitchState.from_dict(v) for k, v in data.get("switches", {}).items()},
            symbol_halts={k: SwitchState.from_dict(v) for k, v in data.get("symbol_halts", {}).items()},
            open_approvals=tuple(Approval.from_dict(a) for a in data.get("open_approvals", ())),
            levels=tuple(Level.from_dict(level) for level in data.get("levels", ())),
        )


@dataclass(frozen=True, slots=True)
class ApprovedTrade:
    symbol: str
    direction: int
    position_units: float
    confidence_score: float
    regime: str
    atr: float
    risk_per_trade: float
    current_price: float
    reducing: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "direction": self.direction,
            "position_units": self.position_units,
            "confidence_score": self.confidence_score,
            "regime": self.regime,
            "atr": self.atr,
            "risk_per_trade": self.risk_per_trade,
            "current_price": self.current_price,
            "reducing": self.reducing,
        }


@dataclass(frozen=True, slots=True)
class RejectedTrade:
    rejection_reason: str
    reason_code: str
    context: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"rejection_reason": self.rejection_reason, "reason_code": self.reason_code, "context": dict(self.context)}


@dataclass(frozen=True, slots=True)
class Decision:
    id: str
    status: TradeApprovalStatus
    reason_code: ReasonCode | None
    message: str
    decided_at: datetime
    intent: TradeIntent
    units: Decimal  # approved units (0 when rejected)
    risk_capital: Decimal
    reducing: bool
    breakdown: Mapping[str, Any]
    config_hash: str
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def approved(self) -> bool:
        return self.status is TradeApprovalStatus.APPROVED

    @property
    def reason(self) -> str | None:
        return None if self.reason_code is None else self.reason_code.value

    @property
    def category(self) -> str | None:
        """The metrics category of a rejection (SPEC §3)."""
        if self.reason_code is None:
            return None
        if self.reason_code is ReasonCode.HALTED:
            tripped = self.context.get("tripped_switches") or ["manual_halt"]
            return SWITCH_CATEGORY.get(Switch(tripped[0]), "manual")
        return REASON_CATEGORY[self.reason_code]

    @property
    def approved_trade(self) -> ApprovedTrade | None:
        if not self.approved:
            return None
        i = self.intent
        return ApprovedTrade(
            symbol=i.symbol,
            direction=i.direction,
            position_units=float(self.units),
            confidence_score=i.confidence_score,
            regime=i.regime,
            atr=float(i.atr),
            risk_per_trade=float(self.risk_capital),
            current_price=float(i.current_price),
            reducing=self.reducing,
        )

    @property
    def rejected_trade(self) -> RejectedTrade | None:
        if self.approved:
            return None
        return RejectedTrade(self.message, self.reason_code.value, self.context)

    def to_dict(self) -> dict[str, Any]:
        approved = self.approved_trade
        rejected = self.rejected_trade
        return {
            "id": self.id,
            "status": self.status.value,
            "reason": self.reason,
            "message": self.message,
            "decided_at": iso(self.decided_at),
            "intent": self.intent.to_dict(),
            "approved_trade": approved.to_dict() if approved else None,
            "rejected_trade": rejected.to_dict() if rejected else None,
            "breakdown": dict(self.breakdown),
            "config_hash": self.config_hash,
        }

"""RPMConfig: every risk parameter of SPEC §3-§4, validated and hashable.

A configuration is a frozen value. Its canonical hash (sha256 of canonical JSON:
sorted keys, fixed separators) identifies it in every decision, identical across
processes and key orders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from . import domain

REGIMES = ("TRENDING", "RANGING", "VOLATILE", "STRESSED")
# "fx" is FX spot (the name configurations written before used; "fx_spot" is the same class)
ASSET_CLASSES = ("fx", "fx_spot", "equity", "future", "crypto", "cfd", "commodity", "index")
# the optional fields of an instrument, in the order they are written; absent ones are not written (so that an
# instrument written before they existed keeps its configuration's hash)
INSTRUMENT_LIMITS = ("lot_size", "min_quantity", "tick_size", "max_units", "max_notional_order",
                     "max_notional_position", "price_band")


class ConfigError(ValueError):
    """An invalid configuration; ``field`` names the offending parameter."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Instrument:
    """An instrument: its class, the currency its prices are in, its contract multiplier, and optionally its
    lot size (quantity increment; default 0.01), minimum quantity (default the configuration's
    min_position_units), tick size (price increment), caps (units and notional per order, notional per
    position, in the account currency) and price band (the largest deviation from the last mark, a fraction)."""

    asset_class: str = "equity"
    currency: str = "USD"
    multiplier: float = 1.0
    lot_size: float | None = None
    min_quantity: float | None = None
    tick_size: float | None = None
    max_units: float | None = None
    max_notional_order: float | None = None
    max_notional_position: float | None = None
    price_band: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"asset_class": self.asset_class, "currency": self.currency,
                               "multiplier": self.multiplier}
        out.update({name: getattr(self, name) for name in INSTRUMENT_LIMITS if getattr(self, name) is not None})
        return out


MAX_INSTRUMENTS = 10_000
# parameters added after configurations were first stored: written only when set
_WRITTEN_WHEN_SET = frozenset({"approval_ttl_seconds"})

DEFAULT_REGIME_MULTIPLIERS = {"TRENDING": 1.2, "RANGING": 1.0, "VOLATILE": 0.7, "STRESSED": 0.3}


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class RPMConfig:
    # capital and sizing
    total_capital: float = 100_000.0
    account_currency: str = "USD"
    risk_per_trade: float = 0.01
    atr_multiplier: float = 1.5
    confidence_scaling: bool = True
    regime_adjustments: Mapping[str, float] = field(default_factory=lambda: _frozen(DEFAULT_REGIME_MULTIPLIERS))
    vol_high_percentile: float = 0.80
    vol_high_multiplier: float = 0.75
    vol_extreme_percentile: float = 0.95
    vol_extreme_multiplier: float = 0.50
    # intent checks
    min_confidence_threshold: float = 0.60
    max_intents_per_second: int = 100
    price_collar_pct: float = 0.05
    restricted_symbols: tuple[str, ...] = ()
    volatility_shock_multiplier: float = 3.0
    volatility_baseline_min_samples: int = 20
    volatility_baseline_window: int = 100
    volatility_baselines: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    # regime restrictions
    disallowed_regimes: tuple[str, ...] = ()
    stressed_max_positions: int = 2
    # portfolio constraints
    max_concurrent_positions: int = 8
    max_units_per_symbol: float = 200_000.0
    max_symbol_exposure_pct: float = 0.30
    max_currency_exposure_pct: float = 0.50
    max_gross_exposure_pct: float = 2.00
    max_net_exposure_pct: float = 1.00
    correlation_threshold: float = 0.70
    correlation_size_multiplier: float = 0.50
    correlation_min_samples: int = 20
    mark_history_size: int = 100
    min_position_units: float = 1_000.0
    # kill switches
    max_drawdown: float = 0.10
    max_daily_drawdown: float = 0.03
    daily_loss_limit: float = 0.02
    weekly_loss_limit: float = 0.05
    confidence_collapse_window: int = 20
    confidence_collapse_threshold: float = 0.60
    cooldown_seconds: int = 3600
    # trading calendar
    trading_day_rollover: str = "00:00"
    trading_timezone: str = "UTC"
    trading_week_start: int = 0  # weekday the trading week starts on, Monday = 0
    # instruments that are not six-letter FX pairs
    instruments: Mapping[str, Instrument] = field(default_factory=lambda: _frozen({}))
    # an approval not filled within this many seconds is released (None: approvals do not expire); an intent's
    # time_in_force_seconds may shorten it
    approval_ttl_seconds: float | None = None

    def __post_init__(self) -> None:
        # normalise containers so that equal configurations compare and hash equal
        object.__setattr__(self, "regime_adjustments", _frozen(self.regime_adjustments))
        object.__setattr__(self, "volatility_baselines", _frozen(self.volatility_baselines))
        object.__setattr__(self, "restricted_symbols", tuple(sorted(set(self.restricted_symbols))))
        object.__setattr__(self, "disallowed_regimes", tuple(sorted(set(self.disallowed_regimes))))
        instruments = {}
        for symbol, spec in dict(self.instruments).items():
            instruments[symbol] = spec if isinstance(spec, Instrument) else _instrument_from(symbol, spec)
        object.__setattr__(self, "instruments", _frozen(instruments))
        _validate(self)
        digest = body_hash(self.to_dict())
        object.__setattr__(self, "_hash", digest)
        object.__setattr__(self, "_hash_int", hash(digest))
        object.__setattr__(self, "_decimals", {})

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "instruments":
                value = {k: v.to_dict() for k, v in sorted(value.items())}
            elif isinstance(value, Mapping):
                value = dict(sorted(value.items()))
            elif isinstance(value, tuple):
                value = list(value)
            if f.name in _WRITTEN_WHEN_SET and value is None:
                continue  # (a parameter added later, unset: a configuration stored before keeps its hash)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RPMConfig:
        if not isinstance(data, Mapping):
            raise ConfigError("config", "must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], "unknown parameter")
        kwargs = dict(data)
        for name in ("restricted_symbols", "disallowed_regimes"):
            if name in kwargs:
                if not isinstance(kwargs[name], (list, tuple)):
                    raise ConfigError(name, "must be a list")
                kwargs[name] = tuple(kwargs[name])
        for name in ("regime_adjustments", "volatility_baselines", "instruments"):
            if name in kwargs and not isinstance(kwargs[name], Mapping):
                raise ConfigError(name, "must be an object")
        if "regime_adjustments" in kwargs:
            kwargs["regime_adjustments"] = {**DEFAULT_REGIME_MULTIPLIERS, **kwargs["regime_adjustments"]}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> RPMConfig:
        return RPMConfig.from_dict({**self.to_dict(), **changes})

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def config_hash(self) -> str:
        return self._hash

    def __hash__(self) -> int:
        return self._hash_int

    def __eq__(self, other: object) -> bool:
        """Equal when their canonical bodies are (their sha256): without comparing every field and instrument."""
        return isinstance(other, RPMConfig) and self._hash == other._hash

    def dec(self, name: str) -> Decimal:
        """A numeric parameter as the exact Decimal of its written value (cached)."""
        value = self._decimals.get(name)
        if value is None:
            value = self._decimals[name] = Decimal(repr(getattr(self, name)))
        return value

    def regime_multiplier(self, regime: str) -> float:
        return self.regime_adjustments[regime]

    @property
    def rollover_time(self) -> time:
        hours, minutes = self.trading_day_rollover.split(":")
        return time(int(hours), int(minutes))


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def body_hash(body: Any) -> str:
    """A configuration's hash, which decisions record: the sha256 of its body's canonical JSON."""
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _instrument_from(symbol: str, spec: Any) -> Instrument:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"instruments.{symbol}", "must be an object")
    unknown = set(spec) - {"asset_class", "currency", "multiplier", *INSTRUMENT_LIMITS}
    if unknown:
        raise ConfigError(f"instruments.{symbol}.{sorted(unknown)[0]}", "unknown field")
    return Instrument(
        asset_class=spec.get("asset_class", "equity"),
        currency=spec.get("currency", "USD"),
        multiplier=spec.get("multiplier", 1.0),
        **{name: spec.get(name) for name in INSTRUMENT_LIMITS},
    )


# -- validation ------------------------------------------------------------

def _number(cfg: RPMConfig, name: str, lo: float, hi: float, *, lo_open: bool = False, integer: bool = False) -> None:
    value = getattr(cfg, name)
    _check_number(name, value, lo, hi, lo_open=lo_open, integer=integer)


def _within(name: str, value: Any, bounds: domain.Bounds) -> None:
    _check_number(name, value, bounds.low, bounds.high, lo_open=bounds.low_open)


def _identifier(name: str, value: Any, identifier: domain.Identifier) -> None:
    if not identifier.matches(value):
        raise ConfigError(name, f"must be {identifier.description}, got {value!r}")


def _check_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(name, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(name, "must be finite")
    low_ok = value > lo if lo_open else value >= lo
    if not (low_ok and value <= hi):
        bracket = "(" if lo_open else "["
        raise ConfigError(name, f"must be in {bracket}{lo}, {hi}], got {value!r}")


def _validate(cfg: RPMConfig) -> None:
    _within("total_capital", cfg.total_capital, domain.CAPITAL)
    _identifier("account_currency", cfg.account_currency, domain.CURRENCY)
    _number(cfg, "risk_per_trade", 0, 0.10, lo_open=True)
    _number(cfg, "atr_multiplier", 0.01, 100)
    if not isinstance(cfg.confidence_scaling, bool):
        raise ConfigError("confidence_scaling", "must be true or false")
    if set(cfg.regime_adjustments) != set(REGIMES):
        raise ConfigError("regime_adjustments", f"must give exactly the regimes {', '.join(REGIMES)}")
    for regime, mult in cfg.regime_adjustments.items():
        _check_number(f"regime_adjustments.{regime}", mult, 0, 10)
    _number(cfg, "vol_high_percentile", 0, 1)
    _number(cfg, "vol_extreme_percentile", 0, 1)
    if cfg.vol_extreme_percentile < cfg.vol_high_percentile:
        raise ConfigError("vol_extreme_percentile", "must be >= vol_high_percentile")
    _number(cfg, "vol_high_multiplier", 0, 1)
    _number(cfg, "vol_extreme_multiplier", 0, 1)
    _number(cfg, "min_confidence_threshold", 0, 1)
    _number(cfg, "max_intents_per_second", 1, 1_000_000, integer=True)
    _number(cfg, "price_collar_pct", 0, 1, lo_open=True)
    if cfg.approval_ttl_seconds is not None:
        _within("approval_ttl_seconds", cfg.approval_ttl_seconds, domain.TIME_IN_FORCE)
    for symbol in cfg.restricted_symbols:
        _identifier("restricted_symbols", symbol, domain.SYMBOL)
    _number(cfg, "volatility_shock_multiplier", 1, 1000)
    _number(cfg, "volatility_baseline_min_samples", 1, 10_000, integer=True)
    _number(cfg, "volatility_baseline_window", 1, 10_000, integer=True)
    if cfg.volatility_baseline_window < cfg.volatility_baseline_min_samples:
        raise ConfigError("volatility_baseline_window", "must be >= volatility_baseline_min_samples")
    for symbol, atr in cfg.volatility_baselines.items():
        _identifier("volatility_baselines", symbol, domain.SYMBOL)
        _within(f"volatility_baselines.{symbol}", atr, domain.ATR)
    for regime in cfg.disallowed_regimes:
        if regime not in REGIMES:
            raise ConfigError("disallowed_regimes", f"unknown regime {regime!r}; one of {', '.join(REGIMES)}")
    _number(cfg, "stressed_max_positions", 0, 1000, integer=True)
    _number(cfg, "max_concurrent_positions", 1, 1000, integer=True)
    _number(cfg, "max_units_per_symbol", 0, domain.UNITS.high, lo_open=True)
    _number(cfg, "max_symbol_exposure_pct", 0, 100, lo_open=True)
    _number(cfg, "max_currency_exposure_pct", 0, 100, lo_open=True)
    _number(cfg, "max_gross_exposure_pct", 0, 100, lo_open=True)
    _number(cfg, "max_net_exposure_pct", 0, 100, lo_open=True)
    _number(cfg, "correlation_threshold", 0, 1)
    _number(cfg, "correlation_size_multiplier", 0, 1)
    _number(cfg, "correlation_min_samples", 2, 10_000, integer=True)
    _number(cfg, "mark_history_size", 2, 10_000, integer=True)
    if cfg.mark_history_size <= cfg.correlation_min_samples:
        raise ConfigError("mark_history_size", "must be > correlation_min_samples")
    _within("min_position_units", cfg.min_position_units, domain.UNITS)
    _number(cfg, "max_drawdown", 0, 1, lo_open=True)
    _number(cfg, "max_daily_drawdown", 0, 1, lo_open=True)
    _number(cfg, "daily_loss_limit", 0, 1, lo_open=True)
    _number(cfg, "weekly_loss_limit", 0, 1, lo_open=True)
    _number(cfg, "confidence_collapse_window", 1, 10_000, integer=True)
    _number(cfg, "confidence_collapse_threshold", 0, 1)
    _number(cfg, "cooldown_seconds", 0, 7 * 86400, integer=True)
    _identifier("trading_day_rollover", cfg.trading_day_rollover, domain.CLOCK_TIME)
    _identifier("trading_timezone", cfg.trading_timezone, domain.TIME_ZONE)
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(cfg.trading_timezone)
    except Exception:  # zoneinfo raises several types for bad names
        raise ConfigError("trading_timezone", f"unknown time zone {cfg.trading_timezone!r}") from None
    _number(cfg, "trading_week_start", 0, 6, integer=True)
    if len(cfg.instruments) > MAX_INSTRUMENTS:
        raise ConfigError("instruments", f"at most {MAX_INSTRUMENTS:,} instruments")
    for symbol, inst in cfg.instruments.items():
        _identifier("instruments", symbol, domain.SYMBOL)
        if inst.asset_class in ("fx", "fx_spot") and not (domain.FX_PAIR.matches(symbol) and inst.currency == symbol[3:]):
            raise ConfigError(f"instruments.{symbol}.currency", "FX spot is a six-letter pair BASEQUOTE whose currency "
                              "is its quote")
        if inst.max_units is not None and inst.max_units <= 0:
            raise ConfigError(f"instruments.{symbol}.max_units", "must be above 0")
        if inst.min_quantity is not None and inst.max_units is not None and inst.min_quantity > inst.max_units:
            raise ConfigError(f"instruments.{symbol}.min_quantity", "is above max_units: it could never trade")
        if inst.asset_class not in ASSET_CLASSES:
            raise ConfigError(f"instruments.{symbol}.asset_class", f"must be one of {', '.join(ASSET_CLASSES)}")
        _identifier(f"instruments.{symbol}.currency", inst.currency, domain.CURRENCY)
        _within(f"instruments.{symbol}.multiplier", inst.multiplier, domain.MULTIPLIER)
        for name, bounds in (("lot_size", domain.LOT), ("min_quantity", domain.UNITS), ("tick_size", domain.LOT),
                             ("max_units", domain.UNITS), ("max_notional_order", domain.NOTIONAL),
                             ("max_notional_position", domain.NOTIONAL), ("price_band", domain.UNIT_INTERVAL)):
            if getattr(inst, name) is not None:
                _within(f"instruments.{symbol}.{name}", getattr(inst, name), bounds)

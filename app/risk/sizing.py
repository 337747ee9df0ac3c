"""Volatility-scaled position sizing (SPEC §3 step 4)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .config import RPMConfig
from .model import CENT, TradeIntent, div_floor, floor_units, to_decimal


def confidence_multiplier(confidence: float, config: RPMConfig) -> float:
    return 0.5 + confidence if config.confidence_scaling else 1.0


def vol_multiplier(vol_percentile: float, config: RPMConfig) -> float:
    if vol_percentile > config.vol_extreme_percentile:
        return config.vol_extreme_multiplier
    if vol_percentile > config.vol_high_percentile:
        return config.vol_high_multiplier
    return 1.0


def size_position(
    intent: TradeIntent, equity: Decimal, quote_to_account: Decimal, multiplier: Decimal, config: RPMConfig,
    lot: Decimal = CENT,
) -> tuple[Decimal, Decimal, dict[str, Any]]:
    """Units to trade before portfolio constraints (rounded down to the instrument's lot), the risk capital, and
    the factors."""
    risk_capital = equity * config.dec("risk_per_trade")
    risk_per_unit = intent.atr * config.dec("atr_multiplier") * quote_to_account * multiplier
    base_units = risk_capital / risk_per_unit if risk_capital > 0 else Decimal(0)
    conf = confidence_multiplier(intent.confidence_score, config)
    regime = config.regime_multiplier(intent.regime)
    vol = vol_multiplier(intent.vol_percentile, config)
    # multiply first and divide once, rounding down: 1,000 x 1.25 x 1.2 / 0.075 is exactly 20,000
    scaled_risk = risk_capital * to_decimal(conf) * to_decimal(regime) * to_decimal(vol)
    units = floor_units(div_floor(scaled_risk, risk_per_unit) if risk_capital > 0 else Decimal(0), lot)
    factors = {
        "equity": float(equity),
        "risk_per_trade": config.risk_per_trade,
        "risk_capital": float(risk_capital),
        "atr": float(intent.atr),
        "atr_multiplier": config.atr_multiplier,
        "quote_to_account_rate": float(quote_to_account),
        "contract_multiplier": float(multiplier),
        "risk_per_unit": float(risk_per_unit),
        "base_units": float(base_units),
        "confidence_mult": conf,
        "regime_mult": regime,
        "vol_mult": vol,
        "lot_size": float(lot),
        "units": float(units),
    }
    return units, risk_capital, factors

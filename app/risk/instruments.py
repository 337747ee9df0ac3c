"""Instruments and currencies: FX decomposition and conversion into the account currency."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from . import domain
from .config import RPMConfig
from .model import ONE


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    symbol: str
    asset_class: str
    base: str | None  # FX pairs only
    currency: str  # the quote (price) currency
    multiplier: Decimal
    # currency legs of one long unit, as (currency, sign of its account-value exposure)
    legs: tuple[tuple[str, int], ...] = ()

    @property
    def is_fx(self) -> bool:
        return self.base is not None


@lru_cache(maxsize=4096)
def instrument(symbol: str, config: RPMConfig) -> InstrumentInfo:
    spec = config.instruments.get(symbol)
    if spec is not None:
        base = symbol[:3] if spec.asset_class == "fx" and domain.FX_PAIR.matches(symbol) else None
        legs = ((base, 1), (spec.currency, -1)) if base else ((spec.currency, 1),)
        return InstrumentInfo(symbol, spec.asset_class, base, spec.currency, Decimal(repr(spec.multiplier)), legs)
    return InstrumentInfo(symbol, "fx", symbol[:3], symbol[3:], ONE, ((symbol[:3], 1), (symbol[3:], -1)))


@lru_cache(maxsize=65536)
def _inverse(price: Decimal) -> Decimal:
    return ONE / price


def quote_to_account_rate(
    info: InstrumentInfo, price: Decimal, marks: Mapping[str, Decimal], account: str
) -> Decimal | None:
    """Account-currency value of one unit of the quote currency, or None when no rate is known.

    1 for XXXUSD; 1/price for USDXXX; from the latest mark of the needed pair for a cross.
    """
    quote = info.currency
    if quote == account:
        return ONE
    if info.base == account:
        return _inverse(price)
    direct = marks.get(quote + account)
    if direct:
        return direct
    inverse = marks.get(account + quote)
    if inverse:
        return _inverse(inverse)
    return None


def notional_per_unit(
    info: InstrumentInfo, price: Decimal, marks: Mapping[str, Decimal], account: str
) -> Decimal | None:
    """Account-currency notional of one unit at ``price``."""
    rate = quote_to_account_rate(info, price, marks, account)
    if rate is None:
        return None
    return price * info.multiplier * rate

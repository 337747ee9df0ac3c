"""Instruments and currencies: FX decomposition and conversion into the account currency."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from . import domain
from .config import RPMConfig
from .model import CENT, ONE


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    symbol: str
    asset_class: str
    base: str | None  # FX pairs only
    currency: str  # the quote (price) currency
    multiplier: Decimal
    # currency legs of one long unit, as (currency, sign of its account-value exposure)
    legs: tuple[tuple[str, int], ...] = ()
    lot: Decimal = CENT  # quantities are multiples of it, rounded down
    min_quantity: Decimal | None = None  # None: the configuration's min_position_units
    tick: Decimal | None = None  # prices are multiples of it
    max_units: Decimal | None = None  # per order
    max_notional_order: Decimal | None = None  # account currency
    max_notional_position: Decimal | None = None  # account currency
    price_band: Decimal | None = None  # the largest deviation from the last mark, a fraction

    @property
    def is_fx(self) -> bool:
        return self.base is not None


FX_CLASSES = ("fx", "fx_spot")


def _dec(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(repr(value))


@lru_cache(maxsize=4096)
def instrument(symbol: str, config: RPMConfig) -> InstrumentInfo:
    """What RPM knows of ``symbol`` under ``config``: its entry in the instrument table, or, for a six-letter
    pair the table does not list, FX spot with the defaults (the only symbols taken without an entry)."""
    spec = config.instruments.get(symbol)
    if spec is not None:
        base = symbol[:3] if spec.asset_class in FX_CLASSES and domain.FX_PAIR.matches(symbol) else None
        legs = ((base, 1), (spec.currency, -1)) if base else ((spec.currency, 1),)
        return InstrumentInfo(symbol, spec.asset_class, base, spec.currency, Decimal(repr(spec.multiplier)), legs,
                              lot=_dec(spec.lot_size) or CENT, min_quantity=_dec(spec.min_quantity),
                              tick=_dec(spec.tick_size), max_units=_dec(spec.max_units),
                              max_notional_order=_dec(spec.max_notional_order),
                              max_notional_position=_dec(spec.max_notional_position), price_band=_dec(spec.price_band))
    return InstrumentInfo(symbol, "fx_spot", symbol[:3], symbol[3:], ONE, ((symbol[:3], 1), (symbol[3:], -1)))


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


def rate_needed(info: InstrumentInfo, account: str) -> str:
    """The marks that would convert ``info``'s currency into the account currency (what is missing without one)."""
    return f"{info.currency}{account} or {account}{info.currency}"


def notional_per_unit(
    info: InstrumentInfo, price: Decimal, marks: Mapping[str, Decimal], account: str
) -> Decimal | None:
    """Account-currency notional of one unit at ``price``."""
    rate = quote_to_account_rate(info, price, marks, account)
    if rate is None:
        return None
    return price * info.multiplier * rate

"""Instruments beyond FX spot: the SPEC §3 formula with each instrument's multiplier, lot size, minimum and caps.

Every expected size is worked by hand in the comment beside it: equity 100,000 (or as given), risk 1% = 1,000,
confidence 0.75 -> x1.25, TRENDING x1.2, vol percentile 0.5 -> x1.0: 1,500 of scaled risk, divided by the risk
per unit = ATR x 1.5 (the ATR multiple) x the contract multiplier x the quote-to-account rate, rounded down to the
lot size, then capped.
"""

from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.presets import shared_instruments
from app.risk import RiskPortfolioManager, RPMConfig, TradeApprovalStatus

from .conftest import Clock, intent

ES = {"asset_class": "future", "currency": "USD", "multiplier": 50.0, "lot_size": 1, "min_quantity": 1,
      "tick_size": 0.25}
AAPL = {"asset_class": "equity", "currency": "USD", "lot_size": 1, "min_quantity": 1, "tick_size": 0.01}
BTC = {"asset_class": "crypto", "currency": "USD", "lot_size": 1e-8, "min_quantity": 0.0001, "tick_size": 0.01}

CASES = [
    # (what, capital, instruments, intent, status, units, reason)
    # 1,500 / (0.001 x 1.5) = 1,000,000 -> symbol units 200,000 -> 30% of 100,000 = 30,000 USD / 1.1 = 27,272.72
    ("an FX pair, unchanged", 100_000, {}, dict(), "APPROVED", "27272.72", None),
    # 1,500 / (2 x 1.5) = 500 shares -> 30,000 USD / 190 = 157.89 -> rounded down to the lot of 1: 157
    ("an equity in USD", 100_000, {"AAPL": AAPL}, dict(symbol="AAPL", current_price=190.0, atr=2.0),
     "APPROVED", "157", None),
    # 1,500 / (900 x 1.5) = 1.11 -> 1 share; 1 share is its minimum
    ("an equity at its minimum", 100_000, {"AAPL": AAPL}, dict(symbol="AAPL", current_price=190.0, atr=900.0),
     "APPROVED", "1", None),
    # 1,500 / (1,200 x 1.5) = 0.83 -> 0 shares: below the minimum of 1
    ("an equity below its minimum", 100_000, {"AAPL": AAPL}, dict(symbol="AAPL", current_price=190.0, atr=1200.0),
     "REJECTED", "0", "SIZE_BELOW_MINIMUM"),
    # capital 10,000,000: 150,000 / (20 x 1.5 x 50) = 100 contracts -> 30% = 3,000,000 USD / (5,000 x 50) = 12
    ("a future, multiplier 50", 10_000_000, {"ES": ES}, dict(symbol="ES", current_price=5000.0, atr=20.0),
     "APPROVED", "12", None),
    # 100 contracts -> the instrument's 10 per order -> 10 (the symbol's 12 does not bind)
    ("a future capped per order", 10_000_000, {"ES": {**ES, "max_units": 10}},
     dict(symbol="ES", current_price=5000.0, atr=20.0), "APPROVED", "10", None),
    # 12 contracts = 3,000,000 USD -> the instrument's 1,000,000 per order: 1,000,000 / 250,000 = 4
    ("a future capped by notional per order", 10_000_000, {"ES": {**ES, "max_notional_order": 1_000_000}},
     dict(symbol="ES", current_price=5000.0, atr=20.0), "APPROVED", "4", None),
    # capital 100,000: 1,500 / (20 x 1.5 x 50) = 1 contract of 250,000 USD > 30% of 100,000: no room
    ("a future too large for the portfolio", 100_000, {"ES": ES}, dict(symbol="ES", current_price=5000.0, atr=20.0),
     "REJECTED", "0", "SYMBOL_EXPOSURE"),
    # 5,000.10 is not a multiple of the tick 0.25
    ("a future off its tick", 10_000_000, {"ES": ES}, dict(symbol="ES", current_price=5000.1, atr=20.0),
     "REJECTED", "0", "INSTRUMENT_LIMIT"),
    # 1,500 / (6,000 x 1.5) = 0.1666666666... -> rounded down to 1e-8: 0.16666666 (10,000 USD: no cap binds)
    ("a crypto pair in 1e-8 increments", 100_000, {"BTCUSD": BTC},
     dict(symbol="BTCUSD", current_price=60000.0, atr=6000.0), "APPROVED", "0.16666666", None),
]


@pytest.mark.parametrize("what,capital,instruments,fields,status,units,reason", CASES, ids=[c[0] for c in CASES])
def test_each_asset_class_is_sized_by_its_instrument(clock, what, capital, instruments, fields, status, units, reason):
    rpm = RiskPortfolioManager(config=RPMConfig(total_capital=capital, instruments=instruments), clock=clock)
    d = rpm.process_trade_intent(**intent(**fields)).decision
    assert (d.status.value, d.reason) == (status, reason), d.message
    approved = Decimal(repr(d.approved_trade.position_units)) if d.approved_trade else Decimal(0)
    assert approved == Decimal(units)


def test_a_price_band_tighter_than_the_collar_rejects(clock):
    band = {**AAPL, "price_band": 0.02}
    rpm = RiskPortfolioManager(config=RPMConfig(instruments={"AAPL": band}), clock=clock)
    rpm.update_marks({"AAPL": 190.0})
    inside = rpm.process_trade_intent(**intent(symbol="AAPL", current_price=193.0, atr=2.0)).decision
    outside = rpm.process_trade_intent(**intent(symbol="AAPL", current_price=194.0, atr=2.0)).decision
    assert inside.status == TradeApprovalStatus.APPROVED  # 1.6% from the mark
    assert (outside.status, outside.reason) == (TradeApprovalStatus.REJECTED, "PRICE_COLLAR")  # 2.1% > 2%
    assert outside.breakdown and "2.1" in outside.message


def test_the_shared_instruments_are_valid_and_listed_by_new_portfolios():
    config = RPMConfig(instruments=shared_instruments())
    assert {config.instruments[s].asset_class for s in config.instruments} >= {"equity", "future", "crypto", "cfd"}
    assert config.instruments["ES"].multiplier == 50.0


def test_an_instrument_written_before_the_limits_keeps_its_configuration_hash():
    """The optional fields are written only when given: a configuration stored before they existed reads back
    with the hash its decisions recorded."""
    old = RPMConfig(instruments={"AAPL": {"asset_class": "equity", "currency": "USD", "multiplier": 1.0}})
    assert old.to_dict()["instruments"] == {"AAPL": {"asset_class": "equity", "currency": "USD", "multiplier": 1.0}}


def lots():
    return st.sampled_from([Decimal("1e-8"), Decimal("0.001"), Decimal("0.01"), Decimal("1"), Decimal("25"),
                            Decimal("100")])


@settings(max_examples=150, deadline=None)
@given(lot=lots(), minimum=st.sampled_from([None, 1, 50, 0.0001]), max_units=st.sampled_from([None, 3, 500, 1e6]),
       max_order=st.sampled_from([None, 1_000, 50_000, 1e9]), max_position=st.sampled_from([None, 20_000, 1e9]),
       price=st.decimals(min_value=Decimal("0.5"), max_value=Decimal("5000"), places=2),
       atr_fraction=st.floats(min_value=0.0005, max_value=0.5), multiplier=st.sampled_from([1.0, 10.0, 50.0]),
       capital=st.sampled_from([10_000, 100_000, 10_000_000]), direction=st.sampled_from([1, -1]))
def test_sizes_are_multiples_of_the_lot_within_every_cap_and_at_least_the_minimum(
        lot, minimum, max_units, max_order, max_position, price, atr_fraction, multiplier, capital, direction):
    assume(minimum is None or max_units is None or minimum <= max_units)  # (else the table is refused)
    spec = {"asset_class": "future", "currency": "USD", "multiplier": multiplier, "lot_size": float(lot),
            "min_quantity": minimum, "max_units": max_units, "max_notional_order": max_order,
            "max_notional_position": max_position}
    rpm = RiskPortfolioManager(config=RPMConfig(total_capital=capital, instruments={"XYZ": spec}), clock=Clock())
    d = rpm.process_trade_intent(**intent(symbol="XYZ", current_price=float(price), direction=direction,
                                          atr=float(price) * atr_fraction)).decision
    assume(d.status == TradeApprovalStatus.APPROVED)  # (hypothesis fails if too few are: the test is not vacuous)
    units = Decimal(repr(d.approved_trade.position_units))
    notional = units * price * Decimal(repr(multiplier))
    assert units % lot == 0
    assert units >= Decimal(repr(minimum if minimum is not None else 1000.0))
    assert max_units is None or units <= Decimal(repr(max_units))
    assert max_order is None or notional <= Decimal(repr(max_order))
    assert max_position is None or notional <= Decimal(repr(max_position))

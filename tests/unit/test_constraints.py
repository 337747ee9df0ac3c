import math

import pytest

from .conftest import WIDE, intent


def decide(rpm, **overrides):
    return rpm.process_trade_intent(**intent(**overrides)).decision


def step(decision, name):
    return next(s for s in decision.breakdown["constraints"] if s["name"] == name)


def test_a_new_symbol_beyond_max_positions_is_rejected_but_adding_is_not(make_rpm):
    rpm = make_rpm(max_concurrent_positions=2, correlation_size_multiplier=1.0)
    small = dict(atr=0.05, confidence_score=0.6, regime="RANGING")  # ~14,666 units, far below the caps
    assert decide(rpm, symbol="EURUSD", **small).approved
    assert decide(rpm, symbol="GBPUSD", current_price=1.25, **small).approved
    third = decide(rpm, symbol="AUDUSD", current_price=0.65, **small)
    assert third.reason == "MAX_POSITIONS"
    assert step(third, "max_positions")["result"] == "REJECTED"
    assert decide(rpm, symbol="EURUSD", **small).approved  # adding to an open symbol is not a new position


def test_units_per_symbol_cap_adjusts_then_rejects_when_full(make_rpm):
    rpm = make_rpm(**dict(WIDE, max_units_per_symbol=150_000.0))
    first = decide(rpm)
    assert first.approved and first.units == 150_000
    assert step(first, "symbol_units")["result"] == "ADJUSTED"
    again = decide(rpm)
    assert again.reason == "SYMBOL_EXPOSURE" and step(again, "symbol_units")["result"] == "REJECTED"


def test_symbol_exposure_counts_the_existing_position(make_rpm):
    rpm2 = make_rpm()
    small = decide(rpm2, atr=0.05, confidence_score=0.6, regime="RANGING")  # 1000/0.075*1.1 = 14,666.66
    assert float(small.units) == 14666.66
    second = decide(rpm2, atr=0.05, confidence_score=0.6, regime="RANGING")
    # room left: 30,000 - 14,666.66*1.1 = 13,866.674 -> 12,606.06 units
    assert float(second.units) == 12606.06
    assert step(second, "symbol_exposure")["result"] == "ADJUSTED"
    assert decide(rpm2, atr=0.05, confidence_score=0.6, regime="RANGING").reason == "SYMBOL_EXPOSURE"


def test_currency_exposure_sums_legs_across_pairs(make_rpm):
    rpm = make_rpm(max_symbol_exposure_pct=0.4, max_currency_exposure_pct=0.5, correlation_size_multiplier=1.0)
    rpm.update_marks({"GBPUSD": 1.25})
    assert decide(rpm, symbol="EURUSD", current_price=1.0).units == 40000  # EUR +40,000
    # EURGBP long adds EUR: only 10,000 USD of EUR room is left
    d = decide(rpm, symbol="EURGBP", current_price=0.8, atr=0.0008)
    cur = [s for s in d.breakdown["constraints"] if s["name"] == "currency_exposure"]
    assert [c["currency"] for c in cur] == ["EUR", "GBP"]
    assert cur[0]["result"] == "ADJUSTED"
    assert float(d.units) * 0.8 * 1.25 == pytest.approx(10_000, abs=0.02)
    assert rpm.get_portfolio_state()["exposures"]["currency"]["EUR"] <= 50_000 + 1e-6


def test_short_exposure_in_a_currency_is_limited_too(make_rpm):
    rpm = make_rpm(max_symbol_exposure_pct=0.4, max_currency_exposure_pct=0.5, correlation_size_multiplier=1.0)
    assert decide(rpm, symbol="EURUSD", direction=-1, current_price=1.0).units == 40000
    rpm.update_marks({"USDCHF": 1.0})
    d = decide(rpm, symbol="EURCHF", direction=-1, current_price=1.0, atr=0.0008)
    assert d.units == pytest.approx(10_000, abs=0.01)


def test_gross_exposure_cap(make_rpm):
    rpm = make_rpm(max_symbol_exposure_pct=0.4, max_gross_exposure_pct=0.5, max_currency_exposure_pct=10.0,
                   correlation_size_multiplier=1.0)
    assert decide(rpm, symbol="EURUSD", current_price=1.0).units == 40000
    d = decide(rpm, symbol="GBPUSD", direction=-1, current_price=1.0)
    assert step(d, "gross_exposure")["result"] == "ADJUSTED" and d.units == 10000
    assert decide(rpm, symbol="AUDUSD", current_price=1.0).reason == "GROSS_EXPOSURE"


def test_net_exposure_cap_lets_offsetting_trades_through(make_rpm):
    rpm = make_rpm(max_symbol_exposure_pct=0.4, max_net_exposure_pct=0.5, max_currency_exposure_pct=10.0,
                   correlation_size_multiplier=1.0)
    assert decide(rpm, symbol="EURUSD", current_price=1.0).units == 40000
    d = decide(rpm, symbol="GBPUSD", current_price=1.0)
    assert step(d, "net_exposure")["result"] == "ADJUSTED" and d.units == 10000
    assert decide(rpm, symbol="AUDUSD", current_price=1.0).reason == "NET_EXPOSURE"
    short = decide(rpm, symbol="AUDUSD", direction=-1, current_price=1.0)
    assert short.approved and step(short, "net_exposure")["result"] == "PASS"


def test_shared_currency_leg_halves_size_without_history(make_rpm):
    rpm = make_rpm()
    assert decide(rpm, symbol="EURUSD").approved
    d = decide(rpm, symbol="GBPUSD", current_price=1.25)
    corr = step(d, "correlation")
    assert corr["result"] == "ADJUSTED"
    assert corr["correlated_with"] == {"symbol": "EURUSD", "currency": "USD", "basis": "shared_currency_leg"}
    assert d.units == 12000  # 30,000/1.25 = 24,000 x 0.5
    # long USDJPY is long USD: no leg in the same sense as long EURUSD
    assert step(decide(rpm, symbol="USDJPY", current_price=150.0, atr=0.15), "correlation")["result"] == "PASS"


def feed_marks(rpm, n, a_fn, b_fn, a="EURUSD", b="GBPUSD"):
    for i in range(n):
        rpm.update_marks({a: a_fn(i), b: b_fn(i)})


def test_correlation_from_returns_of_marks(make_rpm):
    wave = [math.sin(i * 1.7) * 0.002 for i in range(40)]
    results = {}
    for direction in (1, -1):
        rpm = make_rpm()
        feed_marks(rpm, 40, lambda i: 1.1 + wave[i], lambda i: 1.25 + wave[i] * 1.1)
        assert decide(rpm, symbol="EURUSD", current_price=1.1).approved
        results[direction] = step(decide(rpm, symbol="GBPUSD", direction=direction, current_price=1.25), "correlation")
    assert results[1]["result"] == "ADJUSTED" and results[1]["correlated_with"]["basis"] == "returns"
    assert results[1]["correlated_with"]["rho"] > 0.99
    # shorting a positively correlated symbol hedges: no reduction, though both share a USD leg
    assert results[-1]["result"] == "PASS"


def test_uncorrelated_returns_do_not_reduce_even_with_a_shared_leg(make_rpm):
    rpm = make_rpm()
    feed_marks(rpm, 40, lambda i: 1.1 + math.sin(i * 1.7) * 0.002, lambda i: 1.25 + math.cos(i * 2.9) * 0.002)
    assert decide(rpm, symbol="EURUSD", current_price=1.1).approved
    corr = step(decide(rpm, symbol="GBPUSD", current_price=1.25), "correlation")
    assert corr["result"] == "PASS"


def test_size_below_minimum_is_rejected(make_rpm):
    d = decide(make_rpm(), atr=2.0)  # 1,000 / 3.0 x 1.25 x 1.2 = 500 units
    assert d.reason == "SIZE_BELOW_MINIMUM"
    assert d.breakdown["final"]["result"] == "REJECTED"

from decimal import Decimal

import pytest

from app.risk import FillError

from .conftest import intent


def decide(rpm, **overrides):
    return rpm.process_trade_intent(**intent(**overrides)).decision


def test_marks_revalue_open_positions(make_rpm):
    rpm = make_rpm()
    decide(rpm)
    rpm.update_marks({"EURUSD": 1.1050})
    state = rpm.get_portfolio_state()
    assert state["unrealised_pnl"] == pytest.approx(27272.72 * 0.005, abs=1e-6)
    assert state["equity"] == pytest.approx(100_000 + 136.3636, abs=1e-4)
    assert state["peak_equity"] == state["equity"]


def test_close_realises_pnl_exactly_in_decimal(make_rpm):
    rpm = make_rpm()
    decide(rpm)
    pnl = rpm.close_position("EURUSD", 1.1003)
    assert Decimal(str(pnl)) == Decimal("27272.72") * Decimal("0.0003")
    assert rpm.state.realised_pnl == Decimal("8.181816")
    assert rpm.state.positions == {}


def test_usdjpy_pnl_is_converted_into_the_account_currency(make_rpm):
    rpm = make_rpm()
    d = decide(rpm, symbol="USDJPY", current_price=150.0, atr=0.15)
    units = d.units
    pnl = rpm.close_position("USDJPY", 151.5)
    # JPY PnL = units x 1.5, converted at 1/151.5
    assert pnl == pytest.approx(float(units * Decimal("1.5") / Decimal("151.5")), rel=1e-12)


def test_adding_to_a_position_averages_the_entry_price(make_rpm):
    rpm = make_rpm()
    decide(rpm, atr=0.05, confidence_score=0.6, regime="RANGING")  # 14,666.66 at 1.1
    decide(rpm, atr=0.05, confidence_score=0.6, regime="RANGING", current_price=1.12)
    pos = rpm.state.positions["EURUSD"]
    first, second = Decimal("14666.66"), abs(pos.units) - Decimal("14666.66")
    expected = (Decimal("1.1") * first + Decimal("1.12") * second) / (first + second)
    assert abs(pos.avg_price - expected) < Decimal("1e-8")


def test_partial_fill_releases_the_rest_and_sets_the_entry_price(make_rpm):
    rpm = make_rpm()
    d = decide(rpm)
    rpm.record_fill(d.id, 20000, 1.1002)
    pos = rpm.state.positions["EURUSD"]
    assert pos.units == Decimal("20000") and pos.avg_price == Decimal("1.1002")
    with pytest.raises(KeyError):
        rpm.record_fill(d.id, 1, 1.1)  # a fill is final


def test_complete_fill_keeps_the_size(make_rpm):
    rpm = make_rpm()
    d = decide(rpm)
    rpm.record_fill(d.id, 27272.72, 1.0999)
    pos = rpm.state.positions["EURUSD"]
    assert pos.units == Decimal("27272.72") and pos.avg_price == Decimal("1.0999")


def test_zero_fill_removes_the_booked_position(make_rpm):
    rpm = make_rpm()
    d = decide(rpm)
    rpm.record_fill(d.id, 0, 1.1)
    assert rpm.state.positions == {}


def test_over_fill_is_refused_and_changes_nothing(make_rpm):
    rpm = make_rpm()
    d = decide(rpm)
    before = rpm.state.to_dict()
    with pytest.raises(FillError, match="over-fill"):
        rpm.record_fill(d.id, 30000, 1.1)
    assert rpm.state.to_dict() == before


def test_fill_of_a_reducing_trade_corrects_pnl_and_reopens_the_unfilled_part(make_rpm):
    rpm = make_rpm()
    opened = decide(rpm)
    rpm.record_fill(opened.id, 27272.72, 1.1)
    close = decide(rpm, direction=-1, current_price=1.1010)
    assert rpm.state.realised_pnl == Decimal("27272.72") * Decimal("0.0010")
    rpm.record_fill(close.id, 20000, 1.1008)  # only 20,000 sold, at 1.1008
    assert rpm.state.realised_pnl == Decimal("20000") * Decimal("0.0008")
    pos = rpm.state.positions["EURUSD"]
    assert pos.units == Decimal("7272.72") and pos.avg_price == Decimal("1.1")


def test_fill_after_the_position_was_closed_is_refused(make_rpm):
    rpm = make_rpm()
    d = decide(rpm)
    rpm.close_position("EURUSD", 1.1)
    with pytest.raises(FillError, match="closed"):
        rpm.record_fill(d.id, 1000, 1.1)


def test_exposures_decompose_fx_pairs_into_currency_legs(make_rpm):
    rpm = make_rpm(correlation_size_multiplier=1.0)
    decide(rpm, symbol="EURUSD", atr=0.05, confidence_score=0.6, regime="RANGING")  # 14,666.66 EUR long
    decide(rpm, symbol="USDJPY", current_price=150.0, atr=5.0, confidence_score=0.6, regime="RANGING")
    exp = rpm.get_portfolio_state()["exposures"]
    assert set(exp["currency"]) == {"EUR", "JPY"}
    assert exp["currency"]["EUR"] == pytest.approx(14666.66 * 1.1)
    usdjpy = rpm.state.positions["USDJPY"].units
    assert exp["currency"]["JPY"] == pytest.approx(-float(usdjpy))  # long USDJPY = short JPY, in USD
    assert exp["gross"] == pytest.approx(14666.66 * 1.1 + float(usdjpy))

"""Partial reductions: an intent's `units` and `reduce_only`, a partial close; a position never flips in one intent."""

from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.risk import RiskPortfolioManager, RPMConfig, TradeApprovalStatus

from .conftest import Clock, intent


def opened(clock=None) -> RiskPortfolioManager:
    rpm = RiskPortfolioManager(config=RPMConfig(), clock=clock or Clock())
    d = rpm.process_trade_intent(**intent()).decision  # 27,272.72 EURUSD long at 1.1
    assert d.approved_trade.position_units == 27272.72
    return rpm


def units_held(rpm, symbol="EURUSD") -> Decimal:
    pos = rpm.state.positions.get(symbol)
    return Decimal(0) if pos is None else pos.units


def test_a_reducing_intent_with_units_reduces_by_that_much():
    rpm = opened()
    d = rpm.process_trade_intent(**intent(direction=-1, current_price=1.12, units=10000)).decision
    assert d.status == TradeApprovalStatus.APPROVED and d.approved_trade.position_units == 10000.0
    assert d.reducing and "reduces the position by 10000" in d.message
    assert units_held(rpm) == Decimal("17272.72")
    assert rpm.state.realised_pnl == Decimal("200.00")  # (1.12 - 1.10) x 10,000


def test_a_reduction_asked_past_flat_closes_the_position_and_says_it_does_not_flip():
    rpm = opened()
    d = rpm.process_trade_intent(**intent(direction=-1, current_price=1.1, units=50000)).decision
    assert d.approved_trade.position_units == 27272.72
    assert "never flips" in d.message and "22727.28 units asked beyond it" in d.message
    assert units_held(rpm) == 0


def test_reduce_only_refuses_what_would_not_reduce():
    rpm = RiskPortfolioManager(config=RPMConfig(), clock=Clock())
    flat = rpm.process_trade_intent(**intent(reduce_only=True)).decision
    assert (flat.status, flat.reason) == (TradeApprovalStatus.REJECTED, "NOTHING_TO_REDUCE")
    rpm.process_trade_intent(**intent())
    same_side = rpm.process_trade_intent(**intent(reduce_only=True)).decision
    assert same_side.reason == "NOTHING_TO_REDUCE" and "a long position" in same_side.message
    reduces = rpm.process_trade_intent(**intent(direction=-1, reduce_only=True, units=1000)).decision
    assert reduces.status == TradeApprovalStatus.APPROVED and units_held(rpm) == Decimal("26272.72")


def test_an_opening_intent_with_units_gets_at_most_that_much():
    rpm = RiskPortfolioManager(config=RPMConfig(), clock=Clock())
    d = rpm.process_trade_intent(**intent(units=5000.005)).decision
    assert d.approved_trade.position_units == 5000.0  # rounded down to the lot, 0.01
    assert d.breakdown["sizing"]["requested_units"] == 5000.0
    more = RiskPortfolioManager(config=RPMConfig(), clock=Clock()).process_trade_intent(**intent(units=1e9)).decision
    assert more.approved_trade.position_units == 27272.72  # the limits still decide


def test_a_partial_close_and_a_partial_fill_of_a_reduction():
    rpm = opened()
    assert rpm.close_position("EURUSD", 1.105, units=7272.72) == pytest.approx(36.3636)  # 0.005 x 7,272.72
    assert units_held(rpm) == Decimal("20000.00")
    d = rpm.process_trade_intent(**intent(direction=-1, current_price=1.12, units=10000)).decision
    assert units_held(rpm) == Decimal("10000.00")
    rpm.record_fill(d.id, 6000, 1.121)  # 4,000 not executed: back on the position at its entry price
    assert units_held(rpm) == Decimal("14000.00")
    assert rpm.state.positions["EURUSD"].avg_price == Decimal("1.1")
    # realised: 36.36 (close) + 0.021 x 6,000 (the fill) = 162.36
    assert rpm.state.realised_pnl == Decimal("36.363600") + Decimal("126.000")


@settings(max_examples=200, deadline=None)
@given(held=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2),
       asked=st.one_of(st.none(), st.decimals(min_value=Decimal("0.001"), max_value=Decimal("200000"), places=3)),
       side=st.sampled_from([1, -1]))
def test_a_reduction_never_flips_a_position(held, asked, side):
    from app.risk import accounting
    from app.risk.model import PortfolioState, Position

    from ..conftest import T0

    config = RPMConfig()
    state = PortfolioState.new(config)
    state.positions["EURUSD"] = Position("EURUSD", held * side, Decimal("1.1"), T0)
    closing = None if asked is None else asked.quantize(Decimal("0.01"), rounding="ROUND_FLOOR")
    assume(closing is None or closing > 0)
    accounting.realise_close(state, "EURUSD", Decimal("1.2"), config, closing)
    after = state.positions.get("EURUSD")
    if closing is None or closing >= held:
        assert after is None
    else:
        assert after.units == (held - closing) * side  # the same side, smaller by what was closed

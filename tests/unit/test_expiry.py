"""Approvals that expire: unfilled at their expiry, their units are released, once, by whatever sees it first."""

from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from app.risk import RiskPortfolioManager, RPMConfig, TradeApprovalStatus
from app.risk.accounting import exposures

from .conftest import Clock, intent


def make(ttl=60.0, clock=None):
    return RiskPortfolioManager(config=RPMConfig(approval_ttl_seconds=ttl), clock=clock or Clock())


def test_an_unfilled_approval_is_released_at_its_expiry():
    clock = Clock()
    rpm = make(clock=clock)
    d = rpm.process_trade_intent(**intent()).decision
    assert d.breakdown["final"]["expires_at"] == (clock() + timedelta(seconds=60)).isoformat()
    assert rpm.state.positions["EURUSD"].units == Decimal("27272.72")
    clock.advance(seconds=59)
    rpm.update_marks({"GBPUSD": 1.25})
    assert "EURUSD" in rpm.state.positions  # not yet
    clock.advance(seconds=1)
    rpm.update_marks({"GBPUSD": 1.25})  # the first operation that sees it expired releases it
    assert "EURUSD" not in rpm.state.positions and rpm.state.open_approvals == ()
    # the room is back: the same intent is approved in full again
    assert rpm.process_trade_intent(**intent()).decision.approved_trade.position_units == 27272.72


def test_an_intent_shortens_its_time_in_force_and_a_fill_in_time_keeps_the_position():
    clock = Clock()
    rpm = make(clock=clock)
    d = rpm.process_trade_intent(**intent(time_in_force_seconds=5)).decision
    assert d.breakdown["final"]["expires_at"] == (clock() + timedelta(seconds=5)).isoformat()
    long_ttl = rpm.process_trade_intent(**intent(symbol="GBPUSD", current_price=1.25, time_in_force_seconds=600))
    assert long_ttl.decision.breakdown["final"]["expires_at"] == (clock() + timedelta(seconds=60)).isoformat()
    rpm.record_fill(d.id, 27272.72, 1.1)
    clock.advance(seconds=3600)
    rpm.update_marks({"EURUSD": 1.1})
    assert rpm.state.positions["EURUSD"].units == Decimal("27272.72")  # filled: it stays
    assert "GBPUSD" not in rpm.state.positions  # not filled: released


def test_without_a_time_to_live_approvals_stand():
    clock = Clock()
    rpm = RiskPortfolioManager(config=RPMConfig(), clock=clock)
    d = rpm.process_trade_intent(**intent()).decision
    assert "expires_at" not in d.breakdown["final"]
    clock.advance(days=30)
    rpm.update_marks({"EURUSD": 1.1})
    assert "EURUSD" in rpm.state.positions


def test_a_reduction_does_not_expire():
    """Releasing an unfilled reduction would put back risk that no limit checked: a reduction stands until filled."""
    clock = Clock()
    rpm = make(clock=clock)
    rpm.record_fill(rpm.process_trade_intent(**intent()).decision.id, 27272.72, 1.1)
    reduce = rpm.process_trade_intent(**intent(direction=-1, current_price=1.12, units=10000)).decision
    assert reduce.status == TradeApprovalStatus.APPROVED and "expires_at" not in reduce.breakdown["final"]
    clock.advance(seconds=3600)
    rpm.update_marks({"EURUSD": 1.12})
    assert rpm.state.positions["EURUSD"].units == Decimal("17272.72") and rpm.state.realised_pnl == Decimal("200.00")


def test_an_open_closed_since_by_a_reduction_releases_nothing():
    """The reviewer's case: an unfilled open, then an unfilled reduction closing it: at the open's expiry nothing is
    given back (the books are flat, as the broker is), and nothing is created."""
    clock = Clock()
    rpm = make(clock=clock)
    rpm.process_trade_intent(**intent())
    rpm.process_trade_intent(**intent(direction=-1))
    clock.advance(seconds=61)
    rpm.update_marks({"EURUSD": 1.1})
    assert rpm.state.positions == {} and rpm.state.open_approvals == ()


def test_a_correction_voids_the_symbols_open_approvals():
    clock = Clock()
    rpm = make(clock=clock)
    rpm.process_trade_intent(**intent())
    from app.risk import engine

    outcome = engine.correct(rpm.state, "EURUSD", 40000, 1.1, rpm.config, clock())
    assert outcome.state.open_approvals == () and [r.note for r in outcome.state.released] == [
        "voided by a correction of the position"]
    clock.advance(seconds=61)
    later = engine.mark(outcome.state, {"EURUSD": 1.1}, rpm.config, clock())
    assert later.state.positions["EURUSD"].units == 40000  # the broker's, untouched by the expiry


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["EURUSD", "GBPUSD", "AUDUSD"]), st.integers(1, 90),
                                st.booleans()), min_size=1, max_size=12))
def test_expired_approvals_never_count_toward_limits(steps):
    """Whatever the order of intents, fills and time: once an approval's time is up, nothing of it is held."""
    prices = {"EURUSD": 1.1, "GBPUSD": 1.25, "AUDUSD": 0.65}
    clock = Clock()
    rpm = make(ttl=30, clock=clock)
    filled: set[str] = set()
    approved = []
    for symbol, wait, fill in steps:
        d = rpm.process_trade_intent(**intent(symbol=symbol, current_price=prices[symbol], atr=0.05)).decision
        if d.status == TradeApprovalStatus.APPROVED and not d.reducing:
            approved.append((d, clock()))
            if fill:
                rpm.record_fill(d.id, d.approved_trade.position_units, prices[symbol])
                filled.add(d.id)
        clock.advance(seconds=wait)
        rpm.update_marks(prices)
    now = clock()
    live = {a.booking.decision_id for a in rpm.state.open_approvals}
    for d, at in approved:
        if d.id not in filled and now >= at + timedelta(seconds=30):
            assert d.id not in live
    held = exposures(rpm.state, rpm.config).gross
    booked = sum((Decimal(repr(d.approved_trade.position_units)) * Decimal(repr(prices[d.approved_trade.symbol]))
                  for d, at in approved if d.id in filled or now < at + timedelta(seconds=30)), Decimal(0))
    assert held <= booked + Decimal("0.01")

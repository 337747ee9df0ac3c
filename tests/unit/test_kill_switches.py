from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.risk import CooldownActive, ResumeError, RPMConfig
from app.risk.kill_switches import trading_day, trading_week

from .conftest import Clock, intent


def decide(rpm, **overrides):
    return rpm.process_trade_intent(**intent(**overrides)).decision


def tripped(rpm):
    return sorted(rpm.state.switches)


def open_eurusd(rpm):
    d = decide(rpm)
    assert d.approved and float(d.units) == 27272.72
    return d


def test_drawdown_switch_trips_on_marks_blocks_new_risk_but_lets_a_close_through(make_rpm):
    rpm = make_rpm()
    open_eurusd(rpm)
    events = rpm.update_marks({"EURUSD": 0.55})  # -15,000 on 27,272.72 units: 15% down
    assert [e.switch for e in events if e.action == "TRIPPED"] == ["drawdown", "daily_drawdown", "daily_loss",
                                                                   "weekly_loss"]
    health = rpm.get_health_status()
    assert health["kill_switches"]["drawdown"]["state"] == "TRIPPED"
    assert health["kill_switches"]["drawdown"]["current_pct"] == pytest.approx(15.0, abs=0.01)
    assert health["trading_state"] == "HALTED"
    blocked = decide(rpm, symbol="GBPUSD", current_price=1.25)
    assert blocked.reason == "HALTED" and "drawdown" in blocked.rejected_trade.context["tripped_switches"]
    assert blocked.category == "drawdown"
    adding = decide(rpm, current_price=0.55)
    assert adding.reason == "HALTED"
    close = decide(rpm, direction=-1, current_price=0.55)
    assert close.approved and close.reducing and float(close.units) == 27272.72
    assert rpm.state.positions == {}


def test_drawdown_clears_after_cooldown_only_once_back_under_the_limit(make_rpm, clock):
    rpm = make_rpm()
    open_eurusd(rpm)
    rpm.update_marks({"EURUSD": 0.66})  # -12,000: 12%
    assert "drawdown" in tripped(rpm)
    clock.advance(seconds=3601)
    rpm.get_health_status()
    assert "drawdown" in tripped(rpm)  # still 12% down
    rpm.update_marks({"EURUSD": 1.0})  # -2,727: 2.7%
    assert "drawdown" not in tripped(rpm)


def test_daily_loss_trips_on_a_losing_close_and_clears_next_trading_day(make_rpm, clock):
    rpm = make_rpm()
    open_eurusd(rpm)
    pnl = rpm.close_position("EURUSD", 1.1 - 2500 / 27272.72)
    assert pnl == pytest.approx(-2500, abs=0.01)
    assert tripped(rpm) == ["daily_loss"]
    assert rpm.get_health_status()["kill_switches"]["daily_loss"]["current"] == pytest.approx(-2500, abs=0.01)
    assert decide(rpm).category == "loss_limit"
    clock.now = datetime(2026, 3, 2, 23, 59, tzinfo=UTC)
    assert decide(rpm).reason == "HALTED"
    clock.now = datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    assert decide(rpm).approved
    assert rpm.get_portfolio_state()["daily_pnl"] == pytest.approx(0, abs=0.01)


def test_daily_drawdown_measures_from_the_days_peak(make_rpm):
    rpm = make_rpm()
    open_eurusd(rpm)
    rpm.update_marks({"EURUSD": 1.2})  # +2,727: day's peak 102,727
    rpm.update_marks({"EURUSD": 1.09})  # -272.7 on the day, 2.9% below the peak
    assert tripped(rpm) == []
    rpm.update_marks({"EURUSD": 1.086})  # 3.03% below the peak
    assert tripped(rpm) == ["daily_drawdown"]


def test_weekly_loss_accumulates_over_days_and_clears_next_week(make_rpm, clock):
    rpm = make_rpm(max_daily_drawdown=0.5, max_symbol_exposure_pct=1.0)
    for day in range(3):
        clock.now = datetime(2026, 3, 2 + day, 12, 0, tzinfo=UTC)
        d = decide(rpm, atr=0.01, regime="RANGING", confidence_score=0.6)
        assert d.approved, d.message
        rpm.close_position("EURUSD", 1.1 - 1900 / float(d.units))  # -1,900 a day, under the daily limit
    assert tripped(rpm) == ["weekly_loss"]
    assert rpm.get_portfolio_state()["weekly_pnl"] == pytest.approx(-5700, abs=0.01)
    clock.now = datetime(2026, 3, 8, 23, 0, tzinfo=UTC)  # Sunday
    assert decide(rpm).reason == "HALTED"
    clock.now = datetime(2026, 3, 9, 0, 0, tzinfo=UTC)  # Monday: a new week
    assert decide(rpm).approved


def test_fx_trading_day_rolls_at_five_pm_new_york():
    config = RPMConfig(trading_day_rollover="17:00", trading_timezone="America/New_York", trading_week_start=6)
    before = datetime(2026, 3, 3, 21, 59, tzinfo=UTC)  # 16:59 EST
    after = datetime(2026, 3, 3, 22, 0, tzinfo=UTC)  # 17:00 EST
    assert trading_day(before, config).isoformat() == "2026-03-02"
    assert trading_day(after, config).isoformat() == "2026-03-03"
    # Sunday 17:00 New York opens the FX week
    sunday_open = datetime(2026, 3, 8, 21, 0, tzinfo=UTC)  # 17:00 EDT (DST started on 8 March)
    assert trading_week(trading_day(sunday_open, config), config).isoformat() == "2026-03-08"
    friday = datetime(2026, 3, 13, 20, 0, tzinfo=UTC)
    assert trading_week(trading_day(friday, config), config).isoformat() == "2026-03-08"


def test_confidence_collapse_trips_after_a_full_window_of_low_confidence(make_rpm, clock):
    rpm = make_rpm()
    for _i in range(19):
        assert decide(rpm, confidence_score=0.45).reason == "CONFIDENCE_TOO_LOW"
        clock.advance(seconds=1)
    d = decide(rpm, confidence_score=0.45)
    assert d.reason == "HALTED" and d.rejected_trade.context["tripped_switches"] == ["confidence_collapse"]
    assert d.category == "confidence"
    clock.advance(seconds=3601)
    # after the cooldown the switch clears and the window starts afresh
    assert decide(rpm, confidence_score=0.95).approved
    assert rpm.state.recent_confidences == (0.95,)


def test_volatility_shock_halts_only_that_symbol_for_the_cooldown(make_rpm, clock):
    rpm = make_rpm(volatility_baselines={"EURUSD": 0.001})
    shock = decide(rpm, atr=0.0031)
    assert shock.reason == "VOLATILITY_SHOCK" and shock.category == "volatility"
    assert "EURUSD" in rpm.state.symbol_halts
    assert decide(rpm).reason == "SYMBOL_HALTED"
    assert decide(rpm, symbol="GBPUSD", current_price=1.25).approved
    assert rpm.get_health_status()["health"] == "DEGRADED"
    clock.advance(seconds=3600)
    assert decide(rpm).approved


def test_volatility_baseline_is_the_running_average_once_there_are_enough_samples(make_rpm, clock):
    rpm = make_rpm(volatility_baseline_min_samples=5, max_units_per_symbol=1e9, max_symbol_exposure_pct=100.0,
                   max_currency_exposure_pct=100.0, max_gross_exposure_pct=100.0, max_net_exposure_pct=100.0)
    for _ in range(5):
        assert decide(rpm, atr=0.001).approved
    assert decide(rpm, atr=0.0029).approved  # under 3 x 0.001
    d = decide(rpm, atr=0.0045)  # baseline now (5 x 0.001 + 0.0029)/6 = 0.00131...
    assert d.reason == "VOLATILITY_SHOCK"
    check = next(c for c in d.breakdown["intent_checks"] if c["name"] == "volatility_shock")
    assert check["baseline_source"] == "running_average"
    assert check["baseline"] == pytest.approx((5 * 0.001 + 0.0029) / 6)


def test_manual_halt_needs_a_reason_and_holds_until_resumed(make_rpm, clock):
    rpm = make_rpm()
    with pytest.raises(ResumeError):
        rpm.halt("  ")
    rpm.halt("desk review")
    d = decide(rpm)
    assert d.reason == "HALTED" and d.category == "manual"
    clock.advance(days=3)
    assert decide(rpm).reason == "HALTED"
    rpm.resume()
    assert decide(rpm).approved


def test_resume_during_a_cooldown_is_refused_unless_forced_with_a_reason(make_rpm, clock):
    rpm = make_rpm()
    open_eurusd(rpm)
    rpm.update_marks({"EURUSD": 0.66})
    with pytest.raises(CooldownActive) as err:
        rpm.resume()
    assert "drawdown" in err.value.switches
    with pytest.raises(ResumeError):
        rpm.resume(force=True)
    events = rpm.resume(force=True, reason="risk officer accepts the loss")
    rebase = next(e for e in events if e.action == "REBASED")
    assert rebase.detail["before"]["peak_equity"] == "100000.0"
    assert float(rebase.detail["after"]["peak_equity"]) == pytest.approx(88000, abs=0.01)
    assert rebase.detail["forced"] is True
    # references re-based: the old loss no longer trips anything
    assert tripped(rpm) == []
    assert rpm.get_health_status()["kill_switches"]["drawdown"]["current"] == 0.0
    # new losses are measured from here
    rpm.update_marks({"EURUSD": 0.30})
    assert "drawdown" in tripped(rpm)


def test_throttle_limits_intents_per_second(make_rpm, clock):
    rpm = make_rpm(max_intents_per_second=3)
    # low confidence: rejected after the throttle check, so nothing else fills up
    results = [decide(rpm, confidence_score=0.3).reason for _ in range(4)]
    assert results == ["CONFIDENCE_TOO_LOW"] * 3 + ["THROTTLED"]
    # counted in 10 ms buckets: the intents of T0 leave the window with T0's bucket
    clock.advance(seconds=1.005)
    assert decide(rpm).reason == "THROTTLED"
    clock.advance(seconds=0.005)
    assert decide(rpm).approved


@given(st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=400))
def test_throttle_window_never_counts_fewer_than_the_last_second_and_at_most_10ms_more(gaps):
    """Between the exact count of intents in (t-1, t] and the count in (t-1.01, t]; bounded in size."""
    from datetime import UTC, datetime

    from app.risk import RPMConfig, engine
    from app.risk.model import PortfolioState, TradeIntent

    config = RPMConfig(max_intents_per_second=1_000_000, min_confidence_threshold=0.9,
                       confidence_collapse_threshold=0.0)
    state = PortfolioState.new(config)
    intent = TradeIntent.create(config, symbol="EURUSD", direction=1, confidence_score=0.5, regime="TRENDING",
                                atr=0.001, vol_percentile=0.5, current_price=1.1)
    t, seen = 1_772_452_800.0, []
    for gap in gaps:
        t += gap
        outcome = engine.decide(state, intent, config, datetime.fromtimestamp(t, UTC), "d")
        counted = outcome.decision.breakdown["intent_checks"][1]["count"]
        assert sum(1 for s in seen if s > t - 1.0) <= counted <= sum(1 for s in seen if s > t - 1.01)
        assert len(outcome.state.recent_intents) <= 101
        seen.append(t)
        state = outcome.state


def test_price_collar_rejects_prices_far_from_the_mark(make_rpm):
    rpm = make_rpm()
    rpm.update_marks({"EURUSD": 1.1})
    assert decide(rpm, current_price=1.2).reason == "PRICE_COLLAR"
    assert decide(rpm, current_price=1.15).approved  # 4.5%


def test_restricted_symbol_is_rejected(make_rpm):
    assert decide(make_rpm(restricted_symbols=("EURUSD",))).reason == "RESTRICTED_SYMBOL"


def test_disallowed_regime_rejects_new_positions_only(make_rpm):
    rpm = make_rpm(disallowed_regimes=("VOLATILE",))
    assert decide(rpm, regime="VOLATILE").reason == "REGIME_RESTRICTED"
    assert decide(rpm, atr=0.05, regime="TRENDING").approved
    assert decide(rpm, atr=0.05, regime="VOLATILE").approved  # adds to an open position


def test_stressed_regime_allows_at_most_two_open_positions(make_rpm):
    rpm = make_rpm(correlation_size_multiplier=1.0)
    assert decide(rpm, symbol="EURUSD", atr=0.05).approved
    assert decide(rpm, symbol="USDJPY", current_price=150.0, atr=5.0).approved
    d = decide(rpm, symbol="AUDNZD", regime="STRESSED")
    assert d.reason == "REGIME_RESTRICTED" and d.category == "regime"
    assert decide(rpm, symbol="EURUSD", atr=0.05, regime="STRESSED").approved


def test_clock_going_backwards_never_rolls_a_day_back():
    from app.risk import RiskPortfolioManager

    clock = Clock(datetime(2026, 3, 3, 1, 0, tzinfo=UTC))
    rpm = RiskPortfolioManager(clock=clock)
    rpm.get_health_status()
    clock.now = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    rpm.get_health_status()
    assert rpm.state.day_key == "2026-03-03"


def test_a_full_window_at_exactly_the_threshold_does_not_collapse(make_rpm, clock):
    # twenty floats of 0.6 summed naively average to 0.5999999999999999
    rpm = make_rpm(max_intents_per_second=1000, max_units_per_symbol=1e9, max_symbol_exposure_pct=100.0,
                   max_currency_exposure_pct=100.0, max_gross_exposure_pct=100.0, max_net_exposure_pct=100.0)
    for _ in range(25):
        assert decide(rpm, confidence_score=0.6, atr=0.05).approved
    assert "confidence_collapse" not in rpm.state.switches


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)),
       st.integers(0, 5 * 86400), st.sampled_from(["UTC", "America/New_York", "Europe/London", "Asia/Tokyo"]),
       st.sampled_from(["00:00", "17:00", "02:30", "23:59"]))
def test_the_same_day_shortcut_agrees_with_the_calendar_across_time_zones_and_dst(first, later, zone, rollover):
    from decimal import Decimal

    from app.risk import PortfolioState
    from app.risk.kill_switches import roll_calendar

    config = RPMConfig(trading_timezone=zone, trading_day_rollover=rollover)
    state = PortfolioState.new(config)
    t1 = first.replace(tzinfo=UTC)
    t2 = t1 + timedelta(seconds=later)
    roll_calendar(state, Decimal(100_000), t1, config)
    roll_calendar(state, Decimal(100_000), t2, config)
    assert state.day_key == trading_day(t2, config).isoformat()


def test_states_recorded_with_intent_times_read_as_buckets():
    from app.risk.model import PortfolioState

    old = PortfolioState.new(RPMConfig()).to_dict()
    del old["recent_intents"]
    old["recent_intent_times"] = [100.001, 100.004, 100.012, 100.5]
    assert PortfolioState.from_dict(old).recent_intents == ((10000, 2), (10001, 1), (10050, 1))

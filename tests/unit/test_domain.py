"""The engine is total over the domain RPM accepts (app/risk/domain.py): every intent gets a decision, every
mark, fill and close an outcome or a refusal the API answers as 4xx, and every value any of them computes
fits the stored precision, NUMERIC(28, 10). Generated over the whole domain, its boundaries included."""

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.risk import FillError, OutOfRange, PortfolioState, RPMConfig, TradeIntent, domain, engine
from app.risk.config import REGIMES, canonical_json
from app.risk.model import Booking

from .conftest import T0

STORED = Decimal("1e18")  # NUMERIC(28, 10): fewer than 18 digits before the point


def within(bounds: domain.Bounds, **kwargs):
    """Numbers of ``bounds``, the boundaries and the values next to them included; subnormal floats where the
    range holds them (those below the others' lower bounds are refused:
    test_values_outside_the_domain_are_refused_naming_the_field)."""
    edges = st.sampled_from([e for e in (bounds.low, bounds.high, bounds.low * (1 + 1e-15) or 5e-324,
                                         bounds.high * (1 - 1e-15)) if bounds.contains(e)])
    # the edges three times in four: products of several extremes are what overflow
    return st.one_of(edges, edges, edges, st.floats(bounds.low, bounds.high, **kwargs).filter(bounds.contains))


FX = ["EURUSD", "USDJPY", "EURJPY", "GBPUSD", "USDCHF", "AUDNZD"]
OTHER = ["ES", "BTC-USD", "AAPL"]

configs = st.builds(
    lambda base, risk, atr_mult, units, symbol_pct, gross_pct, collar, multiplier, capital, minimum: RPMConfig.from_dict({
        **base, "total_capital": capital, "risk_per_trade": risk, "atr_multiplier": atr_mult,
        "max_units_per_symbol": units, "max_symbol_exposure_pct": symbol_pct, "max_currency_exposure_pct": symbol_pct,
        "max_gross_exposure_pct": gross_pct, "max_net_exposure_pct": gross_pct, "price_collar_pct": collar,
        "min_position_units": minimum,
        "instruments": {"ES": {"asset_class": "future", "currency": "USD", "multiplier": multiplier},
                        "BTC-USD": {"asset_class": "crypto", "currency": "USD", "multiplier": 1.0},
                        "AAPL": {"asset_class": "equity", "currency": "JPY", "multiplier": 1e-6}}}),
    base=st.sampled_from([{}, {"confidence_scaling": False}, {"regime_adjustments": {"STRESSED": 10.0}}]),
    risk=st.sampled_from([0.1, 0.01, 0.001]),
    atr_mult=st.sampled_from([0.01, 1.5, 100.0]),
    units=st.sampled_from([1.0, 200_000.0, domain.UNITS.high]),
    symbol_pct=st.sampled_from([0.3, 1.0, 100.0]),
    gross_pct=st.sampled_from([2.0, 100.0]),
    collar=st.sampled_from([0.05, 1.0]),
    multiplier=within(domain.MULTIPLIER),
    capital=within(domain.CAPITAL),
    minimum=st.sampled_from([0.0, 1000.0]),
)

steps = st.lists(st.one_of(
    st.tuples(st.just("intent"), st.sampled_from(FX + OTHER), st.sampled_from([1, -1]), within(domain.UNIT_INTERVAL),
              st.sampled_from(REGIMES), within(domain.ATR), within(domain.UNIT_INTERVAL), within(domain.PRICE)),
    st.tuples(st.just("mark"), st.dictionaries(st.sampled_from(FX + OTHER), within(domain.PRICE), min_size=1,
                                               max_size=4)),
    st.tuples(st.just("fill"), within(domain.UNIT_INTERVAL), within(domain.PRICE)),
    st.tuples(st.just("close"), st.sampled_from(FX + OTHER), within(domain.PRICE)),
    st.tuples(st.just("resume")),  # re-bases the peak to the equity of the moment, however small
), min_size=1, max_size=12)


def fits(value) -> bool:
    """What NUMERIC(28, 10) stores: a finite number below 10^18 once rounded to ten decimals."""
    if value is None:
        return True
    number = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    return number.is_finite() and abs(number.quantize(Decimal("1e-10"))) < STORED


def assert_books_fit(state: PortfolioState, config: RPMConfig) -> None:
    eq = engine.accounting.equity(state, config)
    assert domain.within_books(eq, state.realised_pnl)
    for value in (state.starting_capital, state.realised_pnl, state.peak_equity, state.day_start_equity,
                  state.day_peak_equity, state.week_start_equity, eq):
        assert fits(value), value
    for position in state.positions.values():
        assert fits(position.units) and fits(position.avg_price)
        assert abs(position.units) <= Decimal(repr(domain.UNITS.high))
    drawdown = engine.kill_switches.drawdown(state, eq)
    assert fits(drawdown)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(config=configs, history=steps)
def test_every_step_in_the_domain_is_decided_or_refused_and_fits_the_books(config, history):
    state = PortfolioState.new(config)
    bookings: list[tuple[Booking, object]] = []
    for i, step in enumerate(history):
        now = T0 + timedelta(seconds=i)
        kind = step[0]
        if kind == "intent":
            _, symbol, direction, confidence, regime, atr, vol, price = step
            intent = TradeIntent.create(config, symbol=symbol, direction=direction, confidence_score=confidence,
                                        regime=regime, atr=atr, vol_percentile=vol, current_price=price)
            out = engine.decide(state, intent, config, now, f"d{i}")
            d = out.decision
            assert d.status.value in ("APPROVED", "REJECTED")
            assert fits(d.units) and fits(d.risk_capital)
            canonical_json(d.breakdown)  # finite numbers only: no NaN or infinity in the audit record
            canonical_json(dict(d.context))
            if out.booking is not None:
                bookings.append((out.booking, now))
                assert fits(out.realised_pnl)
        elif kind == "mark":
            try:
                out = engine.mark(state, step[1], config, now)
            except OutOfRange:
                continue  # the API's 422: nothing stored
        elif kind == "fill":
            if not bookings:
                continue
            booking, booked_at = bookings.pop()
            units = booking.units * Decimal(repr(step[1]))
            try:
                out = engine.fill(state, booking, booked_at, units, step[2], config, now)
            except (OutOfRange, FillError):
                continue  # 422, 409
            assert fits(out.realised_pnl)
        elif kind == "resume":
            out = engine.resume(state, config, now, force=True, reason="property")
        else:
            if step[1] not in state.positions:
                continue  # 404
            try:
                out = engine.close(state, step[1], step[2], config, now)
            except (OutOfRange, engine.PriceRefused):  # (a 422: refused, nothing changed)
                continue
            assert fits(out.realised_pnl)
        for event in out.events:
            assert fits(event.value) and fits(event.threshold)
        state = out.state
        assert_books_fit(state, config)


@pytest.mark.parametrize("field, value", [("atr", 1e-11), ("atr", 5e-324), ("atr", 2e9), ("current_price", 5e-324),
                                          ("current_price", 9.9e-7), ("current_price", 1.1e9),
                                          ("confidence_score", -1e-300), ("vol_percentile", 1.0000000000000002),
                                          ("atr", float("nan")), ("current_price", float("inf")), ("atr", True)])
def test_values_outside_the_domain_are_refused_naming_the_field(field, value):
    from app.risk import IntentError

    fields = dict(symbol="EURUSD", direction=1, confidence_score=0.75, regime="TRENDING", atr=0.001,
                  vol_percentile=0.5, current_price=1.1)
    with pytest.raises(IntentError) as refused:
        TradeIntent.create(RPMConfig(), **{**fields, field: value})
    assert set(refused.value.errors) == {field}


@given(st.text(alphabet=st.characters(), min_size=0, max_size=70))
def test_identifiers_are_matched_whole(text):
    for identifier in (domain.SYMBOL, domain.PORTFOLIO_ID, domain.INTENT_ID, domain.KEY_NAME):
        assert not identifier.matches(text + "\n")
        if identifier.matches(text):
            assert text.isascii() and text.isprintable() and " " not in text


@pytest.mark.parametrize("identifier, value", [(domain.SYMBOL, "EURUSD\n"), (domain.PORTFOLIO_ID, "pf\n"),
                                               (domain.INTENT_ID, "id\n"), (domain.KEY_NAME, "ops\n"),
                                               (domain.CURRENCY, "USD\n"), (domain.CLOCK_TIME, "17:00\n")])
def test_a_final_newline_is_not_part_of_any_identifier(identifier, value):
    assert identifier.matches(value.rstrip("\n")) and not identifier.matches(value)


def test_a_configuration_outside_the_domain_is_refused():
    from app.risk import ConfigError

    for changes in ({"total_capital": 1e13}, {"total_capital": 0.5}, {"max_units_per_symbol": 1e13},
                    {"atr_multiplier": 0.001}, {"instruments": {"ES": {"multiplier": 1e7}}},
                    {"volatility_baselines": {"EURUSD": 1e-12}}, {"trading_day_rollover": "17:00\n"},
                    {"restricted_symbols": ["EURUSD\n"]}):
        with pytest.raises(ConfigError):
            RPMConfig.from_dict(changes)


def test_a_drawdown_after_a_resume_at_a_tiny_equity_still_fits():
    """A resume re-bases the peak to the equity of the moment: here about 1e-5 USD. A loss of 2e14 after it
    (within the books' range) is a drawdown measured against a peak of at least 1, not a ratio of 2e19."""
    config = RPMConfig.from_dict({"total_capital": 1.0, "min_position_units": 0.0})
    short = TradeIntent.create(config, symbol="EURUSD", direction=-1, confidence_score=0.75, regime="TRENDING",
                               atr=1e-10, vol_percentile=0.5, current_price=1e-6)
    out = engine.decide(PortfolioState.new(config), short, config, T0, "d1")
    units = out.decision.units
    assert out.decision.status.value == "APPROVED" and units > 0
    near_zero = 1e-6 + (1 - 1e-5) / float(units)  # the mark that leaves about 1e-5 of equity
    state = engine.mark(out.state, {"EURUSD": near_zero}, config, T0).state
    state = engine.resume(state, config, T0, force=True, reason="test").state
    assert 0 < state.peak_equity < 1
    after = engine.mark(state, {"EURUSD": 1e9}, config, T0)
    assert_books_fit(after.state, config)
    assert all(fits(e.value) for e in after.events)

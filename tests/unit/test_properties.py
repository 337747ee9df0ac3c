"""Invariants of the engine, over generated portfolios and intents (hypothesis)."""

from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.risk import PortfolioState, RPMConfig, TradeIntent, decide, engine
from app.risk.accounting import equity, exposures

from .conftest import T0

CONFIG = RPMConfig()
MARKS = {"EURUSD": 1.1, "GBPUSD": 1.25, "USDJPY": 150.0, "AUDUSD": 0.65, "EURGBP": 0.88, "USDCHF": 0.9,
         "NZDUSD": 0.6, "EURJPY": 165.0, "GBPJPY": 187.5, "USDCAD": 1.35}
SYMBOLS = sorted(MARKS)
TOL = Decimal("0.01")

intents = st.fixed_dictionaries({
    "symbol": st.sampled_from(SYMBOLS),
    "direction": st.sampled_from([1, -1]),
    "confidence_score": st.floats(0.0, 1.0),
    "regime": st.sampled_from(["TRENDING", "RANGING", "VOLATILE", "STRESSED"]),
    "atr_ticks": st.integers(1, 400),
    "vol_percentile": st.floats(0.0, 1.0),
})


def build(raw, config=CONFIG):
    atr = Decimal(MARKS[raw["symbol"]]) * Decimal(raw["atr_ticks"]) / Decimal(100_000)
    fields = {k: v for k, v in raw.items() if k != "atr_ticks"}
    return TradeIntent.create(config, atr=atr, current_price=MARKS[raw["symbol"]], **fields)


def run(history, config=CONFIG):
    """A portfolio built by deciding a sequence of intents, with marks for every pair."""
    state = engine.mark(PortfolioState.new(config), MARKS, config, T0).state
    outcomes = []
    for i, raw in enumerate(history):
        out = decide(state, build(raw, config), config, T0 + timedelta(seconds=i), f"d{i}")
        outcomes.append((state, out))
        state = out.state
    return state, outcomes


def assert_within_limits(state, decision, config=CONFIG):
    eq = equity(state, config)
    exp = exposures(state, config)
    symbol = decision.intent.symbol
    assert len(state.positions) <= config.max_concurrent_positions
    assert abs(state.positions[symbol].units) <= Decimal(config.max_units_per_symbol)
    assert abs(exp.by_symbol[symbol]) <= eq * Decimal(repr(config.max_symbol_exposure_pct)) + TOL
    for currency in (symbol[:3], symbol[3:]):
        if currency != config.account_currency:
            assert abs(exp.by_currency[currency]) <= eq * Decimal(repr(config.max_currency_exposure_pct)) + TOL
    assert exp.gross <= eq * Decimal(repr(config.max_gross_exposure_pct)) + TOL
    assert abs(exp.net) <= eq * Decimal(repr(config.max_net_exposure_pct)) + TOL


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(intents, min_size=1, max_size=25))
def test_an_approved_size_once_booked_never_breaches_a_limit(history):
    _state, outcomes = run(history)
    for _before, out in outcomes:
        d = out.decision
        if d.approved and not d.reducing:
            assert d.units >= Decimal(CONFIG.min_position_units)
            assert_within_limits(out.state, d)


@settings(max_examples=150, deadline=None)
@given(st.lists(intents, max_size=10), intents, st.integers(1, 400), st.integers(1, 400))
def test_size_never_increases_when_atr_increases(history, raw, atr_a, atr_b):
    state, _ = run(history)
    lo, hi = sorted((atr_a, atr_b))
    now = T0 + timedelta(seconds=100)
    small = decide(state, build({**raw, "atr_ticks": lo}), CONFIG, now, "x").decision
    large = decide(state, build({**raw, "atr_ticks": hi}), CONFIG, now, "x").decision
    if not small.reducing:
        assert large.units <= small.units


@settings(max_examples=150, deadline=None)
@given(st.lists(intents, max_size=10), intents, st.floats(0, 1), st.floats(0, 1))
def test_size_never_increases_when_confidence_decreases(history, raw, c1, c2):
    state, _ = run(history)
    lo, hi = sorted((c1, c2))
    now = T0 + timedelta(seconds=100)
    low = decide(state, build({**raw, "confidence_score": lo}), CONFIG, now, "x").decision
    high = decide(state, build({**raw, "confidence_score": hi}), CONFIG, now, "x").decision
    assert low.units <= high.units


@settings(max_examples=150, deadline=None)
@given(st.lists(intents, max_size=10), intents)
def test_a_halted_portfolio_never_approves_a_risk_increasing_trade(history, raw):
    state, _ = run(history)
    halted = engine.halt(state, "test", CONFIG, T0 + timedelta(seconds=50)).state
    d = decide(halted, build(raw), CONFIG, T0 + timedelta(seconds=60), "x").decision
    assert d.reducing or not d.approved
    if not d.reducing:
        assert d.reason == "HALTED"


@settings(max_examples=150, deadline=None)
@given(st.lists(intents, min_size=1, max_size=10), intents, st.booleans())
def test_a_reducing_trade_is_always_approved(history, raw, halt):
    state, _ = run(history)
    if not state.positions:
        return
    symbol, pos = sorted(state.positions.items())[0]
    if halt:
        state = engine.halt(state, "test", CONFIG, T0 + timedelta(seconds=50)).state
    config = CONFIG.replace(restricted_symbols=[symbol], max_intents_per_second=1)
    raw = {**raw, "symbol": symbol, "direction": -pos.direction}
    d = decide(state, build(raw, config), config, T0 + timedelta(seconds=60), "x").decision
    assert d.approved and d.reducing and d.units == abs(pos.units)


@settings(max_examples=100, deadline=None)
@given(st.lists(intents, max_size=15), intents)
def test_identical_inputs_give_identical_decisions(history, raw):
    state, _ = run(history)
    now = T0 + timedelta(seconds=100)
    a = decide(state, build(raw), CONFIG, now, "same")
    b = decide(PortfolioState.from_dict(state.to_dict()), build(raw), CONFIG, now, "same")
    assert a.decision == b.decision
    assert a.state.to_dict() == b.state.to_dict()


# short windows, so that ATR baselines and correlations come into play within a few intents and marks
SHORT = CONFIG.replace(volatility_baseline_min_samples=2, correlation_min_samples=2, max_intents_per_second=3)


@settings(max_examples=150, deadline=None)
@given(st.lists(intents, max_size=20), intents, st.integers(0, 3000),
       st.lists(st.floats(-0.004, 0.004), min_size=3, max_size=6))
def test_a_decision_on_its_recorded_inputs_equals_the_decision_on_the_whole_state(history, raw, later_ms, moves):
    state = PortfolioState.new(SHORT)
    for k, move in enumerate(moves):
        prices = {s: p * (1 + move * ((i % 3) - 1)) for i, (s, p) in enumerate(MARKS.items())}
        state = engine.mark(state, prices, SHORT, T0 - timedelta(seconds=10 - k)).state
    for i, h in enumerate(history):
        state = decide(state, build(h, SHORT), SHORT, T0 + timedelta(milliseconds=300 * i), f"d{i}").state
    now = T0 + timedelta(milliseconds=300 * len(history) + later_ms)
    intent = build(raw, SHORT)
    whole = decide(state, intent, SHORT, now, "x").decision
    recorded = PortfolioState.from_dict(engine.decision_inputs(state, intent, now).to_dict())
    assert decide(recorded, intent, SHORT, now, "x").decision == whole


@settings(max_examples=60, deadline=None)
@given(st.lists(intents, max_size=15))
def test_position_documents_from_the_memo_are_the_positions_as_they_are(history):
    """``Position.to_dict`` converts each position once: what it gives, the first time and after, is
    the position's own fields, whatever the callers did to the copies they were given."""
    state, _ = run(history)
    expected = {k: {"symbol": p.symbol, "units": str(p.units), "avg_price": str(p.avg_price),
                    "opened_at": p.opened_at.isoformat()} for k, p in sorted(state.positions.items())}
    for _ in range(2):
        documents = state.to_dict()["positions"]
        assert documents == expected
        for document in documents.values():
            document["units"] = "changed by a caller"


def test_the_position_memo_goes_by_identity_not_by_equality():
    from app.risk.model import Position

    a = Position("EURUSD", Decimal("1000.5"), Decimal("1.1"), T0)
    b = Position("EURUSD", Decimal("1000.50"), Decimal("1.10"), T0)  # equal, written otherwise
    assert a == b
    assert a.to_dict()["units"] == "1000.5"
    assert b.to_dict()["units"] == "1000.50" and b.to_dict()["avg_price"] == "1.10"

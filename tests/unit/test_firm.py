"""The levels above a portfolio (app/risk/firm.py): their limits hold on the aggregate, they never enlarge a size,
their switches trip on the aggregate, and a decision recorded with them decides the same again."""

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.risk import PortfolioState, decide, engine, firm
from app.risk.model import FIRM, Book, Level, LevelState, Limits

from .conftest import T0
from .test_properties import CONFIG, MARKS, build, intents

TOL = Decimal("0.01")
OTHERS = Book({"EURUSD": Decimal(40000), "USDJPY": Decimal(-25000)}, {"EUR": Decimal(40000), "JPY": Decimal(25000)},
              Decimal(65000), Decimal(15000), 2, Decimal(200000), Decimal(200000))

limits = st.builds(
    Limits,
    gross_exposure=st.one_of(st.none(), st.integers(50_000, 300_000).map(Decimal)),
    net_exposure=st.one_of(st.none(), st.integers(10_000, 200_000).map(Decimal)),
    currency_exposure=st.one_of(st.none(), st.integers(40_000, 150_000).map(Decimal)),
    symbol_exposure=st.one_of(st.none(), st.integers(40_000, 100_000).map(Decimal)),
    positions=st.one_of(st.none(), st.integers(2, 8)),
)


def with_level(state, level_limits, others=OTHERS, held=True, switches=None):
    level = Level("fx", "USD", level_limits, LevelState(dict(switches or {}), peak_equity=Decimal(300000)), others, held)
    s = state.clone()
    s.levels = (level,)
    return s


def marked(config=CONFIG):
    return engine.mark(PortfolioState.new(config), MARKS, config, T0).state


def within(level, state):
    book = level.others.plus(firm.book_of(state, CONFIG, level.currency))
    lim = level.limits
    if lim.gross_exposure is not None:
        assert book.gross <= lim.gross_exposure + TOL
    if lim.net_exposure is not None:
        assert abs(book.net) <= lim.net_exposure + TOL
    if lim.symbol_exposure is not None:
        assert all(abs(v) <= max(lim.symbol_exposure, abs(OTHERS.by_symbol.get(k, 0))) + TOL
                   for k, v in book.by_symbol.items())
    if lim.currency_exposure is not None:
        assert all(abs(v) <= max(lim.currency_exposure, abs(OTHERS.by_currency.get(k, 0))) + TOL
                   for k, v in book.by_currency.items())
    if lim.positions is not None:
        assert book.positions <= max(lim.positions, OTHERS.positions)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(intents, min_size=1, max_size=15), limits)
def test_an_approval_never_takes_a_level_past_a_limit_it_was_within(history, level_limits):
    state = with_level(marked(), level_limits)
    for i, raw in enumerate(history):
        before = state
        out = decide(state, build(raw), CONFIG, T0 + timedelta(seconds=i), f"d{i}")
        state = out.state
        if out.decision.status.value == "APPROVED" and not out.decision.reducing:
            within(before.levels[0], state)


@settings(max_examples=120, deadline=None)
@given(st.lists(intents, max_size=8), intents, limits)
def test_a_level_never_enlarges_a_size_and_one_without_limits_changes_nothing(history, raw, level_limits):
    from .test_properties import run

    state, _ = run(history)
    now = T0 + timedelta(seconds=len(history))
    alone = decide(state, build(raw), CONFIG, now, "x").decision
    limited = decide(with_level(state, level_limits), build(raw), CONFIG, now, "x").decision
    assert limited.units <= alone.units
    free = decide(with_level(state, Limits()), build(raw), CONFIG, now, "x").decision
    assert (free.status, free.units, free.reason, free.breakdown) == (alone.status, alone.units, alone.reason,
                                                                      alone.breakdown)


@settings(max_examples=80, deadline=None)
@given(st.lists(intents, max_size=8), intents, limits)
def test_a_decision_on_its_recorded_state_with_levels_is_the_same(history, raw, level_limits):
    """What a decision record keeps of its levels (PortfolioState.to_dict) decides the same again: replay."""
    from .test_properties import run

    state, _ = run(history)
    state = with_level(state, level_limits)
    now = T0 + timedelta(seconds=len(history))
    again = PortfolioState.from_dict(state.to_dict())
    a = decide(state, build(raw), CONFIG, now, "x").decision
    b = decide(again, build(raw), CONFIG, now, "x").decision
    assert a.to_dict() == b.to_dict()


def test_a_halted_level_rejects_new_risk_and_lets_a_reduction_through():
    state = decide(marked(), build({"symbol": "EURUSD", "direction": 1, "confidence_score": 0.75, "regime": "TRENDING",
                                    "atr_ticks": 100, "vol_percentile": 0.5}), CONFIG, T0, "open").state
    halt = firm.halt(Level(FIRM, "USD", Limits(), LevelState(), Book()), "exchange outage", T0)
    assert [(e.switch, e.action, e.detail["level"]) for e in halt] == [("manual_halt", "TRIPPED", FIRM)]
    level = Level(FIRM, "USD", Limits(), LevelState({"manual_halt": replace_state(halt)}), Book(), held=False)
    halted = state.clone()
    halted.levels = (level,)
    raw = {"symbol": "GBPUSD", "direction": 1, "confidence_score": 0.75, "regime": "TRENDING", "atr_ticks": 100,
           "vol_percentile": 0.5}
    d = decide(halted, build(raw), CONFIG, T0 + timedelta(seconds=1), "new").decision
    assert d.reason == "HALTED" and d.context["level"] == FIRM and "the firm" in d.message
    close = decide(halted, build({**raw, "symbol": "EURUSD", "direction": -1}), CONFIG, T0 + timedelta(seconds=2), "c")
    assert close.decision.status.value == "APPROVED" and close.decision.reducing
    assert close.decision.breakdown["kill_switches"]["result"] == "REDUCE_ONLY"


def replace_state(events):
    from app.risk.model import SwitchState

    e = events[0]
    return SwitchState(e.switch, e.at, None, None, None, e.reason, automatic=False)


def test_a_level_drawdown_trips_on_the_aggregate_and_clears_after_its_cooldown_once_under():
    lim = Limits(drawdown=0.01)
    level = Level("fx", "USD", lim, LevelState(peak_equity=Decimal(200000)), replace(OTHERS, equity=Decimal(100000)))
    # the portfolio alone is at its peak; the two together are 1.5% down: the level trips
    own = Book(equity=Decimal(97000))
    events = firm.settle(level, own, T0)
    assert [(e.switch, e.action, e.detail["level"]) for e in events] == [("drawdown", "TRIPPED", "fx")]
    assert events[0].value == 0.015 and level.state.switches["drawdown"].cooldown_until == T0 + timedelta(hours=1)
    # back under the limit: still tripped during the cooldown, cleared after it
    assert firm.settle(level, Book(equity=Decimal(99500)), T0 + timedelta(minutes=30)) == []
    cleared = firm.settle(level, Book(equity=Decimal(99500)), T0 + timedelta(hours=1, seconds=1))
    assert [(e.switch, e.action) for e in cleared] == [("drawdown", "CLEARED")] and not level.state.switches


def test_a_level_daily_loss_trips_on_the_day_and_clears_the_next():
    level = Level("fx", "USD", Limits(daily_loss=Decimal(2500)), LevelState(), replace(OTHERS, equity=Decimal(100000)))
    assert firm.settle(level, Book(equity=Decimal(100000)), T0) == []  # the day starts at 200,000
    events = firm.settle(level, Book(equity=Decimal(97400)), T0 + timedelta(hours=1))
    assert [(e.switch, e.action) for e in events] == [("daily_loss", "TRIPPED")] and events[0].value == -2600
    assert firm.halted((level,)) is level
    next_day = firm.settle(level, Book(equity=Decimal(97400)), T0 + timedelta(days=1))
    assert ("daily_loss", "CLEARED") in [(e.switch, e.action) for e in next_day] and not level.state.switches


def test_limits_are_validated_by_name_and_range():
    import pytest

    from app.risk.model import LimitsError

    assert Limits.from_dict({"gross_exposure": 1000, "positions": 3, "drawdown": 0.05}).to_dict() == {
        "gross_exposure": 1000.0, "positions": 3, "drawdown": 0.05}
    for bad in ({"gross_exposure": 0}, {"drawdown": 1.5}, {"positions": -1}, {"nope": 1}, {"daily_loss": True},
                {"net_exposure": float("nan")}):
        with pytest.raises(LimitsError):
            Limits.from_dict(bad)


def test_the_history_cache_never_fails_a_lookup_it_just_fetched(monkeypatch):
    """Every portfolio reads every firm mark's history: more of them than the cache holds must still be read."""
    from app.store import repository

    monkeypatch.setattr(repository, "_HISTORIES", type(repository._HISTORIES)())
    monkeypatch.setattr(repository, "_HISTORIES_MAX", 2)
    got = repository.cached_histories({"a", "b", "c"}, lambda missing: [(d, [1.0]) for d in missing])
    assert got == {"a": (1.0,), "b": (1.0,), "c": (1.0,)}

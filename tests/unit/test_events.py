"""Risk events derived from the records a transaction chains (app/store/events.py): pure, without a database."""

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from app.risk.kill_switches import MANUAL
from app.store import models as m
from app.store.events import RELEASED, derive, is_cause

AT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def switch(name, action, symbol=None, portfolio="p", level=None, reason="r"):
    detail = {"level": level} if level else {}
    return (m.SwitchEventRow, dict(portfolio_id=portfolio, switch=name, action=action, symbol=symbol, at=AT, value=None,
                                   threshold=None, cooldown_until=None, reason=reason, detail=detail,
                                   decision_id=None))


def admin(action, portfolio="p", reason="why", after=None):
    return (m.AdminAction, dict(portfolio_id=portfolio, action=action, actor="ops", actor_role="admin",
                                actor_key_id="k1", at=AT, reason=reason, before=None, after=after))


def types(events):
    return [e["type"] for e in events]


def test_the_first_automatic_trip_halts_and_the_last_clear_resumes():
    causes = [switch("drawdown", "TRIPPED"), switch("daily_loss", "TRIPPED"), switch("daily_loss", "CLEARED"),
              switch("drawdown", "CLEARED")]
    events = derive(causes, lambda level: set())
    assert types(events) == ["switch_tripped", "halted", "switch_tripped", "switch_cleared", "switch_cleared",
                             "resumed"]
    assert events[1]["data"] == {"by": "switch", "switch": "drawdown", "reason": "r", "actor": None,
                                 "decision_id": None}


def test_a_trip_on_a_halted_portfolio_does_not_halt_it_again_and_a_symbol_halt_never_does():
    events = derive([switch("daily_loss", "TRIPPED"), switch("volatility_shock", "TRIPPED", symbol="EURUSD")],
                    lambda level: {"drawdown"})
    assert types(events) == ["switch_tripped", "switch_tripped"]


def test_an_admins_halt_and_resume_are_theirs_with_who_and_why():
    events = derive([switch(MANUAL, "TRIPPED"), admin("halt", reason="desk review")], lambda level: set())
    assert types(events) == ["switch_tripped", "halted"]
    assert events[1]["data"]["actor"] == {"name": "ops", "role": "admin", "key_id": "k1"}
    resume = [switch(MANUAL, "CLEARED"), switch("drawdown", "CLEARED"), switch("references", "REBASED"),
              admin("resume", reason="reviewed", after={"forced": True})]
    events = derive([c for c in resume if is_cause(*c)], lambda level: {MANUAL, "drawdown"})
    assert types(events) == ["switch_cleared", "switch_cleared", "resumed"]  # the resume's, not a second by itself
    assert events[-1]["data"]["forced"] is True and events[-1]["data"]["by"] == "admin"


def test_a_levels_events_are_the_system_chains_with_its_id():
    events = derive([switch("drawdown", "TRIPPED", portfolio=None, level="fx"),
                     admin("group_limits", portfolio=None, after={"group": "fx", "limits": {}})],
                    lambda level: set())
    assert [(e["type"], e["chain"], e["level"]) for e in events] == [
        ("switch_tripped", "_system", "fx"), ("halted", "_system", "fx"), ("config_changed", "_system", "fx")]


def test_what_is_not_a_cause_makes_no_event():
    fill = (m.Fill, dict(portfolio_id="p", decision_id="d", filled_units=0, fill_price=1, realised_delta=0, at=AT))
    assert not is_cause(*fill) and not is_cause(*admin("portfolio_create")) and not is_cause(*admin("key_create"))
    assert not is_cause(*switch("references", "REBASED"))
    released = (m.Fill, {**fill[1], RELEASED: {"symbol": "EURUSD", "units": 5, "direction": 1, "voided": False,
                                               "note": None}})
    assert types(derive([released], lambda level: set())) == ["approval_expired"]


@given(st.lists(st.tuples(st.sampled_from(["drawdown", "daily_loss", "weekly_loss", "confidence"]),
                          st.sampled_from(["TRIPPED", "CLEARED"])), max_size=30),
       st.sets(st.sampled_from(["drawdown", "daily_loss"])))
def test_halted_and_resumed_follow_the_tripped_set_exactly(steps, before):
    """Over any sequence of automatic trips and clears: `halted` exactly when the portfolio's tripped switches go
    from none to some, `resumed` exactly when they go back to none, alternating."""
    tripped = set(before)
    expected = []
    for name, action in steps:
        was = bool(tripped)
        if action == "TRIPPED":
            tripped.add(name)
        elif name in tripped:
            tripped.discard(name)
        else:
            continue
        if not was and tripped:
            expected.append("halted")
        elif was and not tripped:
            expected.append("resumed")
    events = derive([switch(n, a) for n, a in steps], lambda level: set(before))
    assert [t for t in types(events) if t in ("halted", "resumed")] == expected
    assert len([t for t in types(events) if t.startswith("switch_")]) == len(steps)

"""Every kill switch through the API: trips from real flows, persists, blocks new risk, lets closes
through, survives a restart of the service, and clears by its rules. Time is injected."""

from datetime import UTC, datetime

import pytest

from app import create_app

from ..conftest import SEED_INTENT


def intent(client, **changes):
    r = client.post("/process_trade", json={**SEED_INTENT, **changes})
    assert r.status_code == 200, r.json
    return r.json["decision"]


def restarted(app, clock, keys):
    """A new service on the same database: what a restarted process would see."""
    from .conftest import AutoRoleClient

    again = create_app(app.config["RPM_SETTINGS"], clock=clock)
    again.test_client_class = AutoRoleClient
    client = again.test_client()
    client.rpm_keys = keys
    return again, client


def switch(client, name):
    return client.get("/health").json["kill_switches"][name]


def events(sql, name):
    return sql("SELECT action, value, threshold, cooldown_until IS NOT NULL FROM switch_events "
               "WHERE switch = :name ORDER BY id", name=name)


def test_drawdown_trips_on_marks_persists_and_clears_after_cooldown_once_recovered(app, client, clock, keys, sql):
    intent(client)
    r = client.post("/marks", json={"prices": {"EURUSD": 0.699}})  # -11.0%
    assert "drawdown" in r.json["tripped"]
    assert events(sql, "drawdown")[0][0] == "TRIPPED"
    assert float(events(sql, "drawdown")[0][1]) == pytest.approx(0.11, abs=0.001)
    assert float(events(sql, "drawdown")[0][2]) == 0.1 and events(sql, "drawdown")[0][3] is True
    other, client2 = restarted(app, clock, keys)
    assert intent(client2, symbol="GBPUSD", current_price=1.25)["reason"] == "HALTED"
    assert switch(client2, "drawdown")["state"] == "TRIPPED"
    clock.advance(seconds=3601)
    assert switch(client2, "drawdown")["state"] == "TRIPPED"  # cooldown over but still 11% down
    client2.post("/marks", json={"prices": {"EURUSD": 1.09}})
    assert switch(client2, "drawdown")["state"] == "OK"
    assert [e[0] for e in events(sql, "drawdown")] == ["TRIPPED", "CLEARED"]
    other.extensions["rpm"].db.dispose()


def test_daily_loss_trips_on_a_losing_close_and_clears_the_next_trading_day(app, client, clock, keys, sql):
    intent(client)
    r = client.post("/positions/EURUSD/close", json={"price": 1.1 - 2500 / 27272.72})
    assert r.json["realised_pnl"] == pytest.approx(-2500, abs=0.01)
    assert [e["switch"] for e in r.json["events"] if e["action"] == "TRIPPED"] == ["daily_loss"]
    other, client2 = restarted(app, clock, keys)
    d = intent(client2, symbol="GBPUSD", current_price=1.25)
    assert d["reason"] == "HALTED" and d["rejected_trade"]["context"]["tripped_switches"] == ["daily_loss"]
    assert client2.get("/portfolio").json["daily_pnl"] == pytest.approx(-2500, abs=0.01)
    clock.now = datetime(2026, 3, 3, 0, 0, 1, tzinfo=UTC)
    assert intent(client2, symbol="GBPUSD", current_price=1.25)["status"] == "APPROVED"
    assert [e[0] for e in events(sql, "daily_loss")] == ["TRIPPED", "CLEARED"]
    assert client2.get("/portfolio").json["daily_pnl"] == pytest.approx(0, abs=0.01)
    other.extensions["rpm"].db.dispose()


def test_daily_drawdown_trips_three_percent_below_the_days_peak(client):
    intent(client)
    client.post("/marks", json={"prices": {"EURUSD": 1.2}})  # day's peak 102,727.27
    r = client.post("/marks", json={"prices": {"EURUSD": 1.086}})
    assert r.json["tripped"] == ["daily_drawdown"]
    assert switch(client, "daily_drawdown")["current_pct"] == pytest.approx(3.03, abs=0.01)


def test_weekly_loss_accumulates_across_days_and_clears_next_week(client, clock, sql):
    client.put("/config", json={"config": {"max_daily_drawdown": 0.5, "max_symbol_exposure_pct": 1.0}})
    for day in range(3):
        clock.now = datetime(2026, 3, 2 + day, 12, 0, tzinfo=UTC)
        d = intent(client, atr=0.01, regime="RANGING", confidence_score=0.6)
        units = d["approved_trade"]["position_units"]
        client.post("/positions/EURUSD/close", json={"price": 1.1 - 1900 / units})
    assert switch(client, "weekly_loss")["state"] == "TRIPPED"
    assert switch(client, "daily_loss")["state"] == "OK"
    clock.now = datetime(2026, 3, 9, 0, 0, 1, tzinfo=UTC)
    assert intent(client)["status"] == "APPROVED"
    assert [e[0] for e in events(sql, "weekly_loss")] == ["TRIPPED", "CLEARED"]


def test_confidence_collapse_trips_on_intents_and_clears_after_the_cooldown(app, client, clock, keys, sql):
    for _ in range(20):
        d = intent(client, confidence_score=0.45)
        clock.advance(seconds=1)
    assert d["reason"] == "HALTED" and d["rejected_trade"]["context"]["tripped_switches"] == ["confidence_collapse"]
    other, client2 = restarted(app, clock, keys)
    assert intent(client2, confidence_score=0.9)["reason"] == "HALTED"
    clock.advance(seconds=3600)
    assert intent(client2, confidence_score=0.9)["status"] == "APPROVED"
    assert [e[0] for e in events(sql, "confidence_collapse")] == ["TRIPPED", "CLEARED"]
    other.extensions["rpm"].db.dispose()


def test_volatility_shock_halts_the_symbol_for_the_cooldown(app, client, clock, keys, sql):
    config = client.get("/config").json["config"]
    client.put("/config", json={"config": {**config, "volatility_baselines": {"EURUSD": 0.001}}})
    assert intent(client, atr=0.0035)["reason"] == "VOLATILITY_SHOCK"
    other, client2 = restarted(app, clock, keys)
    assert intent(client2)["reason"] == "SYMBOL_HALTED"
    assert intent(client2, symbol="GBPUSD", current_price=1.25)["status"] == "APPROVED"
    assert client2.get("/health").json["health"] == "DEGRADED"
    clock.advance(seconds=3600)
    assert intent(client2)["status"] == "APPROVED"
    assert sql("SELECT action, symbol FROM switch_events WHERE switch = 'volatility_shock' ORDER BY id") == [
        ("TRIPPED", "EURUSD"), ("CLEARED", "EURUSD")]
    other.extensions["rpm"].db.dispose()


def test_manual_halt_survives_a_restart_and_needs_a_manual_resume(app, client, clock, keys):
    client.post("/halt", json={"reason": "news"})
    other, client2 = restarted(app, clock, keys)
    clock.advance(days=2)
    assert intent(client2)["reason"] == "HALTED"
    assert client2.post("/resume", json={}).status_code == 200
    assert intent(client2)["status"] == "APPROVED"
    other.extensions["rpm"].db.dispose()


def test_a_reducing_trade_is_approved_while_halted_and_a_risk_increasing_one_is_not(client):
    intent(client)
    client.post("/halt", json={"reason": "test"})
    assert intent(client)["reason"] == "HALTED"
    assert intent(client, symbol="GBPUSD", current_price=1.25)["reason"] == "HALTED"
    close = intent(client, direction=-1, current_price=1.1005)
    assert close["status"] == "APPROVED" and close["approved_trade"]["reducing"] is True
    assert close["approved_trade"]["position_units"] == 27272.72
    assert client.get("/portfolio").json["open_positions"] == 0


def test_fill_of_a_reducing_trade_corrects_realised_pnl(client, sql):
    opened = intent(client)
    client.post("/fills", json={"decision_id": opened["id"], "filled_units": 27272.72, "fill_price": 1.1})
    close = intent(client, direction=-1, current_price=1.1010)
    r = client.post("/fills", json={"decision_id": close["id"], "filled_units": 20000, "fill_price": 1.1008})
    assert r.status_code == 200
    p = client.get("/portfolio").json
    assert p["realised_pnl"] == pytest.approx(20000 * 0.0008, abs=1e-9)
    assert p["positions"][0]["units"] == pytest.approx(7272.72)
    kinds = [k for (k,) in sql("SELECT kind FROM ledger_entries ORDER BY seq")]
    assert kinds == ["open", "fill", "reduce", "fill"]

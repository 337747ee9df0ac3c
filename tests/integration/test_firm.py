"""The firm above portfolios (SPEC §12), over HTTP on PostgreSQL: groups and their limits, halts at every level,
firm marks, the aggregated views."""

import pytest

from ..conftest import SEED_INTENT


def make(client, pid, capital=100000):
    r = client.post("/portfolios", json={"portfolio_id": pid, "capital": capital})
    assert r.status_code == 201, r.json


def trade(client, pid, **extra):
    r = client.post("/process_trade", json={**SEED_INTENT, "portfolio_id": pid, **extra})
    assert r.status_code == 200, r.json
    return r.json["decision"]


@pytest.fixture
def desks(client):
    """Two desks of 100,000 in group fx, whose gross exposure may not pass 50,000 USD."""
    for pid in ("desk-a", "desk-b"):
        make(client, pid)
    r = client.post("/groups", json={"group_id": "fx", "limits": {"gross_exposure": 50000}, "reason": "two desks"})
    assert r.status_code == 201, r.json
    for pid in ("desk-a", "desk-b"):
        r = client.post("/groups/fx/members", json={"portfolio_id": pid, "reason": "fx desk"})
        assert r.status_code == 200, r.json
    return client


def test_a_group_limit_binds_across_two_desks(desks):
    client = desks
    a = trade(client, "desk-a")
    assert a["status"] == "APPROVED" and a["approved_trade"]["position_units"] == 27272.72  # its own 30% limit
    b = trade(client, "desk-b")
    # 50,000 - 29,999.99 of desk-a = 20,000.01 of room: 18,181.82 units at 1.1
    assert b["status"] == "APPROVED", b
    assert b["approved_trade"]["position_units"] == 18181.82, b
    steps = [s for s in b["breakdown"]["levels"] if s["result"] == "ADJUSTED"]
    assert steps and steps[0]["name"] == "gross_exposure" and steps[0]["level"] == "fx"
    c = trade(client, "desk-b", symbol="GBPUSD", current_price=1.25)
    assert c["status"] == "REJECTED" and c["reason"] == "GROSS_EXPOSURE", c
    assert c["rejected_trade"]["context"]["level"] == "fx" and c["message"].startswith("group fx:")
    view = client.get("/groups/fx").json
    assert view["open_positions"] == 2 and round(view["exposures"]["gross"], 2) == 49999.99
    assert view["limits_used"]["gross_exposure"]["used_pct"] == pytest.approx(100.0, abs=1e-4)
    assert {p["portfolio_id"] for p in view["portfolios"]} == {"desk-a", "desk-b"}
    firm = client.get("/firm").json
    assert [g["id"] for g in firm["groups"]] == ["fx"] and firm["open_positions"] == 2
    assert client.get("/audit/verify").json["ok"] is True


def test_a_firm_halt_rejects_new_risk_everywhere_and_lets_reductions_through(desks):
    client = desks
    assert trade(client, "desk-a")["status"] == "APPROVED"
    r = client.post("/groups/firm/halt", json={"reason": "exchange outage"})
    assert r.status_code == 200 and r.json["trading_state"] == "HALTED", r.json
    for pid in ("desk-a", "desk-b", "default"):
        d = trade(client, pid, symbol="GBPUSD", current_price=1.25)
        assert d["status"] == "REJECTED" and d["reason"] == "HALTED", d
        assert d["rejected_trade"]["context"]["level"] == "firm" and "the firm" in d["message"]
    reduce = trade(client, "desk-a", direction=-1)  # closes desk-a's EURUSD long: allowed, halted or not
    assert reduce["status"] == "APPROVED" and reduce["breakdown"]["kill_switches"]["result"] == "REDUCE_ONLY"
    assert client.get("/firm").json["trading_state"] == "HALTED"
    # a group is halted on its own: the firm's resume does not resume it
    assert client.post("/groups/fx/halt", json={"reason": "desk review"}).status_code == 200
    r = client.post("/groups/firm/resume", json={})
    assert r.status_code == 200 and r.json["trading_state"] == "ACTIVE", r.json
    assert trade(client, "default")["status"] == "APPROVED"
    d = trade(client, "desk-b")
    assert d["reason"] == "HALTED" and d["rejected_trade"]["context"]["level"] == "fx"
    assert client.post("/groups/fx/resume", json={}).status_code == 200
    assert trade(client, "desk-b")["status"] == "APPROVED"
    assert client.get("/audit/verify").json["ok"] is True


def test_a_group_drawdown_switch_trips_on_the_aggregate_only(desks):
    """The group's drawdown limit is 1%. desk-a alone loses 1.5% (its own limits: 10% drawdown, 2% daily loss):
    the group, 0.75% down, trades on. desk-b loses 1.5% too: the group, 1.5% down, halts; no desk's switch trips."""
    client = desks
    assert client.put("/groups/fx/limits", json={"limits": {"drawdown": 0.01}, "reason": "tighter"}).status_code == 200
    assert trade(client, "desk-a")["approved_trade"]["position_units"] == 27272.72  # EURUSD at 1.1
    assert trade(client, "desk-b", symbol="GBPUSD", current_price=1.25)["approved_trade"]["position_units"] == 24000
    r = client.post("/firm/marks", json={"prices": {"EURUSD": 1.045}})  # desk-a: -1,500
    assert r.status_code == 200 and r.json["events"] == [], r.json
    view = client.get("/groups/fx").json
    assert view["trading_state"] == "ACTIVE" and view["drawdown"] == pytest.approx(0.0075, abs=1e-6), view
    r = client.post("/firm/marks", json={"prices": {"GBPUSD": 1.1875}})  # desk-b: -1,500
    assert [(e["switch"], e["action"], e["detail"]["level"]) for e in r.json["events"]] == [
        ("drawdown", "TRIPPED", "fx")], r.json
    view = client.get("/groups/fx").json
    assert view["trading_state"] == "HALTED" and view["drawdown"] == pytest.approx(0.015, abs=1e-6), view
    for pid in ("desk-a", "desk-b"):
        p = client.get(f"/portfolio?portfolio_id={pid}").json
        assert round(p["equity"], 2) == 98500.0 and p["trading_state"] == "ACTIVE", p
    d = trade(client, "desk-b", symbol="USDJPY", current_price=150.0)
    assert d["reason"] == "HALTED" and d["rejected_trade"]["context"]["level"] == "fx", d
    assert trade(client, "default", symbol="USDJPY", current_price=150.0)["status"] == "APPROVED"
    r = client.post("/groups/fx/resume", json={})
    assert r.status_code == 409 and "cooldown" in r.json["message"], r.json
    assert client.post("/groups/fx/resume", json={"force": True, "reason": "reviewed"}).status_code == 200
    assert trade(client, "desk-b", symbol="USDJPY", current_price=150.0)["status"] == "APPROVED"
    verified = client.get("/audit/verify").json
    assert verified["ok"] is True, verified


def test_firm_marks_value_every_portfolio_and_a_newer_own_mark_wins(desks, clock):
    client = desks
    assert client.put("/groups/fx/limits", json={"limits": {}}).status_code == 200
    for pid in ("desk-a", "desk-b"):
        assert trade(client, pid)["status"] == "APPROVED"
    client.post("/firm/marks", json={"prices": {"EURUSD": 1.09}})
    equities = {pid: client.get(f"/portfolio?portfolio_id={pid}").json["equity"] for pid in ("desk-a", "desk-b")}
    assert {round(e, 2) for e in equities.values()} == {99727.27}
    clock.advance(seconds=1)
    client.post("/marks?portfolio_id=desk-b", json={"prices": {"EURUSD": 1.12}})  # newer: desk-b's own
    assert round(client.get("/portfolio?portfolio_id=desk-b").json["equity"], 2) == 100545.45
    assert round(client.get("/portfolio?portfolio_id=desk-a").json["equity"], 2) == 99727.27
    clock.advance(seconds=1)
    client.post("/firm/marks", json={"prices": {"EURUSD": 1.10}})  # newer again: the firm's
    assert round(client.get("/portfolio?portfolio_id=desk-b").json["equity"], 2) == 100000.0
    # a decision reads the firm mark for its collar, and records it: replay is exact
    far = trade(client, "desk-a", symbol="EURUSD", current_price=1.2)
    assert far["reason"] == "PRICE_COLLAR", far
    for pid in ("desk-a", "desk-b"):
        r = client.post("/replay", json={"portfolio_id": pid})
        assert r.status_code == 200 and r.json["differences"] == [], r.json
    assert client.get("/audit/verify").json["ok"] is True


def test_the_firm_is_for_keys_of_every_portfolio(desks, raw_client, keys):
    def call(method, path, key, body=None):
        return raw_client.open(path, method=method, json=body, headers={"Authorization": f"Bearer {keys[key]}"})

    assert call("GET", "/firm", "trader_elsewhere").status_code == 403
    assert call("POST", "/firm/marks", "trader_elsewhere", {"prices": {"EURUSD": 1.1}}).status_code == 403
    assert call("POST", "/groups/firm/halt", "trader", {"reason": "x"}).status_code == 403
    assert call("POST", "/groups/firm/halt", "compliance", {"reason": "x"}).status_code == 403
    assert call("GET", "/groups/nope", "admin").status_code == 404
    assert call("POST", "/groups/fx/members", "admin", {"portfolio_id": "nope"}).status_code == 404
    for limits, field in [({"gross_exposure": -1}, "gross_exposure"), ({"bogus": 1}, "bogus"),
                          ({"drawdown": 2}, "drawdown"), ({"positions": 1.5}, "positions")]:
        r = call("PUT", "/groups/fx/limits", "admin", {"limits": limits})
        assert r.status_code == 422 and field in str(r.json["errors"]), r.json
    assert call("POST", "/groups", "admin", {"group_id": "fx"}).status_code == 409
    assert call("POST", "/groups", "admin", {"group_id": "bad id!"}).status_code == 422


def test_the_end_of_day_report_worked_out_by_hand_and_the_same_after_more_trading(desks, clock, raw_client, keys):
    """Trading day 2026-03-02 (00:00 UTC to 00:00 UTC): desk-a 27,272.72 EURUSD at 1.1, desk-b 18,181.82 (the group's
    gross limit) and a GBPUSD refused by it; the firm marks EURUSD 1.105; desk-a sells 10,000 at 1.105 (+50.00);
    the group is halted."""
    client = desks
    assert trade(client, "desk-a")["approved_trade"]["position_units"] == 27272.72
    assert trade(client, "desk-b")["approved_trade"]["position_units"] == 18181.82
    assert trade(client, "desk-b", symbol="GBPUSD", current_price=1.25)["reason"] == "GROSS_EXPOSURE"
    clock.advance(hours=1)
    client.post("/firm/marks", json={"prices": {"EURUSD": 1.105}})
    r = client.post("/positions/EURUSD/close?portfolio_id=desk-a", json={"price": 1.105, "units": 10000})
    assert r.status_code == 200, r.json
    assert client.post("/groups/fx/halt", json={"reason": "review"}).status_code == 200

    def report(fmt="json"):
        r = raw_client.get(f"/reports/eod?date=2026-03-02&format={fmt}",
                           headers={"Authorization": f"Bearer {keys['compliance']}"})
        assert r.status_code == 200, r.get_data(as_text=True)[:500]
        return r

    out = report().json
    assert (out["start"], out["cutoff"]) == ("2026-03-02T00:00:00+00:00", "2026-03-03T00:00:00+00:00")
    # (`default` was made by the test database's template, at the machine's time: after this day, so not in it)
    assert [p["portfolio_id"] for p in out["portfolios"]] == ["desk-a", "desk-b"]
    a, b = out["portfolios"]
    # desk-a: 17,272.72 left at 1.1, marked 1.105: unrealised 86.36; realised 10,000 x 0.005 = 50.00
    assert a["positions"] == [{"symbol": "EURUSD", "units": 17272.72, "avg_price": 1.1, "mark": 1.105,
                               "notional": 19086.36}]
    assert (a["realised_pnl_day"], a["unrealised_pnl"], a["equity"]) == (50.0, 86.36, 100136.36)
    assert a["decisions"] == {"APPROVED": 1} and a["group"] == "fx"
    assert [x["action"] for x in a["admin_actions"]] == ["portfolio_create", "group"]
    # desk-b: 18,181.82 at 1.1, marked 1.105: unrealised 90.91
    assert (b["realised_pnl_day"], b["unrealised_pnl"], b["equity"]) == (0.0, 90.91, 100090.91)
    assert b["decisions"] == {"APPROVED": 1, "REJECTED GROSS_EXPOSURE": 1}
    fx = out["groups"][0]
    assert fx["id"] == "fx" and fx["portfolios"] == ["desk-a", "desk-b"] and fx["limits"] == {"gross_exposure": 50000}
    # 100,136.3636 + 100,090.9091; gross (17,272.72 + 18,181.82) x 1.105 = 39,177.2667
    assert (fx["equity"], fx["realised_pnl_day"], fx["unrealised_pnl"], fx["open_positions"]) == (
        200227.27, 50.0, 177.27, 2)
    assert fx["exposures"]["gross"] == 39177.27
    # the group's gross limit, as desk-b's decisions found it: 29,999.99 then 49,999.99 of 50,000
    assert fx["limits_peak_use"]["gross_exposure"]["peak_use_pct"] == pytest.approx(100.0, abs=1e-3)
    assert [(s["switch"], s["reason"]) for s in fx["switches_tripped"]] == [("manual_halt", "review")]
    assert [x["action"] for x in fx["admin_actions"]] == ["group_create", "halt"]
    firm = out["firm"]
    assert (firm["equity"], firm["open_positions"], firm["portfolios"]) == (200227.27, 2, ["desk-a", "desk-b"])
    assert firm["decisions"] == {"APPROVED": 2, "REJECTED GROSS_EXPOSURE": 1}
    csv_text, page = report("csv").get_data(as_text=True), report("html").get_data(as_text=True)
    assert csv_text.splitlines()[0].startswith("level,id,group,equity") and len(csv_text.splitlines()) == 5  # firm, fx, two desks
    assert "End-of-day report, trading day 2026-03-02" in page and "Portfolio desk-a (fx)" in page
    # the next day trades on; the report of 2026-03-02 does not change
    clock.advance(days=1)
    assert client.post("/groups/fx/resume", json={}).status_code == 200
    client.post("/firm/marks", json={"prices": {"EURUSD": 1.2}})
    client.post("/positions/EURUSD/close?portfolio_id=desk-b", json={"price": 1.2})
    again = report().json
    assert (out.pop("final"), again.pop("final")) == (False, True)  # made during the day, then after it
    assert again == out


def test_verify_reconciles_what_is_stored_above_portfolios_with_the_system_chain(desks, database_url):
    from sqlalchemy import create_engine, text

    client = desks
    client.post("/firm/marks", json={"prices": {"EURUSD": 1.1}})
    assert client.post("/groups/fx/halt", json={"reason": "drill"}).status_code == 200
    assert client.get("/audit/verify").json["ok"] is True
    for statement in ("UPDATE firm_marks SET price = 1.2 WHERE symbol = 'EURUSD'",
                      "UPDATE groups SET switches = '{}' WHERE id = 'fx'",
                      "UPDATE groups SET limits = '{\"gross_exposure\": 1e9}' WHERE id = 'fx'",
                      "UPDATE portfolios SET group_id = NULL WHERE id = 'desk-a'"):
        engine = create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(text(statement))
        engine.dispose()
    out = client.get("/audit/verify").json
    found = {(f["chain"], f["table"], f["detail"].split(":")[0].split(" ")[0]) for f in out["findings"]}
    assert out["ok"] is False and found >= {("_system", "firm_marks", "EURUSD"), ("_system", "groups", "limits"),
                                            ("_system", "groups", "switches"), ("desk-a", "portfolios", "group_id")}, \
        out["findings"]


def test_flows_in_and_out_of_a_group_are_not_its_performance(desks):
    """A withdrawal from a desk, or a desk moved out of the group, moves the group's equity: its references move
    with it, so neither trips its drawdown (5%) nor its daily loss (3,000)."""
    client = desks
    assert client.put("/groups/fx/limits", json={"limits": {"drawdown": 0.05, "daily_loss": 3000}}).status_code == 200
    assert client.post("/portfolios", json={"portfolio_id": "desk-c", "capital": 100000}).status_code == 201
    assert client.post("/groups/fx/members", json={"portfolio_id": "desk-c"}).status_code == 200
    assert trade(client, "desk-a")["status"] == "APPROVED"
    r = client.post("/capital?portfolio_id=desk-b", json={"amount": -20000, "reason": "redemption"})
    assert r.status_code == 200 and r.json["events"] == [], r.json
    assert client.post("/groups/firm/members", json={"portfolio_id": "desk-c"}).status_code == 200
    assert client.post("/groups/fx/members", json={"portfolio_id": "default"}).status_code == 200
    view = client.get("/groups/fx").json
    assert view["trading_state"] == "ACTIVE" and view["equity"] == pytest.approx(280000, abs=0.01), view
    assert view["drawdown"] == pytest.approx(0, abs=1e-9) and view["daily_pnl"] == pytest.approx(0, abs=0.01), view
    assert trade(client, "desk-b", symbol="GBPUSD", current_price=1.25)["status"] == "APPROVED"
    assert client.get("/audit/verify").json["ok"] is True


def test_the_firms_edges_are_4xx(desks, clock):
    client = desks
    for body, field in [('{"group_id": "firm"}', "group_id"), ('{"group_id": "_system"}', "group_id"),
                        ('{"group_id": "big", "limits": {"gross_exposure": 1%s}}' % ("0" * 400), "gross_exposure")]:
        r = client.post("/groups", data=body, content_type="application/json")
        assert r.status_code == 422 and field in str(r.json["errors"]), r.json
    assert client.get("/reports/eod?date=9999-12-31").status_code == 422
    # a limit of no positions at all is a limit; the views divide by none of it
    assert client.put("/groups/fx/limits", json={"limits": {"positions": 0}}).status_code == 200
    assert client.get("/firm").status_code == 200
    assert client.get("/groups/fx").json["limits_used"]["positions"]["used_pct"] == 0.0
    assert trade(client, "desk-a")["reason"] == "MAX_POSITIONS"
    # a tripped switch whose limit is removed no longer holds the group
    assert client.put("/groups/fx/limits", json={"limits": {"daily_loss": 100}}).status_code == 200
    client.put("/groups/fx/limits", json={"limits": {}})  # (clears nothing: nothing tripped yet)
    client.put("/groups/fx/limits", json={"limits": {"daily_loss": 100}})
    assert trade(client, "desk-a")["status"] == "APPROVED"
    client.post("/firm/marks", json={"prices": {"EURUSD": 1.09}})  # -272.73: the group's daily loss trips
    assert client.get("/groups/fx").json["trading_state"] == "HALTED"
    r = client.put("/groups/fx/limits", json={"limits": {}})
    assert r.status_code == 200 and r.json["trading_state"] == "ACTIVE", r.json
    # firm marks that would take a portfolio's books past 1e15 are refused, as its own marks are
    client.post("/marks?portfolio_id=desk-b", json={"prices": {"XYZUSD": 1.0, "ABCXYZ": 1.0}})
    assert trade(client, "desk-b", symbol="ABCXYZ", current_price=1.0)["status"] == "APPROVED"
    clock.advance(seconds=1)
    r = client.post("/firm/marks", json={"prices": {"XYZUSD": 1e9, "ABCXYZ": 1e9}})
    assert r.status_code == 422 and "out of range" in r.json["message"] and "desk-b" in str(r.json), r.json
    assert client.get("/portfolio?portfolio_id=desk-b").json["positions"][0]["mark"] == 1.0
    assert client.get("/audit/verify").json["ok"] is True


def test_the_firm_without_limits_shows_its_portfolios_day(desks):
    client = desks
    for pid in ("desk-a", "desk-b"):
        assert trade(client, pid)["status"] == "APPROVED"
    client.post("/firm/marks", json={"prices": {"EURUSD": 1.09}})
    days = [client.get(f"/portfolio?portfolio_id={pid}").json["daily_pnl"] for pid in ("desk-a", "desk-b")]
    assert client.get("/firm").json["daily_pnl"] == pytest.approx(sum(days), abs=0.01) and sum(days) < 0


def test_the_firms_limit_binds_across_groups(desks):
    """desk-a in group fx, desk-b in group rates, `default` under the firm: the firm's gross limit of 50,000
    holds over all three."""
    client = desks
    assert client.put("/groups/fx/limits", json={"limits": {}}).status_code == 200
    assert client.post("/groups", json={"group_id": "rates"}).status_code == 201
    assert client.post("/groups/rates/members", json={"portfolio_id": "desk-b"}).status_code == 200
    assert client.put("/groups/firm/limits", json={"limits": {"gross_exposure": 50000}}).status_code == 200
    assert trade(client, "desk-a")["approved_trade"]["position_units"] == 27272.72
    b = trade(client, "desk-b")
    assert b["approved_trade"]["position_units"] == 18181.82 and b["breakdown"]["levels"][0]["level"] == "firm"
    d = trade(client, "default", symbol="GBPUSD", current_price=1.25)
    assert d["reason"] == "GROSS_EXPOSURE" and d["rejected_trade"]["context"]["level"] == "firm", d
    assert client.get("/firm").json["limits_used"]["gross_exposure"]["used_pct"] == pytest.approx(100, abs=1e-3)

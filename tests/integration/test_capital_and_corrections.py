"""Capital that moves (deposits, withdrawals: not PnL) and positions corrected to the broker's, over HTTP: chained,
audited, reconciled by verify, and the switches measured on performance, not on flows."""

from decimal import Decimal

import pytest

from ..conftest import SEED_INTENT


def portfolio(client):
    return client.get("/portfolio").json


@pytest.fixture
def marked(client):
    """27,272.72 EURUSD long at 1.1, marked at 1.09: equity 99,727.27, daily PnL -272.73."""
    assert client.post("/process_trade", json=SEED_INTENT).json["decision"]["status"] == "APPROVED"
    client.post("/marks", json={"prices": {"EURUSD": 1.09}})
    p = portfolio(client)
    assert (round(p["equity"], 2), round(p["daily_pnl"], 2)) == (99727.27, -272.73)
    return p


def test_a_deposit_and_a_withdrawal_move_equity_and_not_the_loss_switches(client, marked, sql):
    r = client.post("/capital", json={"amount": 50000, "reason": "new money"})
    assert r.status_code == 200, r.json
    p = r.json["portfolio_state"]
    assert (p["starting_capital"], round(p["equity"], 2), round(p["daily_pnl"], 2)) == (150000.0, 149727.27, -272.73)
    # a withdrawal of 60,000 is 40% of the capital: as PnL it would trip the daily loss (2%) and drawdown (10%)
    r = client.post("/capital", json={"amount": -60000, "reason": "redemption"})
    p = r.json["portfolio_state"]
    assert (p["starting_capital"], round(p["equity"], 2), round(p["daily_pnl"], 2)) == (90000.0, 89727.27, -272.73)
    assert r.json["events"] == [] and portfolio(client)["trading_state"] == "ACTIVE"
    # the peak scaled with the flows: the drawdown, a fraction, is what it was (272.73 of 100,000)
    assert p["drawdown"] == pytest.approx(marked["drawdown"], abs=1e-9) and round(p["peak_equity"], 2) == 89972.65
    # sizing follows the capital: the symbol limit is 30% of 89,727.27 = 26,918.18 USD / 1.25 = 21,534.54, halved
    # for the USD leg it shares with the EURUSD long (correlation_size_multiplier 0.5)
    d = client.post("/process_trade", json={**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25}).json
    assert d["decision"]["approved_trade"]["position_units"] == 10767.27
    actions = sql("SELECT action, reason, after ->> 'amount' FROM admin_actions WHERE action = 'capital_change' "
                  "ORDER BY audit_seq")
    assert [(a, r, float(x)) for a, r, x in actions] == [("capital_change", "new money", 50000.0),
                                                       ("capital_change", "redemption", -60000.0)]
    assert client.get("/audit/verify").json["ok"] is True
    assert client.post("/replay", json={}).json["differences"] == []  # decided again under the capital they saw
    print(f"\n[capital] +50,000 then -60,000: equity {p['equity']:,.2f}, daily PnL {p['daily_pnl']:,.2f}, "
          f"no switch tripped")


def test_capital_changes_that_cannot_be_are_refused(client, marked):
    for body, field in [({"amount": -100000, "reason": "too much"}, "amount"), ({"amount": 0, "reason": "x"}, "amount"),
                        ({"amount": 100}, "reason"), ({"amount": 2e12, "reason": "x"}, "amount")]:
        r = client.post("/capital", json=body)
        assert r.status_code == 422 and field in r.json["errors"], (body, r.json)
    config = client.get("/config").json["config"]
    r = client.put("/config", json={"config": {**config, "total_capital": 500000}, "reason": "more"})
    assert r.status_code == 422 and "POST /capital" in str(r.json["errors"])
    assert portfolio(client)["starting_capital"] == 100000.0


def test_a_tampered_capital_is_reported_after_changes(client, marked, database_url):
    from sqlalchemy import create_engine, text

    client.post("/capital", json={"amount": 25000, "reason": "top-up"})
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("UPDATE portfolios SET starting_capital = 200000"))
    finally:
        engine.dispose()
    found = [f["detail"] for f in client.get("/audit/verify").json["findings"]]
    assert any("starting_capital is 200000" in f and "125000" in f for f in found), found


def test_a_position_corrected_to_the_brokers(client, marked, sql):
    r = client.post("/positions/EURUSD/correct", json={"units": 25000, "avg_price": 1.1005,
                                                       "reason": "broker statement 2026-03-02"})
    assert r.status_code == 200, r.json
    assert (Decimal(r.json["before"]["units"]), Decimal(r.json["after"]["units"])) == (Decimal("27272.72"), 25000)
    assert r.json["difference_units"] == -2272.72
    pos = portfolio(client)["positions"]
    assert [(x["symbol"], x["units"], x["avg_price"]) for x in pos] == [("EURUSD", 25000.0, 1.1005)]
    # a position the books did not have, and one they should not have
    client.post("/positions/GBPUSD/correct", json={"units": -10000, "avg_price": 1.25, "reason": "missed fill"})
    client.post("/positions/EURUSD/correct", json={"units": 0, "reason": "closed at the broker"})
    assert [(x["symbol"], x["units"]) for x in portfolio(client)["positions"]] == [("GBPUSD", -10000.0)]
    ledger = [(k, s, float(u)) for k, s, u in sql("SELECT kind, symbol, units FROM ledger_entries WHERE kind = "
                                                  "'correct' ORDER BY seq")]
    assert ledger == [("correct", "EURUSD", -2272.72), ("correct", "GBPUSD", -10000.0), ("correct", "EURUSD", -25000.0)]
    assert [a for (a,) in sql("SELECT reason FROM admin_actions WHERE action = 'position_correct' ORDER BY audit_seq")] \
        == ["broker statement 2026-03-02", "missed fill", "closed at the broker"]
    assert client.get("/audit/verify").json["ok"] is True
    print(f"\n[correct] EURUSD 27,272.72 @ 1.1 -> 25,000 @ 1.1005: {r.json['difference_units']} units, verify ok")


def test_a_correction_is_the_admins_and_reevaluates_the_switches(client, marked, keys):
    trader = client.post("/positions/EURUSD/correct", json={"units": 1, "avg_price": 1.1, "reason": "x"},
                         headers={"Authorization": f"Bearer {keys['trader']}"})
    assert trader.status_code == 403
    assert client.post("/positions/EURUSD/correct", json={"units": 5, "reason": "no price"}).status_code == 422
    # the broker holds a position bought far above the mark: a loss the drawdown switch sees at once
    r = client.post("/positions/EURUSD/correct", json={"units": 1000000, "avg_price": 1.1, "reason": "fat finger"})
    assert "drawdown" in [e["switch"] for e in r.json["events"] if e["action"] == "TRIPPED"]
    assert portfolio(client)["trading_state"] == "HALTED"


def test_capital_below_one_and_amounts_finer_than_the_books_are_handled(client, marked):
    r = client.post("/capital", json={"amount": 0.123456789012, "reason": "odd"})
    assert r.status_code == 200 and r.json["after"]["starting_capital"] == "100000.1234567890"
    assert client.get("/audit/verify").json["ok"] is True  # stored as the books store it, reconciled
    client.post("/marks", json={"prices": {"EURUSD": 1.14}})  # +1,090.91 unrealised: equity above the capital
    r = client.post("/capital", json={"amount": -100000.12, "reason": "all the capital"})
    assert r.status_code == 422 and "outside a number >= 1" in str(r.json["errors"]["amount"])
    tiny = client.post("/capital", json={"amount": 1e-20, "reason": "dust"})
    assert tiny.status_code == 422 and "ten decimals" in str(tiny.json["errors"]["amount"])
    c = client.post("/positions/GBPUSD/correct", json={"units": 1e-11, "avg_price": 1.25, "reason": "dust"})
    assert c.status_code == 200 and c.json["after"] is None  # finer than the books: none
    assert client.get("/audit/verify").json["ok"] is True


def test_an_instrument_change_that_would_revalue_an_open_position_is_refused(client):
    es = {**SEED_INTENT, "symbol": "ES", "current_price": 5000.0, "atr": 20.0}
    client.post("/capital", json={"amount": 9_900_000, "reason": "room for a future"})
    assert client.post("/process_trade", json=es).json["decision"]["status"] == "APPROVED"
    table = client.get("/instruments").json["instruments"]
    for changed in ({k: v for k, v in table.items() if k != "ES"}, {**table, "ES": {**table["ES"], "multiplier": 5}}):
        r = client.put("/instruments", json={"instruments": changed, "reason": "x"})
        assert r.status_code == 409 and "ES" in r.json["errors"]["instruments"], r.json
    ok = client.put("/instruments", json={"instruments": {**table, "ES": {**table["ES"], "max_units": 5}},
                                          "reason": "a tighter cap is fine"})
    assert ok.status_code == 200


def test_a_made_up_open_approval_is_found_by_verify(client, database_url):
    import json

    from sqlalchemy import create_engine, text

    client.post("/process_trade", json={**SEED_INTENT, "confidence_score": 0.1})  # a rejected decision
    rejected = client.get("/decisions").json["decisions"][-1]["id"]
    fake = {"booking": {"decision_id": rejected, "symbol": "EURUSD", "kind": "open", "direction": -1,
                        "units": "1000000", "price": "1.1", "entry_price": None},
            "booked_at": "2026-03-02T12:00:00+00:00", "expires_at": "2026-03-02T12:01:00+00:00"}
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("UPDATE portfolios SET memory = jsonb_set(memory, '{open_approvals}', CAST(:a AS jsonb))"),
                         {"a": json.dumps([fake])})
    finally:
        engine.dispose()
    found = [f["detail"] for f in client.get("/audit/verify").json["findings"]]
    assert any(f"an open approval of decision {rejected}" in f for f in found), found


def test_prices_far_from_the_market_cannot_book_made_up_profit(client, marked):
    """The probe's attack: a reduction, or a close, at a price far from the latest mark would realise PnL that never
    was; both go through the collar (and the instrument's tick and band), as openings do."""
    far = client.post("/process_trade", json={**SEED_INTENT, "direction": -1, "units": 0.01, "current_price": 1e9})
    assert far.json["decision"]["status"] == "REJECTED" and far.json["decision"]["reason"] == "PRICE_COLLAR"
    r = client.post("/positions/EURUSD/close", json={"price": 1e9, "units": 0.01})
    assert r.status_code == 422 and "from the latest mark" in str(r.json["errors"]["price"])
    assert portfolio(client)["realised_pnl"] == 0.0
    near = client.post("/process_trade", json={**SEED_INTENT, "direction": -1, "units": 100, "current_price": 1.09})
    assert near.json["decision"]["status"] == "APPROVED"


def test_a_capital_change_at_no_equity_or_below_it_is_handled(client, marked):
    client.post("/positions/EURUSD/correct", json={"units": 1000000, "avg_price": 1.1, "reason": "broker"})
    client.post("/marks", json={"prices": {"EURUSD": 1.0}})  # 100,000 - 100,000: no equity left
    r = client.post("/capital", json={"amount": 50000, "reason": "top up"})
    assert r.status_code == 200 and r.json["portfolio_state"]["equity"] == 50000.0
    assert client.get("/audit/verify").json["ok"] is True


def test_a_correction_needs_a_rate_and_the_account_currency_stays_while_positions_are_open(client, marked):
    r = client.post("/positions/EURGBP/correct", json={"units": 100000, "avg_price": 0.85, "reason": "broker"})
    assert r.status_code == 422 and "GBPUSD" in str(r.json["errors"]["symbol"])
    config = client.get("/config").json["config"]
    r = client.put("/config", json={"config": {**config, "account_currency": "EUR"}, "reason": "x"})
    assert r.status_code == 409 and "account_currency" in r.json["errors"]["instruments"]
    bad = {**config["instruments"], "EURGBP": {"asset_class": "fx_spot", "currency": "USD"}}
    assert client.put("/instruments", json={"instruments": bad, "reason": "x"}).status_code == 422


"""Instruments over HTTP: the shared table a new portfolio lists, an equity and a future decided through the API,
the table replaced by an admin (a new configuration version, audited, in the hash), what-if and replay honouring
it."""

from ..conftest import SEED_INTENT

AAPL = {**SEED_INTENT, "symbol": "AAPL", "current_price": 190.0, "atr": 2.0}


def test_a_new_portfolio_lists_the_shared_instruments(client):
    r = client.get("/instruments")
    assert r.status_code == 200
    table = r.json["instruments"]
    assert table["ES"]["multiplier"] == 50.0 and table["ES"]["lot_size"] == 1
    assert table["BTCUSD"]["lot_size"] == 1e-8 and table["AAPL"]["asset_class"] == "equity"
    assert r.json["config_hash"] == client.get("/config").json["config_hash"]


def test_an_equity_is_sized_in_whole_shares_through_the_api(client):
    r = client.post("/process_trade", json=AAPL)
    d = r.json["decision"]
    # 1,500 / (2 x 1.5) = 500 shares -> 30% of 100,000 = 30,000 USD / 190 = 157.89 -> 157 (lot 1)
    assert (d["status"], d["approved_trade"]["position_units"]) == ("APPROVED", 157.0)
    assert d["breakdown"]["sizing"]["lot_size"] == 1.0
    print(f"\n[instruments] AAPL at 190, ATR 2: {d['status']} {d['approved_trade']['position_units']:g} shares")


def test_the_instrument_table_is_replaced_by_an_admin_as_a_configuration_version(client, sql):
    table = client.get("/instruments").json["instruments"]
    table["TSLA"] = {"asset_class": "equity", "currency": "USD", "lot_size": 1, "min_quantity": 1, "tick_size": 0.01,
                     "max_units": 20}
    del table["MSFT"]
    r = client.put("/instruments", json={"instruments": table, "reason": "list TSLA, delist MSFT"})
    assert r.status_code == 200 and r.json["version"] == 2
    assert "TSLA" in client.get("/config").json["config"]["instruments"]
    action = sql("SELECT action, reason FROM admin_actions WHERE portfolio_id = 'default' ORDER BY audit_seq DESC "
                 "LIMIT 1")[0]
    assert action == ("instruments_change", "list TSLA, delist MSFT")
    d = client.post("/process_trade", json={**SEED_INTENT, "symbol": "TSLA", "current_price": 250.0, "atr": 5.0})
    # 1,500 / (5 x 1.5) = 200 shares -> the instrument's 20 per order
    assert (d.json["decision"]["approved_trade"]["position_units"], d.json["decision"]["config_version"]) == (20.0, 2)
    gone = client.post("/process_trade", json={**SEED_INTENT, "symbol": "MSFT", "current_price": 400.0, "atr": 5.0})
    assert gone.status_code == 422 and "unknown instrument" in str(gone.json["errors"]["symbol"])
    assert client.get("/audit/verify").json["ok"] is True


def test_an_invalid_instrument_is_refused_with_the_field_named(client):
    for spec, field in [({"asset_class": "bond", "currency": "USD"}, "asset_class"),
                        ({"currency": "USD", "lot_size": 0}, "lot_size"),
                        ({"currency": "USD", "price_band": 2}, "price_band"),
                        ({"currency": "USD", "colour": "red"}, "colour")]:
        r = client.put("/instruments", json={"instruments": {"XYZ": spec}, "reason": "bad"})
        assert r.status_code == 422, (spec, r.json)
        assert f"instruments.XYZ.{field}" in str(r.json["errors"]), r.json
    assert client.get("/config").json["version"] == 1  # nothing changed


def test_what_if_and_replay_honour_the_instruments(client):
    what_if = client.post("/what_if", json=AAPL).json["decision"]
    decided = client.post("/process_trade", json=AAPL).json["decision"]
    assert what_if["approved_trade"]["position_units"] == decided["approved_trade"]["position_units"] == 157.0
    replayed = client.post("/replay", json={}).json
    assert replayed["differences"] == [] and replayed["summary"]["before"]["approved"] == 1


def test_rpm_instruments_list_and_set(client, database_url, monkeypatch, tmp_path):
    import json
    import re

    from click.testing import CliRunner

    from app.cli import main

    client.get("/config")  # the default portfolio exists
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RPM_INSTANCE_PATH", str(tmp_path))
    listed = CliRunner().invoke(main, ["instruments", "list"])
    assert listed.exit_code == 0 and re.search(r"^ES +future +USD +50 +lot_size 1", listed.output, re.M), listed.output
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"TSLA": {"asset_class": "equity", "currency": "USD", "lot_size": 1}}))
    made = CliRunner().invoke(main, ["instruments", "set", str(table), "--reason", "only TSLA"])
    assert made.exit_code == 0 and "configuration version 2" in made.output, made.output
    table.write_text(json.dumps({"TSLA": {"asset_class": "equity", "currency": "USD", "lot_size": -1}}))
    bad = CliRunner().invoke(main, ["instruments", "set", str(table), "--reason", "bad"])
    assert bad.exit_code == 1 and "instruments.TSLA.lot_size" in bad.output and "Traceback" not in bad.output
    print(f"\n[instruments] rpm instruments list:\n{listed.output}")

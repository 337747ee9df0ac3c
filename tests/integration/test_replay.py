"""Shadow mode: what-if changes nothing; replay re-decides the stored trail under a candidate config."""

import json
import random

from click.testing import CliRunner

from app.cli import main
from app.compliance import replay

from ..conftest import SEED_INTENT


def summary_of(app, portfolio_id, candidate=None):
    items = list(replay(app.extensions["rpm"].uow, portfolio_id, None, None, candidate))
    return [i for i in items if i["type"] == "difference"], items[-1]


def test_what_if_leaves_history_positions_and_metrics_unchanged(client, sql):
    client.post("/process_trade", json={**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25})
    before = (sql("SELECT count(*) FROM decisions"), sql("SELECT symbol, units FROM positions"),
              client.get("/metrics").json["total_decisions"], sql("SELECT count(*) FROM ledger_entries"),
              sql("SELECT memory, switches, audit_seq FROM portfolios"))
    for changes in ({}, {"confidence_score": 0.3}, {"symbol": "GBPUSD", "direction": -1, "current_price": 1.25}):
        r = client.post("/what_if", json={**SEED_INTENT, **changes})
        assert r.status_code == 200 and r.json["decision"]["what_if"] is True
    after = (sql("SELECT count(*) FROM decisions"), sql("SELECT symbol, units FROM positions"),
             client.get("/metrics").json["total_decisions"], sql("SELECT count(*) FROM ledger_entries"),
             sql("SELECT memory, switches, audit_seq FROM portfolios"))
    assert after == before


def test_what_if_gives_the_decision_process_trade_then_gives(client):
    what_if = client.post("/what_if", json=SEED_INTENT).json["decision"]
    real = client.post("/process_trade", json=SEED_INTENT).json["decision"]
    assert (what_if["status"], what_if["approved_trade"]["position_units"], what_if["breakdown"]) == (
        real["status"], real["approved_trade"]["position_units"], real["breakdown"])


def test_replay_under_the_recorded_configurations_reproduces_every_decision(app, client, clock):
    """A mixed history: approvals, adjustments, rejections, reductions, switches, a config change, fills."""
    rng = random.Random(7)
    prices = {"EURUSD": 1.1, "GBPUSD": 1.25, "USDJPY": 150.0, "AUDUSD": 0.65, "EURGBP": 0.88}
    client.post("/marks", json={"prices": prices})
    for i in range(300):
        clock.advance(milliseconds=rng.randint(1, 4000))
        symbol = rng.choice(list(prices))
        if i == 150:
            config = client.get("/config").json["config"]
            client.put("/config", json={"config": {**config, "risk_per_trade": 0.02, "max_symbol_exposure_pct": 0.4}})
        if rng.random() < 0.2:
            prices[symbol] = round(prices[symbol] * (1 + rng.uniform(-0.02, 0.02)), 5)
            client.post("/marks", json={"prices": {symbol: prices[symbol]}})
            continue
        d = client.post("/process_trade", json={
            **SEED_INTENT, "symbol": symbol, "direction": rng.choice([1, -1]),
            "current_price": round(prices[symbol] * (1 + rng.uniform(-0.002, 0.002)), 5),
            "confidence_score": rng.uniform(0.5, 1.0), "regime": rng.choice(["TRENDING", "RANGING", "STRESSED"]),
            "atr": prices[symbol] * rng.uniform(0.0005, 0.01), "vol_percentile": rng.random()}).json["decision"]
        if d["status"] == "APPROVED" and rng.random() < 0.3:
            client.post("/fills", json={"decision_id": d["id"], "fill_price": d["approved_trade"]["current_price"],
                                        "filled_units": round(d["approved_trade"]["position_units"] * 0.9, 2)})
    differences, summary = summary_of(app, "default")
    assert summary["before"]["decisions"] > 200
    assert summary["before"]["approved"] > 20 and summary["before"]["rejected"] > 20
    assert differences == [] and summary["differing"] == 0
    assert summary["before"] == summary["after"]


def test_replay_of_the_demo_under_the_conservative_preset_lists_exactly_the_decisions_that_change(
        empty_database_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    runner = CliRunner()
    assert runner.invoke(main, ["demo", "--database-url", empty_database_url]).exit_code == 0
    result = runner.invoke(main, ["replay", "--preset", "conservative", "--json"])
    assert result.exit_code == 0, result.output
    items = [json.loads(line) for line in result.output.splitlines()]
    changed = {(d["symbol"], d["original"]["status"], d["original"]["units"], d["counterfactual"]["status"],
                d["counterfactual"]["units"], d["counterfactual"]["reason"])
               for d in items if d["type"] == "difference"}
    # worked by hand (conservative: 0.5% risk, 20% per symbol, TRENDING x1.0):
    # the SPEC request (scenarios 1, 5 and 8): 27,272.72 -> 20,000 / 1.1 = 18,181.81
    # scenario 4's 200,000-unit open (its own 250% symbol limit) -> 18,181.81 under 20%
    # scenario 7: 500 x 1.25 / 0.075 = 8,333.33; the second is then over 20% and rejected
    # scenario 10 (10,000,000 USD: 50,000 x 1.25 = 62,500 of scaled risk): AAPL 20% = 2,000,000 / 190 = 10,526;
    # ES 62,500 / 1,500 = 41, 2,000,000 / 250,000 = 8; BTCUSD 62,500 / 9,000 = 6.94444444 (lot 1e-8)
    assert sorted(changed) == sorted({
        ("EURUSD", "APPROVED", 27272.72, "APPROVED", 18181.81, None),
        ("EURUSD", "APPROVED", 200000.0, "APPROVED", 18181.81, None),
        ("EURUSD", "APPROVED", 20000.0, "APPROVED", 8333.33, None),
        ("EURUSD", "APPROVED", 7272.72, "REJECTED", 0.0, "SYMBOL_EXPOSURE"),
        ("AAPL", "APPROVED", 15789.0, "APPROVED", 10526.0, None),
        ("ES", "APPROVED", 12.0, "APPROVED", 8.0, None),
        ("BTCUSD", "APPROVED", 16.66666666, "APPROVED", 6.94444444, None),
    })
    # the SPEC request nine times (scenarios 1, 5, 8, the openings of 11, 12 and 13, both of 14, desk A of 15;
    # desk B's 16,000 GBPUSD, cut by its group, is 20% of 100,000 at 1.25 under conservative too)
    assert len([d for d in items if d["type"] == "difference"]) == 15
    # halted and confidence-rejected decisions stay as they were: they saw the same switches
    as_recorded = runner.invoke(main, ["replay"])
    assert as_recorded.exit_code == 0 and as_recorded.output.strip().endswith("0 decision(s) would differ")


def test_replay_through_the_api_as_json_and_streamed(client):
    client.post("/process_trade", json=SEED_INTENT)
    client.post("/process_trade", json={**SEED_INTENT, "confidence_score": 0.2})
    r = client.post("/replay", json={"preset": "conservative"})
    assert r.status_code == 200
    assert [d["counterfactual"]["units"] for d in r.json["differences"]] == [18181.81]
    assert r.json["summary"]["before"]["approved"] == 1 and r.json["summary"]["after"]["rejected"] == 1
    with client.post("/replay", json={"format": "ndjson"}) as streamed:
        assert streamed.mimetype == "application/x-ndjson"
        lines = [json.loads(line) for line in streamed.get_data(as_text=True).splitlines()]
    assert lines == [{**lines[-1], "type": "summary"}] and lines[0]["differing"] == 0
    bad = client.post("/replay", json={"config": {"risk_per_trade": 2}})
    assert bad.status_code == 422 and "risk_per_trade" in bad.json["errors"]["config"]

"""Partial reductions over HTTP: an intent's units and reduce_only (the fast path and Flask alike), a partial close;
the ledger and verify follow."""

from ..conftest import SEED_INTENT


def test_partial_reductions_through_the_api(client, sql):
    opened = client.post("/process_trade", json=SEED_INTENT).json["decision"]
    assert opened["approved_trade"]["position_units"] == 27272.72
    r = client.post("/process_trade", json={**SEED_INTENT, "direction": -1, "current_price": 1.12, "units": 10000,
                                            "reduce_only": True})
    d = r.json["decision"]
    assert (d["status"], d["approved_trade"]["position_units"], d["approved_trade"]["reducing"]) == ("APPROVED", 10000.0,
                                                                                                True)
    closed = client.post("/positions/EURUSD/close", json={"price": 1.11, "units": 7272.72}).json
    assert closed["closed_units"] == 7272.72 and closed["realised_pnl"] == 72.7272
    positions = client.get("/portfolio").json["positions"]
    assert [(p["symbol"], p["units"]) for p in positions] == [("EURUSD", 10000.0)]
    assert [(k, float(u), float(p)) for k, u, p in sql("SELECT kind, units, position_units FROM ledger_entries "
                                                      "ORDER BY seq")] == [
        ("open", 27272.72, 27272.72), ("reduce", -10000.0, 17272.72), ("close", -7272.72, 10000.0)]
    nothing = client.post("/process_trade", json={**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25,
                                                  "reduce_only": True}).json["decision"]
    assert nothing["reason"] == "NOTHING_TO_REDUCE"
    assert client.get("/audit/verify").json["ok"] is True
    print(f"\n[reductions] reduce 10,000 of 27,272.72: {d['message']}; close 7,272.72 at 1.11: realised "
          f"{closed['realised_pnl']}")


def test_bad_quantities_are_refused_with_the_field_named(client):
    client.post("/process_trade", json=SEED_INTENT)
    for body, field in [({**SEED_INTENT, "units": 0}, "units"), ({**SEED_INTENT, "units": -5}, "units"),
                        ({**SEED_INTENT, "reduce_only": "yes"}, "reduce_only"), ({**SEED_INTENT, "units": "10"}, "units")]:
        r = client.post("/process_trade", json=body)
        assert r.status_code == 422 and field in r.json["errors"], (body, r.json)
    r = client.post("/positions/EURUSD/close", json={"price": 1.1, "units": 0.001})
    assert r.status_code == 422 and "less than one lot" in str(r.json["errors"]["units"])
    assert client.get("/portfolio").json["positions"][0]["units"] == 27272.72  # nothing changed

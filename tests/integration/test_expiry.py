"""Approvals that expire, over HTTP and PostgreSQL: shown with their expiry, released once — as a fill of
nothing and an `expire` ledger entry on the chain — by the first transaction that sees them expired, after a
restart too; a read or a what-if sees them released at once."""

from datetime import datetime, timedelta

import pytest

from ..conftest import SEED_INTENT


@pytest.fixture
def ttl(client):
    config = client.get("/config").json["config"]
    assert client.put("/config", json={"config": {**config, "approval_ttl_seconds": 60},
                                       "reason": "approvals stand a minute"}).status_code == 200


def test_an_approval_is_shown_with_its_expiry_and_released_once(app, client, clock, ttl, sql, settings):
    d = client.post("/process_trade", json=SEED_INTENT).json["decision"]
    expires = d["approved_trade"]["expires_at"]
    assert expires is not None
    shown = client.get("/portfolio").json["open_approvals"]
    assert [(a["decision_id"], a["units"], a["expires_at"]) for a in shown] == [(d["id"], 27272.72, expires)]
    clock.advance(seconds=61)
    # a read sees it released at once (nothing written by a read)...
    assert client.get("/portfolio").json["positions"] == []
    assert client.post("/what_if", json=SEED_INTENT).json["decision"]["approved_trade"]["position_units"] == 27272.72
    assert sql("SELECT count(*) FROM fills")[0][0] == 0
    # ...and the first transaction that sees it writes the release, in another process as well (a restart)
    from app import create_app

    other = create_app(settings, clock=clock)
    other.test_client_class = type(client)
    restarted = other.test_client()
    restarted.rpm_keys = client.rpm_keys
    try:
        assert restarted.post("/marks", json={"prices": {"GBPUSD": 1.25}}).status_code == 200
        assert restarted.post("/marks", json={"prices": {"GBPUSD": 1.26}}).status_code == 200
    finally:
        other.extensions["rpm"].db.dispose()
    assert sql("SELECT decision_id, filled_units FROM fills") == [(d["id"], 0)]
    assert [(k, float(u)) for k, u in sql("SELECT kind, units FROM ledger_entries ORDER BY seq")] == [
        ("open", 27272.72), ("expire", -27272.72)]
    assert client.get("/portfolio").json["open_approvals"] == []
    # on the chain, the release comes before the mark that found it due (released first, then the mark)
    (expired_at,) = sql("SELECT audit_seq FROM ledger_entries WHERE kind = 'expire'")[0]
    (first_mark,) = sql("SELECT min(audit_seq) FROM mark_updates")[0]
    assert expired_at < first_mark
    late = client.post("/fills", json={"decision_id": d["id"], "filled_units": 1000, "fill_price": 1.1})
    assert late.status_code == 409 and "expired" in late.json["message"]
    assert client.get("/audit/verify").json["ok"] is True
    replayed = client.post("/replay", json={}).json
    assert replayed["differences"] == []
    print(f"\n[expiry] approved 27,272.72 until {expires}; at +61 s released by a mark: a fill of 0 and an "
          "'expire' ledger entry, once")


def test_a_fill_before_the_expiry_keeps_the_position(client, clock, ttl, sql):
    d = client.post("/process_trade", json=SEED_INTENT).json["decision"]
    assert client.post("/fills", json={"decision_id": d["id"], "filled_units": 20000, "fill_price": 1.1}).status_code \
        == 200
    clock.advance(seconds=3600)
    client.post("/marks", json={"prices": {"EURUSD": 1.1}})
    assert [(p["symbol"], p["units"]) for p in client.get("/portfolio").json["positions"]] == [("EURUSD", 20000.0)]
    assert sql("SELECT count(*) FROM ledger_entries WHERE kind = 'expire'")[0][0] == 0


def test_a_time_in_force_longer_than_the_configuration_is_cut_to_it(client, clock, ttl):
    d = client.post("/process_trade", json={**SEED_INTENT, "time_in_force_seconds": 3600}).json["decision"]
    short = client.post("/process_trade", json={**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25,
                                                "time_in_force_seconds": 5}).json["decision"]
    decided = datetime.fromisoformat(d["decided_at"])
    assert datetime.fromisoformat(d["approved_trade"]["expires_at"]) == decided + timedelta(seconds=60)
    assert datetime.fromisoformat(short["approved_trade"]["expires_at"]) == decided + timedelta(seconds=5)
    bad = client.post("/process_trade", json={**SEED_INTENT, "time_in_force_seconds": 0})
    assert bad.status_code == 422 and "time_in_force_seconds" in bad.json["errors"]


def test_closing_a_position_only_an_expired_approval_held_is_a_404(client, clock, ttl):
    client.post("/process_trade", json=SEED_INTENT)
    clock.advance(seconds=61)
    r = client.post("/positions/EURUSD/close", json={"price": 1.1})
    assert r.status_code == 404 and "no open position" in r.json["message"]

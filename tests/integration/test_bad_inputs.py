"""Bad input: a JSON 4xx with a message per field, never a 500, and nothing written."""

import json

import pytest

from ..conftest import SEED_INTENT


def with_(**changes):
    return json.dumps({**SEED_INTENT, **changes})


def without(field):
    return json.dumps({k: v for k, v in SEED_INTENT.items() if k != field})


JSON = "application/json"
CASES = [
    # (name, body, content type, status, field named in errors or None)
    ("malformed JSON", '{"symbol": "EURUSD",', JSON, 400, None),
    ("truncated JSON", "{", JSON, 400, None),
    ("NaN", with_(atr=float("nan")), JSON, 422, "atr"),
    ("infinity", with_(current_price=float("inf")), JSON, 422, "current_price"),
    ("huge number", with_(current_price=1e400), JSON, 422, "current_price"),
    ("negative ATR", with_(atr=-0.001), JSON, 422, "atr"),
    ("zero ATR", with_(atr=0), JSON, 422, "atr"),
    ("confidence 1.5", with_(confidence_score=1.5), JSON, 422, "confidence_score"),
    ("negative confidence", with_(confidence_score=-0.1), JSON, 422, "confidence_score"),
    ("direction 2", with_(direction=2), JSON, 422, "direction"),
    ("direction 0", with_(direction=0), JSON, 422, "direction"),
    ("direction float", with_(direction=1.0), JSON, 422, "direction"),
    ("direction true", with_(direction=True), JSON, 422, "direction"),
    ("unknown regime", with_(regime="BULL"), JSON, 422, "regime"),
    ("lower-case regime", with_(regime="trending"), JSON, 422, "regime"),
    ("symbol with slash", with_(symbol="EUR/USD"), JSON, 422, "symbol"),
    ("empty symbol", with_(symbol=""), JSON, 422, "symbol"),
    ("same currencies", with_(symbol="USDUSD"), JSON, 422, "symbol"),
    ("undeclared instrument", with_(symbol="TSLA"), JSON, 422, "symbol"),
    ("symbol as number", with_(symbol=123), JSON, 422, "symbol"),
    ("confidence as string", with_(confidence_score="0.75"), JSON, 422, "confidence_score"),
    ("atr as null", with_(atr=None), JSON, 422, "atr"),
    ("price as list", with_(current_price=[1.1]), JSON, 422, "current_price"),
    ("vol percentile 2", with_(vol_percentile=2), JSON, 422, "vol_percentile"),
    ("missing ATR", without("atr"), JSON, 422, "atr"),
    ("missing symbol", without("symbol"), JSON, 422, "symbol"),
    ("unknown field", with_(colour="red"), JSON, 422, "colour"),
    ("bad portfolio id", with_(portfolio_id="no spaces!"), JSON, 422, "portfolio_id"),
    ("intent id too long", with_(intent_id="x" * 200), JSON, 422, "intent_id"),
    ("empty object", "{}", JSON, 422, "symbol"),
    ("empty body", "", JSON, 422, "_body"),
    ("JSON array", "[1, 2]", JSON, 422, None),
    ("JSON string", '"EURUSD"', JSON, 422, None),
    ("wrong content type", with_(), "text/plain", 415, None),
    ("form body", "symbol=EURUSD", "application/x-www-form-urlencoded", 415, None),
    ("JSON in UTF-16", with_().encode("utf-16"), "application/json; charset=utf-16", 415, None),
    ("JSON declared latin-1", with_(), "application/json; charset=latin-1", 415, None),
    ("UTF-16 bytes declared JSON", with_().encode("utf-16"), JSON, 400, None),
    ("nested 1,000 deep", "[" * 1000 + "]" * 1000, JSON, 400, None),
]


@pytest.mark.parametrize("name, body, content_type, status, field", CASES, ids=[c[0] for c in CASES])
def test_bad_trade_intents_get_a_json_4xx_and_record_nothing(client, sql, name, body, content_type, status, field):
    r = client.post("/process_trade", data=body, content_type=content_type)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.is_json
    payload = r.json
    assert set(payload) >= {"code", "status", "message", "errors"}
    assert payload["code"] == status
    if field is not None:
        assert field in payload["errors"], payload
        assert all(isinstance(m, str) for m in payload["errors"][field])
    assert sql("SELECT count(*) FROM decisions")[0][0] == 0
    assert sql("SELECT count(*) FROM positions")[0][0] == 0


@pytest.mark.parametrize("path, body", [
    ("/marks", {"prices": {"EURUSD": -1}}),
    ("/marks", {"prices": {"EURUSD": "1.1"}}),
    ("/marks", {"prices": {"eur/usd": 1.1}}),
    ("/marks", {"prices": {}}),
    ("/marks", {"prices": {"XAUXAU": 1.1}}),
    ("/marks", {}),
    ("/fills", {"decision_id": "x", "filled_units": -5, "fill_price": 1.1}),
    ("/fills", {"decision_id": "x", "filled_units": 5}),
    ("/positions/EURUSD/close", {"price": 0}),
    ("/positions/EURUSD/close", {"price": float("nan")}),
    ("/resume", {"force": "yes please"}),
    ("/halt", {"reason": 42}),
])
def test_bad_bodies_on_other_endpoints_are_422_and_change_nothing(client, sql, path, body):
    before = sql("SELECT realised_pnl, peak_equity, trading_state, switches FROM portfolios")
    r = client.post(path, data=json.dumps(body), content_type=JSON)
    assert r.status_code == 422, r.get_data(as_text=True)
    assert r.json["code"] == 422 and r.json["errors"]
    assert sql("SELECT count(*) FROM marks")[0][0] == 0
    assert sql("SELECT count(*) FROM admin_actions WHERE action NOT LIKE 'key_%'")[0][0] == 0
    assert sql("SELECT realised_pnl, peak_equity, trading_state, switches FROM portfolios") == before


def test_unknown_route_and_wrong_method_are_json(client):
    r = client.get("/no/such/thing")
    assert r.status_code == 404 and r.json["code"] == 404
    r = client.get("/process_trade")
    assert r.status_code == 405 and r.json["code"] == 405


def test_portfolio_id_in_query_and_body_must_agree(client, sql):
    r = client.post("/process_trade?portfolio_id=other", json={**SEED_INTENT, "portfolio_id": "default"})
    assert r.status_code == 422
    assert sql("SELECT count(*) FROM decisions")[0][0] == 0


def test_nul_characters_are_a_422_not_a_database_error(client, sql):
    r = client.get("/decisions", query_string={"symbol": "EUR\x00USD"})
    assert r.status_code == 422
    r = client.post("/halt", data='{"reason": "bad\\u0000reason"}', content_type=JSON)
    assert r.status_code == 422
    r = client.post("/process_trade", json={**json.loads(with_()), "intent_id": "a\x00b"})
    assert r.status_code == 422
    assert sql("SELECT count(*) FROM decisions")[0][0] == 0

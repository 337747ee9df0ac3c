"""POST /process_trade answered by the fast path (app/api/fast.py) and by the Flask view: the same
answers, headers, rows, log lines and metrics; and what the fast path must leave to Flask."""

import json
import logging

import pytest
from prometheus_client import REGISTRY

from app.api.fast import FastProcessTrade

from ..conftest import SEED_INTENT


@pytest.fixture
def paths(app, keys, raw_client):
    """send(body, fast=..., headers=..., query=...) -> (response, whether the fast path answered it)."""
    middleware = app.wsgi_app
    assert isinstance(middleware, FastProcessTrade)
    taken = []
    answer = middleware._answer

    def spy(*args):
        result = answer(*args)
        taken.append(result is not None)
        return result

    middleware._answer = spy

    def send(body, *, fast=True, headers=None, query="", raw=None):
        app.wsgi_app = middleware if fast else middleware.inner
        taken.clear()
        try:
            r = raw_client.post("/process_trade" + query, data=raw if raw is not None else json.dumps(body),
                                headers={"Content-Type": "application/json",
                                         "Authorization": f"Bearer {keys['trader']}", **(headers or {})})
        finally:
            app.wsgi_app = middleware
        return r, bool(taken and taken[0])

    return send


def normal(response, portfolio):
    """The answer without what differs between two portfolios and two decisions."""
    text = response.get_data(as_text=True).replace(f'"{portfolio}"', '"P"')
    body = json.loads(text)
    (body.get("decision") or {}).pop("id", None)
    body.pop("decision_id", None)
    if isinstance(body.get("portfolio_state"), dict):
        for p in body["portfolio_state"].get("positions", []):
            p.pop("opened_at", None)
    assert int(response.headers["Content-Length"]) == len(response.get_data())
    headers = sorted((k, v) for k, v in response.headers.items() if k not in ("X-Request-ID", "Content-Length"))
    return response.status_code, body, headers


def test_both_paths_give_the_same_answers_and_rows(client, paths, sql):
    for pid in ("fast", "flask"):
        assert client.post("/portfolios", json={"portfolio_id": pid}).status_code == 201
    config = client.get("/config?portfolio_id=fast").json["config"]
    for pid in ("fast", "flask"):  # two positions at most: the third symbol is refused
        assert client.put(f"/config?portfolio_id={pid}", json={
            "config": {**config, "max_concurrent_positions": 2}, "reason": "test"}).status_code == 200
    sequence = [
        {**SEED_INTENT, "intent_id": "a"},
        {**SEED_INTENT, "intent_id": "a"},  # a retry: the stored decision, marked as a replay
        {**SEED_INTENT, "intent_id": "a", "atr": 0.002},  # the same id, another payload: 409
        {**SEED_INTENT, "symbol": "XAUXAU", "intent_id": "b"},  # the schema takes it, the instruments do not: 422
        {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25, "confidence_score": 1, "atr": 0.002, "intent_id": "c"},
        {**SEED_INTENT, "symbol": "USDJPY", "current_price": 150.0, "atr": 0.5, "intent_id": "d"},  # max positions
        {**SEED_INTENT, "direction": -1, "intent_id": "e"},  # reduces
        {**SEED_INTENT, "confidence_score": 0.1},  # rejected, no intent id
    ]
    for body in sequence:
        fast, took_fast = paths({**body, "portfolio_id": "fast"})
        flask, took_fast_too = paths({**body, "portfolio_id": "flask"}, fast=False)
        assert took_fast and not took_fast_too
        assert normal(fast, "fast") == normal(flask, "flask"), body
    assert [s for (s,) in sql("SELECT status FROM decisions WHERE portfolio_id = 'fast' ORDER BY seq")] == \
        [s for (s,) in sql("SELECT status FROM decisions WHERE portfolio_id = 'flask' ORDER BY seq")] == \
        ["APPROVED", "APPROVED", "REJECTED", "APPROVED", "REJECTED"]
    columns = "seq, intent_id, status, reason_code, approved_units, key_name, key_role, audit_seq"
    assert sql(f"SELECT {columns} FROM decisions WHERE portfolio_id = 'fast' ORDER BY seq") == \
        sql(f"SELECT {columns} FROM decisions WHERE portfolio_id = 'flask' ORDER BY seq")
    assert client.get("/audit/verify").json["ok"] is True


def test_request_id_log_line_and_metrics_are_the_same_on_both_paths(paths):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    access = logging.getLogger("rpm.access")
    access.addHandler(handler)
    try:
        seen = {}
        for fast in (True, False):
            records.clear()
            before = REGISTRY.get_sample_value("rpm_decisions_total",
                                               {"portfolio": "default", "status": "APPROVED", "reason": ""}) or 0
            symbol = {"symbol": "EURUSD"} if fast else {"symbol": "GBPUSD", "current_price": 1.25}
            r, took_fast = paths({**SEED_INTENT, **symbol, "intent_id": f"log-{fast}"}, fast=fast,
                                 headers={"X-Request-ID": f"req-{fast}"})
            assert r.status_code == 200 and took_fast is fast and r.json["decision"]["status"] == "APPROVED"
            assert r.headers["X-Request-ID"] == f"req-{fast}"
            after = REGISTRY.get_sample_value("rpm_decisions_total",
                                              {"portfolio": "default", "status": "APPROVED", "reason": ""})
            assert after == before + 1
            (record,) = records
            seen[fast] = {k: getattr(record, k) for k in ("request_id", "method", "path", "status", "portfolio",
                                                          "key_name", "decision_status")}
            assert record.decision_id == r.json["decision"]["id"] and record.duration_ms > 0
        assert seen[True] == {**seen[False], "request_id": "req-True"}
        bad, _ = paths(SEED_INTENT, headers={"X-Request-ID": "not a token"})
        assert len(bad.headers["X-Request-ID"]) == 32  # replaced by a fresh one, as Flask does
    finally:
        access.removeHandler(handler)


def test_an_unknown_key_is_a_401_on_both_paths(paths, sql):
    for fast in (True, False):
        r, _ = paths(SEED_INTENT, fast=fast, headers={"Authorization": "Bearer rpm_00000000_" + "x" * 40})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="rpm"'
        assert r.json["message"] == "unknown API key"
    assert sql("SELECT count(*) FROM decisions")[0][0] == 0


@pytest.mark.parametrize("case", ["no key", "malformed key", "role", "portfolio", "schema", "unknown field",
                                  "query", "nul", "not json", "not an object", "content type"])
def test_what_the_fast_path_leaves_to_flask_is_answered_as_before(paths, keys, sql, case):
    body, headers, query, raw = dict(SEED_INTENT), {}, "", None
    if case == "no key":
        headers = {"Authorization": ""}
    elif case == "malformed key":
        headers = {"Authorization": "Token abc"}
    elif case == "role":
        headers = {"Authorization": f"Bearer {keys['compliance']}"}
    elif case == "portfolio":
        headers = {"Authorization": f"Bearer {keys['trader_elsewhere']}"}
    elif case == "schema":
        body["confidence_score"] = "high"
    elif case == "unknown field":
        body["size"] = 1000
    elif case == "query":
        query = "?portfolio_id=default"
    elif case == "nul":
        body["intent_id"] = "a\u0000b"
    elif case == "not json":
        raw = "{"
    elif case == "not an object":
        raw = json.dumps([SEED_INTENT])
    elif case == "content type":
        headers = {"Content-Type": "text/plain"}
    fast, took_fast = paths(body, headers=headers, query=query, raw=raw)
    flask, _ = paths(body, fast=False, headers=headers, query=query, raw=raw)
    assert not took_fast
    if case == "query":  # a valid request, decided by Flask each time
        assert fast.status_code == flask.status_code == 200
        assert sql("SELECT count(*) FROM decisions")[0][0] == 2
    else:
        assert (fast.status_code, fast.get_json(silent=True)) == (flask.status_code, flask.get_json(silent=True))
        assert fast.status_code in (400, 401, 403, 415, 422)
        assert sql("SELECT count(*) FROM decisions")[0][0] == 0

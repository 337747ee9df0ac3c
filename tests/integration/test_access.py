"""Access control: every route x every kind of caller -> the expected status; zero unexpected 2xx."""

from datetime import timedelta

import pytest
from sqlalchemy import text

from app.api.auth import declaration
from app.services import Actor

from ..conftest import SEED_INTENT

TRADER, COMPLIANCE, ADMIN, MARKET, VIEWER = "trader", "compliance", "admin", "market-data", "viewer"
ANY = {TRADER, COMPLIANCE, ADMIN, VIEWER}
NO_WEBHOOK = "00000000-0000-0000-0000-000000000000"

# (method, path, body, roles admitted)
MATRIX = [
    ("POST", "/process_trade", SEED_INTENT, {TRADER}),
    ("POST", "/process_trades", {"intents": [SEED_INTENT]}, {TRADER}),
    ("POST", "/what_if", SEED_INTENT, {TRADER, ADMIN}),
    ("POST", "/marks", {"prices": {"EURUSD": 1.1}}, {TRADER, MARKET}),
    ("POST", "/fills", {"decision_id": "nope", "filled_units": 1, "fill_price": 1.1}, {TRADER}),
    ("POST", "/positions/EURUSD/close", {"price": 1.1}, {TRADER}),
    ("POST", "/positions/EURUSD/correct", {"units": 0, "reason": "matrix"}, {ADMIN}),
    ("POST", "/capital", {"amount": 1, "reason": "matrix"}, {ADMIN}),
    ("GET", "/portfolio", None, ANY),
    ("GET", "/health", None, ANY),
    ("GET", "/metrics", None, ANY),
    ("POST", "/halt", {"reason": "matrix"}, {ADMIN}),
    ("POST", "/resume", {}, {ADMIN}),
    ("GET", "/config", None, ANY),
    ("PUT", "/config", {"config": {}, "reason": "matrix"}, {ADMIN}),
    ("GET", "/instruments", None, ANY),
    ("PUT", "/instruments", {"instruments": {}, "reason": "matrix"}, {ADMIN}),
    ("GET", "/portfolios", None, ANY),
    ("POST", "/portfolios", {"portfolio_id": "made-by-matrix"}, {ADMIN}),
    ("GET", "/decisions", None, {COMPLIANCE, ADMIN}),
    ("GET", "/decisions/nope", None, {COMPLIANCE, ADMIN}),
    ("GET", "/decisions/nope/proof", None, {COMPLIANCE}),
    ("GET", "/audit/events", None, {COMPLIANCE, ADMIN}),
    ("GET", "/portfolio/equity", None, ANY),
    ("GET", "/whoami", None, ANY),
    ("GET", "/audit/verify", None, {COMPLIANCE}),
    ("POST", "/replay", {"preset": "conservative"}, {COMPLIANCE}),
    ("GET", "/firm", None, ANY),
    ("POST", "/firm/marks", {"prices": {"EURUSD": 1.1}}, {TRADER, MARKET, ADMIN}),
    ("GET", "/groups", None, ANY),
    ("POST", "/groups", {"group_id": "matrix"}, {ADMIN}),
    ("GET", "/groups/firm", None, ANY),
    ("PUT", "/groups/firm/limits", {"limits": {}}, {ADMIN}),
    ("POST", "/groups/firm/members", {"portfolio_id": "default"}, {ADMIN}),
    ("POST", "/groups/firm/halt", {"reason": "matrix"}, {ADMIN}),
    ("POST", "/groups/firm/resume", {}, {ADMIN}),
    ("GET", "/reports/eod", None, {COMPLIANCE, ADMIN}),
    ("GET", "/events?follow=false", None, ANY),
    ("GET", "/webhooks", None, {ADMIN}),
    ("POST", "/webhooks", {"url": "http://127.0.0.1:9/matrix"}, {ADMIN}),
    ("GET", f"/webhooks/{NO_WEBHOOK}", None, {ADMIN}),
    ("DELETE", f"/webhooks/{NO_WEBHOOK}", {}, {ADMIN}),
    ("GET", f"/webhooks/{NO_WEBHOOK}/deliveries", None, {ADMIN}),
    ("POST", f"/webhooks/{NO_WEBHOOK}/deliveries/retry", {}, {ADMIN}),
]
PUBLIC = [("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/openapi.json"), ("GET", "/docs"),
          ("GET", "/docs/assets/swagger-ui.css"), ("GET", "/console")]


def routes(app):
    """(method, rule, endpoint) of every route the app serves."""
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, rule.rule, rule.endpoint


def test_every_route_declares_its_roles_or_is_public(app):
    undeclared = []
    for method, rule, endpoint in routes(app):
        is_public, admitted = declaration(app, endpoint, method)
        if not is_public and not admitted:
            undeclared.append(f"{method} {rule}")
    assert undeclared == []


def test_the_matrix_covers_every_protected_route_with_its_declared_roles(app):
    declared = {}
    for method, rule, endpoint in routes(app):
        is_public, admitted = declaration(app, endpoint, method)
        if not is_public:
            path = rule.replace("<string:symbol>", "EURUSD").replace("<string:decision_id>", "nope").replace(
                "<string:group_id>", "firm").replace("<string:webhook_id>", NO_WEBHOOK)
            declared[(method, path)] = set(admitted)
    assert declared == {(m, p.split("?")[0]): roles for m, p, _, roles in MATRIX}


@pytest.fixture
def callers(app, keys):
    """Every kind of caller: the Authorization header each sends."""
    store = app.extensions["rpm_keys"]
    setup = Actor("test-setup", "admin")
    revoked, record = store.create(TRADER, "revoked", None, setup)
    store.revoke(record["id"], setup)
    expired, _ = store.create(TRADER, "expired", None, setup, expires_in=timedelta(seconds=-1))
    viewer, _ = store.create(VIEWER, "wall-screen", None, setup)
    bearer = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    return {
        "no key": {},
        "malformed header": {"Authorization": f"Token {keys[TRADER]}"},
        "bearer without key": {"Authorization": "Bearer "},
        "unknown key": bearer("rpm_00000000_" + "A" * 43),
        "revoked key": bearer(revoked),
        "expired key": bearer(expired),
        TRADER: bearer(keys[TRADER]),
        COMPLIANCE: bearer(keys[COMPLIANCE]),
        ADMIN: bearer(keys[ADMIN]),
        VIEWER: bearer(viewer),
        "trader limited to another portfolio": bearer(keys["trader_elsewhere"]),
    }


def expected(caller, method, path, admitted):
    if caller in ("no key", "malformed header", "bearer without key", "unknown key", "revoked key", "expired key"):
        return 401
    role = TRADER if caller.startswith("trader") else caller
    if role not in admitted:
        return 403
    if caller == "trader limited to another portfolio" and path not in ("/portfolios", "/whoami",
                                                                         "/events?follow=false"):
        return 403
    return "allowed"


@pytest.mark.parametrize("method, path, body, admitted", MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_access_matrix(raw_client, callers, sql, method, path, body, admitted):
    outcomes = {}
    for caller, headers in callers.items():
        r = raw_client.open(path, method=method, json=body, headers=headers)
        want = expected(caller, method, path, admitted)
        outcomes[caller] = r.status_code
        assert r.is_json or (path.startswith("/events") and r.status_code == 200), (caller, r.status_code)
        if want == "allowed":
            assert r.status_code not in (401, 403), (caller, r.json)
        else:
            assert r.status_code == want, (caller, r.status_code, r.json)
            assert r.json["code"] == want and r.json["message"]
        if r.status_code == 401:
            assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert sum(200 <= s < 300 for c, s in outcomes.items() if expected(c, method, path, admitted) != "allowed") == 0


@pytest.mark.parametrize("method, path", PUBLIC)
def test_public_routes_need_no_key(raw_client, method, path):
    with raw_client.open(path, method=method) as r:
        assert r.status_code == 200


def test_rpms_address_opened_in_a_browser_leads_to_the_console(raw_client):
    r = raw_client.get("/")
    assert r.status_code == 302 and r.headers["Location"] == "/console"


def test_a_limited_trader_sees_and_uses_only_its_portfolios(client, raw_client, keys):
    assert client.post("/portfolios", json={"portfolio_id": "elsewhere", "capital": 50000}).status_code == 201
    auth = {"Authorization": f"Bearer {keys['trader_elsewhere']}"}
    listed = raw_client.get("/portfolios", headers=auth).json["portfolios"]
    assert [p["portfolio_id"] for p in listed] == ["elsewhere"]
    r = raw_client.post("/process_trade", json={**SEED_INTENT, "portfolio_id": "elsewhere"}, headers=auth)
    assert r.status_code == 200 and r.json["decision"]["approved_trade"]["position_units"] == 13636.36
    assert raw_client.post("/process_trade?portfolio_id=default", json=SEED_INTENT, headers=auth).status_code == 403


def test_every_decision_and_admin_action_records_who_made_it(client, sql, keys):
    client.post("/process_trade", json=SEED_INTENT)
    client.post("/halt", json={"reason": "who did it"})
    client.put("/config", json={"config": {"risk_per_trade": 0.005}, "reason": "tighten"})
    client.post("/portfolios", json={"portfolio_id": "p2", "preset": "conservative", "capital": 250000})
    assert sql("SELECT key_name, key_role, key_id IS NOT NULL FROM decisions") == [("test-trader", "trader", True)]
    actions = sql("SELECT action, actor, actor_role, actor_key_id IS NOT NULL FROM admin_actions "
                  "WHERE actor <> 'test-setup' ORDER BY id")
    assert actions == [("halt", "test-admin", "admin", True), ("config_change", "test-admin", "admin", True),
                       ("portfolio_create", "test-admin", "admin", True)]
    # the capital as given (not as the NUMERIC column reads it back): the action's hash covers it
    assert sql("SELECT after->>'capital' FROM admin_actions WHERE action = 'portfolio_create'") == [("250000.0",)]
    created = sql("SELECT action, after->>'role' FROM admin_actions WHERE action = 'key_create' ORDER BY id")
    assert [role for _, role in created] == ["trader", "compliance", "admin", "trader"]


def test_key_revocation_is_audited_and_takes_effect_at_once(app, raw_client, keys, sql):
    store = app.extensions["rpm_keys"]
    auth = {"Authorization": f"Bearer {keys[TRADER]}"}
    assert raw_client.get("/portfolio", headers=auth).status_code == 200
    store.revoke(keys[TRADER][:12], Actor("ops", "admin"), reason="leaked")
    assert raw_client.get("/portfolio", headers=auth).status_code == 401
    assert sql("SELECT actor, reason, before->>'state', after->>'state' FROM admin_actions "
               "WHERE action = 'key_revoke'") == [("ops", "leaked", "active", "revoked")]


def test_no_key_is_stored_in_clear_anywhere_in_the_database(client, keys, database_url):
    client.post("/process_trade", json=SEED_INTENT)
    client.post("/halt", json={"reason": "dump"})
    client.get("/health", headers={"Authorization": "Bearer rpm_deadbeef_not-a-real-key-but-long-enough-xx"})
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    with engine.connect() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
        dump = "\n".join(str(conn.execute(text(f'SELECT json_agg(t)::text FROM "{name}" t')).scalar())
                         for name in tables)
    engine.dispose()
    assert "api_keys" in tables and "test-trader" in dump  # the dump does contain the keys' records
    for key in keys.values():
        secret = key[len("rpm_00000000_"):]
        assert key not in dump and secret not in dump


def test_failed_authentication_logs_the_prefix_only(raw_client, keys, caplog):
    import logging

    bad = "rpm_feedface_" + "S" * 43
    auth_log = logging.getLogger("rpm.auth")  # the rpm loggers write JSON lines and do not propagate
    auth_log.addHandler(caplog.handler)
    try:
        raw_client.get("/health", headers={"Authorization": f"Bearer {bad}"})
    finally:
        auth_log.removeHandler(caplog.handler)
    assert any(getattr(r, "key_prefix", None) == "rpm_feedface" for r in caplog.records)
    assert all(bad not in r.getMessage() and "S" * 43 not in str(r.__dict__) for r in caplog.records)


def test_openapi_declares_the_security_scheme_and_the_401_403_answers(raw_client):
    spec = raw_client.get("/openapi.json").json
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "an RPM API key"}
    post = spec["paths"]["/process_trade"]["post"]
    assert post["security"] == [{"bearerAuth": []}] and post["x-roles"] == ["trader"]
    assert {"401", "403"} <= set(post["responses"])
    assert spec["paths"]["/health/live"]["get"]["security"] == []

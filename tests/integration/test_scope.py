"""Scope: every route x role x key (unlimited, limited) x portfolio (its own, another, none) x where it is
named (body, query, each intent of a batch), in every format: what the request acts on and shows.

The matrix is data: ``ROUTES`` says how each route names a portfolio and how its answer shows the
portfolios it acted on or showed; one test walks all of it and reports every cell that differs.
"""

import csv
import io

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.auth import declaration, scope_declared
from app.services import Actor

from ..conftest import SEED_INTENT

OWN, OTHER = "fx-desk", "other"
NO_WEBHOOK = "00000000-0000-0000-0000-000000000000"
ROLES = ("trader", "compliance", "admin")


def _decision(r):
    return {r.json["decision"]["portfolio_id"]}


def _prometheus(r):
    """The portfolios the exposition's samples are about; a sample about none counts as "(service)"."""
    found = set()
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        found |= {s.labels.get("portfolio", "(service)") for s in family.samples}
    return found


def _csv(r):
    return {row["portfolio_id"] for row in csv.DictReader(io.StringIO(r.get_data(as_text=True)))}


# (method, path, body, how the portfolio is named: "body", "query", "batch" or "listing", "none"; the roles
# admitted; what the answer says it acted on or showed)
ROUTES = [
    ("POST", "/process_trade", lambda p: {**SEED_INTENT, "confidence_score": 0.3}, "body query", {"trader"}, _decision),
    ("POST", "/process_trades", lambda p: {"intents": [{**SEED_INTENT, "confidence_score": 0.3}] * 2}, "batch query",
     {"trader"}, lambda r: {d["portfolio_id"] for d in r.json["decisions"]}),
    ("POST", "/what_if", lambda p: dict(SEED_INTENT), "body query", {"trader", "admin"},
     lambda r: {r.json["decision"]["intent"]["portfolio_id"]}),
    ("POST", "/marks", lambda p: {"prices": {"EURUSD": 1.1}}, "body query", {"trader"},
     lambda r: {r.json["portfolio_state"]["portfolio_id"]}),
    ("POST", "/fills", lambda p: {"decision_id": "none", "filled_units": 1, "fill_price": 1.1}, "body query",
     {"trader"}, None),
    ("POST", "/positions/EURUSD/close", lambda p: {"price": 1.1}, "body query", {"trader"}, None),
    ("POST", "/positions/EURUSD/correct", lambda p: {"units": 0, "reason": "matrix"}, "body query", {"admin"},
     lambda r: {r.json["portfolio_id"]}),
    ("POST", "/capital", lambda p: {"amount": 1, "reason": "matrix"}, "body query", {"admin"},
     lambda r: {r.json["portfolio_id"]}),
    ("GET", "/portfolio", None, "query", set(ROLES), lambda r: {r.json["portfolio_id"]}),
    ("GET", "/portfolio/equity", None, "query", set(ROLES), lambda r: {r.json["portfolio_id"]}),
    ("GET", "/health", None, "query", set(ROLES), lambda r: {r.json["portfolio_state"]["portfolio_id"]}),
    ("GET", "/metrics", None, "query", set(ROLES), lambda r: {r.json["portfolio_id"]}),
    ("GET", "/metrics?format=prometheus", None, "query listing", set(ROLES), _prometheus),
    ("GET", "/config", None, "query", set(ROLES), lambda r: {r.json["portfolio_id"]}),
    ("PUT", "/config", lambda p: {"config": {}, "reason": "matrix"}, "body query", {"admin"},
     lambda r: {r.json["portfolio_id"]}),
    ("GET", "/instruments", None, "query", set(ROLES), lambda r: {r.json["portfolio_id"]}),
    ("PUT", "/instruments", lambda p: {"instruments": {}, "reason": "matrix"}, "body query", {"admin"},
     lambda r: {r.json["portfolio_id"]}),
    ("POST", "/halt", lambda p: {"reason": "matrix"}, "body query", {"admin"}, lambda r: {r.json["portfolio_id"]}),
    ("POST", "/resume", lambda p: {"force": True, "reason": "matrix"}, "body query", {"admin"},
     lambda r: {r.json["portfolio_id"]}),
    ("GET", "/portfolios", None, "listing", set(ROLES), lambda r: {p["portfolio_id"] for p in r.json["portfolios"]}),
    ("POST", "/portfolios", lambda p: {"portfolio_id": p or "default"}, "body", {"admin"}, None),  # all exist: 409
    ("GET", "/decisions", None, "query listing", {"compliance", "admin"},
     lambda r: {d["portfolio_id"] for d in r.json["decisions"]}),
    ("GET", "/decisions?format=csv", None, "query listing", {"compliance", "admin"}, _csv),
    ("GET", "/decisions/{id}", None, "listing", {"compliance", "admin"}, None),
    ("GET", "/decisions/{id}/proof", None, "listing", {"compliance"}, None),
    ("GET", "/audit/events", None, "query", {"compliance", "admin"}, lambda r: {r.json["chain"]}),
    ("GET", "/audit/verify", None, "listing", {"compliance"}, lambda r: {c["chain"] for c in r.json["chains"]}),
    ("POST", "/replay", lambda p: {}, "body query", {"compliance"}, lambda r: {r.json["summary"]["portfolio_id"]}),
    ("GET", "/whoami", None, "none", set(ROLES), None),
    # the firm and its groups: keys not limited to portfolios only
    ("GET", "/firm", None, "firm", set(ROLES), None),
    ("POST", "/firm/marks", lambda p: {"prices": {"EURUSD": 1.1}}, "firm", {"trader", "admin"}, None),
    ("GET", "/groups", None, "firm", set(ROLES), None),
    ("POST", "/groups", lambda p: {"group_id": "matrix"}, "firm", {"admin"}, None),
    ("GET", "/groups/firm", None, "firm", set(ROLES), None),
    ("PUT", "/groups/firm/limits", lambda p: {"limits": {}}, "firm", {"admin"}, None),
    ("POST", "/groups/firm/members", lambda p: {"portfolio_id": "default"}, "firm", {"admin"}, None),
    ("POST", "/groups/firm/halt", lambda p: {"reason": "matrix"}, "firm", {"admin"}, None),
    ("POST", "/groups/firm/resume", lambda p: {}, "firm", {"admin"}, None),
    ("GET", "/reports/eod?date=2026-03-02", None, "firm", {"compliance", "admin"}, None),
    # risk events: the stream shows a key its portfolios' (test_events_served); webhooks are the deployment's
    ("GET", "/events?follow=false", None, "none", set(ROLES), None),
    ("GET", "/webhooks", None, "firm", {"admin"}, None),
    ("POST", "/webhooks", lambda p: {"url": "http://127.0.0.1:9/matrix"}, "firm", {"admin"}, None),
    ("GET", "/webhooks/{hook}", None, "firm", {"admin"}, None),
    ("DELETE", "/webhooks/{hook}", lambda p: {}, "firm", {"admin"}, None),
    ("GET", "/webhooks/{hook}/deliveries", None, "firm", {"admin"}, None),
    ("POST", "/webhooks/{hook}/deliveries/retry", lambda p: {}, "firm", {"admin"}, None),
]


@pytest.fixture
def world(app, client, keys):
    """Three portfolios with a decision each; for every role a key for all portfolios and one limited to OWN."""
    for pid in (OWN, OTHER):
        assert client.post("/portfolios", json={"portfolio_id": pid}).status_code == 201
    ids = {}
    for pid in ("default", OWN, OTHER):
        ids[pid] = client.post("/process_trade", json={**SEED_INTENT, "portfolio_id": pid}).json["decision"]["id"]
    store, setup = app.extensions["rpm_keys"], Actor("matrix", "admin")
    made = {}
    for role in ROLES:
        made[(role, "all")] = store.create(role, f"{role}-all", None, setup)[0]
        made[(role, "own")] = store.create(role, f"{role}-own", [OWN], setup)[0]
    return made, ids


def test_every_protected_route_declares_what_it_acts_on_and_the_matrix_covers_it(app):
    declared = set()
    for rule in app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            is_public, _ = declaration(app, rule.endpoint, method)
            if not is_public:
                assert scope_declared(app, rule.endpoint, method) is not None, (method, rule.rule)
                declared.add((method, rule.rule.replace("<string:symbol>", "EURUSD")
                              .replace("<string:decision_id>", "{id}").replace("<string:group_id>", "firm")
                              .replace("<string:webhook_id>", "{hook}")))
    assert declared == {(m, p.split("?")[0]) for m, p, *_ in ROUTES}


def test_the_scope_matrix(raw_client, world):
    keys, ids = world
    wrong = []
    cells = 0
    for method, path, body_of, naming, admitted, shown in ROUTES:
        for role in ROLES:
            for limit in ("all", "own"):
                visible = {OWN} if limit == "own" else None
                for target in (OWN, OTHER, None):
                    for where in naming.split():
                        cells += 1
                        got, want = _cell(raw_client, keys[(role, limit)], ids, method, path, body_of, where,
                                          target, role in admitted, visible, shown)
                        if got != want:
                            wrong.append(f"{method} {path} as {role}/{limit}, {target or 'no portfolio'} in {where}: "
                                         f"got {got}, want {want}")
    assert wrong == [], f"{len(wrong)} of {cells} cells differ:\n" + "\n".join(wrong)


def _cell(client, key, ids, method, path, body_of, where, target, admitted, visible, shown):
    """(what happened, what should have): a status class and the portfolios the answer acted on or showed."""
    named = target or "default"
    url, _, fixed = path.replace("{id}", ids[named]).replace("{hook}", NO_WEBHOOK).partition("?")
    query = dict(part.split("=") for part in fixed.split("&") if part)
    body = body_of(target) if body_of else None
    if where == "query" and target is None and query.get("format") == "prometheus":
        where = "listing"  # the exposition without a portfolio named shows every one the key may see
    if where == "query" and target:
        query["portfolio_id"] = target
    elif where == "body" and target and "portfolio_id" not in body:
        body["portfolio_id"] = target
    elif where == "batch" and target:
        body = {"intents": [{**i, "portfolio_id": target} for i in body["intents"]]}
    listing = where in ("listing", "none")
    if listing and url == "/decisions":
        query["portfolio_id"] = "*"
    r = client.open(url, method=method, json=body, query_string=query, headers={"Authorization": f"Bearer {key}"})
    if not admitted:
        return r.status_code, 403
    if where == "firm":  # (no portfolio named: the key must be one of every portfolio)
        if visible is not None:
            return r.status_code, 403
        return ("allowed" if r.status_code < 500 and r.status_code not in (401, 403) else r.status_code), "allowed"
    if where == "none":
        return r.status_code, 200
    if listing:
        if path.startswith("/decisions/{id}"):  # a decision of a portfolio the key cannot see does not exist for it
            return r.status_code, 200 if visible is None or named in visible else 404
        seen = shown(r) if r.status_code == 200 else set()
        return (r.status_code, bool(seen) and (visible is None or seen <= visible)), (200, True)
    if visible is not None and named not in visible:
        return r.status_code, 403
    if r.status_code in (401, 403) or r.status_code >= 500:
        return r.status_code, "allowed"
    return (shown(r) if shown else "allowed"), ({named} if shown else "allowed")

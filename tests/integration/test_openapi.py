"""The OpenAPI document drives a client: every operation tried from its examples alone (as /docs' "Try it out"
does) and answered as documented; a client generated from it works against a real server; docs/api.md is
generated from it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import schemathesis
from werkzeug.test import EnvironBuilder, TestResponse
from werkzeug.wrappers import Request

from app.api.openapi import examples
from app.services import Actor

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "put", "post", "delete", "patch")
# examples that name what a database mints (a decision's or a webhook's id): elsewhere unknown, a 404
MINTED = {"POST /fills", "GET /decisions/{decision_id}", "GET /decisions/{decision_id}/proof",
          "GET /webhooks/{webhook_id}", "DELETE /webhooks/{webhook_id}", "GET /webhooks/{webhook_id}/deliveries",
          "POST /webhooks/{webhook_id}/deliveries/retry"}
ROLE_PREFERENCE = ("trader", "admin", "compliance", "market-data", "viewer")


def operations(doc: dict) -> dict[str, tuple[str, str, dict, dict]]:
    """"METHOD /path" -> (method, path, path item, operation), for every operation of the document."""
    return {f"{m.upper()} {path}": (m, path, item, item[m])
            for path, item in doc["paths"].items() for m in METHODS if m in item}


def query_value(value) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def request_of(path: str, item: dict, operation: dict) -> tuple[str, dict | None]:
    """The URL and body /docs would send: the document's examples, nothing else."""
    parameters = [*item.get("parameters", []), *operation.get("parameters", [])]
    for p in parameters:
        assert "example" in p or not p.get("required"), f"{path}: required parameter {p['name']} has no example"
    url = path.format(**{p["name"]: quote(str(p["example"]), safe="") for p in parameters
                         if p["in"] == "path"})
    query = {p["name"]: query_value(p["example"]) for p in parameters if p["in"] == "query" and "example" in p}
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        assert "example" in body, f"{path}: a request body and no example"
    return url + ("?" + urlencode(query) if query else ""), None if body is None else body["example"]


def as_response(body, status: int, media: str) -> TestResponse:
    data = json.dumps(body).encode() if media == "application/json" else body.encode()
    return TestResponse([data], status, {"Content-Type": media}, request=Request(EnvironBuilder().get_environ()))


@pytest.fixture
def every_role_keys(app, keys):
    store = app.extensions["rpm_keys"]
    made = {role: store.create(role, f"test-{role}", None, Actor("test-setup", "admin"))[0]
            for role in ("viewer", "market-data")}
    return {**keys, **made}


def test_every_operation_tried_from_its_examples_alone_is_answered_as_documented(app, raw_client, every_role_keys,
                                                                                 clock):
    clock.now = datetime.now(UTC)  # the examples' dates (an end-of-day report) are days that have begun
    doc = raw_client.get("/openapi.json").json
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "an RPM API key"}
    schema = schemathesis.openapi.from_dict(doc)
    ops = operations(doc)
    order = list(examples()["operations"])  # the order the examples were taken in: a portfolio's day
    assert set(order) == set(ops), "every operation has its examples, and only those"
    answered = {}
    for key in order:
        method, path, item, operation = ops[key]
        url, body = request_of(path, item, operation)
        headers = {}
        if operation.get("security"):
            role = next(r for r in ROLE_PREFERENCE if r in operation["x-roles"])
            headers["Authorization"] = f"Bearer {every_role_keys[role]}"
        response = raw_client.open(url, method=method.upper(), json=body, headers=headers)
        status = response.status_code
        assert status not in (400, 422), (key, response.get_data(as_text=True))
        assert status < 500, (key, response.get_data(as_text=True))
        assert str(status) in operation["responses"], (key, status)
        expected = 404 if key in MINTED else None
        assert (status == expected) if expected else 200 <= status < 300, (key, status, response.get_data(as_text=True))
        schema[path][method.upper()].validate_response(response)
        answered[key] = response
    # the response examples: valid too, and still the shape of the service's answers
    for key, (method, path, _item, operation) in ops.items():
        for status, documented in operation["responses"].items():
            for media, content in documented.get("content", {}).items():
                assert "example" in content, (key, status, media)
                schema[path][method.upper()].validate_response(as_response(content["example"], int(status), media))
                real = answered[key]
                if str(real.status_code) == status and real.is_json and media == "application/json":
                    assert set(content["example"]) == set(real.json), (key, status)


def test_the_document_declares_one_error_body_for_every_error_answer(raw_client):
    doc = raw_client.get("/openapi.json").json
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "status", "message", "errors"}
    assert error["additionalProperties"] is True  # a fill's 409 adds its `decision_id`, a 429 `retry_after`...
    for key, (_m, _p, _item, operation) in operations(doc).items():
        for status, response in operation["responses"].items():
            if status != "default" and int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, \
                    (key, status)
        if operation.get("security"):
            assert {"401", "403", "429"} <= set(operation["responses"]), key
    approved = doc["components"]["schemas"]["ApprovedTrade"]
    assert "position_units" in approved["required"]
    decision = doc["components"]["schemas"]["Decision"]["properties"]["approved_trade"]
    assert decision == {"allOf": [{"$ref": "#/components/schemas/ApprovedTrade"}], "nullable": True}


def test_the_api_reference_is_generated_from_the_current_document():
    from app.api.reference import document, render

    assert (ROOT / "docs" / "api.md").read_text(encoding="utf-8") == render(document()), \
        "docs/api.md is stale: python -m app.api.reference > docs/api.md"


@pytest.mark.slow
def test_a_client_generated_from_the_document_trades_reads_and_halts_against_a_real_server(
        servers, database_url, app, every_role_keys, tmp_path, monkeypatch, request):
    server = servers({"DATABASE_URL": database_url}, workers=1, threads=4)
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=10) as answer:
        (tmp_path / "openapi.json").write_bytes(answer.read())
    # (no post-hooks: they would run ruff from PATH over the generated code, warning when there is none)
    (tmp_path / "config.yaml").write_text("post_hooks: []\npackage_name_override: rpm_generated\n")
    made = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate",
                           "--path", str(tmp_path / "openapi.json"), "--output-path", str(tmp_path / "out" / "rpm_generated"),
                           "--meta", "none", "--config", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=300)
    output = made.stdout + made.stderr
    assert made.returncode == 0, output
    assert "warning" not in output.lower() and "skipping" not in output.lower(), output
    monkeypatch.syspath_prepend(str(tmp_path / "out"))

    from rpm_generated import AuthenticatedClient
    from rpm_generated.api.admin import post_halt, post_resume
    from rpm_generated.api.monitoring import get_portfolio
    from rpm_generated.api.trading import post_process_trade
    from rpm_generated.models import Error, Halt, ProcessTradeResponse, Resume, TradeIntent

    def client(role: str) -> AuthenticatedClient:
        return AuthenticatedClient(base_url=server.url, token=every_role_keys[role], raise_on_unexpected_status=True)

    trader, admin = client("trader"), client("admin")
    # (their connections closed at the end: each holds an httpx client)
    request.addfinalizer(lambda: [c.get_httpx_client().close() for c in (trader, admin)])
    intent = TradeIntent.from_dict(dict(symbol="EURUSD", direction=1, confidence_score=0.75, regime="TRENDING",
                                        atr=0.001, vol_percentile=0.5, current_price=1.1, intent_id="generated-1"))
    answer = post_process_trade.sync(client=trader, body=intent)
    assert isinstance(answer, ProcessTradeResponse)
    assert answer.decision.status == "APPROVED"
    units = answer.decision.approved_trade.position_units
    assert isinstance(units, float) and units > 0
    assert answer.portfolio_state.positions[0].units == units

    portfolio = get_portfolio.sync(client=trader, portfolio_id="default")
    assert portfolio.portfolio_id == "default" and portfolio.positions[0].symbol == "EURUSD"
    assert portfolio.exposures.gross > 0

    refused = post_process_trade.sync_detailed(client=trader, body=TradeIntent.from_dict({**intent.to_dict(),
                                                                                         "atr": -1.0}))
    assert refused.status_code == 422 and isinstance(refused.parsed, Error)
    assert refused.parsed.code == 422 and "atr" in refused.parsed.errors.to_dict()
    unknown = get_portfolio.sync_detailed(client=trader, portfolio_id="nope")
    assert unknown.status_code == 404 and isinstance(unknown.parsed, Error)
    assert unknown.parsed.message == "unknown portfolio 'nope'"
    forbidden = post_halt.sync_detailed(client=trader, body=Halt(reason="a trader may not"))
    assert forbidden.status_code == 403 and forbidden.parsed.required_roles == ["admin"]

    halted = post_halt.sync(client=admin, body=Halt(reason="central bank announcement"))
    assert halted.trading_state == "HALTED" and halted.tripped_switches == ["manual_halt"]
    rejected = post_process_trade.sync(client=trader, body=TradeIntent.from_dict({**intent.to_dict(),
                                                                                  "intent_id": "generated-2"}))
    assert rejected.decision.status == "REJECTED" and rejected.decision.rejected_trade.reason_code == "HALTED"
    resumed = post_resume.sync(client=admin, body=Resume())
    assert resumed.trading_state == "ACTIVE"

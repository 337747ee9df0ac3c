"""Fuzzing: schemathesis over the OpenAPI document with valid keys, and hostile hypothesis payloads."""

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ..conftest import SEED_INTENT


@pytest.fixture
def api_schema(app, keys):
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_breaks_the_api_or_its_document(case, keys):
    """Every generated request, as every kind of key: no 5xx, nothing the document says is invalid accepted,
    every answer as documented."""
    for key in (keys["trader"], keys["compliance"], keys["admin"], keys["trader_elsewhere"]):
        headers = {"Authorization": f"Bearer {key}"}
        if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
            headers = {}  # a negative case about headers (e.g. no Authorization) must go out as generated
        # every check but positive_data_acceptance: OpenAPI 3.0 cannot state the semantic rules RPM enforces
        # with a 422 or 403 on schema-valid requests - a symbol must be an FX pair or in the portfolio's
        # instrument table (also as a key of `prices`), body and query must not name different portfolios, a
        # replay takes a preset or a config but not both, a cursor must be one the API returned, a
        # configuration names only known parameters, a role or a portfolio the key may not use. Each of
        # those is tested on its own elsewhere (test_bad_inputs, test_scope, test_access).
        if case.operation.path == "/events":  # a stream never ends by itself: the catch-up that does
            case.query = {**(case.query or {}), "follow": "false"}
        case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.sampled_from([0, -1, 1, 2, 1.5, -0.0, 1e308, "EURUSD", "", "TRENDING"]))
hostile_intents = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(sorted(SEED_INTENT) + ["intent_id", "portfolio_id", "extra"]), field_values),
    st.builds(lambda k, v: {**SEED_INTENT, k: v}, st.sampled_from(sorted(SEED_INTENT)), field_values),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=hostile_intents)
def test_hostile_payloads_get_a_json_4xx_and_write_nothing(client, sql, payload):
    before = sql("SELECT count(*) FROM decisions")[0][0]
    r = client.post("/process_trade", data=json.dumps(payload, allow_nan=True), content_type="application/json")
    assert r.status_code < 500, r.get_data(as_text=True)
    assert r.is_json
    if r.status_code != 200:
        assert 400 <= r.status_code < 500
        assert set(r.json) >= {"code", "status", "message", "errors"}
        assert sql("SELECT count(*) FROM decisions")[0][0] == before

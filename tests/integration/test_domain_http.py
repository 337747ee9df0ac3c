"""The domain through HTTP (hypothesis): every request is a decision (200) or a 4xx, never a 5xx; a request
with any value outside the domain is never accepted; what is accepted is stored and verifies."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.risk import domain
from app.risk.config import REGIMES

from ..conftest import SEED_INTENT

BOUNDS = {"confidence_score": domain.UNIT_INTERVAL, "vol_percentile": domain.UNIT_INTERVAL, "atr": domain.ATR,
          "current_price": domain.PRICE}


def numbers(bounds: domain.Bounds):
    """In the domain (its edges included) and out of it: subnormal, huge, just outside, integers, NaN."""
    inside = st.one_of(st.sampled_from([bounds.low, bounds.high]), st.floats(bounds.low, bounds.high))
    outside = st.one_of(
        st.sampled_from([5e-324, 2.2250738585072014e-308, 1e-300, 1e300, 1.7976931348623157e308, -0.0, -1.0,
                         bounds.high * 1.0000001, float("nan"), float("inf"), 10**30, -(10**30)]),
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
        st.integers(-(10**40), 10**40),
    )
    return st.one_of(inside, inside, outside)


def strings(valid):
    """Valid identifiers and any text: control, non-ASCII, lone surrogates, trailing newlines."""
    return st.one_of(st.sampled_from(valid), st.sampled_from([v + "\n" for v in valid]),
                     st.text(alphabet=st.characters(), max_size=40))


intents = st.fixed_dictionaries(
    {"symbol": strings(["EURUSD", "GBPUSD", "USDJPY"]), "direction": st.sampled_from([1, -1, 0, 2, True, 1.0]),
     "regime": strings(list(REGIMES)), **{name: numbers(bounds) for name, bounds in BOUNDS.items()}},
    optional={"intent_id": strings(["sig-1", "=SUM(1)", "x" * 128]), "portfolio_id": strings(["default"])},
)


def valid(intent) -> bool:
    symbol = intent["symbol"]
    return (domain.FX_PAIR.matches(symbol) and symbol[:3] != symbol[3:]
            and type(intent["direction"]) is int and intent["direction"] in (1, -1) and intent["regime"] in REGIMES
            and all(bounds.contains(intent[name]) for name, bounds in BOUNDS.items())
            and ("intent_id" not in intent or domain.INTENT_ID.matches(intent["intent_id"]))
            and intent.get("portfolio_id", "default") == "default")


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(intent=intents, path=st.sampled_from(["/process_trade", "/what_if"]))
def test_an_intent_is_a_decision_or_a_4xx_never_a_5xx(client, sql, intent, path):
    r = client.post(path, data=json.dumps(intent, allow_nan=True), content_type="application/json")
    assert r.status_code < 500, r.get_data(as_text=True)
    assert r.is_json
    if valid(intent):
        assert r.status_code in (200, 409), (intent, r.json)  # 409: an intent id reused with another payload
    else:
        assert 400 <= r.status_code < 500, (intent, r.json)
        assert r.json["errors"]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(prices=st.dictionaries(strings(["EURUSD", "USDJPY"]), numbers(domain.PRICE), min_size=1, max_size=3))
def test_marks_are_applied_or_refused_never_a_5xx(client, sql, prices):
    accepted = all(domain.FX_PAIR.matches(s) and s[:3] != s[3:] and domain.PRICE.contains(p) for s, p in prices.items())
    before = sql("SELECT symbol, price FROM marks ORDER BY symbol")
    r = client.post("/marks", data=json.dumps({"prices": prices}, allow_nan=True), content_type="application/json")
    assert r.status_code < 500, r.get_data(as_text=True)
    if accepted:
        assert r.status_code in (200, 422), r.json  # 422: the books would be valued past their range
    else:  # 400 for text no UTF-8 can hold (a lone surrogate), else 422
        assert r.status_code in (400, 422), (prices, r.json)
    if r.status_code != 200:
        assert sql("SELECT symbol, price FROM marks ORDER BY symbol") == before


def test_what_was_accepted_verifies(client):
    """After the generated traffic of a session the chain still verifies (run last in this module)."""
    client.post("/process_trade", json=SEED_INTENT)
    assert client.get("/audit/verify").json["ok"] is True

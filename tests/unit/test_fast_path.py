"""The fast path's check of a trade intent never accepts what the API's schema refuses, and loads
what it accepts exactly as the schema does (app/api/fast.py)."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError

from app.api.fast import FIELDS, batch_fields, intent_fields
from app.api.schemas import MAX_BATCH, TradeIntentSchema
from app.api.trades import TradeBatchSchema

SCHEMA = TradeIntentSchema()
VALID = dict(symbol="EURUSD", direction=1, confidence_score=0.75, regime="TRENDING", atr=0.001,
             vol_percentile=0.5, current_price=1.1)

# the edges of every rule: 0 and 1 (unit interval), 0 and 1e15 (positive), 1 and -1 (direction), types
edges = st.sampled_from([0, 0.0, -0.0, 1, 1.0, -1, 2, 1.5, 0.5, 1e-300, 1e15, 1e15 + 2, 2e15, 10**15, 10**15 + 1,
                         10**400, -1e-9, 1.0000000000000002])
scalars = st.one_of(
    edges, edges, st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.floats(min_value=0, max_value=1), st.floats(min_value=1e14, max_value=2e15),
    st.sampled_from(["EURUSD", "eurusd", "BTC-USD", "EURUSD\n", "", "TRENDING", "STRESSED", "trending",
                     "p-1", "a" * 128, "a" * 129, "fx_desk", "bad id", "AAPL", "X" * 33]),
    st.text(max_size=8),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=3), scalars, max_size=2))
names = st.sampled_from(sorted(FIELDS) + ["extra", "Symbol"])


def schema_load(body):
    try:
        return SCHEMA.load(body)
    except ValidationError:
        return None


def same(a, b):
    """Equal values of the same types (1 and 1.0 are not the same load)."""
    return a.keys() == b.keys() and all(type(a[k]) is type(b[k]) and a[k] == b[k] for k in a)


@settings(max_examples=3000, deadline=None)
@given(base=st.booleans(), changes=st.dictionaries(names, values, max_size=4), drop=st.sets(names, max_size=2))
def test_never_accepts_what_the_schema_refuses_and_loads_the_same(base, changes, drop):
    body = {**(VALID if base else {}), **changes}
    for name in drop:
        body.pop(name, None)
    fast, schema = intent_fields(body), schema_load(body)
    if fast is not None:
        assert schema is not None and same(fast, schema), (body, fast, schema)


@settings(max_examples=500, deadline=None)
@given(confidence=st.floats(0, 1), vol=st.floats(0, 1), atr=st.floats(1e-9, 1e15), price=st.floats(1e-9, 1e15),
       direction=st.sampled_from([1, -1]), regime=st.sampled_from(["TRENDING", "RANGING", "VOLATILE", "STRESSED"]),
       intent_id=st.text(min_size=1, max_size=128), extra=st.sampled_from([{}, {"portfolio_id": "fx-desk_1"}]))
def test_a_plainly_valid_intent_takes_the_fast_path(confidence, vol, atr, price, direction, regime, intent_id, extra):
    body = dict(symbol="GBPUSD", direction=direction, confidence_score=confidence, regime=regime, atr=atr,
                vol_percentile=vol, current_price=price, intent_id=intent_id, **extra)
    fast = intent_fields(body)
    assert fast is not None and same(fast, SCHEMA.load(body))


def test_numbers_as_the_schema_takes_them():
    assert type(intent_fields({**VALID, "atr": 1, "confidence_score": 1})["atr"]) is float  # ints become floats
    for bad in ({"direction": 1.0}, {"direction": True}, {"confidence_score": True}, {"atr": 0},
                {"current_price": 2e15}, {"atr": 10**400}, {"vol_percentile": math.inf}, {"intent_id": ""},
                {"portfolio_id": None}, {"regime": None}, {"unknown": 1}):
        assert intent_fields({**VALID, **bad}) is None, bad
        assert schema_load({**VALID, **bad}) is None, bad
    assert intent_fields([VALID]) is None and intent_fields("x") is None
    assert intent_fields({k: v for k, v in VALID.items() if k != "atr"}) is None


BATCH = TradeBatchSchema()


def batch_schema_load(body):
    """What the batch's marshmallow schema alone gives (its ``load`` tries the fast path first)."""
    try:
        return Schema.load(BATCH, body)
    except ValidationError:
        return None


intents = st.builds(lambda base, changes: {**(VALID if base else {}), **changes}, st.booleans(),
                    st.dictionaries(names, values, max_size=2))


@settings(max_examples=1500, deadline=None)
@given(items=st.one_of(st.lists(intents, max_size=3), values), extra=st.dictionaries(st.sampled_from(["x", "intent"]),
                                                                                     values, max_size=1))
def test_a_batch_is_never_accepted_where_the_schema_refuses_it_and_loads_the_same(items, extra):
    body = {"intents": items, **extra}
    fast, schema = batch_fields(body), batch_schema_load(body)
    if fast is not None:
        assert schema is not None and len(fast["intents"]) == len(schema["intents"]), (body, fast, schema)
        assert all(same(f, s) for f, s in zip(fast["intents"], schema["intents"], strict=True))
    if schema is None:
        assert fast is None
    else:  # the endpoint's load, whichever way it goes
        assert BATCH.load(body) == schema


def test_batches_of_plainly_valid_intents_take_the_fast_path_up_to_the_limit():
    plain = {"intents": [{**VALID, "intent_id": f"i{n}"} for n in range(MAX_BATCH)]}
    assert batch_fields(plain) == batch_schema_load(plain) == BATCH.load(plain)
    for refused in ({"intents": []}, {"intents": plain["intents"] + [VALID]}, {"intents": [VALID], "more": 1},
                    {"intents": [VALID, {**VALID, "atr": -1}]}, {"intents": (VALID,)}, [VALID], None):
        assert batch_fields(refused) is None, refused

"""The canonical form the audit hashes cover: one text per number, however it was written."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from app.store.audit import _decimal_text, _plain, canonical


def reference(number: float | int) -> str:
    """The definition: the normalized decimal of the number's repr."""
    return _decimal_text(Decimal(repr(number)))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_text_is_the_normalized_decimal(x):
    assert _plain(x) == reference(x)


@given(st.integers())
def test_int_text_is_the_normalized_decimal(n):
    assert _plain(n) == reference(n)


def test_numbers_written_differently_have_one_text():
    assert _plain(100.0) == _plain(100) == _plain(Decimal("100.0000000000")) == "100"
    assert _plain(-0.0) == _plain(0) == "0"
    assert _plain(1e16) == _plain(10**16) == "10000000000000000"
    assert _plain(1e-7) == _plain(Decimal("1E-7")) == "0.0000001"
    assert _plain(1.1) == _plain(Decimal("1.1000")) == "1.1"


def test_structures_and_times():
    at = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert _plain({"a": [1.5, (2, None)], 3: True, "t": at}) == {
        "a": ["1.5", ["2", None]], "3": True, "t": "2026-03-02T12:00:00.000000+00:00"}
    assert canonical("decision", {"b": 2.0, "a": "x"}) == '{"a":"x","b":"2","kind":"decision"}'


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=300))
def test_packed_intent_times_round_trip_exactly(times):
    from app.store.repository import pack_times, unpack_times

    packed = pack_times(tuple(times))
    assert isinstance(packed, str) and packed.startswith("f64le:")
    assert unpack_times(packed) == tuple(times)


def test_intent_times_written_as_a_list_still_read():
    from app.store.repository import unpack_times

    assert unpack_times([1.5, 2.25]) == (1.5, 2.25)
    assert unpack_times(None) == ()


_plain_leaves = st.none() | st.booleans() | st.text()
_plain_values = st.recursive(_plain_leaves, lambda inner: st.lists(inner, max_size=4)
                             | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)


@given(st.dictionaries(st.text(max_size=10), _plain_values, max_size=6))
def test_canonical_json_is_json_dumps_sorted_compact_ascii(body):
    import json

    from app.store.audit import _dumps

    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=str)
    assert _dumps(body) == expected


def test_canonical_json_of_every_ascii_character_and_beyond():
    import json

    from app.store.audit import _dumps

    body = {chr(c): chr(c) * 2 for c in range(0, 200)} | {"\u2603": ["\U0001f600", None, True]}
    assert _dumps(body) == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

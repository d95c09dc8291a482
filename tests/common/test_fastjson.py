"""testbed_common.fastjson reads and writes what the stdlib json module reads and writes: same values, same errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed_common import fastjson

# JSON values, with what orjson treats differently from json: big ints, non-finite floats, any code point
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5), max_leaves=20
)


def same(a: object, b: object) -> bool:
    """Equal values of equal types, NaN equal to NaN."""
    if type(a) is not type(b) and not (isinstance(a, float) and isinstance(b, float)):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def outcome(fn, raw):
    try:
        return "ok", fn(raw)
    except (ValueError, RecursionError) as e:
        return type(e).__name__, str(e)


@given(values, st.booleans())
def test_loads_gives_what_json_gives(value, ascii_only):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    a, b = outcome(fastjson.loads, raw), outcome(json.loads, raw)
    assert a[0] == b[0]
    assert same(a[1], b[1]) if a[0] == "ok" else a[1] == b[1]


@pytest.mark.parametrize(
    "raw",
    [b"1E400", b"-1e400", b"NaN", b"[Infinity,-Infinity]", b"18446744073709551616", b"-9223372036854775809",
     b"\xef\xbb\xbf{}", b'"\\ud800"', b"", b"  ", b"\xff", b"{}\x00", b'"\x1f"', b"[" * 3000, b'{"a":1,"a":2}',
     b"[1.0000000000000002]", b"123456789012345678901234567890.5"],
)
def test_loads_edge_cases_and_errors(raw):
    a, b = outcome(fastjson.loads, raw), outcome(json.loads, raw)
    assert a[0] == b[0]
    assert same(a[1], b[1]) if a[0] == "ok" else a[1] == b[1]


finite_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70) | st.floats(allow_nan=False,
    allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5), max_leaves=20,
)


@given(finite_values)  # non-finite floats: only those read by loads are written as json writes them (below)
def test_dumps_writes_what_json_reads_back(value):
    try:
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # lone surrogates: json's error, and ASCII escapes on request
        with pytest.raises(UnicodeEncodeError):
            fastjson.dumps(value)
        assert same(json.loads(fastjson.dumps(value, ensure_ascii=True)), value)
        return
    out = fastjson.dumps(value)
    assert same(json.loads(out), json.loads(expected))
    assert same(fastjson.loads(out), json.loads(expected))


def test_non_finite_floats_read_back_are_written_as_json_writes_them():
    raw = b'{"a":NaN,"b":[Infinity,-Infinity],"c":1e999}'
    assert fastjson.dumps(fastjson.loads(raw)) == json.dumps(json.loads(raw), separators=(",", ":")).encode()


def test_numpy_arrays_and_ints_are_written_as_lists_and_ints():
    out = fastjson.dumps({"ids": np.arange(3, dtype=np.int64), "n": np.int64(7), 1: np.arange(2)})
    assert json.loads(out) == {"ids": [0, 1, 2], "n": 7, "1": [0, 1]}


int64s = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


@given(st.lists(int64s, max_size=50), st.sampled_from([np.int64, np.int32, np.uint16, np.int8]), st.booleans())
def test_integer_arrays_are_written_as_the_lists_they_hold(xs, dtype, strided):
    """A 1-D integer array (any width, contiguous or a strided view) is written as ``json.dumps(arr.tolist())``;
    alongside a value only the stdlib writes (an int beyond 64 bits) too."""
    info = np.iinfo(dtype)
    arr = np.array([min(max(x, info.min), info.max) for x in xs], dtype=dtype)
    if strided:
        arr = arr[::2]
    expected = json.dumps(arr.tolist(), separators=(",", ":")).encode()
    assert fastjson.dumps(arr) == expected
    assert fastjson.dumps({"input_ids": arr}) == b'{"input_ids":' + expected + b"}"
    big = 1 << 70  # orjson refuses it: the stdlib fallback must still write the array as a list
    assert json.loads(fastjson.dumps([big, arr])) == [big, arr.tolist()]


@pytest.mark.parametrize(
    "raw",
    [b"12345678901234567890", b"[1,12345678901234567890]", b"-9223372036854775809", b"[0.00012345678901234567]",
     b"12345678901234567890.5", b"[12345678901234567890e-3,1]", b'{"a":1.2345678901234567890123e-5}',
     b'["digits 123456789012345678901 in a string"]', b"[1e-0000000000000000000001]", b"0.00012345678901234567",
     b"[0.1234567890123456789,123456789012345678901234]", b"18446744073709551615", b"[99999999999999999999]"],
)
def test_long_digit_runs_read_as_json_reads_them(raw):
    """Long integers go to json (orjson would read some as floats); long runs inside floats stay with orjson,
    which rounds them as json does."""
    a, b = fastjson.loads(raw), json.loads(raw)
    assert same(a, b), (a, b)


@given(st.lists(st.floats(min_value=-1e-3, max_value=1e-3, allow_nan=False) | st.integers(), max_size=20))
def test_small_floats_and_any_integers_read_as_json_reads_them(values):
    raw = json.dumps(values).encode()
    assert same(fastjson.loads(raw), json.loads(raw))


def test_a_float_with_a_long_digit_run_is_not_sent_to_json():
    assert not fastjson._has_long_integer(b"[0.00012345678901234567,1.5,-0.0001234567890123456]")
    assert fastjson._has_long_integer(b"[0.5,12345678901234567890]")
    assert fastjson._has_long_integer(b"12345678901234567890")


LONG_INTEGER = re.compile(rb"(?<![0-9.eE])[0-9]{19,}(?![0-9.eE])")  # the definition, read slowly


@given(st.lists(st.tuples(st.sampled_from([b"", b".", b"e", b"E", b"-", b",", b" ", b'"', b"x", b"\xff"]),
                          st.integers(0, 24)), max_size=12), st.booleans())
def test_the_long_integer_check_is_its_definition(pieces, as_bytearray):
    """Digit runs of every length around 19, next to what may or may not belong to a float."""
    data = b"".join(sep + (b"9876543210" * 3)[:length] for sep, length in pieces)
    data = bytearray(data) if as_bytearray else data
    assert fastjson._has_long_integer(data) == bool(LONG_INTEGER.search(data)), data


def test_raw_json_is_written_verbatim_and_as_its_value_where_json_writes():
    raw = b'{"b":1e-05, "a":[1,2,3],"s":"\xc3\xa9"}'  # spacing and spelling of its own: kept as they are
    doc = {"records": [{"response": fastjson.RawJSON(raw)}], "n": 1}
    assert fastjson.dumps(doc) == b'{"records":[{"response":' + raw + b'}],"n":1}'
    # an integer beyond 64 bits elsewhere sends the document to json, which writes the parsed value
    big = {**doc, "n": 2**70}
    assert json.loads(fastjson.dumps(big)) == {"records": [{"response": json.loads(raw)}], "n": 2**70}
    assert fastjson.RawJSON(raw).value() == json.loads(raw)
    assert fastjson.RawJSON(raw) == fastjson.RawJSON(bytes(raw)) != fastjson.RawJSON(b"{}")


def test_a_deferred_value_is_written_as_its_value_by_either_encoder():
    class Later(fastjson.Deferred):
        def value(self):
            return {"ids": np.arange(3), "x": 0.5}

    later = Later()
    assert fastjson.dumps({"r": later}) == b'{"r":{"ids":[0,1,2],"x":0.5}}'
    assert json.loads(fastjson.dumps({"r": later, "n": 2**70})) == {"r": {"ids": [0, 1, 2], "x": 0.5}, "n": 2**70}

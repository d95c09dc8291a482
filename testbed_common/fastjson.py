"""JSON through orjson where it gives exactly what the stdlib ``json`` module gives, else through ``json``.

The simulator's bodies carry thousands of token ids and cross several hops; orjson encodes them ~4x
and decodes them ~2x faster than ``json``. Where the two differ, the stdlib decides, so values and
error messages stay those of ``json``:

- ``loads``: orjson refuses what ``json`` accepts (``NaN``/``Infinity`` literals, numbers beyond
  float range, lone surrogate escapes, a UTF-8 BOM), and reads integers beyond 64 bits as floats;
  any text with a run of 19+ digits outside a float (an integer that may not fit, or digits in a
  string), or that orjson refuses, is parsed by ``json`` (which raises its
  own ``ValueError``/``RecursionError`` for bad input). Non-finite floats read that way come back as
  ``NonFinite`` (a ``float``), so that ``dumps`` writes them back as ``NaN``/``Infinity`` as ``json`` does.
- ``dumps``: orjson refuses what ``json`` writes (integers beyond 64 bits, non-string keys, lone
  surrogates, ``NonFinite``); those go to ``json.dumps`` (compact separators). A plain ``float``
  NaN/Infinity (one not read by ``loads``) is written as ``null``: the cores never compute one. numpy arrays and
  integers are written as lists and ints. Floats may be spelled differently (``1e-7`` vs ``1e-07``):
  same value.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

_LONG_RUN = 19  # shorter integers always fit in int64, so orjson reads them as json does
_FLOATY = frozenset(b".eE")  # what may stand next to a float's digits
_ZERO = np.uint8(48)
_WINDOW_SHIFTS = (1, 2, 4, 8, 3)  # windows of 2, 4, 8, 16, 19 (= _LONG_RUN) bytes
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class NonFinite(float):
    """NaN or +-Infinity read by ``loads`` (orjson would write them as ``null``)."""


def _parse_float(text: str) -> float:
    f = float(text)
    return f if math.isfinite(f) else NonFinite(f)


def _parse_constant(name: str) -> float:
    return NonFinite(name)


def _stdlib_loads(raw: bytes | bytearray | memoryview | str) -> Any:
    if isinstance(raw, memoryview):
        raw = bytes(raw)
    return json.loads(raw, parse_float=_parse_float, parse_constant=_parse_constant)


def _has_long_integer(data: bytes | bytearray) -> bool:
    """A run of 19+ digits with no ``.``/``e``/``E`` on either side: an integer token orjson may read as a
    float (or digits in a string: then json reads it, to be safe). Runs inside floats (``0.000123...`` with
    17 significant digits, long mantissas) are left to orjson, which rounds them as ``float()`` does.

    Vectorised: every body crosses this check before orjson, and a byte-wise scan cost as much as the parse."""
    n = len(data)
    if n < _LONG_RUN:
        return False
    # any run of 19 digits at all? window[i] = digit[i : i + w] all digits, for w doubling to 16, then 19: a few
    # cheap passes, and almost every body has none (then nothing else is looked at)
    is_digit = np.less(np.frombuffer(data, np.uint8) - _ZERO, 10)  # wraps below "0": not a digit
    window = is_digit
    for shift in _WINDOW_SHIFTS:
        window = window[:-shift] & window[shift:]
    if not window.any():
        return False
    digit = np.zeros(n + 2, np.bool_)  # padded with a non-digit on each side, so runs start and end in pairs
    digit[1:-1] = is_digit
    edges = np.flatnonzero(digit[1:] != digit[:-1])  # each run's first digit, then the index after its last
    starts, ends = edges[::2], edges[1::2]
    for k in np.flatnonzero(ends - starts >= _LONG_RUN).tolist():
        lo, hi = int(starts[k]), int(ends[k])
        if (lo == 0 or data[lo - 1] not in _FLOATY) and (hi == n or data[hi] not in _FLOATY):
            return True
    return False


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """``json.loads(raw)``: the same value, or the same exception."""
    if isinstance(raw, str):
        try:
            data = raw.encode()
        except UnicodeEncodeError:
            return _stdlib_loads(raw)
    else:
        data = raw if isinstance(raw, bytes | bytearray) else bytes(raw)
    if _has_long_integer(data):
        return _stdlib_loads(raw)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _stdlib_loads(raw)


class Deferred:
    """A JSON value held in another form until someone reads it: ``value()`` gives it as parsed JSON (the same
    object on every call; treat it as read-only). ``dumps`` writes a deferred value as its value."""

    __slots__ = ()

    def value(self) -> Any:
        raise NotImplementedError


class ChatAnswer(Deferred):
    """A 200 chat completion from an in-process upstream, its body built only when ``value()`` is asked for.

    What a session server and an agent read of a body is at hand typed, equal to the body's fields once built:
    ``message`` (``choices[0].message``), ``prompt_ids`` (``choices[0].prompt_token_ids``, a read-only int64
    array), ``output_ids`` (the ids of ``choices[0].meta_info.output_token_logprobs``, a read-only int64
    array) and ``sim`` (the body's ``sim`` object). Most bodies of a simulation are never read whole (a
    session's records are counted, not read): their thousands of per-token objects are never made."""

    __slots__ = ()
    message: dict[str, Any]
    prompt_ids: np.ndarray
    output_ids: np.ndarray
    sim: dict[str, Any]


class RawJSON(Deferred):
    """A JSON document kept as the bytes it arrived in, written back verbatim by ``dumps``.

    For stored documents that are written out again but not read (the session server's records of upstream
    answers): no Python objects for their thousands of token ids to hold in memory or for the cyclic GC to
    traverse, and no re-encoding. ``value()`` parses it."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def value(self) -> Any:
        return loads(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawJSON) and other.raw == self.raw

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RawJSON({self.raw[:60]!r}{'...' if len(self.raw) > 60 else ''})"


def _orjson_default(obj: Any) -> Any:
    if type(obj) is RawJSON:
        return orjson.Fragment(obj.raw)
    return _default(obj)


def _default(obj: Any) -> Any:
    if isinstance(obj, Deferred):  # json.dumps cannot splice bytes in: it writes the parsed value
        return obj.value()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any, *, ensure_ascii: bool = False) -> bytes:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=...).encode()``, as far as values go.

    With ``ensure_ascii=False`` a string with lone surrogates raises ``UnicodeEncodeError``, as
    ``json.dumps(...).encode()`` does."""
    try:
        return orjson.dumps(obj, default=_orjson_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=ensure_ascii, default=_default).encode()

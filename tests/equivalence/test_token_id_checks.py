"""The vectorised token-id checks accept and refuse exactly what the per-item rules accept and refuse."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from session_server.errors import UpstreamResponseError
from session_server.upstream import chat_parts
from sim.worker.request import MAX_TOKEN_ID, BadRequest, _token_ids

items = (
    st.integers(min_value=0, max_value=MAX_TOKEN_ID)
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=2)
    | st.none()
)
id_lists = st.lists(items, max_size=8) | st.lists(st.integers(min_value=0, max_value=MAX_TOKEN_ID), max_size=8)


def valid_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_TOKEN_ID for t in value
    )


@given(id_lists)
def test_worker_accepts_exactly_non_empty_lists_of_ids_in_range(value):
    try:
        out = _token_ids(value, "input_ids")
    except BadRequest as e:
        assert not valid_ids(value)
        assert e.status == 400 and e.param == "input_ids"
        return
    assert valid_ids(value)
    assert out.dtype == np.int64 and out.tolist() == value


def chat_answer(prompt: object) -> dict:
    meta = {"output_token_logprobs": [[-0.1, 7, None]], "completion_tokens": 1}
    return {"choices": [{"message": {"role": "assistant", "content": "x"}, "meta_info": meta,
                         "prompt_token_ids": prompt}]}


@given(id_lists)
def test_session_core_accepts_exactly_lists_of_int64_ints_as_prompt_token_ids(value):
    """A JSON answer's ids become read-only int64 arrays; ids no int64 holds make the answer invalid (502)."""
    ok = all(isinstance(t, int) and not isinstance(t, bool) and -(1 << 63) <= t < 1 << 63 for t in value)
    try:
        _, prompt, output, echoed = chat_parts(chat_answer(value))
    except UpstreamResponseError as e:
        assert not ok and e.status == 502
        return
    assert ok and not echoed
    for ids in (prompt, output):
        assert ids.dtype == np.int64 and not ids.flags.writeable
    assert prompt.tolist() == value and output.tolist() == [7]


int_dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64])


@given(st.lists(st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1), min_size=1, max_size=8), int_dtypes,
       st.booleans())
def test_worker_accepts_exactly_integer_arrays_of_ids_in_range(values, dtype, strided):
    """In-process callers may pass a 1-D integer array: same rule as for lists, whatever the width or layout."""
    info = np.iinfo(dtype)
    values = [v for v in values if info.min <= v <= info.max] or [0]
    arr = np.array(values, dtype=dtype)
    if strided:
        arr = np.repeat(arr, 2)[::2]
    try:
        out = _token_ids(arr, "input_ids")
    except BadRequest as e:
        assert not all(0 <= v <= MAX_TOKEN_ID for v in values)
        assert e.status == 400 and e.param == "input_ids"
        return
    assert all(0 <= v <= MAX_TOKEN_ID for v in values)
    assert out.dtype == np.int64 and out.tolist() == values

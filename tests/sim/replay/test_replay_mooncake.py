"""Mooncake traces: block tokens (equal ids, equal tokens), loading errors, the derived routing key."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.replay.driver import shared_tokens
from sim.replay.mooncake import (
    BLOCK,
    FIRST_TOKEN,
    BlockCache,
    MooncakeRequest,
    TraceError,
    block_tokens,
    common_block_prefix,
    derive_keys,
    load_mooncake,
)
from sim.replay.samples import sample_path

CONV = sample_path("conversation")

ids_st = st.lists(st.integers(0, 50), min_size=1, max_size=4)


def req(i: int, ids: list[int], n: int | None = None, ts: float = 0.0) -> MooncakeRequest:
    return MooncakeRequest(i, ts, n if n is not None else BLOCK * len(ids), 1, tuple(ids))


def lcp(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if diff.size else n


@settings(max_examples=80, deadline=None)
@given(ids_st, ids_st, st.integers(1, BLOCK), st.integers(1, BLOCK))
def test_two_requests_share_exactly_their_common_blocks(a_ids, b_ids, a_last, b_last):
    a = req(0, a_ids, BLOCK * (len(a_ids) - 1) + a_last)
    b = req(1, b_ids, BLOCK * (len(b_ids) - 1) + b_last)
    ta, tb = block_tokens(a.hash_ids, a.input_length), block_tokens(b.hash_ids, b.input_length)
    assert len(ta) == a.input_length and ta.dtype == np.int64
    assert ta.min() >= 0 and ta.max() < 2**32
    assert lcp(ta, tb) == shared_tokens(a, b)


def test_equal_ids_give_equal_tokens_wherever_they_appear():
    t1 = block_tokens([7, 3], 2 * BLOCK)
    t2 = block_tokens([3, 7], 2 * BLOCK)
    assert np.array_equal(t1[:BLOCK], t2[BLOCK:]) and np.array_equal(t1[BLOCK:], t2[:BLOCK])
    assert t1[0] == FIRST_TOKEN + 7
    assert len(set(block_tokens([9], BLOCK).tolist())) > BLOCK - 5  # the rest look random


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(ids_st, st.integers(1, BLOCK)), min_size=1, max_size=12), st.integers(1, 6),
       st.booleans())
def test_block_cache_gives_the_same_tokens_with_any_capacity(reqs, capacity, counted):
    rs = [req(i, ids, BLOCK * (len(ids) - 1) + last) for i, (ids, last) in enumerate(reqs)]
    cache = BlockCache.for_requests(rs, capacity) if counted else BlockCache(capacity)
    for r in rs:
        arr, lst = cache.request(r)
        want = block_tokens(r.hash_ids, r.input_length)
        assert np.array_equal(arr, want)
        assert lst == want.tolist()
        assert len(cache._blocks) <= capacity
    if counted:
        assert not cache._blocks  # nothing is kept past its last use


def test_load_sorts_by_timestamp_and_converts_to_seconds(tmp_path):
    p = tmp_path / "t.jsonl"
    rows = [{"timestamp": 2000, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
            {"timestamp": 1000, "input_length": 100, "output_length": 3, "hash_ids": [0]}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = load_mooncake(p)
    assert [r.timestamp for r in out] == [1.0, 2.0]
    assert [r.index for r in out] == [1, 0]
    assert out[1].block_lengths() == [512, 88]


@pytest.mark.parametrize("row, msg", [
    ({"timestamp": 0, "input_length": 600, "output_length": 5}, "missing field 'hash_ids'"),
    ({"timestamp": 0, "input_length": 2000, "output_length": 5, "hash_ids": [1]}, "does not fit"),
    ({"timestamp": -1, "input_length": 10, "output_length": 5, "hash_ids": [1]}, "timestamp"),
    ({"timestamp": 0, "input_length": 10, "output_length": 0, "hash_ids": [1]}, "output_length"),
    ({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": []}, "hash_ids"),
    ({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": ["x"]}, "hash_ids"),
    ([1, 2], "JSON object"),
])
def test_bad_lines_are_clear_errors(tmp_path, row, msg):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(TraceError, match=msg):
        load_mooncake(p)


def test_not_json_is_an_error(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("{nope\n")
    with pytest.raises(TraceError, match="line 1: not JSON"):
        load_mooncake(p)


def test_derived_key_is_the_first_block_not_shared_by_all():
    reqs = [req(0, [0, 5, 6]), req(1, [0, 5, 6, 7]), req(2, [0, 9]), req(3, [0])]
    assert common_block_prefix(reqs) == 1
    assert derive_keys(reqs) == ["mc-5", "mc-5", "mc-9", "mc-0"]
    assert derive_keys([req(0, [4, 1]), req(1, [3])]) == ["mc-4", "mc-3"]
    assert derive_keys([req(0, [4, 1, 2]), req(1, [4, 1, 3])]) == ["mc-2", "mc-3"]


def test_conversation_slice_keys_group_conversations():
    reqs = load_mooncake(CONV)
    keys = derive_keys(reqs)
    assert common_block_prefix(reqs) == 1
    assert keys == [f"mc-{r.hash_ids[1]}" if len(r.hash_ids) > 1 else "mc-0" for r in reqs]
    # a follow-up turn repeats its conversation's earlier blocks, so it shares the key
    by_key: dict[str, list[MooncakeRequest]] = {}
    for r, k in zip(reqs, keys, strict=True):
        by_key.setdefault(k, []).append(r)
    multi = [v for v in by_key.values() if len(v) > 1]
    assert multi
    for turns in multi:
        for a, b in itertools.pairwise(turns):
            assert shared_tokens(a, b) >= 2 * BLOCK or min(a.input_length, b.input_length) < 2 * BLOCK

"""The shared L3 (``sim/engine/storage.py``): chain keys of full pages, readability in virtual time, LRU, JSON."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine.storage import (
    L3Store,
    keys_from_json,
    keys_to_json,
    match_request,
    page_keys,
    parse_match_request,
    parse_write_request,
    write_request,
)

ids_lists = st.lists(st.integers(0, 50), max_size=40)


@given(ids_lists, ids_lists, st.integers(1, 8))
def test_keys_are_equal_exactly_as_far_as_full_pages_of_two_prompts_are(a, b, page):
    ka, kb = page_keys(a, page), page_keys(b, page)
    assert len(ka) == len(a) // page and len(kb) == len(b) // page
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    shared = sum(1 for x, y in zip(ka, kb, strict=False) if x == y)
    assert shared == min(common // page, len(ka), len(kb))
    assert ka[:shared] == kb[:shared]  # a key stands for its whole prefix: equal keys are a leading run


def test_keys_depend_on_the_salt_and_accept_numpy_ids():
    ids = np.arange(128, dtype=np.int64)
    assert page_keys(ids, 64) == page_keys(list(range(128)), 64)
    assert page_keys(ids, 64, salt=b"tenant") != page_keys(ids, 64)
    assert page_keys(ids[:63], 64) == []
    with pytest.raises(ValueError):
        page_keys(ids, 0)


def test_a_page_is_readable_from_its_write_s_ready_time_on():
    store = L3Store(page_size=4)
    keys = page_keys(range(12), 4)
    assert store.write(keys[:2], ready=5.0) == 2
    assert store.match(keys, now=4.999) == 0
    assert store.match(keys, now=5.0) == 2
    assert store.write(keys, ready=3.0) == 1  # only the third page is new; the first two become readable at 3
    assert store.match(keys, now=3.0) == 3
    assert store.write(keys, ready=9.0) == 0  # a later write of stored pages changes nothing
    assert store.match(keys, now=3.0) == 3


def test_match_counts_leading_keys_only():
    store = L3Store(page_size=2)
    keys = page_keys(range(8), 2)
    store.write([keys[0], keys[2], keys[3]], ready=0.0)
    assert store.match(keys, now=1.0) == 1


def test_capacity_evicts_the_least_recently_used_pages():
    store = L3Store(page_size=1, capacity_pages=3)
    a, b, c, d = page_keys([1, 2, 3, 4], 1)  # one chain: a, ab, abc, abcd
    store.write([a, b, c], ready=0.0)
    assert store.match([a], now=1.0) == 1  # a is used: b is now the oldest
    store.write([d], ready=0.0)
    assert len(store) == 3 and store.evicted_pages == 1
    assert store.match([a], now=1.0) == 1
    assert store.match([b], now=1.0) == 0
    assert store.write([b], ready=2.0) == 1  # evicted and written again: new


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 10), st.booleans(), st.floats(0, 10)), max_size=30))
def test_readable_iff_some_write_was_ready_by_then(ops):
    """Unbounded: a page is found at ``now`` iff some earlier call wrote it with ``ready <= now``."""
    store = L3Store(page_size=1)
    keys = [bytes([i]) * 16 for i in range(6)]
    earliest: dict[bytes, float] = {}
    for i, ready, is_write, now in ops:
        key = keys[i]
        if is_write:
            new = store.write([key], ready)
            assert new == (key not in earliest)
            earliest[key] = min(ready, earliest.get(key, ready))
        else:
            assert store.match([key], now) == (key in earliest and earliest[key] <= now)


def test_json_forms_round_trip_and_reject_bad_bodies():
    keys = page_keys(range(8), 4)
    assert keys_from_json(keys_to_json(keys)) == keys
    assert parse_match_request(match_request(keys, 1.5)) == (keys, 1.5)
    assert parse_write_request(write_request(keys, 2)) == (keys, 2.0)
    for bad in (None, [], {"keys": "ab"}, {"keys": [1]}, {"keys": ["zz"]}, {"keys": [], "now": "1"},
                {"keys": [], "now": float("nan")}, {"keys": [], "now": True}):
        with pytest.raises(ValueError):
            parse_match_request(bad)
    with pytest.raises(ValueError):
        parse_write_request({"keys": [], "now": 1.0})  # a write needs 'ready'
    with pytest.raises(ValueError):
        L3Store(page_size=1).write([], ready=float("inf"))

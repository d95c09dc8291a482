"""RadixCache: a radix prefix cache over token ids with pages, capacity, LRU eviction and locks."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sim.engine.radix import RadixCache

# small alphabets make shared prefixes (and therefore splits) common
seqs = st.lists(st.integers(0, 3), min_size=0, max_size=24)
page_sizes = st.sampled_from([1, 2, 4])


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def reference_match(stored: list[list[int]], ids: list[int], page: int) -> int:
    best = max((common_prefix(s, ids) for s in stored), default=0)
    return best - best % page


@given(st.lists(seqs, max_size=12), st.lists(seqs, max_size=8), page_sizes)
def test_unbounded_match_equals_longest_common_prefix_with_anything_inserted(stored, queries, page):
    cache = RadixCache(page_size=page)
    kept = []
    for t, s in enumerate(stored):
        cache.insert(s, float(t))
        kept.append(s[: len(s) - len(s) % page])
        cache.check()
    for q in [*queries, *stored]:
        expected = reference_match(kept, q, page)
        assert cache.peek(q) == expected
        cached, _ = cache.match(q, 100.0)
        assert cached == expected
        assert cached <= len(q)
        assert cached % page == 0
        cache.check()
    distinct = {tuple(s) for s in kept}
    # resident tokens are the distinct pages of the trie of everything inserted
    trie: set[tuple[int, ...]] = {s[:i] for s in distinct for i in range(page, len(s) + 1, page)}
    assert cache.resident_tokens == len(trie) * page


@given(st.lists(seqs, min_size=1, max_size=10), page_sizes)
def test_inserting_the_same_sequence_twice_changes_nothing(stored, page):
    cache = RadixCache(page_size=page)
    for t, s in enumerate(stored):
        cache.insert(s, float(t))
    resident = cache.resident_tokens
    for s in stored:  # the first re-insert may split a node where a shorter sequence ends
        cache.insert(s, 50.0)
    assert cache.resident_tokens == resident
    before = (cache.node_count, [cache.peek(s) for s in stored])
    for s in stored:
        cache.insert(s, 60.0)
    assert (cache.resident_tokens, cache.node_count, [cache.peek(s) for s in stored]) == (resident, *before)
    cache.check()


@given(st.lists(st.integers(0, 1000), min_size=0, max_size=40), page_sizes)
def test_only_whole_pages_are_stored_and_matched(ids, page):
    cache = RadixCache(page_size=page)
    cache.insert(ids, 0.0)
    whole = len(ids) - len(ids) % page
    assert cache.resident_tokens == whole
    assert cache.peek(ids) == whole
    assert cache.peek(ids + [7] * (page - 1)) == whole
    if whole:
        assert cache.peek(ids[: whole - 1]) == whole - page


def test_peek_has_no_side_effects_on_structure_or_lru_order():
    cache = RadixCache()
    cache.insert([1, 2, 3, 4], 1.0)
    cache.insert([5, 6, 7, 8], 2.0)
    nodes = cache.node_count
    assert cache.peek([1, 2, 9]) == 2  # would split [1,2,3,4] if it were a match
    assert cache.peek([1, 2, 3, 4]) == 4  # would make [1,2,3,4] the most recent if it were a match
    assert cache.node_count == nodes
    assert cache.evict(4) == 4
    assert cache.peek([1, 2, 3, 4]) == 0  # the older one still went first
    assert cache.peek([5, 6, 7, 8]) == 4


@given(st.permutations(range(6)), st.lists(st.integers(0, 5), max_size=6))
def test_the_least_recently_used_unlocked_leaf_goes_first(order, touches):
    cache = RadixCache()
    seq = {k: [100 + k] + [k] * (k + 2) for k in range(6)}  # distinct first tokens: six leaves
    last = {}
    t = 0.0
    for k in order:
        t += 1
        cache.insert(seq[k], t)
        last[k] = t
    for k in touches:
        t += 1
        cache.match(seq[k], t)
        last[k] = t
    for k in sorted(last, key=last.get):
        assert cache.evict(len(seq[k])) == len(seq[k])
        assert cache.peek(seq[k]) == 0
        assert all(cache.peek(seq[o]) == len(seq[o]) for o in last if last[o] > last[k])
        cache.check()


def test_evicting_a_leaf_makes_its_parent_an_evictable_leaf():
    cache = RadixCache()
    cache.insert([1, 2, 3, 4], 1.0)
    cache.insert([1, 2, 5, 6], 2.0)
    cache.insert([9, 9], 3.0)
    assert cache.node_count == 4  # [1,2] -> {[3,4], [5,6]}, [9,9]
    assert cache.evict(4) == 4  # both children of [1,2], oldest first
    assert cache.peek([1, 2, 5, 6]) == 2
    assert cache.evict(2) == 2  # now [1,2] is a leaf and older than [9,9]
    assert cache.peek([1, 2]) == 0
    assert cache.peek([9, 9]) == 2
    cache.check()


def test_eviction_takes_pages_from_the_tail_of_a_leaf():
    cache = RadixCache(page_size=2)
    cache.insert(list(range(10)), 1.0)
    assert cache.evict(3) == 4  # two whole pages
    assert cache.peek(list(range(10))) == 6
    cache.check()


def test_a_locked_prefix_survives_eviction_and_flush_until_unlocked():
    cache = RadixCache()
    cache.insert([1, 2, 3, 4, 5], 1.0)
    cache.insert([7, 8], 2.0)
    cached, node = cache.match([1, 2, 3, 9], 3.0)
    assert cached == 3
    cache.lock(node)
    assert cache.locked_tokens == 3 and cache.evictable_tokens == 4
    assert cache.flush() == 4  # [4,5] below the lock and [7,8]
    assert cache.peek([1, 2, 3]) == 3
    cache.unlock(node)
    assert cache.evictable_tokens == 3
    assert cache.flush() == 3
    assert cache.resident_tokens == 0
    cache.check()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), seqs),
        st.tuples(st.just("match_lock"), seqs),
        st.tuples(st.just("unlock"), st.integers(0, 20)),
        st.tuples(st.just("evict"), st.integers(0, 30)),
        st.tuples(st.just("flush"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=120)
@given(ops, page_sizes, st.one_of(st.none(), st.integers(0, 40)))
def test_random_operations_keep_capacity_and_never_evict_locked_prefixes(program, page, capacity):
    cache = RadixCache(capacity=capacity, page_size=page)
    locks: list[tuple[object, list[int], int]] = []
    for t, (op, arg) in enumerate(program):
        now = float(t)
        if op == "insert":
            cache.insert(arg, now)
        elif op == "match_lock":
            cached, node = cache.match(arg, now)
            assert cached <= len(arg) and cached % page == 0
            cache.lock(node)
            locks.append((node, arg, cached))
        elif op == "unlock" and locks:
            node, _, _ = locks.pop(arg % len(locks))
            cache.unlock(node)
        elif op == "evict":
            before = cache.resident_tokens
            evicted = cache.evict(arg)
            assert evicted == before - cache.resident_tokens
        elif op == "flush":
            cache.flush()
            assert cache.evictable_tokens == 0
        cache.check()
        if capacity is not None:
            assert cache.resident_tokens <= capacity
        for _, ids, cached in locks:
            assert cache.peek(ids) >= cached
        assert cache.locked_tokens <= cache.resident_tokens
    for node, _, _ in locks:
        cache.unlock(node)
    assert cache.locked_tokens == 0
    cache.flush()
    assert cache.resident_tokens == 0 and cache.node_count == 0


def test_numpy_arrays_and_lists_are_interchangeable():
    cache = RadixCache()
    ids = np.arange(1000, 31000, dtype=np.int64)
    cache.insert(ids, 0.0)
    assert cache.peek(list(range(1000, 2000))) == 1000
    assert cache.peek(np.arange(1000, 31001, dtype=np.int32)) == 30000
    longer = np.concatenate([ids, np.arange(5, dtype=np.int64)])
    cache.insert(longer, 1.0)
    assert cache.node_count == 1  # the leaf was extended in place, not given a child
    assert cache.peek(longer) == 30005


@given(st.lists(seqs, min_size=1, max_size=8), seqs, seqs, page_sizes)
def test_insert_after_a_locked_match_equals_a_plain_insert(stored, prompt, extra, page):
    plain, resumed = RadixCache(page_size=page), RadixCache(page_size=page)
    for t, s in enumerate(stored):
        plain.insert(s, float(t))
        resumed.insert(s, float(t))
    cached, node = resumed.match(prompt, 10.0)
    resumed.lock(node)
    resumed.unlock(node)
    resumed.insert(prompt + extra, 11.0, after=(cached, node))
    plain.insert(prompt + extra, 11.0)
    resumed.check()
    assert resumed.resident_tokens == plain.resident_tokens
    for q in [*stored, prompt + extra, prompt]:
        assert resumed.peek(q) == plain.peek(q)


@given(st.lists(seqs, min_size=1, max_size=8), seqs, seqs, page_sizes)
@example(stored=[[0]], prompt=[1] * 6, extra=[2] * 6, page=4)
def test_insert_after_an_earlier_insert_of_any_length_equals_a_plain_insert(stored, prompt, extra, page):
    """The scheduler passes ``after=(tokens it inserted, node)``, a length not always a whole number of pages."""
    plain, resumed = RadixCache(page_size=page), RadixCache(page_size=page)
    for t, s in enumerate(stored):
        plain.insert(s, float(t))
        resumed.insert(s, float(t))
    node = resumed.insert(prompt, 10.0)
    plain.insert(prompt, 10.0)
    if node is not resumed.root:
        resumed.insert(prompt + extra, 11.0, after=(len(prompt), node))
        plain.insert(prompt + extra, 11.0)
    resumed.check()
    assert resumed.resident_tokens == plain.resident_tokens
    for q in [*stored, prompt + extra, prompt]:
        assert resumed.peek(q) == plain.peek(q)

"""The trace baselines: single pool = an infinite radix cache over the real tokens; random = the exact
expectation over every placement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine.radix import RadixCache
from sim.replay import baselines as bl
from sim.replay.mooncake import BLOCK, MooncakeRequest, block_tokens, load_mooncake
from sim.replay.samples import sample_path


# Small traces: block ids from a tiny alphabet so prefixes collide, and partial last blocks.
@st.composite
def traces(draw, max_requests: int = 8):
    n = draw(st.integers(1, max_requests))
    out = []
    for i in range(n):
        ids = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4))
        # make ids prefix-structured like Mooncake: a request's blocks are a path, so reuse earlier prefixes
        if out and draw(st.booleans()):
            base = draw(st.sampled_from(out)).hash_ids
            cut = draw(st.integers(0, len(base)))
            ids = list(base[:cut]) + ids
        ids = ids[:5]
        last = draw(st.integers(1, BLOCK))
        out.append(MooncakeRequest(i, float(i), BLOCK * (len(ids) - 1) + last, draw(st.integers(1, 5)), tuple(ids)))
    return out


def segments(reqs):
    return [(list(zip(r.hash_ids, r.block_lengths(), strict=True)), (("out", r.index), r.output_length)) for r in reqs]


def out_tokens(r: MooncakeRequest) -> np.ndarray:
    # outputs never match anything: ids outside the block token space's first-token range per request
    return np.full(r.output_length, 10**9 + r.index, dtype=np.int64) + np.arange(r.output_length) * 7919


@settings(max_examples=60, deadline=None)
@given(traces())
def test_single_pool_equals_an_infinite_radix_cache_over_the_tokens(reqs):
    cache = RadixCache(capacity=None)
    cached = prompt = 0
    for r in reqs:
        toks = block_tokens(r.hash_ids, r.input_length)
        cached += cache.peek(toks[: len(toks) - 1])
        prompt += len(toks)
        cache.insert(np.concatenate([toks, out_tokens(r)]), float(r.index))
    b = bl.compute(segments(reqs), workers=4)
    assert b.prompt_tokens == prompt
    assert b.single_pool_cached == cached


@settings(max_examples=40, deadline=None)
@given(traces(max_requests=5), st.integers(1, 3))
def test_random_baseline_is_the_mean_over_every_placement(reqs, n):
    toks = [block_tokens(r.hash_ids, r.input_length) for r in reqs]
    total = 0
    placements = list(itertools.product(range(n), repeat=len(reqs)))
    for placement in placements:
        caches = [RadixCache(capacity=None) for _ in range(n)]
        for r, t, w in zip(reqs, toks, placement, strict=True):
            total += caches[w].peek(t[: len(t) - 1])
            caches[w].insert(np.concatenate([t, out_tokens(r)]), float(r.index))
    b = bl.compute(segments(reqs), workers=n)
    assert b.random_expected_cached == pytest.approx(total / len(placements), rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(traces())
def test_one_worker_random_is_the_single_pool_and_more_workers_reuse_less(reqs):
    one = bl.compute(segments(reqs), workers=1)
    assert one.random_expected_cached == pytest.approx(one.single_pool_cached)
    prev = one.random_expected_cached
    for n in (2, 3, 8):
        cur = bl.compute(segments(reqs), workers=n).random_expected_cached
        assert cur <= prev + 1e-9
        prev = cur


def test_conversation_slice_baselines():
    reqs = load_mooncake(sample_path("conversation"))
    b = bl.compute(segments(reqs), workers=8)
    # every request starts with block 0: the single pool reuses at least one block of each later request
    assert b.single_pool_cached >= 512 * (len(reqs) - 1)
    assert 0 < b.random_baseline_reuse < b.single_pool_reuse < 1
    # block 0 alone: a worker holds it once it has seen any request; the exact value sits above that share
    assert b.random_expected_cached >= sum(512 * (1 - (7 / 8) ** i) for i in range(len(reqs)))


def test_workers_must_be_positive():
    with pytest.raises(ValueError):
        bl.Baselines(0)

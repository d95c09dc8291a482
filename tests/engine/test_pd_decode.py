"""The decode role of the iteration-level engine (PD disaggregation): pre-allocation, the wait for the KV transfer,
the running batch without a prefill forward, the radix cache on or off at finish."""

from __future__ import annotations

import math

import numpy as np
import pytest
from engine_testing import Checked, ids
from engine_testing import decode_config as config
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import IterationEngine, WorkerConfig
from sim.engine.latency import decode_step_time


def test_a_pd_role_needs_the_iteration_engine_and_a_known_mode():
    with pytest.raises(ValueError, match="iteration"):
        WorkerConfig(disaggregation_mode="decode")
    with pytest.raises(ValueError, match="disaggregation_mode"):
        WorkerConfig(engine="iteration", disaggregation_mode="both")
    assert WorkerConfig().disaggregation_mode is None


def test_one_request_alone_decodes_from_the_transfer_one_step_per_token():
    cfg = config()
    e = Checked(cfg)
    prompt, n = 3_000, 12
    h = e.submit(1.0, ids(1, prompt), ids(2, n))
    assert e.advance(1.0) == [] and e.take_preallocated() == [(h, 1.0, 0)]
    assert e.next_event_time() == math.inf  # waits for its KV
    assert e.used_tokens() == prompt  # the prompt's KV is allocated at pre-allocation
    e.transfer_ready(h, 2.5)
    [done] = e.advance(math.inf)
    steps = [decode_step_time(cfg.latency, 1, prompt + i) for i in range(1, n + 1)]
    assert done.handle == h and done.timing.first_token == 2.5 + steps[0]
    assert math.isclose(done.timing.finish, 2.5 + sum(steps), rel_tol=1e-12)
    assert done.timing.start == 1.0 and done.timing.cached_tokens == 0
    assert e.cache.resident_tokens == 0 and e.used_tokens() == 0  # radix cache off: nothing stays


def test_pre_allocation_needs_the_prompt_plus_the_reserve_beside_the_active_requests_reserve():
    # SGLang: max(prompt - prefix + reserved, ...) <= free - reserved * active
    cap, reserved = 10_000, 500
    first = 4_000
    fits = cap - first - reserved - reserved  # the second prompt that just fits beside the first
    for second, admitted in ((fits, True), (fits + 1, False)):
        e = Checked(config(kv=cap, reserved=reserved))
        a = e.submit(0.0, ids(1, first), ids(2, 8))
        b = e.submit(0.0, ids(3, second), ids(4, 8))
        e.advance(0.0)
        got = [h for h, _, _ in e.take_preallocated()]
        assert got == ([a, b] if admitted else [a])
        assert e.disagg_queues() == (0 if admitted else 1, 2 if admitted else 1, 0)
        if not admitted:  # admitted once the first leaves
            e.transfer_ready(a, 0.1)
            e.advance(math.inf)
            assert [h for h, _, _ in e.take_preallocated()] == [b]


def test_a_request_that_cannot_be_pre_allocated_alone_is_refused():
    e = IterationEngine(config(kv=1_000, reserved=512))
    assert e.refusal(488, 5) is None and "reserved" in e.refusal(488 + 1, 5)
    with pytest.raises(ValueError):
        e.submit(0.0, ids(1, 600), ids(2, 5))


def test_with_the_decode_radix_cache_a_finished_request_leaves_prompt_and_output_but_the_last_token():
    e = Checked(config(radix=True))
    prompt, out = ids(1, 2_000), ids(2, 30)
    h = e.submit(0.0, prompt, out)
    e.advance(0.0)
    assert e.take_preallocated() == [(h, 0.0, 0)]
    e.transfer_ready(h, 0.1)
    e.advance(math.inf)
    assert e.cache.resident_tokens == 2_000 + 30 - 1 and e.used_tokens() == 0
    follow = np.concatenate([prompt, out, ids(3, 100)])  # the next turn of the session
    h2 = e.submit(5.0, follow, ids(4, 5))
    e.advance(5.0)
    assert e.take_preallocated() == [(h2, 5.0, 2_000 + 30 - 1)]  # its match: the transfer brings the rest
    assert e.used_tokens() == len(follow)  # the matched prefix is locked, the rest allocated


@st.composite
def workloads(draw):
    radix = draw(st.booleans())
    cap = draw(st.integers(800, 6_000))
    reserved = draw(st.integers(0, 200))
    cfg = config(kv=cap, radix=radix, reserved=reserved, max_running_requests=draw(st.integers(1, 8)))
    shared = ids(99, 2_000)
    reqs = []
    t = 0.0
    for i in range(draw(st.integers(1, 12))):
        t += draw(st.floats(0.0, 0.05))
        n_prompt = draw(st.integers(1, max(1, cap // 3)))
        head = draw(st.integers(0, n_prompt))  # a prefix shared across requests (decode radix hits)
        prompt = np.concatenate([shared[:head], ids(i, n_prompt - head)])
        n_out = draw(st.integers(1, 60))
        delay = draw(st.floats(0.0, 0.1))
        reqs.append((t, prompt, ids(1000 + i, n_out), delay))
    return cfg, reqs


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_every_request_finishes_once_and_the_kv_never_exceeds_the_pool(workload):
    cfg, reqs = workload
    e = Checked(cfg)
    handles, delays = {}, {}
    done: list = []

    def transfers() -> None:  # each pre-allocated request's KV comes its delay later
        for h, at, prefix in e.take_preallocated():
            assert 0 <= prefix < handles[h][0] and (prefix == 0 or cfg.decode_radix_cache)
            e.transfer_ready(h, at + delays[h])

    for t, prompt, out, delay in sorted(reqs, key=lambda r: r[0]):
        if e.refusal(len(prompt), len(out)) is not None:
            continue
        h = e.submit(t, prompt, out)
        handles[h] = (len(prompt), len(out))
        delays[h] = delay
        done += e.advance(t)
        transfers()
    while e.next_event_time() < math.inf:
        done += e.advance(e.next_event_time())
        transfers()
    assert sorted(d.handle for d in done) == sorted(handles)  # each once
    for d in done:
        tm = d.timing
        assert tm.arrival <= tm.start <= tm.first_token <= tm.finish
        assert tm.first_token >= tm.start + delays[d.handle]  # decoding waits for the KV
    assert e.used_tokens() == 0
    if not cfg.decode_radix_cache:
        assert e.cache.resident_tokens == 0  # nothing enters a tree with the decode radix cache off


def test_a_transfer_ready_during_a_decode_segment_joins_at_the_next_step_boundary():
    cfg = config(kv=None)
    e = Checked(cfg)
    a = e.submit(0.0, ids(1, 1_000), ids(2, 200))
    e.advance(0.0)
    assert e.take_preallocated() == [(a, 0.0, 0)]
    e.transfer_ready(a, 0.0)
    e.advance(0.0)  # a decodes, alone, in one long segment
    b = e.submit(0.1, ids(3, 1_000), ids(4, 5))
    e.advance(e.next_event_time())  # the segment was cut at the first step boundary after b's arrival
    [(hb, at, _)] = e.take_preallocated()
    step_a = np.cumsum([decode_step_time(cfg.latency, 1, 1_000 + i) for i in range(1, 201)])
    assert hb == b and math.isclose(at, step_a[np.searchsorted(step_a, 0.1)], rel_tol=1e-12)  # the next boundary
    e.transfer_ready(b, 0.2)
    finished = {d.handle: d.timing for d in e.advance(math.inf)}
    j = int(np.searchsorted(step_a, 0.2)) + 1  # a's steps done when b joins
    joined = step_a[j - 1]
    # b's first step is a's step j + 1, in a batch of two: a's context 1000 + j + 1, b's 1000 + 1
    assert math.isclose(finished[b].first_token, joined + decode_step_time(cfg.latency, 2, 2_002 + j),
                        rel_tol=1e-12)
    assert finished[a].retractions == finished[b].retractions == 0


@pytest.mark.parametrize("radix", [False, True])
def test_a_retracted_decode_request_is_prefilled_again_locally_and_still_finishes(radix):
    e = Checked(config(kv=1_200, radix=radix, reserved=0))  # no reserve: three requests outgrow the pool
    handles = [e.submit(0.0, ids(i, 300), ids(100 + i, 250)) for i in range(3)]
    done = []
    while e.next_event_time() < math.inf:
        done += e.advance(e.next_event_time())
        for h, at, _ in e.take_preallocated():
            e.transfer_ready(h, at)
    assert sorted(d.handle for d in done) == handles
    assert e.stats.retractions >= 1 and e.stats.recomputed_tokens > 0
    assert e.used_tokens() == 0 and (radix or e.cache.resident_tokens == 0)

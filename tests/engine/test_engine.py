"""Engine: one worker's request timelines, radix-cache reuse and KV admission, driven by a passed-in clock."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from engine_testing import ids
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import Engine, LatencyModel, RequestTiming, WorkerConfig


def test_a_cache_hit_gives_a_lower_ttft_than_a_miss():
    prefix = ids(1, 8000)
    prompt = np.concatenate([prefix, ids(2, 200)])
    warm, cold = Engine(), Engine()
    first = warm.submit(0.0, prefix, ids(3, 10))
    hit = warm.submit(first.finish + 1.0, prompt, ids(4, 10))
    miss = cold.submit(first.finish + 1.0, prompt, ids(4, 10))
    assert hit.cached_tokens == 8000 and miss.cached_tokens == 0
    assert hit.ttft < miss.ttft
    assert warm.stats.cached_tokens == 8000


def test_a_busier_worker_gives_a_higher_ttft():
    idle, busy = Engine(), Engine()
    for k in range(5):
        busy.submit(0.0, ids(10 + k, 4000), ids(20 + k, 50))
    prompt = ids(99, 2000)
    assert busy.submit(0.0, prompt, ids(98, 5)).ttft > idle.submit(0.0, prompt, ids(98, 5)).ttft
    assert busy.load(0.0).num_waiting_reqs == 5  # one prefill lane: the others queue behind the first
    assert busy.load(0.0).num_running_reqs == 1


def test_one_session_turn_k_reuses_all_of_turn_k_minus_1():
    engine = Engine(WorkerConfig(kv_capacity_tokens=None))
    context = ids(0, 3000)
    now = 0.0
    previous = 0
    for turn in range(30):
        output = ids(1000 + turn, 50 + 10 * turn)
        timing = engine.submit(now, context, output)
        assert timing.cached_tokens == previous
        previous = len(context) + len(output)
        context = np.concatenate([context, output, ids(2000 + turn, 700)])
        now = timing.finish + 2.0  # tool time
    assert engine.cache.node_count == 1


def test_timelines_are_ordered_and_fcfs():
    engine = Engine(WorkerConfig(max_running_requests=3))
    timings = [engine.submit(0.1 * k, ids(k, 500 + 300 * (k % 4)), ids(50 + k, 20 + 15 * (k % 5))) for k in range(20)]
    for t in timings:
        assert t.arrival <= t.start <= t.first_token <= t.finish
    starts = [t.start for t in timings]
    firsts = [t.first_token for t in timings]
    assert starts == sorted(starts) and firsts == sorted(firsts)
    for k, t in enumerate(timings):  # never more than 3 unfinished requests started
        assert sum(1 for o in timings[:k] if o.finish > t.start) < 3


def test_finishes_are_committed_in_order_and_only_once_they_are_due():
    engine = Engine()
    prompts = [ids(k, 300 + 100 * k) for k in range(6)]
    outs = [ids(100 + k, 200 - 30 * k) for k in range(6)]
    timings = [engine.submit(0.0, p, o) for p, o in zip(prompts, outs, strict=True)]
    order = sorted(range(6), key=lambda k: timings[k].finish)
    for k in order:
        t = timings[k].finish
        for j in range(6):
            full = np.concatenate([prompts[j], outs[j], [1]])
            # visible in the cache exactly when finished
            assert (engine.peek_cached(full) == len(full) - 1) == (timings[j].finish < t)
        engine.advance(t)
        assert engine.peek_cached(np.concatenate([prompts[k], outs[k], [1]])) == len(prompts[k]) + len(outs[k])
    assert engine.in_flight == 0


def test_kv_pressure_evicts_lru_cache_first_and_then_waits_for_running_requests():
    engine = Engine(WorkerConfig(kv_capacity_tokens=10_000))
    a = engine.submit(0.0, ids(1, 3000), ids(2, 100))
    engine.advance(a.finish)
    assert engine.cache.resident_tokens == 3100
    # 8,000 tokens: 6,900 free, so 1,100 of the idle cached session must go
    b = engine.submit(a.finish + 1, ids(3, 7900), ids(4, 100))
    assert b.evicted_tokens == 1100 and b.start == b.arrival
    assert engine.cache.resident_tokens == 2000
    # 9,000 more tokens: the rest of the cache goes, and it still waits for b to finish
    c = engine.submit(b.arrival + 0.001, ids(5, 8900), ids(6, 100))
    assert c.evicted_tokens == 2000
    assert c.start == b.finish
    assert engine.stats.kv_wait_requests == 1
    # b's tokens enter the cache at its finish, and are trimmed at once to make room for c
    engine.advance(b.finish)
    assert engine.cache.resident_tokens + 9000 <= 10_000
    assert engine.load(b.finish + 1e-9).num_used_tokens == 9000
    assert engine.stats.evicted_tokens == 1100 + 2000 + 8000 - 1000


def test_a_request_waiting_for_kv_counts_the_prefixes_it_unlocks():
    engine = Engine(WorkerConfig(kv_capacity_tokens=10_000))
    session = ids(1, 6000)
    a = engine.submit(0.0, session, ids(2, 10))
    engine.advance(a.finish)
    follow = np.concatenate([session, ids(2, 10), ids(3, 100)])
    b = engine.submit(a.finish + 1.0, follow, ids(4, 1000))  # locks 6,010 cached tokens, reserves 1,100
    assert b.cached_tokens == 6010
    d = engine.submit(b.arrival, ids(7, 100), ids(8, 2000))  # reserves 2,100, finishes after b
    assert d.finish > b.finish
    # c needs 7,100 with 790 free: b's end frees its 1,100 and unlocks its 6,010-token prefix
    c = engine.submit(b.arrival, ids(5, 7000), ids(6, 100))
    assert c.start == b.finish
    assert engine.stats.kv_wait_requests == 1


def test_an_oversized_request_runs_alone_and_does_not_deadlock():
    engine = Engine(WorkerConfig(kv_capacity_tokens=5000))
    a = engine.submit(0.0, ids(1, 1000), ids(2, 100))
    big = engine.submit(0.0, ids(3, 6000), ids(4, 100))
    assert big.start >= a.finish
    assert engine.stats.oversized_requests == 1
    after = engine.submit(0.0, ids(5, 1000), ids(6, 10))
    assert after.start >= big.finish  # waits for the oversized one
    engine.advance(after.finish)
    assert engine.cache.resident_tokens <= 5000
    assert engine.in_flight == 0


def test_decode_slows_down_with_the_running_batch():
    alone, crowded = Engine(), Engine()
    for k in range(20):
        crowded.submit(0.0, ids(k, 100), ids(100 + k, 2000))
    t = 0.5
    lone = alone.submit(t, ids(999, 100), ids(998, 500))
    shared = crowded.submit(t, ids(999, 100), ids(998, 500))
    assert shared.finish - shared.first_token > lone.finish - lone.first_token


def test_slowdown_multiplies_durations():
    base = Engine().submit(0.0, ids(1, 3000), ids(2, 100))
    slow = Engine(WorkerConfig(slowdown=2.0)).submit(0.0, ids(1, 3000), ids(2, 100))
    assert slow.ttft == pytest.approx(2 * base.ttft)
    assert slow.e2e == pytest.approx(2 * base.e2e)


def test_load_reports_sglang_terms():
    engine = Engine(WorkerConfig(kv_capacity_tokens=100_000, max_running_requests=8))
    t1 = engine.submit(0.0, ids(1, 4000), ids(2, 300))
    engine.submit(0.0, ids(3, 4000), ids(4, 300))
    ld = engine.load(t1.first_token / 2)
    assert (ld.num_running_reqs, ld.num_waiting_reqs, ld.num_waiting_uncached_tokens) == (1, 1, 4000)
    assert ld.num_used_tokens == 4300 and ld.token_usage == pytest.approx(0.043)
    assert ld.max_total_num_tokens == 100_000 and ld.max_running_requests == 8
    mid = engine.load(t1.finish + 0.1)
    assert mid.gen_throughput > 0
    idle = engine.load(1000.0)
    assert idle.num_running_reqs == idle.num_waiting_reqs == idle.num_used_tokens == 0  # cache is evictable
    assert engine.cache.resident_tokens == 8600
    assert idle.gen_throughput == 0.0


def test_flush_and_peek():
    engine = Engine()
    prompt = ids(1, 500)
    t = engine.submit(0.0, prompt, ids(2, 5))
    assert engine.peek_cached(prompt) == 0
    engine.advance(t.finish)
    assert engine.peek_cached(prompt) == 499  # at least one prompt token is always computed
    assert engine.peek_cached(np.concatenate([prompt, ids(2, 5), [7]])) == 505
    assert engine.flush_cache() == 505
    assert engine.peek_cached(prompt) == 0


@pytest.mark.parametrize(
    ("now", "prompt"),
    [(0.0, []), (0.0, ["a", "b"]), (0.0, [[1, 2], [3, 4]]), (float("nan"), [1, 2]), (float("inf"), [1, 2])],
)
def test_bad_input_is_a_value_error_and_changes_nothing(now, prompt):
    engine = Engine()
    with pytest.raises(ValueError):
        engine.submit(now, prompt, [1, 2])
    assert engine.stats.requests == 0 and engine.in_flight == 0 and engine.cache.locked_tokens == 0


def test_an_earlier_now_counts_as_the_latest_time_seen():
    engine = Engine()
    a = engine.submit(5.0, ids(1, 100), ids(2, 3))
    b = engine.submit(4.0, ids(3, 100), ids(4, 3))  # a live clock may hand out a slightly older time
    assert b.arrival == 5.0 and b.start >= a.first_token


workload = st.lists(
    st.tuples(
        st.floats(0, 0.5),  # gap before arrival
        st.integers(0, 7),  # session
        st.integers(1, 400),  # new prompt tokens
        st.integers(0, 120),  # output tokens
    ),
    min_size=1,
    max_size=40,
)


def run(program, config: WorkerConfig):
    engine = Engine(config)
    contexts: dict[int, np.ndarray] = {}
    now = 0.0
    timings = []
    locked = []
    for seed, (gap, session, n_new, n_out) in enumerate(program):
        now += gap
        prompt = np.concatenate([contexts.get(session, ids(session, 50)), ids(10_000 + seed, n_new)])
        output = ids(20_000 + seed, n_out)
        t = engine.submit(now, prompt, output)
        contexts[session] = np.concatenate([prompt, output])
        timings.append(t)
        locked.append((prompt, t))
        assert t.cached_tokens <= t.prompt_tokens - 1
        assert t.arrival <= t.start <= t.first_token <= t.finish
        cap = config.kv_capacity_tokens
        assert cap is None or engine.cache.resident_tokens <= cap
        for p, o in locked:  # prefixes of unfinished requests are never evicted
            if o.finish > now:
                assert engine.peek_cached(p) >= o.cached_tokens
        engine.cache.check()
        ld = engine.load(now)
        assert ld.num_running_reqs + ld.num_waiting_reqs == engine.in_flight
        assert ld.num_running_reqs <= config.max_running_requests
        assert ld.num_used_tokens >= 0 and ld.gen_throughput >= 0
    engine.advance(float("inf"))
    return timings, dataclasses.asdict(engine.stats), engine.cache.resident_tokens


@settings(max_examples=40)
@given(workload, st.sampled_from([None, 1000, 3000]), st.sampled_from([1, 4]), st.integers(1, 6))
def test_random_workloads_keep_the_invariants_and_are_deterministic(program, cap, page, slots):
    config = WorkerConfig(kv_capacity_tokens=cap, page_size=page, max_running_requests=slots)
    first = run(program, config)
    assert run(program, config) == first
    timings, stats, _ = first
    starts = [t.start for t in timings]
    assert starts == sorted(starts)
    assert stats["prompt_tokens"] == sum(t.prompt_tokens for t in timings)
    assert stats["cached_tokens"] == sum(t.cached_tokens for t in timings)


def test_latency_model_follows_the_spec_defaults():
    lm = LatencyModel()
    from sim.engine import decode_step_time, prefill_time

    assert prefill_time(lm, 1, 0) == pytest.approx(5.6e-3, rel=1e-3)  # weight-read floor
    # section 4: a cold 8K prefill's attention is ~44 ms, a cold 32K one's ~0.7 s
    assert prefill_time(lm, 8192, 0) - 8192 * 20e-6 == pytest.approx(0.0443, rel=0.01)
    assert prefill_time(lm, 32768, 0) - 32768 * 20e-6 == pytest.approx(0.709, rel=0.01)
    # a hit removes tokens from the linear term, not from the attention context
    assert prefill_time(lm, 1000, 20_000) < prefill_time(lm, 21_000, 0)
    assert prefill_time(lm, 1000, 20_000) > prefill_time(lm, 1000, 0)
    assert decode_step_time(lm, 1, 0) == pytest.approx(5.6e-3 + 30e-6)


@settings(max_examples=25)
@given(
    st.integers(0, 2**16),
    st.sampled_from([3000, 10_000]),
    st.sampled_from([2, 8, 64]),
    st.sampled_from([0, 200]),
)
def test_closed_loop_sessions_never_hold_more_kv_than_the_pool(seed, cap, slots, shared_len):
    """Sessions whose next turn waits for the previous one (agents): KV in use stays within the pool."""
    import heapq
    import random

    rnd = random.Random(seed)
    engine = Engine(WorkerConfig(kv_capacity_tokens=cap, max_running_requests=slots))
    shared = ids(7, shared_len)
    events = [(rnd.random(), s, shared) for s in range(10)]
    heapq.heapify(events)
    waited = 0
    for k in range(150):
        now, s, context = heapq.heappop(events)
        prompt = np.concatenate([context, ids(seed * 1000 + k, rnd.randint(1, 300))])
        output = ids(seed * 1000 + k + 500, rnd.randint(1, 100))
        if len(prompt) + len(output) > cap // 2:  # the session compacts its context
            prompt = np.concatenate([shared, ids(seed * 1000 + k, 100)])
        t = engine.submit(now, prompt, output)
        waited += t.start > t.arrival
        assert engine.cache.resident_tokens <= cap
        heapq.heappush(events, (t.finish + rnd.expovariate(5), s, np.concatenate([prompt, output])))
    assert engine.stats.peak_kv_tokens <= cap
    assert waited > 0


def test_output_slices_that_follow_the_prompt_are_joined_without_a_copy_and_correctly():
    from sim.engine.core import _join

    tokens = ids(1, 100)
    joined = _join(tokens[10:40], tokens[40:55])
    assert np.shares_memory(joined, tokens) and np.array_equal(joined, tokens[10:55])
    gap = _join(tokens[10:40], tokens[41:55])
    assert not np.shares_memory(gap, tokens) and np.array_equal(gap, np.concatenate([tokens[10:40], tokens[41:55]]))
    other = _join(tokens[:40], ids(1, 100)[40:55])  # equal values, another buffer
    assert not np.shares_memory(other, tokens) and np.array_equal(other, tokens[:55])
    strided = _join(tokens[0:40:2], tokens[40:50])
    assert np.array_equal(strided, np.concatenate([tokens[0:40:2], tokens[40:50]]))
    grid = ids(2, 60).reshape(6, 10)
    assert np.array_equal(_join(grid[1], grid[2, :4]), np.concatenate([grid[1], grid[2, :4]]))


def test_timings_are_ordinary_frozen_request_timings():
    """The engine builds its RequestTiming objects on a fast path: they must be indistinguishable."""
    t = Engine(WorkerConfig()).submit(1.5, list(range(1000, 1100)), [7, 8, 9])
    same = RequestTiming(**dataclasses.asdict(t))
    assert type(t) is RequestTiming and t == same and hash(t) == hash(same) and repr(t) == repr(same)
    assert dataclasses.astuple(t) == (1.5, t.start, t.first_token, t.finish, 100, 0, 3, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.finish = 0.0  # type: ignore[misc]


def test_a_moe_decode_floor_grows_with_the_distinct_experts_a_batch_reads():
    dense = LatencyModel()
    moe = LatencyModel(decode_floor=0.004, moe_experts=64, moe_experts_per_token=4, decode_floor_all_experts=0.026)
    assert [dense.decode_floor_at(b) for b in (1, 8, 256)] == [dense.decode_floor] * 3
    floors = [moe.decode_floor_at(b) for b in (1, 2, 8, 32, 128, 1024)]
    assert floors[0] == 0.004 and floors == sorted(floors) and floors[-1] == pytest.approx(0.026, rel=1e-6)
    # batch 2 reads 4 + 4 * 60/64 experts on average, 7.75 of 64: (7.75 - 4) / (64 - 4) of the way up
    assert floors[1] == pytest.approx(0.004 + 0.022 * 3.75 / 60)

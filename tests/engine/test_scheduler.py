"""IterationEngine: SGLang's scheduling (chunked prefill, KV admission, retraction), stepped from event to event.

``StepByStep`` is the reference: one scheduler iteration per decision, each decode step timed by
``latency.decode_step_time`` and applied on its own; the engine under test plans runs of decode steps
in closed form. On random small workloads both must give the same timelines, loads and stats.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import Engine, IterationEngine, LatencyModel, SchedulerConfig, WorkerConfig
from sim.engine.latency import decode_step_time, prefill_time


class StepByStep(IterationEngine):
    """The reference: every decode step is its own decision, timed by the latency model's per-step formula."""

    decisions = 0

    def _decide(self, t: float) -> None:
        self.decisions += 1
        super()._decide(t)
        self.check()  # KV within the pool after every decision, the forward in flight included

    def _start_decode(self, t: float, decays: bool, max_steps: int | None = None) -> None:
        b = len(self._running)
        context = sum(r.prefix + r.private + 1 for r in self._running)
        step = decode_step_time(self.config.latency, b, context)
        self._seg = (t, 1, b, step)
        self._seg_decays = decays
        self._t = t + step * self.config.slowdown


class Counting(IterationEngine):
    """The engine under test, counting its decisions and checking what re-prefills recompute."""

    decisions = 0

    def __init__(self, config: WorkerConfig | None = None) -> None:
        super().__init__(config)
        self.expected_recompute: dict[int, int] = {}

    def _decide(self, t: float) -> None:
        self.decisions += 1
        super()._decide(t)
        self.check()

    def _admit(self, req, t: float, cached: int) -> None:
        if req.cached >= 0:  # a re-prefill: everything but the last sampled token had KV before
            held = self.cache.peek(req.seq[: req.fill - 1])
            assert held == cached
            self.expected_recompute[req.handle] = self.expected_recompute.get(req.handle, 0) + req.fill - 1 - held
        super()._admit(req, t, cached)


def ids(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1000, 2**32, n, dtype=np.int64)


def run_alone(engine: IterationEngine, now: float, prompt: np.ndarray, output: np.ndarray):
    handle = engine.submit(now, prompt, output)
    (done,) = engine.advance(math.inf)
    assert done.handle == handle
    return done.timing


# ---------------------------------------------------------------- one request at a time
@pytest.mark.parametrize("chunked", [None, 8192])
def test_alone_a_request_gets_the_arrival_time_engines_ttft_and_finish(chunked):
    config = WorkerConfig(kv_capacity_tokens=100_000, scheduler=SchedulerConfig(chunked_prefill_size=chunked))
    new, old = IterationEngine(config), Engine(config)
    system = ids(0, 1500)
    now = 0.0
    for k, (tail, out) in enumerate([(10, 1), (3000, 2), (6000, 300), (200, 40), (8000, 7), (1, 1)]):
        prompt = np.concatenate([system, ids(100 + k, tail)])
        output = ids(200 + k, out)
        got = run_alone(new, now, prompt, output)
        want = old.submit(now, prompt, output)
        assert got.cached_tokens == want.cached_tokens == (0 if k == 0 else 1500)
        assert got.first_token == pytest.approx(want.first_token, rel=1e-12)
        assert got.finish == pytest.approx(want.finish, rel=1e-12)
        assert got.start == want.start == now
        now = got.finish + 0.5
    assert new.stats.prefill_time == pytest.approx(old.stats.prefill_time, rel=1e-12)
    assert new.stats.busy_time == pytest.approx(old.stats.busy_time, rel=1e-12)
    assert new.stats.cached_tokens == old.stats.cached_tokens


def test_a_long_prompt_is_prefilled_in_chunks_whose_attention_sums_to_the_whole():
    lat = LatencyModel()
    config = WorkerConfig(scheduler=SchedulerConfig(chunked_prefill_size=4096))
    engine = Counting(config)
    timing = run_alone(engine, 0.0, ids(1, 20_000), ids(2, 1))
    # chunks of 4096 (all above the floor): linear work and attention add up to one 20k-token prefill
    assert timing.first_token == pytest.approx(prefill_time(lat, 20_000, 0), rel=1e-12)
    assert engine.decisions == 5 + 1  # five chunks, then the engine goes idle


def test_one_request_decodes_in_one_segment():
    engine = Counting()
    run_alone(engine, 0.0, ids(1, 500), ids(2, 1000))
    assert engine.decisions == 3  # prefill, the whole decode run, idle


def test_the_last_token_gets_no_kv_so_a_finished_request_leaves_prompt_plus_output_minus_one():
    engine = IterationEngine()
    prompt, output = ids(1, 300), ids(2, 50)
    run_alone(engine, 0.0, prompt, output)
    assert engine.cache.resident_tokens == 349
    follow_up = np.concatenate([prompt, output, ids(3, 10)])
    assert run_alone(engine, 10.0, follow_up, ids(4, 1)).cached_tokens == 349


def test_an_unbounded_pool_never_evicts_and_reports_no_usage():
    engine = IterationEngine(WorkerConfig(kv_capacity_tokens=None))
    for k in range(20):
        engine.submit(0.01 * k, ids(k, 5000), ids(100 + k, 100))
    engine.advance(0.3)
    load = engine.load(0.3)
    assert load.max_total_num_tokens == 0 and load.token_usage == 0.0 and load.num_used_tokens > 0
    assert len(engine.advance(math.inf)) == 20
    assert engine.stats.evicted_tokens == 0 and engine.cache.resident_tokens == 20 * 5099


def test_a_request_that_cannot_fit_the_pool_is_refused_at_submit():
    engine = IterationEngine(WorkerConfig(kv_capacity_tokens=1000))
    with pytest.raises(ValueError, match="does not fit"):
        engine.submit(0.0, ids(1, 900), ids(2, 99))
    engine.submit(0.0, ids(1, 900), ids(2, 98))
    with pytest.raises(ValueError):
        engine.submit(0.0, ids(1, 10), [])


# ---------------------------------------------------------------- contention
def test_a_prefill_stalls_the_running_decodes_for_its_duration():
    lat = LatencyModel()
    alone, stalled = IterationEngine(), IterationEngine()
    prompt, output = ids(1, 1000), ids(2, 200)
    base = run_alone(alone, 0.0, prompt, output)
    stalled.submit(0.0, prompt, output)
    stalled.advance(0.5)  # mid-decode
    stalled.submit(0.5, ids(3, 4000), ids(4, 1))
    done = {f.handle: f.timing for f in stalled.advance(math.inf)}
    cost = prefill_time(lat, 4000, 0)
    assert done[0].finish == pytest.approx(base.finish + cost, rel=1e-9)
    assert stalled.stats.decode_stall_seconds == pytest.approx(cost, rel=1e-12)


def test_mixed_chunking_lets_decodes_ride_along_with_a_prefill():
    mixed_cfg = WorkerConfig(scheduler=SchedulerConfig(enable_mixed_chunk=True))
    plain, mixed = IterationEngine(), IterationEngine(mixed_cfg)
    for engine in (plain, mixed):
        engine.submit(0.0, ids(1, 1000), ids(2, 200))
        engine.advance(0.5)
        engine.submit(0.5, ids(3, 4000), ids(4, 1))
    plain_done = {f.handle: f.timing for f in plain.advance(math.inf)}
    mixed_done = {f.handle: f.timing for f in mixed.advance(math.inf)}
    assert mixed_done[0].finish < plain_done[0].finish  # one decode step happened inside the prefill forward
    assert 0 < mixed.stats.decode_stall_seconds < plain.stats.decode_stall_seconds


def test_fcfs_admission_stops_at_the_first_request_that_does_not_fit():
    # 2,000 tokens of pool: the first request reserves 1,000 + 700, the second does not fit, the third would
    engine = IterationEngine(WorkerConfig(kv_capacity_tokens=2000))
    first = engine.submit(0.0, ids(1, 1000), ids(2, 700))
    second = engine.submit(0.0, ids(3, 900), ids(4, 10))
    third = engine.submit(0.0, ids(5, 10), ids(6, 10))
    engine.advance(0.0)
    assert engine.load(0.0).num_running_reqs == 1 and engine.load(0.0).num_waiting_reqs == 2
    order = [f.handle for f in engine.advance(math.inf)]
    assert order.index(first) < order.index(second) < order.index(third)
    assert engine.stats.kv_wait_requests == 1  # only the refused one; the third was never tried (batch full)


def test_max_running_requests_bounds_the_running_batch():
    engine = IterationEngine(WorkerConfig(max_running_requests=3))
    for k in range(10):
        engine.submit(0.0, ids(k, 100), ids(50 + k, 300))
    engine.advance(0.2)
    load = engine.load(0.2)
    assert load.num_running_reqs == 3 and load.num_waiting_reqs == 7
    assert len(engine.advance(math.inf)) == 10


def test_kv_pressure_retracts_the_request_with_the_fewest_tokens_and_raises_the_ratio():
    sched = SchedulerConfig(chunked_prefill_size=None)
    engine = Counting(WorkerConfig(kv_capacity_tokens=3000, scheduler=sched))
    # both admitted (the ratio discounts the running request's reserve), then decode grows past the pool
    long_out = engine.submit(0.0, ids(1, 1000), ids(2, 1200))
    engine.advance(0.0)
    late = engine.submit(1.0, ids(3, 300), ids(4, 900))
    done = {f.handle: f.timing for f in engine.advance(math.inf)}
    assert engine.stats.retractions >= 1
    assert done[late].retractions >= 1 and done[long_out].retractions == 0  # fewer generated tokens goes first
    assert done[late].recomputed_tokens == engine.expected_recompute[late] > 0
    assert engine.stats.recomputed_tokens == done[late].recomputed_tokens


def test_after_a_retraction_the_ratio_is_sglangs_estimate_over_the_kept_requests():
    sched = SchedulerConfig(chunked_prefill_size=None)
    engine = IterationEngine(WorkerConfig(kv_capacity_tokens=3000, scheduler=sched))
    engine.submit(0.0, ids(1, 1000), ids(2, 1200))
    engine.advance(0.0)
    engine.submit(1.0, ids(3, 300), ids(4, 900))
    while engine.stats.retractions == 0:
        engine.advance(engine.next_event_time())
    (kept,) = engine._running
    assert engine.new_token_ratio == pytest.approx(min(1.0, (kept.generated + 20) / (kept.n_out + 1)))


@pytest.mark.parametrize("at", [0.5, 2.0, 8.0])
def test_the_ratio_decays_per_decode_step_to_its_floor_and_resets_when_idle(at):
    engine = IterationEngine()
    assert engine.new_token_ratio == pytest.approx(0.7)
    engine.submit(0.0, ids(1, 100), ids(2, 2000))
    engine.advance(at)
    steps = engine.load(at).num_used_tokens - 100  # one KV token per decode step
    assert steps > 0
    assert engine.new_token_ratio == pytest.approx(max(0.7 - steps * (0.7 - 0.098) / 600, 0.098))
    engine.advance(math.inf)
    assert engine.new_token_ratio == pytest.approx(0.7)


def test_load_reports_running_waiting_and_used_kv_mid_segment():
    engine = IterationEngine()
    engine.submit(0.0, ids(1, 1000), ids(2, 500))
    engine.advance(1.0)
    load = engine.load(1.0)
    assert load.num_running_reqs == 1 and load.num_waiting_reqs == 0
    steps = load.num_used_tokens - 1000
    assert 0 < steps < 499
    assert load.gen_throughput == pytest.approx((steps + 1) / 5.0)  # the first token and one per step


# ---------------------------------------------------------------- properties on random small workloads
@st.composite
def workloads(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 16))
    prefixes = [rng.integers(1000, 1100, 80, dtype=np.int64) for _ in range(3)]
    requests = []
    for _ in range(n):
        base = prefixes[int(rng.integers(0, 3))][: int(rng.integers(0, 80))]
        tail = rng.integers(1000, 5000, int(rng.integers(1, 60)), dtype=np.int64)
        out = rng.integers(1000, 5000, int(rng.integers(1, 80)), dtype=np.int64)
        requests.append((np.concatenate([base, tail]), out))
    need = max(len(p) + len(o) for p, o in requests) + 2
    capacity = draw(st.integers(need, need * 3))  # tight: admissions under pressure, retractions
    sched = SchedulerConfig(
        chunked_prefill_size=draw(st.sampled_from([None, 8, 32, 100])),
        max_prefill_tokens=draw(st.sampled_from([64, 16384])),
        enable_mixed_chunk=draw(st.booleans()),
        new_token_ratio_decay_steps=draw(st.sampled_from([600, 7])),
        schedule_conservativeness=draw(st.sampled_from([1.0, 0.2])),  # 0.2: optimistic, so it retracts
    )
    config = WorkerConfig(
        kv_capacity_tokens=capacity,
        max_running_requests=draw(st.integers(1, 8)),
        scheduler=sched,
        slowdown=draw(st.sampled_from([1.0, 2.5])),
        latency=LatencyModel(decode_per_ctx_token=draw(st.sampled_from([0.04e-6, 0.0, 3e-4]))),
    )
    ops = []
    t = 0.0
    for i in range(n):
        t += float(rng.exponential(0.02))
        ops.append(("submit", t, i))
        if rng.random() < 0.5:
            ops.append(("advance", t + float(rng.exponential(0.03))))
            t = ops[-1][1]
        if rng.random() < 0.3:
            ops.append(("load", t))
    ops.append(("advance", math.inf))
    return config, requests, ops


def close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


@settings(max_examples=400, deadline=None)
@given(workloads())
def test_event_to_event_equals_step_by_step_and_keeps_every_invariant(workload):
    config, requests, ops = workload
    fast, slow = Counting(config), StepByStep(config)
    finished: dict[int, object] = {}
    for op in ops:
        if op[0] == "submit":
            _, t, i = op
            assert fast.submit(t, *requests[i]) == slow.submit(t, *requests[i])
        elif op[0] == "advance":
            got, want = fast.advance(op[1]), slow.advance(op[1])
            assert [f.handle for f in got] == [f.handle for f in want]
            for g, w in zip(got, want, strict=True):
                for field in dataclasses.fields(g.timing):
                    assert close(getattr(g.timing, field.name), getattr(w.timing, field.name)), field.name
                assert g.handle not in finished  # finishes exactly once
                finished[g.handle] = g.timing
        else:
            got, want = fast.load(op[1]), slow.load(op[1])
            for field in dataclasses.fields(got):
                assert close(getattr(got, field.name), getattr(want, field.name)), field.name
        fast.check()
        slow.check()
    assert sorted(finished) == list(range(len(requests)))  # every admitted request finished
    assert fast.next_event_time() == math.inf and fast.cache.locked_tokens == 0
    for field in dataclasses.fields(fast.stats):
        assert close(getattr(fast.stats, field.name), getattr(slow.stats, field.name)), field.name
    assert fast.stats.peak_kv_tokens <= config.kv_capacity_tokens
    for handle, timing in finished.items():
        assert timing.arrival <= timing.start < timing.first_token <= timing.finish
        assert timing.recomputed_tokens == fast.expected_recompute.get(handle, 0)
    assert fast.decisions <= slow.decisions

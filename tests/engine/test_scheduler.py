"""IterationEngine: SGLang's scheduling (chunked prefill, KV admission, retraction), stepped from event to event.

``StepByStep`` is the reference, written independently of the engine: SGLang's loop in plain code, one
iteration per decision, each decode step timed by ``latency.decode_step_time`` and applied on its own.
The engine under test plans runs of decode steps in closed form. On random small workloads both must
give the same timelines, loads and stats.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from engine_testing import ids
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import (
    Engine,
    EngineLoad,
    EngineStats,
    FinishedRequest,
    IterationEngine,
    IterationTiming,
    LatencyModel,
    Node,
    RadixCache,
    SchedulerConfig,
    WorkerConfig,
)
from sim.engine.latency import decode_step_time, prefill_time


@dataclasses.dataclass(eq=False)
class Job:
    """One request in the reference."""

    handle: int
    arrival: float
    seq: np.ndarray  # prompt + output ids
    prompt: int
    out: int
    generated: int = 0  # output tokens sampled so far
    prefix: int = 0  # tokens of its fill in the tree, locked by it
    end: int = 0  # where its prefill in flight ends
    node: Node | None = None
    decode_kv: int = 0  # KV of its decode steps (outside the tree)
    had_kv: int = 0  # KV it held when last retracted
    last_extend: int = 0  # tokens computed in its last prefill forward
    start: float = math.nan
    first: float = math.nan
    cached: int = -1
    evicted: int = 0
    retractions: int = 0
    recomputed: int = 0
    refused: float = math.nan

    @property
    def fill(self) -> int:
        return self.prompt + self.generated


class StepByStep:
    """The reference: SGLang's scheduler loop written plainly, one iteration (one decode step) per decision.

    Each iteration applies the forward that ends now, then builds a prefill batch (``PrefillAdder``'s
    rules), or plans one decode step (retracting first if its KV does not fit), or idles. A decode step
    is timed by ``latency.decode_step_time`` and its KV taken when it ends, as the engine counts it.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        sc = config.scheduler
        self.cache = RadixCache(page_size=config.page_size)
        self.stats = EngineStats()
        self.pool = config.kv_capacity_tokens if config.kv_capacity_tokens is not None else 1 << 62
        self.ratio_init = min(sc.init_new_token_ratio * sc.schedule_conservativeness, 1.0)
        self.ratio_min = min(self.ratio_init * sc.min_new_token_ratio_factor, 1.0)
        self.ratio_decay = (self.ratio_init - self.ratio_min) / sc.new_token_ratio_decay_steps
        self.ratio_base, self.ratio_steps = self.ratio_init, 0
        self.waiting: list[Job] = []
        self.running: list[Job] = []
        self.mixed: list[Job] = []  # running requests riding along in the prefill forward in flight
        self.chunked: Job | None = None
        self.full = False  # SGLang's batch_is_full
        self.transient = 0  # KV of the forward in flight (prefill tokens, mixed decode rows)
        self.forward: tuple = ()  # ("prefill", jobs, mixed rows) | ("decode", start, decays)
        self.t = math.inf  # next decision
        self.last = -math.inf
        self.done: list[FinishedRequest] = []
        self.tokens: list[tuple[float, int]] = []  # (time, output tokens generated then)
        self.handles = 0
        self.decisions = 0

    # -- the API
    def submit(self, now: float, prompt, output) -> int:
        now = max(float(now), self.last)
        prompt, output = np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64)
        assert len(prompt) + len(output) + 1 < self.pool
        self.run(now, inclusive=False)
        self.last = now
        job = Job(self.handles, now, np.concatenate([prompt, output]), len(prompt), len(output))
        self.handles += 1
        self.waiting.append(job)
        self.stats.requests += 1
        self.stats.prompt_tokens += job.prompt
        self.stats.output_tokens += job.out
        if self.t == math.inf:
            self.t = now
        return job.handle

    def next_event_time(self) -> float:
        return self.t

    def advance(self, until: float) -> list[FinishedRequest]:
        self.run(until, inclusive=True)
        if self.last < until < math.inf:
            self.last = until
        done, self.done = self.done, []
        return done

    def run(self, until: float, inclusive: bool) -> None:
        while self.t < until or (inclusive and self.t == until < math.inf):
            self.iterate(self.t)

    @property
    def ratio(self) -> float:
        return max(self.ratio_base - self.ratio_decay * self.ratio_steps, self.ratio_min)

    # -- KV
    def outside(self) -> int:
        return self.transient + sum(j.decode_kv for j in self.running + self.mixed)

    def free(self) -> int:
        return self.pool - self.cache.resident_tokens - self.outside()

    def room(self) -> int:
        return self.free() + self.cache.evictable_tokens

    def take(self, n: int) -> int:
        """Make ``n`` tokens free (evicting LRU cache); the caller then counts them where they belong."""
        short = n - self.free()
        evicted = self.cache.evict(short) if short > 0 else 0
        self.stats.evicted_tokens += evicted
        return evicted

    def note_peak(self) -> None:
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, self.cache.locked_tokens + self.outside())

    # -- one iteration
    def iterate(self, t: float) -> None:
        self.decisions += 1
        if self.forward and self.forward[0] == "prefill":
            self.prefill_done(t, self.forward[1], self.forward[2])
        elif self.forward:
            self.step_done(t, self.forward[1], self.forward[2])
        self.forward = ()
        self.schedule(t)
        self.cache.check()
        assert self.cache.resident_tokens + self.outside() <= self.pool

    def prefill_done(self, t: float, jobs: list[Job], mixed: list[Job]) -> None:
        joined, firsts = [], 0
        for j in jobs:
            self.cache.unlock(j.node)
            node = self.cache.insert(j.seq[: j.end], t, after=(j.prefix, j.node) if j.prefix else None)
            self.cache.lock(node)
            j.node = node
            self.transient -= j.end - j.prefix
            j.last_extend = j.end - j.prefix
            j.prefix = j.end
            if j.end < j.fill:
                self.full = False
                continue
            j.generated += 1
            firsts += 1
            if math.isnan(j.first):
                j.first = t
            if j.generated == j.out:
                self.finish(j, t)
            else:
                joined.append(j)
        for j in mixed:
            self.transient -= 1
            j.decode_kv += 1
            j.generated += 1
        for j in mixed:
            if j.generated == j.out:
                self.finish(j, t)
        if mixed:
            self.tokens.append((t, len(mixed)))
        self.mixed = []
        self.running = [j for j in mixed if j.generated < j.out] + self.running + joined
        self.tokens.append((t, firsts))

    def step_done(self, t: float, start: float, decays: bool) -> None:
        b = len(self.running)
        self.take(b)
        for j in self.running:
            j.decode_kv += 1
        self.note_peak()
        if decays:
            self.ratio_steps += 1
        self.stats.busy_time += t - start
        for j in self.running:
            j.generated += 1
        for j in self.running:
            if j.generated == j.out:
                self.finish(j, t)
        self.running = [j for j in self.running if j.generated < j.out]
        self.tokens.append((t, b))

    def finish(self, j: Job, t: float) -> None:
        self.cache.unlock(j.node)
        self.cache.insert(j.seq[: j.prefix + j.decode_kv], t, after=(j.prefix, j.node))
        j.decode_kv = 0
        self.full = False
        self.done.append(
            FinishedRequest(
                j.handle,
                IterationTiming(
                    j.arrival, j.start, j.first, t, j.prompt, j.cached, j.out, j.evicted, j.retractions, j.recomputed,
                    j.last_extend,
                ),
            )
        )

    def schedule(self, t: float) -> None:
        jobs = self.build_prefill(t)
        if jobs:
            self.start_prefill(t, jobs)
        elif self.running:
            if self.room() >= len(self.running):
                self.plan_step(t, decays=True)
                return
            self.retract()
            if self.running:
                self.plan_step(t, decays=False)
            else:
                self.schedule(t)
        else:
            assert not self.waiting and self.chunked is None
            self.t = math.inf
            self.ratio_base, self.ratio_steps = self.ratio_init, 0

    def plan_step(self, t: float, decays: bool) -> None:
        context = sum(j.prefix + j.decode_kv + 1 for j in self.running)
        step = decode_step_time(self.config.latency, len(self.running), context)
        self.forward = ("decode", t, decays)
        self.t = t + step * self.config.slowdown

    def build_prefill(self, t: float) -> list[Job]:
        cfg, sc = self.config, self.config.scheduler
        if not self.running:
            self.full = False
        if (self.full or not self.waiting) and self.chunked is None:
            return []
        if self.chunked is None and len(self.running) >= cfg.max_running_requests:
            self.full = True
            return []
        mixed = len(self.running) if sc.enable_mixed_chunk and sc.chunked_prefill_size is not None else 0
        rem_input = sc.max_prefill_tokens - mixed
        rem_chunk = None if sc.chunked_prefill_size is None else sc.chunked_prefill_size - mixed
        clip, page = sc.clip_max_new_tokens, cfg.page_size
        total_off = mixed + sum(min(j.out - j.generated, clip) * self.ratio for j in self.running)
        current_off = mixed
        jobs: list[Job] = []
        if self.chunked is not None:
            j = self.chunked
            room = min(rem_chunk, int(self.room() - total_off))
            if room <= 0:
                room = rem_chunk
            new = min(j.fill - j.prefix, room, self.room())
            if new > 0:
                j.end = j.prefix + new
                jobs.append(j)
                last = j.end == j.fill
                total_off += new + page + (min(j.out, clip) if last else 0)
                current_off += new + page
                rem_input -= new
                rem_chunk -= new
                if last:
                    self.chunked = None
        for j in list(self.waiting):
            if rem_input <= 0 or (rem_chunk is not None and rem_chunk <= 0):
                break
            if len(self.running) + len(jobs) >= cfg.max_running_requests:
                self.full = True
            if self.full:
                break
            cached, node = self.cache.match(j.seq[: j.fill - 1], t)
            self.cache.lock(node)
            extend = j.fill - cached
            room = self.room()
            if not extend + min(j.out - j.generated, clip) + page < room - total_off:
                self.cache.unlock(node)
                if math.isnan(j.refused):
                    j.refused = t
                self.full = bool(jobs) or bool(self.running)
                break
            reserve = min(j.out, clip)
            if rem_chunk is not None and extend > rem_chunk:
                extend = (cached + rem_chunk) // page * page - cached
                if extend <= 0:
                    self.cache.unlock(node)
                    break
                self.chunked = j
                reserve = 0
            elif rem_chunk is None and jobs and extend >= rem_input:
                self.cache.unlock(node)
                break
            j.node, j.prefix, j.end = node, cached, cached + extend
            jobs.append(j)
            self.waiting.remove(j)
            if j.cached < 0:
                j.cached, j.start = cached, t
                self.stats.cached_tokens += cached
                self.stats.queue_time += t - j.arrival
                if not math.isnan(j.refused):
                    self.stats.kv_wait_requests += 1
                    self.stats.kv_wait_time += t - j.refused
            else:
                assert j.had_kv == j.fill - 1  # all but its last sampled token had KV
                j.recomputed += j.had_kv - cached
                self.stats.recomputed_tokens += j.had_kv - cached
            total_off += extend + page + reserve
            current_off += extend + page
            rem_input -= extend
            if rem_chunk is not None:
                rem_chunk -= extend
            if room - total_off <= 0 or room - current_off <= 0:
                self.full = bool(jobs) or bool(self.running)
                break
        return jobs

    def start_prefill(self, t: float, jobs: list[Job]) -> None:
        lat, slow = self.config.latency, self.config.slowdown
        tokens, attention = 0, 0.0
        for j in jobs:
            new = j.end - j.prefix
            j.evicted += self.take(new)
            self.transient += new
            tokens += new
            attention += lat.attention_per_token2 * new * (j.prefix + new / 2)
        mixed, decode_part = [], 0.0
        was_running = bool(self.running)
        sc = self.config.scheduler
        mixing = sc.enable_mixed_chunk and sc.chunked_prefill_size is not None
        if self.running and mixing and self.room() >= len(self.running):
            mixed, self.running = self.running, []
            self.mixed = mixed
            context = sum(j.prefix + j.decode_kv + 1 for j in mixed)
            self.take(len(mixed))
            self.transient += len(mixed)
            decode_part = lat.decode_per_seq * len(mixed) + lat.decode_per_ctx_token * context
            tokens += len(mixed)
        duration = (max(lat.prefill_per_token * tokens, lat.prefill_floor) + attention + decode_part) * slow
        self.stats.prefill_time += duration
        self.stats.busy_time += duration
        if mixed:
            self.stats.decode_stall_seconds += duration - (lat.decode_floor_at(len(mixed)) + decode_part) * slow
        elif was_running:
            self.stats.decode_stall_seconds += duration
        self.forward = ("prefill", jobs, mixed)
        self.t = t + duration
        self.note_peak()

    def retract(self) -> None:
        sc = self.config.scheduler
        order = sorted(
            range(len(self.running)),
            key=lambda i: (self.running[i].generated, -self.running[i].prompt),
            reverse=True,
        )
        out: list[Job] = []
        while not out or self.room() < len(order):
            if len(order) == 1:
                break
            j = self.running[order.pop()]
            self.release(j, len(order) * sc.retract_decode_steps)
            out.append(j)
        if len(order) == 1 and self.room() < 1:
            j = self.running[order.pop()]
            self.release(j, 0)
            out.append(j)
        self.running = [self.running[i] for i in sorted(order)]
        kept = self.running
        estimate = (sum(j.generated for j in kept) + sc.retract_decode_steps * len(kept)) / (
            sum(j.out for j in kept) + 1
        )
        self.ratio_base, self.ratio_steps = min(1.0, estimate), 0
        self.waiting += out
        self.full = False
        self.stats.retractions += len(out)

    def release(self, j: Job, goal: int) -> None:
        j.had_kv = j.prefix + j.decode_kv
        j.decode_kv = 0
        self.cache.unlock(j.node)
        j.node, j.prefix = None, 0
        j.retractions += 1
        short = goal - self.free()
        if short > 0:
            self.stats.evicted_tokens += self.cache.evict(short)

    # -- load
    def load(self, now: float) -> EngineLoad:
        running = len(self.running) + (1 if self.chunked is not None else 0)
        if self.forward and self.forward[0] == "prefill":
            running += len(self.forward[2]) + sum(1 for j in self.forward[1] if j is not self.chunked)
        uncached = sum(j.fill - self.cache.peek(j.seq[: j.fill - 1]) for j in self.waiting)
        used = self.cache.locked_tokens + self.outside()
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, used)
        cap = self.config.kv_capacity_tokens
        return EngineLoad(
            num_running_reqs=running,
            num_waiting_reqs=len(self.waiting),
            num_waiting_uncached_tokens=uncached,
            num_used_tokens=used,
            max_total_num_tokens=cap or 0,
            token_usage=used / cap if cap else 0.0,
            cache_hit_rate=self.stats.cache_hit_rate,
            gen_throughput=sum(n for at, n in self.tokens if now - 5.0 < at <= now) / 5.0,
            max_running_requests=self.config.max_running_requests,
        )


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


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.integers(1, 30_000),
    output=st.integers(1, 3000),
    shared=st.integers(0, 5000),
    slowdown=st.sampled_from([1.0, 3.0]),
)
def test_alone_any_request_gets_the_closed_forms(prompt, output, shared, slowdown):
    # without chunking (a chunk below prefill_floor / prefill_per_token tokens pays the floor once more)
    sched = SchedulerConfig(chunked_prefill_size=None)
    config = WorkerConfig(kv_capacity_tokens=None, slowdown=slowdown, scheduler=sched)
    new, old = IterationEngine(config), Engine(config)
    warm = ids(7, shared + 1)
    run_alone(new, 0.0, warm, ids(8, 1))
    old.submit(0.0, warm, ids(8, 1))
    request = np.concatenate([warm[:shared], ids(9, prompt)]), ids(10, output)
    got, want = run_alone(new, 100.0, *request), old.submit(100.0, *request)
    assert got.cached_tokens == want.cached_tokens
    assert got.first_token == pytest.approx(want.first_token, rel=1e-12)
    assert got.finish == pytest.approx(want.finish, rel=1e-12)


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
        latency=LatencyModel(decode_per_ctx_token=draw(st.sampled_from([0.04e-6, 0.0, 3e-4])),
                             **draw(st.sampled_from([{}, {"moe_experts": 16, "moe_experts_per_token": 2,
                                                          "decode_floor_all_experts": 0.03}]))),
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
    assert sorted(finished) == list(range(len(requests)))  # every admitted request finished
    assert fast.next_event_time() == math.inf and fast.cache.locked_tokens == 0
    for field in dataclasses.fields(fast.stats):
        assert close(getattr(fast.stats, field.name), getattr(slow.stats, field.name)), field.name
    assert fast.stats.peak_kv_tokens <= config.kv_capacity_tokens
    for handle, timing in finished.items():
        assert timing.arrival <= timing.start < timing.first_token <= timing.finish
        assert timing.recomputed_tokens == fast.expected_recompute.get(handle, 0)
    assert fast.decisions <= slow.decisions

"""HiCache in the iteration-level engine: the host tier (L2), the write policies, the shared L3, the prefetch
policies, the load-back, PD decode offload (docs/engine.md, "HiCache")."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pytest
from engine_testing import Checked, ids
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import HiCacheConfig, IterationEngine, L3Store, RadixCache, SchedulerConfig, WorkerConfig
from sim.engine.latency import prefill_time

KV = 131_072  # WorkerConfig.kv_bytes_per_token
TIER_FIELDS = ("cached_device", "cached_host", "cached_storage", "load_back_seconds", "prefetch_seconds")


def config(kv: int | None = 50_000, page: int = 64, hicache: HiCacheConfig | None = None, **kw) -> WorkerConfig:
    return WorkerConfig(engine="iteration", kv_capacity_tokens=kv, page_size=page, hicache=hicache, **kw)


class RecordingStore(L3Store):
    """An L3Store that checks every match against the writes it was given: a page is found only once a write of
    it is ready."""

    def __init__(self, page_size: int) -> None:
        super().__init__(page_size)
        self.ready: dict[bytes, float] = {}
        self.matched_pages = 0

    def write(self, keys: Sequence[bytes], ready: float) -> int:
        for k in keys:
            self.ready[k] = min(ready, self.ready.get(k, math.inf))
        return super().write(keys, ready)

    def match(self, keys: Sequence[bytes], now: float) -> int:
        n = super().match(keys, now)
        assert all(self.ready[k] <= now for k in keys[:n])
        if now < math.inf:
            self.matched_pages += n
        return n


def run(engines: list[IterationEngine], workload: list[tuple[float, int, np.ndarray, np.ndarray]]):
    """Submit ``(time, engine, prompt, output)`` in time order; return each finished request's timing, in order."""
    done = {}
    for t, i, prompt, output in workload:
        for j, e in enumerate(engines):
            for f in e.advance(t):
                done[(j, f.handle)] = f.timing
        h = engines[i].submit(t, prompt, output)
        assert (i, h) not in done
    for j, e in enumerate(engines):
        for f in e.advance(math.inf):
            assert (j, f.handle) not in done  # every request finishes once
            done[(j, f.handle)] = f.timing
    return done


@st.composite
def workloads(draw, engines: int = 1, max_len: int = 3_000):
    """Multi-turn sessions on random engines: each turn extends the session's last prompt and output."""
    n_sessions = draw(st.integers(1, 5))
    sessions = [ids(100 + s, draw(st.integers(1, max_len))) for s in range(n_sessions)]
    out, t = [], 0.0
    for k in range(draw(st.integers(1, 25))):
        t += draw(st.floats(0.0, 2.0))
        s = draw(st.integers(0, n_sessions - 1))
        prompt = np.concatenate([sessions[s], ids(1000 + k, draw(st.integers(1, 600)))])
        output = ids(5000 + k, draw(st.integers(1, 300)))
        sessions[s] = np.concatenate([prompt, output]) if len(prompt) < max_len else ids(200 + k, 50)
        out.append((t, draw(st.integers(0, engines - 1)), prompt, output))
    return out


policies = st.sampled_from(["write_through", "write_through_selective", "write_back"])
prefetch_policies = st.sampled_from(["best_effort", "wait_complete", "timeout"])


# ---------------------------------------------------------------------------------------------- HiCache off
@settings(max_examples=30, deadline=None)
@given(workloads(), st.sampled_from([1, 16]), st.sampled_from([6_000, 20_000]), st.sampled_from([None, 1024]))
def test_hicache_off_ignores_a_storage_and_a_device_only_run_is_unchanged_by_hicache(work, page, kv, chunk):
    """``hicache=None`` ignores a storage given; with a pool that never evicts and no L3, HiCache on gives the
    same timelines (the host only copies what the GPU keeps) with every cached token on the device."""
    sc = SchedulerConfig(chunked_prefill_size=chunk)
    plain = run([Checked(config(kv, page, scheduler=sc))], work)
    given_store = run([Checked(config(kv, page, scheduler=sc), storage=L3Store(page))], work)
    assert given_store == plain
    roomy = run([Checked(config(None, page, scheduler=sc))], work)
    on = run([Checked(config(None, page, HiCacheConfig(), scheduler=sc))], work)
    assert on.keys() == roomy.keys()
    for key, timing in on.items():
        assert timing.cached_device == timing.cached_tokens and timing.cached_host == timing.cached_storage == 0
        assert dataclasses.replace(timing, cached_device=0) == roomy[key]
    assert all(getattr(t, f) == 0 for t in plain.values() for f in TIER_FIELDS)


# ---------------------------------------------------------------------------------------------- invariants
@settings(max_examples=40, deadline=None)
@given(workloads(engines=3), policies, prefetch_policies, st.sampled_from([16, 64]),
       st.sampled_from([1e8, 40e9]), st.sampled_from([0.5, 2.0]))
def test_tiers_sum_to_cached_tokens_and_l3_pages_are_read_only_once_written(work, policy, pf, page, bw, ratio):
    """On a pool of three engines sharing one L3, with small GPU and host pools: every request finishes once, KV
    stays within the GPU pool and pages within the host pool (``Checked``), device + host + storage = cached
    tokens, and every page found in L3 was written by some engine with its write finished by then."""
    store = RecordingStore(page)
    hc = HiCacheConfig(ratio=ratio, write_policy=policy, storage=True, prefetch_policy=pf,
                       storage_read_bandwidth=bw, storage_write_bandwidth=bw, prefetch_timeout_base=0.05)
    engines = [Checked(config(8_000, page, hc), storage=store) for _ in range(3)]
    done = run(engines, work)
    assert len(done) == len(work)
    for t in done.values():
        assert t.cached_device + t.cached_host + t.cached_storage == t.cached_tokens
        assert t.load_back_seconds >= 0 and t.prefetch_seconds >= 0
    for e in engines:
        st_ = e.stats
        assert st_.storage_read_bytes == st_.storage_prefetch_hit_tokens * KV
        assert st_.host_used_tokens <= st_.host_total_tokens


@settings(max_examples=25, deadline=None)
@given(workloads(engines=2, max_len=1_500), st.sampled_from([1, 16, 64, 512]))
def test_a_prefetch_below_the_threshold_never_happens(work, page):
    """A prefetch needs at least max(256, page) tokens requested and hit in L3 (``prefetch_threshold``)."""
    hc = HiCacheConfig(storage=True, prefetch_policy="wait_complete")
    store = L3Store(page)
    engines = [IterationEngine(config(None, page, hc), storage=store) for _ in range(2)]
    issued = []
    for e in engines:
        tier = e._hicache
        original = tier.issue_prefetch

        def spy(keys, local, limit, t, original=original):
            pf = original(keys, local, limit, t)
            if pf is not None:
                issued.append(pf)
            return pf

        tier.issue_prefetch = spy
    run(engines, work)
    assert all(pf.pages * page >= max(256, page) for pf in issued)


# ---------------------------------------------------------------------------------------------- write policies
def test_write_through_backs_up_on_first_insertion():
    e = Checked(config(hicache=HiCacheConfig(write_policy="write_through")))
    prompt, out = ids(1, 1_000), ids(2, 100)
    e.submit(0.0, prompt, out)
    e.advance(math.inf)
    assert e.stats.backup_tokens == e.stats.host_used_tokens == (1_000 + 100 - 1) // 64 * 64


def test_write_through_selective_backs_up_a_prefix_at_its_second_hit():
    e = Checked(config(hicache=HiCacheConfig(write_policy="write_through_selective")))
    prompt = ids(1, 1_000)
    e.submit(0.0, prompt, ids(2, 100))
    e.advance(math.inf)
    assert e.stats.backup_tokens == 0  # the first request's tokens had one hit
    e.submit(10.0, np.concatenate([prompt, ids(3, 500)]), ids(4, 10))
    e.advance(math.inf)
    assert e.stats.backup_tokens == 1_000 // 64 * 64  # the matched prefix: its second hit


def test_write_back_backs_up_exactly_what_the_gpu_evicts():
    e = Checked(config(kv=6_000, hicache=HiCacheConfig(write_policy="write_back")))
    for k in range(8):  # distinct prompts: every eviction is of pages never backed up
        e.submit(float(k), ids(k, 2_000 + 64 * k), ids(100 + k, 50))
        e.advance(math.inf)
        assert e.stats.backup_tokens == e.stats.evicted_tokens
    assert e.stats.evicted_tokens > 0


# ---------------------------------------------------------------------------------------------- load-back
def test_a_host_hit_is_loaded_back_overlapped_with_compute():
    """The forward takes max(compute, load / pcie): the load-back's excess is the request's load_back_seconds."""
    pcie = 2e9
    cfg = config(kv=6_000, hicache=HiCacheConfig(pcie_bandwidth=pcie))
    e = Checked(cfg)
    session = ids(1, 3_000)
    e.submit(0.0, session, ids(2, 1))
    e.submit(1.0, ids(3, 5_000), ids(4, 1))  # evicts most of the session from the GPU; its pages stay in host
    e.advance(math.inf)
    extra = ids(5, 200)
    h = e.submit(10.0, np.concatenate([session, extra]), ids(6, 1))
    [done] = [f for f in e.advance(math.inf) if f.handle == h]
    t = done.timing
    host = t.cached_host  # the GPU kept the session's head (eviction takes a leaf's tail first)
    assert host > 0 and t.cached_device + host == 3_000 // 64 * 64 and t.cached_storage == 0
    compute = prefill_time(cfg.latency, 3_200 - t.cached_tokens, t.cached_tokens)
    load = host * KV / pcie
    assert load > compute
    assert math.isclose(t.first_token - t.start, load) and math.isclose(t.load_back_seconds, load - compute)
    assert e.stats.load_back_tokens == host


# ---------------------------------------------------------------------------------------------- L3 and prefetch
def written_prompt(store: L3Store, prompt: np.ndarray, t: float = 0.0) -> IterationEngine:
    """An engine that prefilled ``prompt`` (write_through: its pages are in L3 from their write's end)."""
    writer = IterationEngine(config(hicache=HiCacheConfig(storage=True)), storage=store)
    writer.submit(t, prompt, ids(99, 1))
    writer.advance(math.inf)
    return writer


@pytest.mark.parametrize("pages, prefetched", [(3, False), (4, True)])
def test_the_prefetch_threshold_is_256_tokens_at_page_64(pages, prefetched):
    store = L3Store(64)
    prompt = ids(1, 64 * pages + 1)
    written_prompt(store, prompt)
    reader = Checked(config(hicache=HiCacheConfig(storage=True)), storage=store)
    reader.submit(10.0, np.concatenate([prompt, ids(2, 100)]), ids(3, 5))
    [done] = reader.advance(math.inf)
    assert done.timing.cached_storage == (64 * pages if prefetched else 0)
    assert reader.stats.storage_read_bytes == (64 * pages * KV if prefetched else 0)


def test_a_page_is_found_only_once_its_write_finished():
    store = L3Store(64)
    prompt = ids(1, 2_048)
    writer = written_prompt(store, prompt)
    write_end = writer.stats.storage_write_bytes / HiCacheConfig().storage_write_bandwidth
    finish = writer.stats.busy_time
    for at, found in ((finish + write_end * 0.99, False), (finish + write_end, True)):
        reader = Checked(config(hicache=HiCacheConfig(storage=True)), storage=store)
        reader.submit(at, np.concatenate([prompt, ids(2, 10)]), ids(3, 5))
        [done] = reader.advance(math.inf)
        assert (done.timing.cached_storage > 0) == found


@pytest.mark.parametrize("policy", ["best_effort", "wait_complete", "timeout"])
def test_prefetch_policies_wait_for_l3_as_sglang(policy):
    """2048 tokens at 1 GB/s take 0.268 s: ``wait_complete`` waits for all, ``timeout`` at most base + per_ki *
    requested / 1024 (0.05 + 0.01 * 2 here), ``best_effort`` not at all (nothing arrived yet: all recomputed)."""
    store = L3Store(64)
    prompt = ids(1, 2_048 + 1)
    written_prompt(store, prompt)
    read = 2_048 * KV / 1e9
    hc = HiCacheConfig(storage=True, prefetch_policy=policy, storage_read_bandwidth=1e9,
                       prefetch_timeout_base=0.05, prefetch_timeout_per_ki_token=0.01)
    reader = Checked(config(hicache=hc), storage=store)
    reader.submit(10.0, np.concatenate([prompt, ids(2, 63)]), ids(3, 5))  # 2112 tokens: the 32 pages before the last
    [done] = reader.advance(math.inf)
    t = done.timing
    wait = {"best_effort": 0.0, "wait_complete": read, "timeout": 0.05 + 0.01 * 2_048 / 1024}[policy]
    assert math.isclose(t.start - 10.0, wait) and math.isclose(t.prefetch_seconds, wait)
    arrived = {"best_effort": 0, "wait_complete": 32, "timeout": int(wait / read * 32)}[policy]
    assert t.cached_storage == arrived * 64
    assert reader.stats.storage_prefetch_unfulfilled_tokens == (32 - arrived) * 64


def test_a_waiting_prefetch_does_not_hold_up_the_queue_behind_it():
    """A request skipped for its prefetch lets the next one in (SGLang's admission pass goes on)."""
    store = L3Store(64)
    prompt = ids(1, 4_096 + 1)
    written_prompt(store, prompt)
    hc = HiCacheConfig(storage=True, prefetch_policy="wait_complete", storage_read_bandwidth=1e9)
    reader = Checked(config(hicache=hc), storage=store)
    slow = reader.submit(10.0, np.concatenate([prompt, ids(2, 10)]), ids(3, 5))
    fast = reader.submit(10.0, ids(4, 300), ids(5, 5))
    starts = {f.handle: f.timing.start for f in reader.advance(math.inf)}
    assert starts[fast] == 10.0 and math.isclose(starts[slow], 10.0 + 4_096 * KV / 1e9)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 900), st.integers(1, 400)),
                min_size=1, max_size=20), st.sampled_from([16, 64]))
def test_a_moved_session_finds_in_l3_what_one_pool_would_hold(turns, page):
    """L3 unbounded and fast, requests one at a time (each after the previous one's writes ended): a request's
    cached tokens over all tiers equal the single-pool oracle's match (one radix tree of everything finished), or
    fall short of it by less than the prefetch threshold max(256, page) (a shorter L3 run is not prefetched)."""
    fast = 1e15
    hc = HiCacheConfig(ratio=8.0, storage=True, prefetch_policy="wait_complete", pcie_bandwidth=fast,
                       storage_read_bandwidth=fast, storage_write_bandwidth=fast)
    store = L3Store(page)
    engines = [Checked(config(6_000, page, hc), storage=store) for _ in range(4)]
    oracle = RadixCache(page_size=page)
    sessions = [ids(10 + s, 500) for s in range(4)]
    threshold = max(256, page)
    t = 0.0
    for k, (s, engine, extra, n_out) in enumerate(turns):
        prompt = np.concatenate([sessions[s], ids(100 + k, extra)])
        if len(prompt) + n_out > 2_500:
            prompt = prompt[-2_000:]
        output = ids(200 + k, n_out)
        expected = oracle.peek(prompt[:-1])
        t += 1_000.0
        engines[engine].submit(t, prompt, output)
        [done] = engines[engine].advance(math.inf)
        got = done.timing.cached_tokens
        assert got == expected or (got < expected and expected - got < threshold), (got, expected)
        oracle.insert(np.concatenate([prompt, output])[: len(prompt) + n_out - 1], t)
        sessions[s] = np.concatenate([prompt, output])


# ---------------------------------------------------------------------------------------------- PD
def test_decode_offload_publishes_the_answer_and_the_next_prefill_finds_it_in_l3():
    """SGLang's setup (b): prefill workers with L3, decode workers with --disaggregation-decode-enable-offload-kvcache.
    The prefill backs the prompt's pages up, the decode the pages after them at finish, so another prefill worker
    finds the previous prompt and answer in L3."""
    page = 64
    store = L3Store(page)
    hc = HiCacheConfig(storage=True, prefetch_policy="wait_complete")
    prefill = [Checked(config(hicache=hc, disaggregation_mode="prefill"), storage=store) for _ in range(2)]
    decode = Checked(config(hicache=dataclasses.replace(hc, decode_offload=True), disaggregation_mode="decode"),
                     storage=store)
    prompt, answer = ids(1, 1_000), ids(2, 700)
    prefill[0].submit(0.0, prompt, answer[:1])  # the PD prefill leg: the output cut to one token
    [p] = prefill[0].advance(math.inf)
    h = decode.submit(0.0, prompt, answer)
    decode.advance(0.0)
    decode.transfer_ready(h, p.timing.finish)
    [d] = decode.advance(math.inf)
    assert decode.stats.storage_write_bytes == ((1_000 + 700 - 1) // page - 1_000 // page) * page * KV
    assert decode.stats.host_used_tokens == 0  # the decode's host pool only stages the offload
    nxt = np.concatenate([prompt, answer, ids(3, 300)])
    prefill[1].submit(d.timing.finish + 1.0, nxt, ids(4, 1))
    [n] = prefill[1].advance(math.inf)
    assert n.timing.cached_storage == n.timing.cached_tokens == (1_000 + 700 - 1) // page * page

"""A decode request whose KV transfer failed (SGLang: ``KVPoll.Failed``, the request aborted): ``abort_transfer``
takes it out of the decode engine and releases its KV without inserting anything into the tree."""

from __future__ import annotations

import heapq
import math

import numpy as np
from engine_testing import Checked, ids
from engine_testing import decode_config as config
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine.radix import RadixCache


def test_an_aborted_transfer_frees_the_prompts_kv_and_its_matched_prefix_stays_cached_unlocked():
    e = Checked(config(radix=True))
    prompt, out = ids(1, 2_000), ids(2, 30)
    h = e.submit(0.0, prompt, out)
    e.advance(0.0)
    e.take_preallocated()
    e.transfer_ready(h, 0.1)
    e.advance(math.inf)
    cached = e.cache.resident_tokens  # what the first turn left: prompt + output - 1
    follow = np.concatenate([prompt, out, ids(3, 100)])
    h2 = e.submit(5.0, follow, ids(4, 5))
    e.advance(5.0)
    assert e.take_preallocated() == [(h2, 5.0, cached)]
    assert e.used_tokens() == len(follow)
    assert e.abort_transfer(h2)
    e.check()
    assert e.used_tokens() == 0 and e.cache.locked_tokens == 0
    assert e.cache.resident_tokens == cached == e.cache.evictable_tokens  # nothing of the aborted turn entered
    assert e.disagg_queues() == (0, 0, 0) and e.advance(math.inf) == [] and e.next_event_time() == math.inf


def test_abort_transfer_is_a_no_op_for_a_request_not_waiting_for_its_kv():
    e = Checked(config(kv=10_000, reserved=500))
    a = e.submit(0.0, ids(1, 4_000), ids(2, 50))
    b = e.submit(0.0, ids(3, 6_000), ids(4, 8))  # does not fit beside a: still in the pre-allocation queue
    e.advance(0.0)
    assert [h for h, _, _ in e.take_preallocated()] == [a]
    assert not e.abort_transfer(b) and not e.abort_transfer(99)
    e.transfer_ready(a, 0.0)
    e.advance(0.0)  # a runs
    used = e.used_tokens()
    assert not e.abort_transfer(a) and e.used_tokens() == used
    finished = [d.handle for d in e.advance(math.inf)]
    assert finished == [a] and [h for h, _, _ in e.take_preallocated()] == [b]
    assert e.abort_transfer(b) and not e.abort_transfer(b)  # once


def test_the_kv_an_aborted_transfer_frees_pre_allocates_the_next_request_at_once():
    e = Checked(config(kv=10_000, reserved=500))
    a = e.submit(0.0, ids(1, 4_000), ids(2, 8))
    b = e.submit(0.0, ids(3, 6_000), ids(4, 8))
    e.advance(0.0)
    assert [h for h, _, _ in e.take_preallocated()] == [a]
    e.advance(1.0)  # a still waits for its KV; the engine is idle
    assert e.abort_transfer(a) and e.next_event_time() == 1.0
    e.advance(1.0)
    assert e.take_preallocated() == [(b, 1.0, 0)] and e.used_tokens() == 6_000


def test_a_report_not_yet_taken_is_dropped_with_its_aborted_request():
    e = Checked(config())
    a = e.submit(0.0, ids(1, 100), ids(2, 8))
    b = e.submit(0.0, ids(3, 100), ids(4, 8))
    e.advance(0.0)
    assert e.abort_transfer(a)
    assert e.take_preallocated() == [(b, 0.0, 0)]


@st.composite
def workloads(draw):
    radix = draw(st.booleans())
    cap = draw(st.integers(800, 6_000))
    cfg = config(kv=cap, radix=radix, reserved=draw(st.integers(0, 200)), max_running_requests=draw(st.integers(1, 8)))
    shared = ids(99, 2_000)
    reqs = []
    t = 0.0
    for i in range(draw(st.integers(1, 12))):
        t += draw(st.floats(0.0, 0.05))
        n_prompt = draw(st.integers(2, max(2, cap // 3)))
        head = draw(st.integers(0, n_prompt - 1))  # a prefix shared across requests (decode radix hits)
        prompt = np.concatenate([shared[:head], ids(i, n_prompt - head)])  # its own tail: never shared
        fails = draw(st.booleans())
        reqs.append((t, prompt, ids(1000 + i, draw(st.integers(1, 60))), draw(st.floats(0.0, 0.1)), fails))
    return cfg, reqs


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_aborted_transfers_leave_the_kv_as_if_their_requests_never_came(workload):
    cfg, reqs = workload
    e = Checked(cfg)
    sizes, plan, done = {}, {}, []
    aborts: list[tuple[float, int]] = []  # (when, handle): the transfers that fail

    def transfers(now: float) -> None:  # each pre-allocated request's KV comes (or fails) its delay later
        for h, at, prefix in e.take_preallocated():
            sizes[h] = (sizes[h][0], prefix)
            delay, fails = plan[h]
            if fails:
                heapq.heappush(aborts, (max(at + delay, now), h))
            else:
                e.transfer_ready(h, at + delay)

    arrivals = sorted((r for r in reqs if e.refusal(len(r[1]), len(r[2])) is None), key=lambda r: r[0])
    seqs = {}
    while True:
        t_arrival = arrivals[0][0] if arrivals else math.inf
        t_abort = aborts[0][0] if aborts else math.inf
        t = min(t_arrival, t_abort, e.next_event_time())
        if t == math.inf:
            break
        if t == t_arrival:
            at, prompt, out, delay, fails = arrivals.pop(0)
            h = e.submit(at, prompt, out)
            sizes[h], plan[h], seqs[h] = (len(prompt), 0), (delay, fails), np.concatenate([prompt, out])
        done += e.advance(t)
        if t == t_abort and t != t_arrival:
            _, h = heapq.heappop(aborts)
            used, locked, queued = e.used_tokens(), e.cache.locked_tokens, e.disagg_queues()[1]
            assert e.abort_transfer(h)
            e.check()
            n_prompt, prefix = sizes[h]
            # its own KV is freed, and its prefix's lock goes (tokens other requests still lock stay locked)
            assert (used - locked) - (e.used_tokens() - e.cache.locked_tokens) == n_prompt - prefix
            assert 0 <= locked - e.cache.locked_tokens <= prefix
            assert e.disagg_queues()[1] == queued - 1
        transfers(t)
    failed = {h for h, (_, fails) in plan.items() if fails}
    assert sorted(d.handle for d in done) == sorted(set(plan) - failed)  # every other request finishes, once
    assert e.used_tokens() == 0 and e.cache.locked_tokens == 0
    if not cfg.decode_radix_cache:
        assert e.cache.resident_tokens == 0  # the whole pool is free, as if the aborted requests never came
        return
    # the tree holds only what the finished requests inserted: nothing of an aborted request's own tail
    inserted = RadixCache()
    for d in done:
        inserted.insert(seqs[d.handle][: sizes[d.handle][0] + d.timing.output_tokens - 1], 0.0)
    stack = [e.cache.root]
    while stack:
        node = stack.pop()
        if not node.children and node is not e.cache.root:
            path = e.cache.path_ids(node)
            assert inserted.peek(path) == len(path)
        stack.extend(node.children.values())

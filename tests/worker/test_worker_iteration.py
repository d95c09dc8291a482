"""The worker core on the iteration-level engine: served requests are answered pending, and ``advance`` answers
them when the engine finishes them; the profile's request overhead delays a request's arrival at the scheduler."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine.latency import decode_step_time, prefill_time
from sim.engine.types import LatencyModel, WorkerConfig
from sim.worker.core import WorkerCore

LAT = LatencyModel()


def core(overhead: float = 0.0, kv: int = 50_000) -> WorkerCore:
    return WorkerCore(WorkerConfig(kv_capacity_tokens=kv, engine="iteration", request_overhead=overhead), seed=7)


def ask(c: WorkerCore, t: float, n: int = 5, text: str = "some words here") -> int:
    reply = c.infer("generate", {"text": text, "sampling_params": {"max_new_tokens": n}, "sim_time": t})
    assert reply.status == 200 and reply.timing is None and reply.body is None
    assert reply.pending is not None
    return reply.pending


def run_to_end(c: WorkerCore) -> list:
    out = []
    while (t := c.next_event_time()) < math.inf:
        out += c.advance(t)
    return out


def test_a_request_is_answered_pending_and_advance_gives_its_answer_at_the_closed_forms():
    c = core()
    rid = ask(c, 1.0, n=5)
    assert c.pending == 1 and c.advance(1.0) == []  # the first decision starts its prefill
    [reply] = run_to_end(c)
    assert reply.pending == rid and reply.status == 200 and c.pending == 0
    sim = reply.body["sim"]
    prompt = reply.body["meta_info"]["prompt_tokens"]
    ttft = prefill_time(LAT, prompt, 0)
    assert sim["arrival"] == 1.0 and sim["first_token"] == 1.0 + ttft
    decode = sum(decode_step_time(LAT, 1, prompt + i) for i in range(1, 5))
    assert math.isclose(sim["finish"], 1.0 + ttft + decode, rel_tol=1e-12)
    assert sim["retractions"] == 0 and sim["recomputed_tokens"] == 0


def test_the_request_overhead_delays_the_scheduler_not_the_reported_arrival():
    plain, slow = core(), core(overhead=0.015)
    ask(plain, 2.0)
    ask(slow, 2.0)
    assert slow.next_event_time() == 2.0 + 0.015 and slow.load(2.01).num_waiting_reqs == 0
    [a], [b] = run_to_end(plain), run_to_end(slow)
    sa, sb = a.body["sim"], b.body["sim"]
    assert sb["arrival"] == sa["arrival"] == 2.0
    assert math.isclose(sb["first_token"] - sa["first_token"], 0.015, abs_tol=1e-12)
    assert math.isclose(sb["finish"] - sa["finish"], 0.015, abs_tol=1e-12)


def test_a_request_the_pool_cannot_hold_is_refused_at_arrival_even_behind_an_overhead():
    # 3 prompt + 60 output tokens pass the request check (63 <= 64) but not the engine's: the last token's KV too
    c = core(overhead=0.01, kv=64)
    reply = c.infer("generate", {"text": "a few words", "sampling_params": {"max_new_tokens": 60}, "sim_time": 0.0})
    assert reply.status == 400 and "cannot admit" in reply.body["message"] and c.pending == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.05), st.integers(1, 40), st.integers(0, 5)), min_size=1, max_size=15),
       st.sampled_from([0.0, 0.004]))
def test_every_request_is_answered_once_whatever_the_interleaving(arrivals, overhead):
    c = core(overhead=overhead, kv=3_000)
    t, asked, answered = 0.0, [], []
    for gap, n, topic in arrivals:
        t += gap
        answered += c.advance(t - 1e-9) if t > 0 else []  # the owner's clock reached the arrival
        asked.append(ask(c, t, n=n, text=f"topic {topic} " * (1 + topic)))
    answered += run_to_end(c)
    assert sorted(r.pending for r in answered) == sorted(asked) and c.pending == 0
    for r in answered:
        s = r.body["sim"]
        assert s["arrival"] + overhead <= s["start"] + 1e-12 and s["start"] < s["first_token"] <= s["finish"]


def test_a_dying_server_loses_what_its_engine_holds_and_restarts_empty():
    c = core(overhead=0.01)
    held = [ask(c, 0.0), ask(c, 0.0, text="other words")]
    assert sorted(c.abort_pending()) == sorted(held)
    assert c.pending == 0 and c.next_event_time() == math.inf and c.advance(10.0) == []

"""PD under the co-simulated clock: a prefill core and a decode core driven through ``EngineClock`` and its
transfer fabric, with no gateway: each request goes to the prefill worker first, then to the decode worker."""

from __future__ import annotations

import math

import numpy as np
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cosim import EngineClock
from sim.engine.latency import decode_step_time, prefill_time
from sim.engine.transfer import DecodeReady, PrefillDone
from sim.engine.types import SchedulerConfig, WorkerConfig
from sim.transports.direct import _CorePort
from sim.worker.core import WorkerCore

KV_BYTES, BANDWIDTH = 100_000, 1e9  # a slow link, so the transfer shows


def pd_pair(decode_radix: bool = False, kv: int | None = 200_000, chunk: int | None = 8192,
            reserved: int = 512) -> tuple[WorkerCore, WorkerCore]:
    common = {"engine": "iteration", "kv_capacity_tokens": kv, "kv_bytes_per_token": KV_BYTES,
              "transfer_bandwidth": BANDWIDTH, "scheduler": SchedulerConfig(chunked_prefill_size=chunk)}
    p = WorkerCore(WorkerConfig(name="p0", disaggregation_mode="prefill", **common), seed=3)
    d = WorkerCore(WorkerConfig(name="d0", disaggregation_mode="decode", decode_radix_cache=decode_radix,
                                num_reserved_decode_tokens=reserved, **common), seed=3)
    return p, d


class PDRun:
    """Both cores under one clock; ``ask`` sends one request's two legs and waits for both answers."""

    def __init__(self, p: WorkerCore, d: WorkerCore) -> None:
        self.env = simpy.Environment()
        self.p, self.d = p, d
        self.clock = EngineClock(self.env, [_CorePort(p), _CorePort(d)])
        self.rooms = iter(range(1, 1 << 30))

    def ask(self, prompt: np.ndarray, n_out: int):
        body = {"input_ids": prompt.tolist(), "max_tokens": n_out, "sim_time": float(self.env.now),
                "bootstrap_room": next(self.rooms), "bootstrap_host": "127.0.0.1", "bootstrap_port": 8998,
                "return_prompt_token_ids": True}
        events = []
        for j, core in enumerate((self.p, self.d)):
            reply = core.infer("chat", dict(body))
            assert reply.status == 200 and reply.pending is not None, reply.body
            ev = self.env.event()
            self.clock.hold(j, reply.pending, ev.succeed)
            self.clock.touched(j)
            events.append(ev)
        answers = yield self.env.all_of(events)
        return tuple(answers[ev] for ev in events)


def test_one_request_alone_gets_the_closed_form_times():
    p, d = pd_pair()
    run = PDRun(p, d)
    prompt, n = 20_000, 9  # chunked: 8192 + 8192 + 3616
    got = {}

    def agent():
        got["answers"] = yield from run.ask(np.arange(1, prompt + 1), n)

    run.env.process(agent())
    run.env.run()
    pa, da = got["answers"]
    lat = p.config.latency
    chunks = [8192, 8192, prompt - 2 * 8192]
    prefill_end = sum(prefill_time(lat, c, sum(chunks[:i])) for i, c in enumerate(chunks))
    tail = max(chunks[-1] * KV_BYTES / BANDWIDTH, prompt * KV_BYTES / BANDWIDTH - prefill_end)  # pre-allocated at 0
    ready = prefill_end + tail
    steps = [decode_step_time(lat, 1, prompt + i) for i in range(1, n + 1)]
    ps, ds = pa.body["sim"], da.body["sim"]
    assert math.isclose(ps["first_token"], prefill_end, rel_tol=1e-12)
    assert ps["finish"] == ps["pd"]["transfer_ready"] == ds["pd"]["transfer_ready"]
    assert math.isclose(ready, ds["pd"]["transfer_ready"], rel_tol=1e-12)
    assert pa.body["choices"][0]["finish_reason"] == "length" and pa.body["usage"]["completion_tokens"] == 1
    # TTFT = max(pre-allocation, prefill) + the transfer's tail + one decode step; then n - 1 more steps
    assert math.isclose(ds["first_token"], ready + steps[0], rel_tol=1e-12)
    assert math.isclose(ds["finish"], ds["first_token"] + sum(steps[1:]), rel_tol=1e-12)
    assert ds["worker"] == "d0" and ds["start"] == ps["start"] == 0.0 and ds["arrival"] == 0.0
    assert ds["pd"]["transfer_bytes"] == prompt * KV_BYTES and ds["pd"]["prefill_worker"] == "p0"
    assert da.body["usage"]["completion_tokens"] == n and da.body["choices"][0]["finish_reason"] == "stop"


def session_turns(draw_sizes: list[tuple[int, int]], seed: int) -> list[tuple[np.ndarray, int]]:
    """New user tokens and output lengths per turn (the previous answer is appended by the run)."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(1000, 2**31, new, dtype=np.int64), out) for new, out in draw_sizes]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 400), st.integers(1, 40)), min_size=1, max_size=5),
                min_size=1, max_size=4),
       st.booleans())
def test_multi_turn_sessions_prefill_trees_hold_prompts_only_and_transfers_carry_what_decode_lacks(sessions,
                                                                                                    decode_radix):
    p, d = pd_pair(decode_radix=decode_radix, kv=None)
    run = PDRun(p, d)
    records = []

    def session(k: int, turns: list[tuple[np.ndarray, int]]):
        yield run.env.timeout(0.01 * k)
        context = np.zeros(0, dtype=np.int64)
        for i, (new, out) in enumerate(turns):
            prompt = np.concatenate([context, new])
            held = d.engine.cache.peek(prompt[:-1])  # what the decode worker's tree has of it now
            pa, da = yield from run.ask(prompt, out)
            records.append((prompt, pa, da, held, i == len(turns) - 1))
            context = np.concatenate([prompt, da.answer.output_ids])

    for k, sizes in enumerate(sessions):
        run.env.process(session(k, session_turns(sizes, seed=k)))
    run.env.run()
    assert len(records) == sum(map(len, sessions))
    prompts_only = type(p.engine.cache)()
    for prompt, pa, da, held, _ in records:
        prompts_only.insert(prompt, 0.0)
        pd = da.body["sim"]["pd"]
        assert pd["transfer_tokens"] == len(prompt) - pd["decode_prefix_tokens"]
        assert pd["transfer_bytes"] == pd["transfer_tokens"] * KV_BYTES
        if decode_radix:
            assert pd["decode_prefix_tokens"] <= held  # (another session may have changed it since, never grown it)
        else:
            assert pd["decode_prefix_tokens"] == 0 and pd["transfer_bytes"] == len(prompt) * KV_BYTES
        assert da.body["sim"]["cached_tokens"] == pa.body["sim"]["cached_tokens"] == pd["prefill_cached_tokens"]
    # the prefill worker's tree is exactly the prompts' trie: no answer token of any last turn is in it
    assert p.engine.cache.resident_tokens == prompts_only.resident_tokens
    for prompt, _, da, _, last in records:
        if last:  # no later prompt brought this answer back
            assert p.engine.cache.peek(np.concatenate([prompt, da.answer.output_ids])) == len(prompt)
    if not decode_radix:
        assert d.engine.cache.resident_tokens == 0
    assert p.pending == d.pending == 0 and run.clock.fabric.unpaired == 0


def test_a_transfer_for_a_room_the_worker_does_not_hold_is_ignored():
    p, d = pd_pair()
    run = PDRun(p, d)
    got = {}

    def agent():
        got["answers"] = yield from run.ask(np.arange(1, 101), 3)

    run.env.process(agent())
    run.env.run()
    t = run.clock.fabric  # a fresh transfer for a room nobody holds any more
    assert t.post(DecodeReady(room=999, worker="d0", at=0.0, prompt_tokens=10, decode_prefix_tokens=0,
                              bootstrap_host=None, bootstrap_port=None)) is None
    stray = t.post(PrefillDone(room=999, worker="p0", arrival=0.0, start=0.0, end=0.1, prompt_tokens=10,
                               cached_tokens=0, last_chunk_tokens=10, kv_bytes_per_token=1, bandwidth=1.0))
    p.transfer_ready(stray)
    d.transfer_ready(stray)
    assert p.next_event_time() == d.next_event_time() == math.inf and p.pending == d.pending == 0

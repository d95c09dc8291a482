"""The co-simulated clock's owner over HTTP with PD workers: each request's two legs (sent at once, as SMG sends
them) are held together, the prefill's answer goes to whoever sent it while the agent waits for the decode's,
and the answers equal the in-process cores' under the same clock, to the bit."""

from __future__ import annotations

import asyncio
from typing import Any

import simpy

from sim.cosim import EngineClock
from sim.engine.transfer import Notice, Transfer
from sim.engine.types import WorkerConfig
from sim.transports.base import Reply
from sim.transports.owner import ClockOwner
from sim.worker.app import serve_in_thread
from sim.worker.core import WorkerCore
from testbed_common import fastjson

KV_BYTES = 2_000
_JSON = {"content-type": "application/json"}
# three agents, two turns each, the second turn's prompt the first's plus its answer and a new message
AGENTS = [(0.0, "read the readme and list the tests"), (0.0, "fix the failing build please"),
          (0.003, "summarise the last three commits")]


def pd_cores() -> list[WorkerCore]:
    common = {"engine": "iteration", "kv_capacity_tokens": 100_000, "kv_bytes_per_token": KV_BYTES,
              "transfer_bandwidth": 2e9}
    return [WorkerCore(WorkerConfig(name="p0", disaggregation_mode="prefill", **common), seed=5),
            WorkerCore(WorkerConfig(name="d0", disaggregation_mode="decode", **common), seed=5)]


def turn_body(messages: list[dict], room: int, now: float) -> dict[str, Any]:
    return {"model": "mock-model", "messages": messages, "max_tokens": 12, "sim_time": now,
            "bootstrap_host": "127.0.0.1", "bootstrap_port": None, "bootstrap_room": room}


def run_agents(env: simpy.Environment, send: Any) -> list[tuple[dict, dict]]:
    """The agents' turns under ``env``: ``send(body)`` gives SimPy steps ending with ``(prefill, decode)`` bodies."""
    out: list[tuple[dict, dict]] = []

    def agent(k: int, start: float, text: str):
        yield env.timeout(start)
        messages = [{"role": "user", "content": text}]
        for turn in range(2):
            prefill, decode = yield from send(turn_body(messages, 1000 * k + turn, float(env.now)))
            out.append((prefill, decode))
            messages += [{"role": "assistant", "content": decode["choices"][0]["message"]["content"]},
                         {"role": "user", "content": f"now step {turn + 1}"}]

    for k, (start, text) in enumerate(AGENTS):
        env.process(agent(k, start, text))
    env.run()
    return out


class CorePort:
    """An in-process core as the clock's engine port (what the ``direct`` transport does)."""

    def __init__(self, core: WorkerCore) -> None:
        self.core = core

    def next_event_time(self) -> float:
        return self.core.next_event_time()

    def advance(self, until: float) -> list[tuple[int, Any]]:
        return [(r.pending, r) for r in self.core.advance(until)]

    def notices(self) -> list[Notice]:
        return self.core.notices()

    def transfer_ready(self, t: Transfer) -> None:
        self.core.transfer_ready(t)


def in_process() -> list[tuple[dict, dict]]:
    env = simpy.Environment()
    cores = pd_cores()
    clock = EngineClock(env, [CorePort(c) for c in cores])

    def send(body: dict):
        events = []
        for j, core in enumerate(cores):  # the prefill leg first
            reply = core.infer("chat", fastjson.loads(fastjson.dumps(body)))
            ev = env.event()
            clock.hold(j, reply.pending, ev.succeed)
            clock.touched(j)
            events.append(ev)
        answers = yield env.all_of(events)
        return tuple(fastjson.loads(fastjson.dumps(answers[ev].body)) for ev in events)

    return run_agents(env, send)


def over_http() -> tuple[list[tuple[dict, dict]], int]:
    cores = pd_cores()
    owner = ClockOwner([c.name for c in cores], timeout=30.0)
    try:
        with (serve_in_thread(cores[0], owner_url=owner.arrivals_url) as p,
              serve_in_thread(cores[1], owner_url=owner.arrivals_url) as d):
            owner.worker_urls = [p.url, d.url]
            env = simpy.Environment()
            owner.bind(env)

            async def both_legs(content: bytes) -> Reply:  # as SMG: both legs at once, then both answers
                p_r, d_r = await asyncio.gather(*(owner.pool.fetch("POST", f"{url}/v1/chat/completions", _JSON,
                                                                   content) for url in owner.worker_urls))
                return Reply(d_r.status_code, {"prefill": fastjson.loads(p_r.content),
                                               "decode": fastjson.loads(d_r.content)})

            def send(body: dict):
                reply = yield from owner.steps(both_legs(fastjson.dumps(body)))
                assert reply.status == 200, reply.body
                return reply.body["prefill"], reply.body["decode"]

            try:
                answers = run_agents(env, send)
            finally:
                owner.abort_all()
            return answers, sum(c.pending for c in cores)
    finally:
        owner.close()


def test_pd_legs_through_the_owner_give_the_in_process_answers():
    expected = in_process()
    got, left = over_http()
    assert left == 0 and len(got) == 2 * len(AGENTS)
    assert got == expected
    for prefill, decode in got:
        assert prefill["sim"]["pd"]["role"] == "prefill" and prefill["usage"]["completion_tokens"] == 1
        pd = decode["sim"]["pd"]
        assert pd["transfer_bytes"] == decode["usage"]["prompt_tokens"] * KV_BYTES
        assert prefill["sim"]["finish"] == pd["transfer_ready"] < decode["sim"]["first_token"]

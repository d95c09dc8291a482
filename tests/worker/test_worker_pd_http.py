"""PD workers over HTTP: the role in ``/server_info`` and ``/v1/loads?include=disagg``, the ``/sim`` routes the
co-simulated clock's owner pairs the two legs with, and the live-time rendezvous on the prefill's bootstrap port."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from worker_testing import recording_owner

from sim.engine.transfer import (
    DecodeReady,
    PrefillDone,
    notice_from_json,
    notice_to_json,
    transfer,
    transfer_from_json,
    transfer_to_json,
)
from sim.engine.types import WorkerConfig
from sim.worker.app import create_app, serve_in_thread
from sim.worker.bootstrap import Rendezvous, bootstrap_app, shifted_notice
from sim.worker.core import WorkerCore
from testbed_common.procs import free_port

KV_BYTES = 1_000  # per token: transfer bytes are easy to read
ROOM = 4_242_424_242
MESSAGES = [{"role": "system", "content": "you are a careful coding agent working in a repository"},
            {"role": "user", "content": "list the files and then read the readme please"}]
PD_FIELDS = {"prefill_bootstrap_queue_reqs", "prefill_inflight_queue_reqs", "decode_prealloc_queue_reqs",
             "decode_transfer_queue_reqs", "decode_retracted_queue_reqs", "kv_transfer_speed_gb_s",
             "kv_transfer_latency_ms"}


def pd_core(mode: str | None, name: str = "w0", **kw: Any) -> WorkerCore:
    cfg = WorkerConfig(name=name, kv_capacity_tokens=100_000, engine="iteration", disaggregation_mode=mode,
                       kv_bytes_per_token=KV_BYTES, transfer_bandwidth=1e9, **kw)
    return WorkerCore(cfg, seed=7)


def pd_body(port: int | None, room: int = ROOM, max_tokens: int = 6, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-model", "messages": MESSAGES, "max_tokens": max_tokens, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": port, "bootstrap_room": room, **extra}


def asgi(app: Any, client: tuple[str, int] = ("127.0.0.1", 40000)) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=client), base_url="http://w")


def keys(obj: Any) -> set[str]:
    """Every key of a JSON document, at any depth."""
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys(v)}
    return set()


# ---- identity and load ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [None, "prefill", "decode"])
def test_server_info_reports_the_disaggregation_mode_and_loads_add_the_pd_fields_on_request(mode):
    async def go() -> tuple[dict, dict, dict, dict]:
        async with asgi(create_app(pd_core(mode))) as c:
            return tuple([(await c.get(path)).json() for path in (  # type: ignore[return-value]
                "/server_info", "/v1/loads", "/v1/loads?include=disagg", "/v1/loads?include=core,all")])

    info, plain, disagg, every = asyncio.run(go())
    assert info["disaggregation_mode"] == (mode or "null")  # SGLang writes the co-located mode "null"
    assert not keys(plain) & PD_FIELDS
    assert keys(disagg) >= PD_FIELDS and keys(every) >= PD_FIELDS


# ---- virtual time: the owner's side ---------------------------------------------------------------------------------


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_virtual_prefill_leg_reports_its_leg_notices_its_prefill_and_is_answered_at_the_transfers_end():
    core = pd_core("prefill", "p0")
    with (recording_owner() as (owner_url, reports), serve_in_thread(core, owner_url=owner_url) as server,
          httpx.Client(base_url=server.url, timeout=30.0, trust_env=False) as c, ThreadPoolExecutor(1) as pool):
        answer = pool.submit(c.post, "/v1/chat/completions", json=pd_body(None, sim_time=1.0))
        wait_for(lambda: reports)
        [report] = reports
        assert report["leg"] == "prefill" and report["worker"] == "p0"
        advanced = c.post("/sim/advance", json={"until": 100.0}).json()
        assert advanced["finished"] == []  # the answer waits for the transfer
        [done] = [notice_from_json(n) for n in advanced["notices"]]
        assert isinstance(done, PrefillDone) and done.room == ROOM and done.start >= 1.0
        assert c.post("/sim/advance", json={"until": 200.0}).json()["notices"] == []  # drained once
        ready = DecodeReady(room=ROOM, worker="d0", at=1.0, prompt_tokens=done.prompt_tokens,
                            decode_prefix_tokens=0, bootstrap_host="127.0.0.1", bootstrap_port=None)
        t = transfer(done, ready)
        t = transfer_from_json({**transfer_to_json(t), "ready": 250.0})  # due after the owner's clock
        assert c.post("/sim/transfer", json=transfer_to_json(t)).json() == {"next_event_time": 250.0}
        assert c.post("/sim/advance", json={"until": 250.0}).json()["finished"] == [report["handle"]]
        r = answer.result(timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 1
    assert body["sim"]["pd"] == {"role": "prefill", "transfer_ready": 250.0}
    assert body["sim"]["finish"] == 250.0 and body["sim"]["first_token"] == done.end


def test_a_co_located_arrival_report_names_no_leg():
    core = pd_core(None)
    with (recording_owner() as (owner_url, reports), serve_in_thread(core, owner_url=owner_url) as server,
          httpx.Client(base_url=server.url, timeout=30.0, trust_env=False) as c, ThreadPoolExecutor(1) as pool):
        answer = pool.submit(c.post, "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2,
                                                                    "sim_time": 0.0})
        wait_for(lambda: reports)
        assert reports[0]["leg"] is None
        assert c.post("/sim/advance", json={"until": 100.0}).json()["notices"] == []
        assert answer.result(timeout=10).status_code == 200


def a_transfer(room: int = ROOM) -> dict[str, Any]:
    p = PrefillDone(room=room, worker="p0", arrival=0.0, start=0.0, end=0.1, prompt_tokens=30, cached_tokens=0,
                    last_chunk_tokens=30, kv_bytes_per_token=KV_BYTES, bandwidth=1e9)
    d = DecodeReady(room=room, worker="d0", at=0.0, prompt_tokens=30, decode_prefix_tokens=0,
                    bootstrap_host="127.0.0.1", bootstrap_port=None)
    return transfer_to_json(transfer(p, d))


def test_sim_transfer_serves_the_owner_alone_in_virtual_time_and_refuses_bad_bodies():
    async def statuses(core: WorkerCore, client: tuple[str, int], live_first: bool, bodies: list[Any]) -> list[int]:
        async with asgi(create_app(core), client) as c:
            if live_first:
                assert (await c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})).is_success
            out = []
            for b in bodies:
                content = b if isinstance(b, bytes) else json.dumps(b).encode()
                r = await c.post("/sim/transfer", content=content, headers={"content-type": "application/json"})
                assert r.headers["content-type"] == "application/json"
                out.append(r.status_code)
            return out

    decode = pd_core("decode", "d0")
    assert asyncio.run(statuses(decode, ("10.1.2.3", 40000), False, [a_transfer()])) == [403]
    assert asyncio.run(statuses(pd_core(None), ("127.0.0.1", 40000), True, [a_transfer()])) == [409]
    bad = [b"{not json", b"", {"room": ROOM}, {**a_transfer(), "room": ROOM + 1}, [1, 2],
           {**a_transfer(), "ready": "x"}]
    assert asyncio.run(statuses(decode, ("127.0.0.1", 40000), False, bad)) == [400] * len(bad)
    assert asyncio.run(statuses(pd_core(None), ("127.0.0.1", 40000), False, [a_transfer()])) == [400]  # co-located
    assert asyncio.run(statuses(decode, ("127.0.0.1", 40000), False, [a_transfer()])) == [200]  # a room not held


@pytest.mark.parametrize("mode", ["prefill", "decode"])
@pytest.mark.parametrize("room", [None, -1, 1 << 63, "7", 1.5])
def test_a_pd_worker_refuses_a_request_without_a_valid_bootstrap_room(mode, room):
    async def go() -> httpx.Response:
        async with asgi(create_app(pd_core(mode))) as c:
            return await c.post("/v1/chat/completions", json=pd_body(None, room=room))

    r = asyncio.run(go())
    assert r.status_code == 400 and r.json()["param"] == "bootstrap_room"


# ---- live time: the rendezvous on the bootstrap port ----------------------------------------------------------------


def test_the_bootstrap_route_refuses_what_is_not_a_decode_ready_notice():
    rendezvous = Rendezvous(pd_core("prefill", "p0"), lambda: 0.0, lambda: None)
    prefill_done = a_transfer()["prefill"]

    async def go() -> list[int]:
        async with asgi(bootstrap_app(rendezvous)) as c:
            return [(await c.post("/pd/transfer", content=b)).status_code
                    for b in (b"{", b"[]", json.dumps(prefill_done).encode(), json.dumps({"kind": "x"}).encode())]

    assert asyncio.run(go()) == [400, 400, 400, 400]


def test_a_decode_ready_meets_the_prefill_done_of_its_room_whichever_comes_first():
    """The bootstrap route answers the transfer, times as offsets from the prefill's now; the prefill's core gets it
    too (ignored here: the core holds no such room)."""
    now = 10.0
    rendezvous = Rendezvous(pd_core("prefill", "p0"), lambda: now, lambda: None)
    body = a_transfer()
    prefill_done = notice_from_json(body["prefill"])
    decode_ready = shifted_notice(notice_from_json(body["decode"]), -now)  # "at 0.0" in the sender's offsets

    async def go(first_prefill: bool) -> dict:
        async with asgi(bootstrap_app(rendezvous)) as c:
            if first_prefill:
                rendezvous.noticed([prefill_done])
                return (await c.post("/pd/transfer", json=notice_to_json(decode_ready))).json()
            asked = asyncio.ensure_future(c.post("/pd/transfer", json=notice_to_json(decode_ready)))
            await asyncio.sleep(0.05)
            assert not asked.done()
            rendezvous.noticed([prefill_done])
            return (await asked).json()

    for first_prefill in (True, False):
        t = transfer_from_json(asyncio.run(go(first_prefill)))
        assert t.bytes == 30 * KV_BYTES and t.decode.at == 0.0 - now
        assert t.ready == pytest.approx(transfer(prefill_done, notice_from_json(body["decode"])).ready - now)


@pytest.mark.parametrize("named_port", [True, False])
def test_live_pd_exchange_over_loopback(named_port):
    """A prefill and a decode worker as servers, the same body (bootstrap fields as SMG injects them) posted to both
    at once, as SMG does: the decode's answer carries the transfer (the whole prompt: its radix cache is off), the
    prefill's its one token; a null bootstrap_port sends the decode worker to its own --disaggregation-bootstrap-port.
    """
    bootstrap = free_port()
    prefill, decode = pd_core("prefill", "p0"), pd_core("decode", "d0")
    body = pd_body(bootstrap if named_port else None, max_tokens=8)
    with (serve_in_thread(prefill, bootstrap_port=bootstrap) as p, serve_in_thread(decode, bootstrap_port=bootstrap)
          as d, httpx.Client(timeout=30.0, trust_env=False) as c, ThreadPoolExecutor(2) as pool):
        legs = [pool.submit(c.post, f"{s.url}/v1/chat/completions", json=body) for s in (p, d)]
        p_answer, d_answer = (f.result(timeout=30) for f in legs)
        assert prefill.pending == decode.pending == 0
    assert p_answer.status_code == d_answer.status_code == 200, (p_answer.text, d_answer.text)
    prompt = d_answer.json()["usage"]["prompt_tokens"]
    sim, p_sim = d_answer.json()["sim"], p_answer.json()["sim"]
    pd = sim["pd"]
    assert sim["worker"] == "d0" and pd["prefill_worker"] == "p0"
    assert pd["transfer_tokens"] == prompt and pd["transfer_bytes"] == prompt * KV_BYTES
    assert pd["decode_prefix_tokens"] == 0
    assert pd["prefill_start"] < pd["prefill_end"] <= pd["transfer_ready"] < sim["first_token"] <= sim["finish"]
    assert d_answer.json()["usage"]["completion_tokens"] == 8
    assert p_sim["worker"] == "p0" and p_sim["pd"]["role"] == "prefill"
    assert p_answer.json()["usage"]["completion_tokens"] == 1


def test_a_stopping_prefill_worker_answers_a_waiting_decode_worker_at_once():
    """A room the prefill worker never prefilled: its stop answers the waiting decode worker 503, not a hang."""
    import threading
    import time

    bootstrap = free_port()
    ready = DecodeReady(room=ROOM, worker="d0", at=0.0, prompt_tokens=3, decode_prefix_tokens=0,
                        bootstrap_host="127.0.0.1", bootstrap_port=bootstrap)
    answers: list[httpx.Response] = []

    def ask() -> None:
        answers.append(httpx.post(f"http://127.0.0.1:{bootstrap}/pd/transfer", json=notice_to_json(ready),
                                  timeout=30.0))

    asker = threading.Thread(target=ask)
    with serve_in_thread(pd_core("prefill", "p0"), bootstrap_port=bootstrap):
        asker.start()
        time.sleep(0.3)
        assert not answers  # it waits for the room's prefill
        stopping = time.monotonic()
    asker.join(10)
    assert time.monotonic() - stopping < 1.5
    assert answers[0].status_code == 503 and "stopping" in answers[0].json()["error"]

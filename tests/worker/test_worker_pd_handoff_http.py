"""A live decode worker whose KV handoff fails answers the request with SGLang's 500 at once, not a hang, and holds
no KV for it afterwards."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from sim.engine.types import WorkerConfig
from sim.worker.app import serve_in_thread
from sim.worker.core import WorkerCore
from testbed_common.procs import free_port

MESSAGES = [{"role": "user", "content": "list the files and then read the readme please"}]


def decode_core() -> WorkerCore:
    cfg = WorkerConfig(name="d0", kv_capacity_tokens=100_000, engine="iteration", disaggregation_mode="decode")
    return WorkerCore(cfg, seed=7)


def body(bootstrap_port: int, room: int) -> dict[str, Any]:
    return {"model": "mock-model", "messages": MESSAGES, "max_tokens": 6, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": bootstrap_port, "bootstrap_room": room}


def test_a_request_whose_bootstrap_port_nobody_listens_on_fails_at_once_and_frees_its_kv():
    nobody = free_port()
    decode = decode_core()
    with serve_in_thread(decode) as d, httpx.Client(base_url=d.url, timeout=30.0, trust_env=False) as c:
        asked = time.monotonic()
        r = c.post("/v1/chat/completions", json=body(nobody, room=11))
        assert time.monotonic() - asked < 5.0
        assert r.status_code == 500, r.text
        error = r.json()
        assert error["object"] == "error" and error["code"] == 500
        assert "Decode transfer failed" in error["message"] and str(nobody) in error["message"]
        loads = c.get("/v1/loads", params={"include": "disagg"}).json()["loads"][0]
        assert loads["num_used_tokens"] == 0 and loads["num_running_reqs"] == 0
        assert loads["disaggregation"]["decode_transfer_queue_reqs"] == 0
        assert decode.pending == 0


def test_a_stopping_prefill_worker_fails_the_decode_legs_waiting_for_it():
    """The prefill worker never got these rooms' prefill legs; when it stops, its bootstrap server answers the
    waiting decode worker 503, and the decode worker answers both of its requests at once."""
    bootstrap = free_port()
    prefill = WorkerCore(WorkerConfig(name="p0", engine="iteration", disaggregation_mode="prefill"), seed=7)
    decode = decode_core()
    with serve_in_thread(decode) as d, httpx.Client(base_url=d.url, timeout=30.0, trust_env=False) as c, \
            ThreadPoolExecutor(2) as pool:
        with serve_in_thread(prefill, bootstrap_port=bootstrap):
            legs = [pool.submit(c.post, "/v1/chat/completions", json=body(bootstrap, room)) for room in (1, 2)]
            time.sleep(0.5)
            assert not any(f.done() for f in legs)  # they wait for their prefill
            stopping = time.monotonic()
        answers = [f.result(timeout=10) for f in legs]
        assert time.monotonic() - stopping < 5.0
        assert [a.status_code for a in answers] == [500, 500]
        assert all("503" in a.json()["message"] for a in answers)
        assert c.get("/v1/loads").json()["loads"][0]["num_used_tokens"] == 0

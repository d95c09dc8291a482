"""A decode worker's core when a request's KV transfer fails: the request leaves the engine with its KV, and its answer
is SGLang's error (``KVPoll.Failed`` -> abort with ``INTERNAL_SERVER_ERROR``), given at once."""

from __future__ import annotations

import math

import pytest

from sim.engine.transfer import DecodeReady, PrefillDone, transfer
from sim.engine.types import WorkerConfig
from sim.worker.core import WorkerCore


def core(mode: str | None) -> WorkerCore:
    engine = "iteration" if mode else "arrival"
    return WorkerCore(WorkerConfig(name=f"{mode}0", engine=engine, disaggregation_mode=mode), seed=1)


def body(room: int) -> dict:
    return {"text": "a b c d e f", "sampling_params": {"max_new_tokens": 6}, "sim_time": 1.0, "bootstrap_room": room}


def prefill_done(d: DecodeReady) -> PrefillDone:
    return PrefillDone(room=d.room, worker="prefill0", arrival=1.0, start=1.0, end=1.01,
                       prompt_tokens=d.prompt_tokens, cached_tokens=0, last_chunk_tokens=d.prompt_tokens,
                       kv_bytes_per_token=1_000, bandwidth=1e9)


def test_a_failed_transfer_answers_the_decode_leg_with_a_500_and_frees_its_kv():
    c = core("decode")
    rid = c.infer("generate", body(9)).pending
    c.advance(1.0)
    [d] = c.notices()
    assert c.loads(1.0)["loads"][0]["num_used_tokens"] == d.prompt_tokens
    reply = c.fail_transfer(9, "connection refused")
    assert reply is not None and reply.pending == rid and reply.status == 500 and reply.timing is None
    assert reply.body == {"object": "error", "type": "InternalServerError", "param": None, "code": 500,
                          "message": "Decode transfer failed for request bootstrap_room=9: connection refused"}
    assert reply.headers["x-sim-worker"] == "decode0"
    load = c.loads(1.0, include_disagg=True)["loads"][0]
    assert load["num_used_tokens"] == 0 and load["disaggregation"]["decode_transfer_queue_reqs"] == 0
    assert c.pending == 0 and c.next_event_time() == math.inf and c.advance(2.0) == []
    c.transfer_ready(transfer(prefill_done(d), d))  # a late transfer of the failed room is ignored
    assert c.next_event_time() == math.inf
    assert c.infer("generate", body(9)).pending is not None  # the room is free again


def test_the_other_requests_go_on_as_before():
    c = core("decode")
    ok = c.infer("generate", body(1)).pending
    c.infer("generate", body(2))
    c.advance(1.0)
    notices = {n.room: n for n in c.notices()}
    assert c.fail_transfer(2, "the prefill worker is stopping") is not None
    c.transfer_ready(transfer(prefill_done(notices[1]), notices[1]))
    answers = []
    while (t := c.next_event_time()) < math.inf:
        answers += c.advance(t)
    assert [(a.pending, a.status) for a in answers] == [(ok, 200)]
    assert c.loads(c.now())["loads"][0]["num_used_tokens"] == 0


@pytest.mark.parametrize("mode", [None, "prefill"])
def test_only_a_decode_worker_fails_a_transfer(mode):
    c = core(mode)
    c.infer("generate", body(9))
    c.advance(1.0)
    assert c.fail_transfer(9, "no") is None


def test_a_room_not_waiting_for_its_kv_is_not_failed():
    c = core("decode")
    c.infer("generate", body(9))
    assert c.fail_transfer(8, "no") is None  # no such room
    c.advance(1.0)
    [d] = c.notices()
    c.transfer_ready(transfer(prefill_done(d), d))  # delivered: it decodes
    assert c.fail_transfer(9, "no") is None
    assert [a.status for a in c.advance(math.inf)] == [200]
    assert c.fail_transfer(9, "no") is None  # answered

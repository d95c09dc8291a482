"""A PD worker's core: the bootstrap fields it needs, its role in its documents and load report, a prefill leg's
notice and held answer, a decode leg's notice."""

from __future__ import annotations

import math

import pytest

from sim.engine.transfer import MAX_ROOM, DecodeReady, PrefillDone, transfer
from sim.engine.types import WorkerConfig
from sim.worker.core import WorkerCore


def core(mode: str | None) -> WorkerCore:
    engine = "iteration" if mode else "arrival"
    return WorkerCore(WorkerConfig(name=f"{mode}0", engine=engine, disaggregation_mode=mode), seed=1)


def body(**extra) -> dict:
    return {"text": "a b c d e f", "sampling_params": {"max_new_tokens": 6}, "sim_time": 1.0, **extra}


@pytest.mark.parametrize("mode", ["prefill", "decode"])
@pytest.mark.parametrize("room", [None, "7", 1.5, True, -1, MAX_ROOM + 1])
def test_a_pd_worker_refuses_a_request_without_a_valid_bootstrap_room(mode, room):
    extra = {} if room is None else {"bootstrap_room": room}
    reply = core(mode).infer("generate", body(**extra))
    assert reply.status == 400 and reply.body["param"] == "bootstrap_room"


def test_a_co_located_worker_ignores_the_bootstrap_fields_and_a_room_is_one_request_at_a_time():
    assert core(None).infer("generate", body(bootstrap_room="junk")).status == 200
    c = core("decode")
    assert c.infer("generate", body(bootstrap_room=MAX_ROOM)).status == 200
    again = c.infer("generate", body(bootstrap_room=MAX_ROOM))
    assert again.status == 400 and again.body["param"] == "bootstrap_room"


def test_the_role_is_in_server_info_and_in_the_loads_disaggregation_section():
    assert core(None).server_info()["disaggregation_mode"] == "null"  # as SGLang writes it
    assert "disaggregation" not in core(None).loads(0.0)["loads"][0]
    c = core("decode")
    assert c.server_info()["disaggregation_mode"] == "decode"
    c.infer("generate", body(bootstrap_room=5))
    c.advance(1.0)
    section = c.loads(1.0, include_disagg=True)["loads"][0]["disaggregation"]
    assert section["mode"] == "decode" and section["decode_transfer_queue_reqs"] == 1
    assert section["decode_prealloc_queue_reqs"] == section["decode_retracted_queue_reqs"] == 0


def test_a_prefill_leg_notices_its_end_and_is_answered_at_the_transfer_s_end():
    c = core("prefill")
    rid = c.infer("generate", body(bootstrap_room=5, bootstrap_host="127.0.0.1")).pending
    while (t := c.next_event_time()) < math.inf:
        assert c.advance(t) == []
    [notice] = c.notices()
    assert isinstance(notice, PrefillDone) and notice.room == 5 and notice.arrival == notice.start == 1.0
    assert notice.last_chunk_tokens == notice.prompt_tokens and c.notices() == []
    assert c.loads(notice.end, include_disagg=True)["loads"][0]["disaggregation"]["prefill_inflight_queue_reqs"] == 1
    d = DecodeReady(room=5, worker="d0", at=1.0, prompt_tokens=notice.prompt_tokens, decode_prefix_tokens=0,
                    bootstrap_host="127.0.0.1", bootstrap_port=None)
    tr = transfer(notice, d)
    c.transfer_ready(tr)
    assert c.next_event_time() == tr.ready
    [answer] = c.advance(tr.ready)
    assert answer.pending == rid and answer.body["meta_info"]["completion_tokens"] == 1
    assert answer.body["meta_info"]["finish_reason"] == {"type": "length", "length": 1}
    assert answer.body["sim"]["finish"] == tr.ready and answer.body["sim"]["first_token"] == notice.end
    assert answer.body["sim"]["pd"] == {"role": "prefill", "transfer_ready": tr.ready}
    assert c.engine.cache.resident_tokens == notice.prompt_tokens  # the prompt only
    assert c.pending == 0


def test_a_decode_leg_notices_its_pre_allocation_with_the_bootstrap_address():
    c = core("decode")
    c.infer("generate", body(bootstrap_room=9, bootstrap_host="127.0.0.2", bootstrap_port=8998))
    assert c.advance(1.0) == []
    [notice] = c.notices()
    assert notice == DecodeReady(room=9, worker="decode0", at=1.0, prompt_tokens=notice.prompt_tokens,
                                 decode_prefix_tokens=0, bootstrap_host="127.0.0.2", bootstrap_port=8998)
    assert notice.prompt_tokens > 0
    assert c.abort_pending() == [0] and c.notices() == [] and c.pending == 0

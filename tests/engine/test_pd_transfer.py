"""The PD KV transfer (``sim.engine.transfer``): the time formula, the fabric's pairing and the wire forms."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.engine.transfer import (
    MAX_ROOM,
    DecodeReady,
    PrefillDone,
    TransferFabric,
    notice_from_json,
    notice_to_json,
    transfer,
    transfer_from_json,
    transfer_to_json,
)

times = st.floats(0.0, 100.0, allow_nan=False)


@st.composite
def sides(draw, room: int | None = None) -> tuple[PrefillDone, DecodeReady]:
    room = draw(st.integers(0, MAX_ROOM)) if room is None else room
    prompt = draw(st.integers(1, 50_000))
    start = draw(times)
    end = start + draw(st.floats(1e-4, 10.0))
    p = PrefillDone(room=room, worker="p0", arrival=start, start=start, end=end, prompt_tokens=prompt,
                    cached_tokens=draw(st.integers(0, prompt - 1)), last_chunk_tokens=draw(st.integers(1, prompt)),
                    kv_bytes_per_token=draw(st.integers(1, 1 << 20)), bandwidth=draw(st.floats(1e6, 1e12)))
    d = DecodeReady(room=room, worker="d0", at=draw(times), prompt_tokens=prompt,
                    decode_prefix_tokens=draw(st.integers(0, prompt - 1)),
                    bootstrap_host=draw(st.none() | st.just("127.0.0.1")),
                    bootstrap_port=draw(st.none() | st.integers(1, 65535)))
    return p, d


@given(sides())
def test_the_kv_is_ready_after_the_prefill_and_the_preallocation_and_only_the_last_chunk_is_a_tail(pd):
    p, d = pd
    t = transfer(p, d)
    assert t.tokens == p.prompt_tokens - d.decode_prefix_tokens  # a prefill hit does not shrink it
    assert t.bytes == t.tokens * p.kv_bytes_per_token
    seconds = t.bytes / p.bandwidth
    assert t.ready >= p.end and t.ready >= d.at
    assert t.ready >= max(d.at, p.start) + seconds  # all bytes, from when both sides can stream
    last = min(p.last_chunk_tokens, t.tokens)
    assert t.ready >= p.end + last * p.kv_bytes_per_token / p.bandwidth  # the last chunk streams after the end
    assert t.ready in (p.end + last * p.kv_bytes_per_token / p.bandwidth, max(d.at, p.start) + seconds)


def test_the_earlier_chunks_overlap_the_prefill_when_the_decode_side_is_ready():
    p = PrefillDone(room=1, worker="p", arrival=0.0, start=0.0, end=1.0, prompt_tokens=10_000, cached_tokens=0,
                    last_chunk_tokens=2_000, kv_bytes_per_token=1_000, bandwidth=1e7)
    d = DecodeReady(room=1, worker="d", at=0.0, prompt_tokens=10_000, decode_prefix_tokens=0,
                    bootstrap_host=None, bootstrap_port=None)
    assert transfer(p, d).ready == 1.0 + 0.2  # 8 000 tokens streamed during the prefill, 2 000 after
    late = DecodeReady(room=1, worker="d", at=0.5, prompt_tokens=10_000, decode_prefix_tokens=0,
                       bootstrap_host=None, bootstrap_port=None)
    assert transfer(p, late).ready == 0.5 + 1.0  # all 10 000 tokens from the pre-allocation on


@given(sides())
def test_the_fabric_pairs_a_room_in_either_order_and_forgets_it(pd):
    p, d = pd
    first, second = TransferFabric(), TransferFabric()
    assert first.post(p) is None and first.unpaired == 1
    assert second.post(d) is None
    assert first.post(d) == second.post(p) == transfer(p, d)
    assert first.unpaired == second.unpaired == 0


def test_the_fabric_keeps_rooms_apart_and_refuses_a_side_twice():
    fabric = TransferFabric()
    p = PrefillDone(room=1, worker="p", arrival=0.0, start=0.0, end=1.0, prompt_tokens=10, cached_tokens=0,
                    last_chunk_tokens=10, kv_bytes_per_token=1, bandwidth=1.0)
    d2 = DecodeReady(room=2, worker="d", at=0.0, prompt_tokens=10, decode_prefix_tokens=0,
                     bootstrap_host=None, bootstrap_port=None)
    assert fabric.post(p) is None and fabric.post(d2) is None and fabric.unpaired == 2
    with pytest.raises(ValueError, match="room 1"):
        fabric.post(p)
    with pytest.raises(ValueError, match="one room"):
        transfer(p, d2)


@given(sides())
def test_the_wire_forms_round_trip_through_json(pd):
    p, d = pd
    assert notice_to_json(p)["kind"] == "prefill_done" and notice_to_json(d)["kind"] == "decode_ready"
    for n in pd:
        assert notice_from_json(json.loads(json.dumps(notice_to_json(n)))) == n
    t = transfer(p, d)
    assert transfer_from_json(json.loads(json.dumps(transfer_to_json(t)))) == t


@pytest.mark.parametrize("change", [
    {"kind": "other"}, {"room": -1}, {"room": MAX_ROOM + 1}, {"room": True}, {"room": 1.0}, {"worker": 3},
    {"at": "soon"}, {"at": float("inf")}, {"prompt_tokens": -1}, {"bootstrap_port": 70_000},
    {"bootstrap_host": 1},
])
def test_a_bad_notice_is_a_value_error(change):
    good = notice_to_json(DecodeReady(room=1, worker="d", at=0.0, prompt_tokens=10, decode_prefix_tokens=0,
                                      bootstrap_host="127.0.0.1", bootstrap_port=8998))
    with pytest.raises(ValueError):
        notice_from_json({**good, **change})


def test_a_bad_transfer_is_a_value_error():
    p = PrefillDone(room=1, worker="p", arrival=0.0, start=0.0, end=1.0, prompt_tokens=10, cached_tokens=0,
                    last_chunk_tokens=10, kv_bytes_per_token=1, bandwidth=1.0)
    d = DecodeReady(room=1, worker="d", at=0.0, prompt_tokens=10, decode_prefix_tokens=0,
                    bootstrap_host=None, bootstrap_port=None)
    good = transfer_to_json(transfer(p, d))
    for bad in ([], {**good, "room": 2}, {**good, "prefill": good["decode"]}, {**good, "bytes": -1},
                {**good, "decode": {**good["decode"], "room": 2}}):
        with pytest.raises(ValueError):
            transfer_from_json(bad)

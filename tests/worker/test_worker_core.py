"""The worker core end to end: the timelines of its replies (bodies and headers) and which answers it defers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from worker_inputs import core

from sim.worker.reply import Reply
from testbed_common import fastjson, vtime


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(1, 30), st.integers(0, 3)), min_size=1, max_size=12))
def test_timelines_are_ordered_and_reported_consistently(steps):
    c, t = core(), 0.0
    convo = [{"role": "user", "content": "start here"}]
    for gap, n, route_i in steps:
        t += gap
        route = ("chat", "generate", "completions", "chat")[route_i]
        body = (
            {"messages": convo, "max_tokens": n}
            if route == "chat"
            else {"text": "some words", "sampling_params": {"max_new_tokens": n}}
            if route == "generate"
            else {"prompt": "some words", "max_tokens": n}
        )
        reply = c.infer(route, {**body, "sim_time": t})
        assert reply.status == 200 and reply.body is not None and reply.virtual
        sim = reply.body["sim"]
        assert sim["arrival"] == t
        assert sim["arrival"] <= sim["start"] <= sim["first_token"] <= sim["finish"]
        assert float(reply.headers[vtime.HEADER_FINISH]) == sim["finish"]
        assert reply.headers[vtime.HEADER_WORKER] == "w0"
        usage = reply.body["meta_info"] if route == "generate" else reply.body["usage"]
        assert 0 <= sim["cached_tokens"] < usage["prompt_tokens"]


def test_a_served_reply_carries_its_timeline_in_headers_written_when_read():
    """The four x-sim-* headers are the timing's exact reprs, made on first read; failures carry only the worker."""
    c = core()
    reply = c.infer("chat", {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5, "sim_time": 2.5})
    t = reply.timing
    assert reply.status == 200 and t is not None
    assert "_headers" in Reply.__slots__ and reply._headers == {vtime.HEADER_WORKER: "w0"}  # nothing written yet
    want = {vtime.HEADER_WORKER: "w0", vtime.HEADER_ARRIVAL: repr(t.arrival), vtime.HEADER_START: repr(t.start),
            vtime.HEADER_FIRST_TOKEN: repr(t.first_token), vtime.HEADER_FINISH: repr(t.finish)}
    assert reply.headers == want and reply.headers is reply.headers
    assert vtime.finish_time(reply.headers) == t.finish == reply.body["sim"]["finish"]
    c.faults.fail_rate = 1.0
    failed = c.infer("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "sim_time": 3.0})
    assert failed.status == 500 and failed.headers == {vtime.HEADER_WORKER: "w0"}
    bad = c.infer("chat", {"messages": [], "sim_time": 3.0})
    assert bad.status == 400 and bad.headers == {}


def test_only_plain_chat_answers_that_echo_their_prompt_come_typed():
    base = {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5, "sim_time": 0.0,
            "return_prompt_token_ids": True}
    assert isinstance(core().infer("chat", base).answer, fastjson.ChatAnswer)
    cases = [("chat", {**base, "stream": True}), ("chat", {**base, "return_prompt_token_ids": False}),
             ("completions", {"prompt": "hi", "max_tokens": 3}),
             ("generate", {"text": "hi", "sampling_params": {"max_new_tokens": 3}})]
    for route, body in cases:
        reply = core().infer(route, body)
        assert reply.status == 200 and reply.answer is None, (route, body)
    bad = core().infer("chat", {**base, "max_tokens": 0})
    assert bad.status == 400 and bad.answer is None and bad.body["message"]

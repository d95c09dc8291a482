"""The pure worker core: token-in/token-out invariants, determinism, timelines, faults, input validation."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sim.engine.types import WorkerConfig
from sim.worker.core import Faults, Reply, WorkerCore, _logprobs, _neg_round6
from testbed_common import fastjson, tokenizer, vtime

words = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
contents = st.lists(words, min_size=0, max_size=12).map(" ".join)
roles = st.sampled_from(["system", "user", "assistant", "tool"])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), min_size=1, max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
request_keys = st.sampled_from(
    [
        "messages",
        "input_ids",
        "max_tokens",
        "stream",
        "text",
        "prompt",
        "sampling_params",
        "sim_time",
        "n",
        "logprobs",
        "stream_options",
        "return_prompt_token_ids",
    ]
)


def core(name: str = "w0", seed: int = 7, **kw) -> WorkerCore:
    return WorkerCore(WorkerConfig(name=name, kv_capacity_tokens=kw.pop("kv", 50_000)), seed=seed, **kw)


@given(messages, st.integers(1, 40))
def test_prompt_plus_output_is_the_rendered_conversation(msgs, n):
    reply = core().infer("chat", {"messages": msgs, "max_tokens": n, "return_prompt_token_ids": True, "sim_time": 0.0})
    assert reply.status == 200 and reply.body is not None
    choice = reply.body["choices"][0]
    out = [p[1] for p in choice["meta_info"]["output_token_logprobs"]]
    assert len(out) == n == reply.body["usage"]["completion_tokens"]
    answer = {"role": "assistant", "content": choice["message"]["content"]}
    assert choice["prompt_token_ids"] + out == tokenizer.render([*msgs, answer], add_generation_prompt=False)


@given(messages, st.integers(1, 40), st.integers(0, 2**32))
def test_the_answer_depends_on_seed_and_prompt_only(msgs, n, seed):
    body = {"messages": msgs, "max_tokens": n, "sim_time": 0.0}
    a = core("w0", seed=seed).infer("chat", body).body
    b = core("w9", seed=seed, kv=None, default_max_tokens=3).infer("chat", body).body
    assert a is not None and b is not None
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    lp_a, lp_b = (x["choices"][0]["meta_info"]["output_token_logprobs"] for x in (a, b))
    assert lp_a == lp_b


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


@given(messages, st.integers(1, 80), st.sampled_from(["chat", "completions", "generate"]))
def test_a_stream_carries_the_same_answer_as_the_json_body(msgs, n, route):
    if route == "chat":
        body = {"messages": msgs, "max_tokens": n}
    elif route == "completions":
        body = {"prompt": "a b c", "max_tokens": n}
    else:
        body = {"text": "a b c", "sampling_params": {"max_new_tokens": n}}
    plain = core().infer(route, {**body, "sim_time": 0.0}).body
    streamed = core().infer(route, {**body, "stream": True, "stream_options": {"include_usage": True}, "sim_time": 0.0})
    assert plain is not None and streamed.events is not None
    assert len(streamed.events) == len(streamed.event_times)
    assert streamed.event_times == sorted(streamed.event_times)
    assert streamed.event_times[-1] == plain["sim"]["finish"]
    if route == "generate":
        assert streamed.events[-1]["text"] == plain["text"]
        assert streamed.events[-1]["output_ids"] == plain["output_ids"]
    else:
        key = "delta" if route == "chat" else None
        text = "".join(
            (e["choices"][0][key].get("content", "") if key else e["choices"][0]["text"])
            for e in streamed.events
            if e["choices"]
        )
        expected = plain["choices"][0]["message"]["content"] if route == "chat" else plain["choices"][0]["text"]
        assert text == expected
        assert streamed.events[-1]["usage"] == plain["usage"]


@given(st.dictionaries(request_keys, json_values, max_size=6), st.sampled_from(["chat", "completions", "generate"]))
def test_any_json_body_gets_a_2xx_or_4xx_never_an_exception(body, route):
    reply = core().infer(route, body)
    assert reply.status == 200 or 400 <= reply.status < 500
    json.dumps(reply.body if reply.body is not None else reply.events)
    if reply.status != 200:
        assert isinstance(reply.body["message"], str)


@given(st.integers(0, 1000), st.floats(0.05, 0.95))
def test_faults_are_deterministic_for_seed_and_worker(seed, rate):
    def statuses() -> list[int]:
        c = core(seed=seed, faults=Faults(fail_rate=rate, rollback_fail_rate=rate))
        return [
            c.infer("chat", {"input_ids": [1, 2, 3 + i], "max_tokens": 2, "sim_time": float(i)}).status
            for i in range(16)
        ]

    first = statuses()
    assert first == statuses()
    assert set(first) <= {200, 400, 500}


def test_rollback_fault_spares_requests_without_input_ids():
    c = core(faults=Faults(rollback_fail_rate=1.0))
    assert c.infer("chat", {"messages": [{"role": "user", "content": "x"}], "sim_time": 0.0}).status == 200
    r = c.infer("chat", {"input_ids": [1, 5, 7], "sim_time": 0.0})
    assert r.status == 400
    assert "rollback failed" in r.body["message"]


def test_fault_updates_are_partial_and_all_or_nothing():
    c = core()
    assert c.update_faults({"fail_rate": 0.25})[0] == 200
    assert c.update_faults({"slowdown": 2})[1] == {**Faults().as_dict(), "fail_rate": 0.25, "slowdown": 2.0}
    status, _ = c.update_faults({"unhealthy": True, "fail_rate": 7})
    assert status == 400
    assert c.faults.unhealthy is False and c.faults.fail_rate == 0.25


def test_failed_requests_leave_the_cache_untouched():
    c = core(faults=Faults(fail_rate=1.0))
    body = {"messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 3, "sim_time": 0.0}
    assert c.infer("chat", body).status == 500
    c.faults = Faults()
    assert c.infer("chat", {**body, "sim_time": 1.0}).body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert c.engine.stats.requests == 1


halfway = st.integers(0, 10**9).map(lambda k: (k + 0.5) / 1e6)
near_halfway = st.tuples(halfway, st.integers(-3, 3)).map(lambda t: float(np.nextafter(t[0], np.inf * t[1])))
logprob_floats = st.floats(0, 1e12, allow_nan=False) | halfway | near_halfway


@given(st.lists(logprob_floats, max_size=60))
def test_logprob_rounding_is_pythons_round_bit_for_bit(xs):
    """The vectorised rounding of answer logprobs gives exactly ``round(-x, 6)``, halfway cases included."""
    got = _neg_round6(np.array(xs, dtype=np.float64))
    assert [v.hex() for v in got] == [round(-x, 6).hex() for x in xs]


@given(st.integers(0, 2**64 - 1), st.integers(0, 120))
def test_answer_logprobs_are_rounded_exponential_draws(rseed, n):
    draws = np.random.Generator(np.random.Philox(key=rseed + (0x5EED_10C9 << 64))).exponential(0.3, size=n).tolist()
    assert _logprobs(rseed, n) == [round(-x, 6) for x in draws]


def test_logprobs_carry_the_answer_words_and_their_bytes():
    core = WorkerCore(WorkerConfig(name="w0"), seed=3)
    body = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 30, "logprobs": True}
    reply = core.infer("chat", body)
    choice = reply.body["choices"][0]
    entries = choice["logprobs"]["content"]
    toks = [*choice["message"]["content"].split(), "<|im_end|>"]
    assert [e["token"] for e in entries] == toks
    assert all(bytes(e["bytes"]) == e["token"].encode() and e["top_logprobs"] == [] for e in entries)
    assert [e["logprob"] for e in entries] == [lp for lp, _, _ in choice["meta_info"]["output_token_logprobs"]]
    assert len({id(e) for e in entries}) == len(entries)  # one entry object per token


@given(messages, st.integers(1, 30), st.booleans())
def test_token_arrays_answers_carry_the_same_prompt_ids_as_an_array(msgs, n, ids_in):
    """``token_arrays=True`` (in-process callers) changes only the container of ``prompt_token_ids``."""
    prompt = tokenizer.render(msgs)
    body = {"messages": msgs, "max_tokens": n, "return_prompt_token_ids": True, "sim_time": 0.0}
    if ids_in:
        body["input_ids"] = np.array(prompt, dtype=np.int64)
    plain = WorkerCore(WorkerConfig(name="w0"), seed=1).infer("chat", dict(body)).body
    arrays = WorkerCore(WorkerConfig(name="w0"), seed=1, token_arrays=True).infer("chat", dict(body)).body
    got = arrays["choices"][0]["prompt_token_ids"]
    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and not got.flags.writeable
    assert plain["choices"][0]["prompt_token_ids"] == got.tolist() == prompt
    assert fastjson.dumps(arrays) == fastjson.dumps(plain)
    if ids_in:
        assert body["input_ids"].flags.writeable  # the caller's array is left as it was


@given(messages, st.integers(1, 20), st.booleans())
def test_the_prompt_echo_is_the_requests_own_ids_object(msgs, n, token_arrays):
    """An in-process caller gets its own input_ids back (lists always; read-only int64 arrays with token_arrays)."""
    prompt = tokenizer.render(msgs)
    frozen = np.array(prompt, dtype=np.int64)
    frozen.flags.writeable = False
    core = WorkerCore(WorkerConfig(name="w0"), seed=1, token_arrays=token_arrays)
    for ids in (list(prompt), frozen):
        body = {"messages": msgs, "input_ids": ids, "max_tokens": n, "return_prompt_token_ids": True}
        echo = core.infer("chat", body).body["choices"][0]["prompt_token_ids"]
        if token_arrays == isinstance(ids, np.ndarray):
            assert echo is ids
        else:
            assert type(echo) is (np.ndarray if token_arrays else list) and list(echo) == prompt


@given(messages, st.integers(1, 40), st.booleans(), st.floats(0, 1e4))
def test_a_deferred_answer_is_the_body_it_defers_and_its_typed_fields_read_the_same(msgs, n, ids_in, t):
    """``infer(deferred=True)`` hands a chat answer over typed; built, its body is the one ``infer`` answers with,
    and the fields read typed (message, prompt and output ids, sim) equal the body's."""
    body = {"messages": msgs, "max_tokens": n, "logprobs": True, "return_prompt_token_ids": True, "sim_time": t}
    if ids_in:
        body["input_ids"] = np.array(tokenizer.render(msgs), dtype=np.int64)
    eager = core(token_arrays=True).infer("chat", dict(body))
    reply = core(token_arrays=True).infer("chat", dict(body), deferred=True)
    assert reply.body is None and isinstance(reply.answer, fastjson.ChatAnswer)
    assert reply.status == eager.status == 200 and reply.headers == eager.headers
    ans = reply.answer
    built = ans.value()
    assert ans.value() is built  # built once
    assert fastjson.dumps(built) == fastjson.dumps(eager.body)
    choice = built["choices"][0]
    assert ans.message == choice["message"] and ans.sim == built["sim"]
    assert ans.prompt_ids.tolist() == list(choice["prompt_token_ids"])
    assert ans.output_ids.tolist() == [e[1] for e in choice["meta_info"]["output_token_logprobs"]]
    assert not ans.output_ids.flags.writeable and not ans.prompt_ids.flags.writeable


def test_deferred_applies_to_plain_chat_answers_that_echo_their_prompt_only():
    base = {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5, "sim_time": 0.0,
            "return_prompt_token_ids": True}
    cases = [("chat", {**base, "stream": True}, True), ("chat", {**base, "return_prompt_token_ids": False}, True),
             ("chat", base, False), ("completions", {"prompt": "hi", "max_tokens": 3}, True),
             ("generate", {"text": "hi", "sampling_params": {"max_new_tokens": 3}}, True)]
    for route, body, token_arrays in cases:
        reply = core(token_arrays=token_arrays).infer(route, body, deferred=True)
        assert reply.status == 200 and reply.answer is None, (route, body, token_arrays)
    bad = core(token_arrays=True).infer("chat", {**base, "max_tokens": 0}, deferred=True)
    assert bad.status == 400 and bad.answer is None and bad.body["message"]


@given(messages, st.data())
def test_known_messages_skip_only_their_prefix_and_answer_the_same(msgs, data):
    """``known_messages`` (in-process callers) spares re-checking messages a worker accepted before: a valid list
    gets the same answer whatever the count; a bad message after the known ones is still refused."""
    ids = np.array(tokenizer.render(msgs), dtype=np.int64)
    body = {"messages": msgs, "input_ids": ids, "max_tokens": 4, "sim_time": 0.0, "return_prompt_token_ids": True}
    known = data.draw(st.integers(0, len(msgs)))
    want = core(token_arrays=True).infer("chat", dict(body))
    got = core(token_arrays=True).infer("chat", dict(body), known_messages=known)
    assert got.status == want.status == 200 and fastjson.dumps(got.body) == fastjson.dumps(want.body)
    at = data.draw(st.integers(known, len(msgs)))
    bad = [*msgs[:at], {"role": 7, "content": "x"}, *msgs[at:]]
    refused = core(token_arrays=True).infer("chat", {**body, "messages": bad}, known_messages=known)
    assert refused.status == 400 and refused.body["message"] == f"messages[{at}].role must be a string"

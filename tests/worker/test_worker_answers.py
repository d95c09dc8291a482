"""Answers: token-in/token-out invariants, determinism, streams, logprobs, the prompt echo, typed chat answers."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from worker_inputs import core, messages

from sim.engine.types import WorkerConfig
from sim.worker.answers import _logprobs, _neg_round6
from sim.worker.core import WorkerCore
from testbed_common import fastjson, tokenizer


@given(messages, st.integers(1, 40))
def test_prompt_plus_output_is_the_rendered_conversation(msgs, n):
    reply = core().infer("chat", {"messages": msgs, "max_tokens": n, "return_prompt_token_ids": True, "sim_time": 0.0})
    assert reply.status == 200 and reply.body is not None
    choice = reply.body["choices"][0]
    out = [p[1] for p in choice["meta_info"]["output_token_logprobs"]]
    assert len(out) == n == reply.body["usage"]["completion_tokens"]
    answer = {"role": "assistant", "content": choice["message"]["content"]}
    assert choice["prompt_token_ids"].tolist() + out == tokenizer.render([*msgs, answer], add_generation_prompt=False)


@given(messages, st.integers(1, 40), st.integers(0, 2**32))
def test_the_answer_depends_on_seed_and_prompt_only(msgs, n, seed):
    body = {"messages": msgs, "max_tokens": n, "sim_time": 0.0}
    a = core("w0", seed=seed).infer("chat", body).body
    b = core("w9", seed=seed, kv=None, default_max_tokens=3).infer("chat", body).body
    assert a is not None and b is not None
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    lp_a, lp_b = (x["choices"][0]["meta_info"]["output_token_logprobs"] for x in (a, b))
    assert lp_a == lp_b


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


@given(messages, st.integers(1, 30), st.sampled_from(["messages", "list", "array"]))
def test_the_prompt_echo_is_a_read_only_int64_array_written_as_the_json_list(msgs, n, ids_in):
    """``prompt_token_ids`` is the prompt's ids as a read-only int64 array, however the request gave them; written
    out, the body is byte for byte the one with the ids as a plain list (what HTTP clients read)."""
    prompt = tokenizer.render(msgs)
    body = {"messages": msgs, "max_tokens": n, "return_prompt_token_ids": True, "sim_time": 0.0}
    if ids_in != "messages":
        body["input_ids"] = list(prompt) if ids_in == "list" else np.array(prompt, dtype=np.int64)
    got = WorkerCore(WorkerConfig(name="w0"), seed=1).infer("chat", dict(body)).body
    ids = got["choices"][0]["prompt_token_ids"]
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64 and not ids.flags.writeable
    assert ids.tolist() == prompt
    as_list = {**got, "choices": [{**got["choices"][0], "prompt_token_ids": prompt}]}
    assert fastjson.dumps(got) == fastjson.dumps(as_list)
    if ids_in == "array":
        assert body["input_ids"].flags.writeable  # the caller's array is left as it was


@given(messages, st.integers(1, 20))
def test_the_prompt_echo_is_the_requests_own_ids_array(msgs, n):
    """An in-process caller gets its own read-only int64 ``input_ids`` back (a writable one: a read-only view of it)."""
    prompt = tokenizer.render(msgs)
    frozen = np.array(prompt, dtype=np.int64)
    frozen.flags.writeable = False
    writable = np.array(prompt, dtype=np.int64)
    core = WorkerCore(WorkerConfig(name="w0"), seed=1)
    for ids in (frozen, writable):
        body = {"messages": msgs, "input_ids": ids, "max_tokens": n, "return_prompt_token_ids": True}
        echo = core.infer("chat", body).body["choices"][0]["prompt_token_ids"]
        if ids is frozen:
            assert echo is ids
        else:
            assert echo.base is ids and not echo.flags.writeable and ids.flags.writeable


@given(messages, st.integers(1, 40), st.booleans(), st.floats(0, 1e4))
def test_a_chat_answer_comes_typed_and_its_body_is_built_once_on_first_read(msgs, n, ids_in, t):
    """A 200 chat answer echoing its prompt is handed over typed (``Reply.answer``); ``Reply.body`` builds its body
    once, and the fields read typed (message, prompt and output ids, sim) equal the body's."""
    body = {"messages": msgs, "max_tokens": n, "logprobs": True, "return_prompt_token_ids": True, "sim_time": t}
    if ids_in:
        body["input_ids"] = np.array(tokenizer.render(msgs), dtype=np.int64)
    reply = core().infer("chat", dict(body))
    assert reply.status == 200 and isinstance(reply.answer, fastjson.ChatAnswer)
    ans = reply.answer
    built = reply.body
    assert reply.body is built and ans.value() is built  # built once
    choice = built["choices"][0]
    assert ans.message == choice["message"] and ans.sim == built["sim"]
    assert ans.prompt_ids is choice["prompt_token_ids"]
    assert ans.output_ids.tolist() == [e[1] for e in choice["meta_info"]["output_token_logprobs"]]
    assert not ans.output_ids.flags.writeable and not ans.prompt_ids.flags.writeable

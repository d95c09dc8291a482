"""Request validation: any JSON body gets an answer or a 4xx, never an exception; requests that cannot fit are
refused before the engine; message prefixes known valid are not checked again."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from worker_inputs import core, messages

from sim.worker.request import admission_refusal
from testbed_common import fastjson, tokenizer

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


@given(st.integers(1, 120), st.integers(1, 120))
def test_a_request_that_cannot_fit_is_refused_before_the_engine(prompt_tokens, max_tokens):
    """Context length first, then KV capacity; ``admission_refusal`` gives the worker's very message."""
    c = core(kv=150, context_length=200)
    body = {"input_ids": list(range(1, prompt_tokens + 1)), "sampling_params": {"max_new_tokens": max_tokens}}
    reply = c.infer("generate", {**body, "sim_time": 0.0})
    refusal = admission_refusal(prompt_tokens, max_tokens, 200, 150)
    if refusal is None:
        assert reply.status == 200 and c.engine.stats.requests == 1
    else:
        assert reply.status == 400 and c.engine.stats.requests == 0
        assert reply.body["message"] == refusal and reply.body["param"] == "max_tokens"


def test_admission_refusals_name_the_limit_that_was_hit():
    assert admission_refusal(100, 50, 200, 150) is None
    assert admission_refusal(100, 60, 200, 150) == "request needs 160 KV tokens; the worker holds 150"
    assert admission_refusal(100, 60, 200, None) is None
    assert admission_refusal(150, 100, 200, 150) == (
        "Requested token count exceeds the model's maximum context length of 200 tokens. You requested a total of "
        "250 tokens: 150 tokens from the input messages and 100 tokens for the completion."
    )


@given(st.dictionaries(request_keys, json_values, max_size=6), st.sampled_from(["chat", "completions", "generate"]))
def test_any_json_body_gets_a_2xx_or_4xx_never_an_exception(body, route):
    reply = core().infer(route, body)
    assert reply.status == 200 or 400 <= reply.status < 500
    fastjson.dumps(reply.body if reply.body is not None else reply.events)  # token ids: arrays, written as lists
    if reply.status != 200:
        assert isinstance(reply.body["message"], str)


@given(messages, st.data())
def test_known_messages_skip_only_their_prefix_and_answer_the_same(msgs, data):
    """``known_messages`` (in-process callers) spares re-checking messages a worker accepted before: a valid list
    gets the same answer whatever the count; a bad message after the known ones is still refused."""
    ids = np.array(tokenizer.render(msgs), dtype=np.int64)
    body = {"messages": msgs, "input_ids": ids, "max_tokens": 4, "sim_time": 0.0, "return_prompt_token_ids": True}
    known = data.draw(st.integers(0, len(msgs)))
    want = core().infer("chat", dict(body))
    got = core().infer("chat", dict(body), known_messages=known)
    assert got.status == want.status == 200 and fastjson.dumps(got.body) == fastjson.dumps(want.body)
    at = data.draw(st.integers(known, len(msgs)))
    bad = [*msgs[:at], {"role": 7, "content": "x"}, *msgs[at:]]
    refused = core().infer("chat", {**body, "messages": bad}, known_messages=known)
    assert refused.status == 400 and refused.body["message"] == f"messages[{at}].role must be a string"

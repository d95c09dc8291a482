"""What the session core sends to the router and reads from its answers: headers, malformed answers, echoes,
known messages, typed answers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from session_turns import as_json, chat, reply_of, tool_texts

from session_server.core import SessionCore
from session_server.testing import FakeRouter
from session_server.upstream import UpstreamRequest, UpstreamResponse
from testbed_common import tokenizer as tok

# --- headers --------------------------------------------------------------------------------------

header_names = st.sampled_from(
    [
        "x-smg-routing-key",
        "X-SMG-Routing-Key",
        "X-Smg-Routing-KEY",
        "x-other",
        "Authorization",
        "Host",
        "content-length",
        "traceparent",
    ]
)


@given(st.lists(st.tuples(header_names, st.text(alphabet="abc123", min_size=1, max_size=5)), max_size=6))
def test_exactly_one_routing_key_equal_to_the_session_id(headers):
    core = SessionCore()
    out = core.upstream_headers("sid123", headers)
    keys = [k for k in out if k.lower() == "x-smg-routing-key"]
    assert keys == ["X-SMG-Routing-Key"] and out["X-SMG-Routing-Key"] == "sid123"
    assert not {"host", "content-length"} & {k.lower() for k in out}
    off = SessionCore(routing_key=False).upstream_headers("sid123", headers)
    client_keys = [v for k, v in headers if k.lower() == "x-smg-routing-key"]
    assert [v for k, v in off.items() if k.lower() == "x-smg-routing-key"] == client_keys[-1:]
    custom = SessionCore(routing_key_header="X-Session-Id").upstream_headers(
        "sid123", [*headers, ("x-session-id", "c")]
    )
    assert [v for k, v in custom.items() if k.lower() == "x-session-id"] == ["sid123"]


class WatchedHeaders(Mapping[str, str]):
    """Headers that count how often they are read (as ``direct``'s worker reply headers, rendered when read)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers, self.reads = headers, 0

    def __getitem__(self, key: str) -> str:
        self.reads += 1
        return self.headers[key]

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(self.headers)

    def __len__(self) -> int:
        return len(self.headers)


@pytest.mark.parametrize("status", [200, 500])
def test_result_headers_are_the_relayable_upstream_headers_filtered_on_first_read(status):
    """Nothing reads the upstream's headers until ``TurnResult.headers`` is: a caller that relays none (``direct``)
    never has them rendered or filtered."""
    core, router = SessionCore(session_id_seed=1), FakeRouter()
    sid = core.create_session(0.0)
    sent = WatchedHeaders({"content-type": "application/json", "content-length": "9", "x-sim-worker": "w0"})

    def send(req: UpstreamRequest) -> UpstreamResponse:
        if status != 200:
            return UpstreamResponse(status, sent, content=b'{"e": 1}')
        return UpstreamResponse(200, sent, data=router.answer(as_json(req.json)))

    r = core.run_turn(sid, {"messages": [{"role": "user", "content": "q"}]}, (), send)
    assert r.status == status and sent.reads == 0
    assert r.headers == {"content-type": "application/json", "x-sim-worker": "w0"}
    reads = sent.reads
    assert reads > 0 and r.headers is r.headers and sent.reads == reads  # filtered once


# --- reading a 200 chat answer --------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda b: b.update(choices=[]), "choices[0]"),
        (lambda b: b["choices"][0]["message"].update(content=None), "content = null"),
        (lambda b: b["choices"][0]["meta_info"].update(completion_tokens=99), "completion_tokens=99"),
        (lambda b: b["choices"][0].pop("meta_info"), "output_token_logprobs"),
        (lambda b: b["choices"][0].pop("prompt_token_ids"), "prompt_token_ids"),
    ],
)
def test_malformed_upstream_answers_are_502(mutate, needle):
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)

    def bad(req):
        body = router.answer(req.json)
        mutate(body)
        return UpstreamResponse(200, data=body)

    r = core.run_turn(sid, {"messages": [{"role": "user", "content": "q"}]}, (), bad)
    assert r.status == 502 and needle in r.body["error"]
    assert core.sessions[sid].records == []


def test_a_prompt_echo_array_of_another_dtype_is_refused():
    core = SessionCore()
    sid = core.create_session(0.0)
    data = FakeRouter().answer({"messages": [{"role": "user", "content": "q"}]})
    data["choices"][0]["prompt_token_ids"] = np.array(data["choices"][0]["prompt_token_ids"], dtype=np.float64)
    r = core.run_turn(
        sid, {"messages": [{"role": "user", "content": "q"}]}, (), lambda req: UpstreamResponse(200, data=data)
    )
    assert r.status == 502 and "prompt_token_ids" in r.body["error"] and not core.sessions[sid].records


def test_an_echo_of_the_very_array_sent_passes_and_anything_else_is_still_checked_per_id():
    """The echo of the ``input_ids`` array itself needs no check; an equal JSON echo with a bool is still a 502."""
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages = [{"role": "user", "content": "q"}]
    r = chat(core, sid, messages, router)
    messages = [*messages, reply_of(r), {"role": "tool", "content": "t u"}]

    def echo(swap_bool: bool):
        def send(req: UpstreamRequest) -> UpstreamResponse:
            data = router.answer(as_json(req.json))
            choice = data["choices"][0]
            assert choice["prompt_token_ids"] == req.json["input_ids"].tolist()
            if swap_bool:
                ids = choice["prompt_token_ids"]
                ids[ids.index(tok.IM_START)] = True  # == 1, but a JSON true is not a token id
            else:
                choice["prompt_token_ids"] = req.json["input_ids"]  # the very array, as the worker core echoes it
            return UpstreamResponse(200, data=data)

        return send

    bad = core.run_turn(sid, {"messages": messages}, (), echo(True))
    assert bad.status == 502 and "prompt_token_ids" in bad.body["error"] and len(core.sessions[sid].records) == 1
    good = core.run_turn(sid, {"messages": messages}, (), echo(False))
    assert good.status == 200 and good.recorded
    assert core.sessions[sid].token_ids == tok.render([*messages, reply_of(good)], add_generation_prompt=False)


# --- known_messages: the gateway re-validates only what it has not accepted before (in-process only) -------------

gw_messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "robot", "", 3]),
                               "content": st.sampled_from(["x", None, 5, ["p"]])},
                              optional={"tool_call_id": st.sampled_from(["1", None, 2])}),
        st.sampled_from(["not a message", None, 7]),
    ),
    min_size=1,
    max_size=6,
)


@given(gw_messages, gw_messages)
def test_known_messages_skip_only_a_prefix_the_gateway_accepted_and_answer_the_same(prefix, rest):
    """With ``known_messages=k`` for k leading messages that passed the gateway's check, ``validate`` gives the
    same answer (None or the same 4xx naming the same index) as the full check of the whole list."""
    from mock_gateway.request_validation import validate

    body = {"model": "m", "messages": [*prefix, *rest]}
    k = len(prefix)
    if validate("chat", {"model": "m", "messages": prefix}) is not None:
        return  # not a prefix the gateway would ever have accepted
    full, fast = validate("chat", body), validate("chat", body, known_messages=k)
    assert (full is None) == (fast is None)
    if full is not None:
        assert (full.status, full.error_code, full.message) == (fast.status, fast.error_code, fast.message)


def test_a_turn_tells_an_in_process_upstream_how_many_resent_messages_it_answered_200_before():
    core, router, log = SessionCore(), FakeRouter(), []
    sid = core.create_session(0.0)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    r = chat(core, sid, messages, router, log=log)
    assert log[-1].known_messages == 0  # a first turn: nothing answered before
    nxt = [*messages, reply_of(r), {"role": "tool", "content": "t", "tool_call_id": "1"}]
    r2 = chat(core, sid, nxt, router, log=log)
    assert log[-1].known_messages == 2  # the two request messages; never the reply, which came from upstream
    # equal but other objects (e.g. parsed from JSON): nothing is known
    copies = [dict(m) for m in [*nxt, reply_of(r2), {"role": "tool", "content": "u", "tool_call_id": "2"}]]
    assert chat(core, sid, copies, router, log=log).status == 200
    assert len(log) == 3 and log[-1].known_messages == 0


# --- typed answers (in-process) -------------------------------------------------------------------


def worker_upstream(typed: bool):
    """An in-process mock worker, its 200 chat answers handed over typed, or (``typed=False``) as their bodies."""
    from sim.engine.types import WorkerConfig
    from sim.worker.core import WorkerCore

    worker = WorkerCore(WorkerConfig(name="w0", kv_capacity_tokens=100_000), seed=5)

    def send(req: UpstreamRequest) -> UpstreamResponse:
        reply = worker.infer("chat", dict(req.json))
        if typed:
            return UpstreamResponse(reply.status, reply.headers, answer=reply.answer)
        return UpstreamResponse(reply.status, reply.headers, data=reply.body)

    return send


@given(tool_texts, st.none() | st.integers(1, 5))
def test_typed_answers_are_recorded_as_is_and_read_as_the_bodies_they_defer(tools, retry_at):
    """A session core fed typed answers (``UpstreamResponse.answer``) sends, keeps and answers what it does when
    fed their bodies; its records hold the answers unbuilt until a view is written out."""
    from testbed_common.fastjson import ChatAnswer, dumps

    views, sids, results = [], [], []
    for typed in (False, True):
        core, up = SessionCore(), worker_upstream(typed)
        sid = core.create_session(0.0)
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "task alpha beta"}]
        got = []
        for i, tool_text in enumerate([*tools, None]):
            r = core.run_turn(sid, {"messages": messages, "max_tokens": 3 + i}, (), up)
            if i == retry_at:  # the agent drops that answer and asks again with the same messages
                r = core.run_turn(sid, {"messages": messages, "max_tokens": 2}, (), up)
            assert r.status == 200 and r.recorded, r.body
            assert isinstance(r.body, ChatAnswer) == typed
            body = r.body.value() if typed else r.body
            got.append(dumps(body))
            if tool_text is None:
                break
            content = body["choices"][0]["message"]["content"]
            messages = [*messages, {"role": "assistant", "content": content},
                        {"role": "tool", "content": tool_text, "tool_call_id": str(i)}]
        kept = core.get_view(sid)["records"]
        assert all(isinstance(rec["response"], ChatAnswer) == typed for rec in kept)
        views.append(dumps(core.get_view(sid)))  # written out, a kept answer is its body
        sids.append(sid)
        results.append(got)
    assert results[0] == results[1]
    assert views[0] == views[1].replace(sids[1].encode(), sids[0].encode())

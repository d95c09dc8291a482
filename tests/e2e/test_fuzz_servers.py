"""Property-based fuzzing of the three servers over real HTTP on loopback: no malformed request gets a 5xx.

One healthy stack serves the module: two mock workers (8K context, live time sped up 1000x) <- the mock
gateway (``--policy manual``) <- the session server. Hypothesis builds requests that are malformed in every
way it can (bodies that are not JSON, JSON of the wrong shape, valid chat bodies with one field replaced by
an arbitrary JSON value, odd content types and header values, junk paths and methods), sends each one to a
server, and checks the answer: below 500, and a JSON body for every error. On this healthy stack a
well-formed request has no excuse for a 5xx either (no upstream fails), so there is no exemption.

Not fuzzed here: ``POST /workers`` / ``DELETE /workers/{id}`` on the gateway and ``/admin/faults`` on the
workers (a valid value changes the stack for every later example; their bad inputs are rows in
``test_bad_input.py``), and JSON nested deeper than 500 levels (table rows there; the session server still
answers those 500). ``FUZZ_EXAMPLES=1000`` runs a deeper search by hand.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test
from loopback_stack import MODEL, loopback_stack

CAP = 256 * 1024
KEY = "x-smg-routing-key"
# FUZZ_EXAMPLES=1000 for a deeper run by hand; CI keeps 60 per test (the whole file runs in ~10 s)
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@dataclass
class Stack:
    worker: str
    gateway: str
    session: str
    client: httpx.Client


@pytest.fixture(scope="module")
def env() -> Iterator[Stack]:
    with loopback_stack(CAP) as lb, httpx.Client(trust_env=False, timeout=30) as client:
        yield Stack(lb.worker_urls[0], lb.gateway_url, lb.session_url, client)


# --- strategies ------------------------------------------------------------------------------------------

# any code point, lone surrogates included (json.dumps writes them as \ud800 escapes: valid JSON, not UTF-8)
any_text = st.text(st.characters(blacklist_categories=()), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "sim_time",
    "temperature",
    "input_ids",
    "text",
    "prompt",
    "sampling_params",
    "rid",
    "logprobs",
    "return_meta_info",
    "n",
    "stop",
]
MSG_FIELDS = ["role", "content", "reasoning_content", "tool_calls", "name"]


def chat(text: str = "fuzz me", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


@st.composite
def mutated_chat(draw: st.DrawFn) -> dict[str, Any]:
    """A valid chat body with one to three fields (top level or in a message) replaced, removed or added."""
    body = chat(draw(st.text(max_size=30)))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "top", "message", "drop"]))
        if where == "top":
            body[draw(st.sampled_from(FIELDS) | any_text)] = draw(json_values)
        elif where == "drop":
            body.pop(draw(st.sampled_from(sorted(body))), None)
        elif isinstance(body.get("messages"), list) and body["messages"]:
            msg = body["messages"][0]
            if isinstance(msg, dict):
                msg[draw(st.sampled_from(MSG_FIELDS))] = draw(json_values)
            body["messages"].append(draw(json_values))
    return body


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()  # ASCII: surrogates become escapes; NaN/Infinity as their (invalid) literals


raw_bodies = st.one_of(
    mutated_chat().map(encode),
    json_values.map(encode),
    st.binary(max_size=64),
    mutated_chat().map(encode).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # truncated
    st.integers(1, 500).map(lambda n: b"[" * n + b"]" * n),  # nesting the parsers handle (deeper: table rows)
)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20
)
# header values HTTP/1.1 can carry: bytes 0x21-0x7e and 0x80-0xff, inner spaces and TABs (no CR, LF, NUL, DEL)
header_values = st.binary(max_size=140).map(
    lambda b: bytes(c for c in b if (c >= 0x20 and c != 0x7F) or c == 9).strip(b" \t")
)
header_names = st.text(string.ascii_lowercase + "-", min_size=1, max_size=12).map(lambda s: "x-" + s)
odd_headers = st.dictionaries(header_names | st.just(KEY), header_values, max_size=3)
path_junk = st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%", max_size=24)


def headers_for(ctype: str, extra: dict[str, bytes]) -> dict[str, Any]:
    h: dict[str, Any] = dict(extra)
    if ctype:
        h["content-type"] = ctype
    return h


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), r.text[:300]
        json.loads(r.content)


INFERENCE = ["/v1/chat/completions", "/v1/completions", "/generate"]


# --- mock worker -----------------------------------------------------------------------------------------


@FUZZ
@given(path=st.sampled_from(INFERENCE), body=raw_bodies, ctype=content_types, extra=odd_headers)
def test_worker_inference_never_5xx(env: Stack, path: str, body: bytes, ctype: str, extra: dict) -> None:
    check(env.client.post(env.worker + path, content=body, headers=headers_for(ctype, extra)))


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from(["/health", "/v1/models", "/server_info", "/model_info", "/v1/loads", "/metrics", "/x"])
    | path_junk.map(lambda p: "/" + p),
    query=st.sampled_from(["", "sim_time=1", "sim_time=-1", "sim_time=nan", "sim_time=1e400", "sim_time="])
    | path_junk.map(lambda q: "sim_time=" + q),
)
def test_worker_other_routes_never_5xx(env: Stack, method: str, path: str, query: str) -> None:
    if path.startswith(("/admin", "/flush_cache")):
        return  # they change the worker (faults, cache); bad inputs to them are table rows
    check(env.client.request(method, f"{env.worker}{path}?{query}"))


# --- mock gateway ----------------------------------------------------------------------------------------


@FUZZ
@given(path=st.sampled_from(INFERENCE), body=raw_bodies, ctype=content_types, extra=odd_headers)
def test_gateway_inference_never_5xx(env: Stack, path: str, body: bytes, ctype: str, extra: dict) -> None:
    check(env.client.post(env.gateway + path, content=body, headers=headers_for(ctype, extra)))


@FUZZ
@given(key=header_values, body=mutated_chat() | st.just(chat()))
def test_gateway_routing_key_never_an_error(env: Stack, key: bytes, body: dict) -> None:
    """Any routing-key value (129 bytes, empty, not UTF-8...) is used or ignored; a valid body is still served."""
    r = env.client.post(
        env.gateway + "/v1/chat/completions",
        content=encode(body),
        headers={"content-type": "application/json", KEY: key},
    )
    check(r)
    if body == chat():
        assert r.status_code == 200, r.text[:300]


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), path=path_junk)
def test_gateway_other_routes_never_5xx(env: Stack, method: str, path: str) -> None:
    if path.lstrip("/").startswith("workers"):
        return  # worker registration changes the stack; its bad inputs are table rows
    check(env.client.request(method, f"{env.gateway}/{path}"))


# --- session server --------------------------------------------------------------------------------------


@st.composite
def session_ids(draw: st.DrawFn, env: Stack) -> str:
    kind = draw(st.sampled_from(["fresh", "fresh", "used", "deleted", "junk"]))
    if kind == "junk":
        return draw(st.text(string.ascii_letters + string.digits + "-_.~", min_size=1, max_size=40))
    sid = env.client.post(f"{env.session}/sessions").json()["session_id"]
    if kind in ("used", "deleted"):
        r = env.client.post(f"{env.session}/sessions/{sid}/v1/chat/completions", json=chat())
        assert r.status_code == 200, r.text[:300]
    if kind == "deleted":
        assert env.client.delete(f"{env.session}/sessions/{sid}").status_code == 204
    return sid


@FUZZ
@given(data=st.data(), body=raw_bodies, ctype=content_types, extra=odd_headers)
def test_session_chat_never_5xx(env: Stack, data: st.DataObject, body: bytes, ctype: str, extra: dict) -> None:
    sid = data.draw(session_ids(env))
    r = env.client.post(
        f"{env.session}/sessions/{sid}/v1/chat/completions", content=body, headers=headers_for(ctype, extra)
    )
    check(r)
    check(env.client.get(f"{env.session}/sessions/{sid}"))  # whatever happened, the session stays readable


@FUZZ
@given(
    data=st.data(),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from(["", "v1/models", "v1/chat/completions", "health", "v1/completions"]) | path_junk,
    body=st.none() | raw_bodies,
)
def test_session_routes_never_5xx(env: Stack, data: st.DataObject, method: str, path: str, body: bytes | None) -> None:
    """Every session route and the passthrough, with any method, on fresh, used, deleted and unknown ids."""
    if path.lstrip("/").startswith("workers"):
        return  # passed through to the gateway's worker registration
    sid = data.draw(session_ids(env))
    url = f"{env.session}/sessions/{sid}" + (f"/{path}" if path else "")
    check(env.client.request(method, url, content=body, headers={"content-type": "application/json"}))


# --- session server: random sequences of good and bad calls ---------------------------------------------


class SessionSequences(RuleBasedStateMachine):
    """Agents create sessions, take turns, retry the last turn, send junk, read and delete, in any order.

    The model: per live session, the message lists it sent and the answers it got. Good calls must succeed,
    a junk turn must get a 4xx and change nothing, a retry rolls back exactly one model turn (a 400 when the
    only model turn is the first, which cannot be rolled back) and replaces its record, so the session holds one
    record per model turn of its current history.
    """

    def __init__(self, env: Stack) -> None:
        super().__init__()
        self.env = env
        self.live: dict[str, dict[str, Any]] = {}
        self.gone: list[str] = []

    sessions = Bundle("sessions")

    def url(self, sid: str, suffix: str = "") -> str:
        return f"{self.env.session}/sessions/{sid}{suffix}"

    def records(self, sid: str) -> list:
        r = self.env.client.get(self.url(sid))
        assert r.status_code == 200, r.text[:300]
        return r.json()["records"]

    @rule(target=sessions)
    def create(self) -> str:
        r = self.env.client.post(f"{self.env.session}/sessions")
        assert r.status_code == 200, r.text[:300]
        sid = r.json()["session_id"]
        self.live[sid] = {"sent": [], "answers": []}
        return sid

    def chat(self, sid: str, messages: list[dict]) -> httpx.Response:
        return self.env.client.post(self.url(sid, "/v1/chat/completions"), json=chat() | {"messages": messages})

    @rule(sid=sessions, text=st.text(max_size=40))
    def turn(self, sid: str, text: str) -> None:
        if sid not in self.live:
            assert self.chat(sid, [{"role": "user", "content": text}]).status_code == 404
            return
        m = self.live[sid]
        if m["sent"]:
            messages = [
                *m["sent"][-1],
                {"role": "assistant", "content": m["answers"][-1]},
                {"role": "tool", "content": text, "tool_call_id": f"call_{len(m['sent'])}"},  # SMG requires the id
            ]
        else:
            messages = [{"role": "system", "content": "fuzz"}, {"role": "user", "content": text}]
        r = self.chat(sid, messages)
        assert r.status_code == 200, r.text[:300]
        m["sent"].append(messages)
        m["answers"].append(r.json()["choices"][0]["message"]["content"])

    @rule(sid=sessions)
    def retry_last_turn(self, sid: str) -> None:
        m = self.live.get(sid)
        if m is None or not m["sent"]:
            return
        r = self.chat(sid, m["sent"][-1])
        if len(m["sent"]) == 1:
            assert r.status_code == 400 and "rollback failed" in r.text, r.text[:300]
            return
        assert r.status_code == 200, r.text[:300]
        m["answers"][-1] = r.json()["choices"][0]["message"]["content"]

    @rule(sid=sessions, body=raw_bodies)
    def junk_turn(self, sid: str, body: bytes) -> None:
        before = self.records(sid) if sid in self.live else None
        r = self.env.client.post(
            self.url(sid, "/v1/chat/completions"), content=body, headers={"content-type": "application/json"}
        )
        check(r)
        if r.status_code == 200:  # the junk happened to be a valid turn (e.g. a mutation that changed nothing)
            self.live.pop(sid, None)  # the model no longer knows its messages: stop driving this session
            self.gone.append(sid)
            self.env.client.delete(self.url(sid))
            return
        if before is not None:
            assert self.records(sid) == before

    @rule(sid=sessions)
    def read(self, sid: str) -> None:
        if sid in self.live:
            records = self.records(sid)
            assert [r["request"]["messages"] for r in records] == self.live[sid]["sent"]
        else:
            assert self.env.client.get(self.url(sid)).status_code == 404

    @rule(sid=consumes(sessions))
    def delete(self, sid: str) -> None:
        expected = 204 if sid in self.live else 404
        assert self.env.client.delete(self.url(sid)).status_code == expected
        self.live.pop(sid, None)
        self.gone.append(sid)
        assert self.env.client.get(self.url(sid)).status_code == 404

    @invariant()
    def deleted_sessions_stay_gone(self) -> None:
        for sid in self.gone[-3:]:
            assert self.env.client.get(self.url(sid)).status_code == 404

    def teardown(self) -> None:
        for sid in self.live:
            self.env.client.delete(self.url(sid))


def test_session_sequences(env: Stack) -> None:
    run_state_machine_as_test(
        lambda: SessionSequences(env),
        settings=settings(FUZZ, max_examples=max(5, FUZZ.max_examples // 4), stateful_step_count=20),
    )

"""The session server's pure core: TITO merge, append-only and rollback rules, retry rule, headers, store."""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from session_server.core import (
    FORCED_FIELDS,
    SessionCore,
    SessionError,
    UpstreamRequest,
    UpstreamResponse,
    message_matches,
    render_ids,
)
from session_server.testing import ROLLBACK_FAILED_BODY, FakeRouter
from testbed_common import tokenizer as tok

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def as_json(body: dict) -> dict:
    """The body an HTTP upstream would parse: token-id arrays (``token_arrays`` cores) become lists."""
    ids = body.get("input_ids")
    return {**body, "input_ids": ids.tolist()} if isinstance(ids, np.ndarray) else body


def ids_of(ids) -> list[int]:
    """Token ids as a list, whether kept as a list or (``token_arrays``) as a read-only int64 array."""
    if isinstance(ids, np.ndarray):
        assert ids.dtype == np.int64 and ids.ndim == 1 and not ids.flags.writeable
        return ids.tolist()
    return ids


def upstream_of(router: FakeRouter, log: list[UpstreamRequest] | None = None):
    """An in-process upstream: the fake router's answer, or its queued failures."""

    def send(req: UpstreamRequest) -> UpstreamResponse:
        if log is not None:
            log.append(req)
        if router.failures:
            status, body = router.failures.popleft()
            return UpstreamResponse(status, {"content-type": "application/json"}, data=body)
        return UpstreamResponse(200, {"content-type": "application/json"}, data=router.answer(as_json(req.json)))

    return send


def chat(core: SessionCore, sid: str, messages, router: FakeRouter, headers=(), log=None, **extra):
    body = {"model": "fake-model", "messages": messages, "max_tokens": 5, **extra}
    return core.run_turn(sid, body, headers, upstream_of(router, log), now=1.0)


def reply_of(result) -> dict:
    return result.body["choices"][0]["message"]


def conversation(core, sid, router, tools: list[str], log=None):
    """Run a tool-calling conversation; return all its messages (last reply included) and the results."""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "task alpha beta"}]
    results = []
    for i, tool_text in enumerate([*tools, None]):
        r = chat(core, sid, messages, router, log=log)
        assert r.status == 200, r.body
        results.append(r)
        messages = [*messages, reply_of(r)]
        if tool_text is None:
            break
        messages.append({"role": "tool", "content": tool_text, "tool_call_id": str(i)})
    return messages, results


# --- message equality ---------------------------------------------------------------------------

empties = st.sampled_from([None, "", []])
roles = st.sampled_from(["system", "user", "assistant", "tool"])


@given(roles, empties, empties, empties, empties, empties, empties)
def test_none_empty_string_and_empty_list_are_equal(role, c1, c2, r1, r2, t1, t2):
    a = {"role": role, "content": c1, "reasoning_content": r1, "tool_calls": t1}
    b = {"role": role, "content": c2, "reasoning_content": r2, "tool_calls": t2}
    assert message_matches(a, b) and message_matches(b, a)
    assert message_matches({"role": role}, a)


field_values = st.one_of(empties, st.sampled_from(["a", "b", 0, 0.0, False, 1, True, float("nan"), [1], [1.0], {}]))
message_dicts = st.dictionaries(st.sampled_from(["role", "content", "reasoning_content", "tool_calls", "name"]),
                                field_values, max_size=5)


@given(message_dicts, message_dicts)
def test_message_equality_is_miles_field_by_field_rule(a, b):
    """Equal on role, content, reasoning_content and tool_calls, with None, "" and [] alike (miles'
    ``message_matches``), whatever shortcuts the implementation takes; values of any JSON type, NaN included."""
    def norm(v):
        return None if v is None or (isinstance(v, str | list) and len(v) == 0) else v

    want = all(norm(a.get(k)) == norm(b.get(k)) or (a.get(k) is None and b.get(k) is None)
               for k in ("role", "content", "reasoning_content", "tool_calls")) or a == b
    assert message_matches(a, b) == want


@given(roles, st.text(min_size=1), st.text())
def test_only_the_four_fields_count(role, content, other):
    a = {"role": role, "content": content}
    assert message_matches(a, {**a, "provider_specific_fields": other, "name": other, "tool_call_id": other})
    assert not message_matches(a, {**a, "content": content + "x"})
    assert not message_matches(a, {**a, "role": role + "x"})
    assert not message_matches(a, {**a, "tool_calls": [{"id": "1"}]})


# --- session ids and store ---------------------------------------------------------------------


def test_session_ids_are_uuid4_hex_and_seeded_ids_reproducible():
    ids = [SessionCore(session_id_seed=7).create_session(0.0) for _ in range(2)]
    assert ids[0] == ids[1]
    core = SessionCore(session_id_seed=7)
    seq = [core.create_session(0.0) for _ in range(50)]
    assert seq[0] == ids[0] and len(set(seq)) == 50
    assert seq != [SessionCore(session_id_seed=8).create_session(0.0) for _ in range(50)]
    unseeded = SessionCore()
    for sid in [*seq, unseeded.create_session(0.0)]:
        assert HEX32.match(sid)
        u = uuid.UUID(hex=sid)
        assert u.version == 4 and u.variant == uuid.RFC_4122
    assert SessionCore().create_session(0.0) != SessionCore().create_session(0.0)


def test_unknown_sessions_are_404_and_never_created():
    core = SessionCore()
    for call in (
        lambda: core.get_view("nope"),
        lambda: core.delete("nope"),
        lambda: core.prepare_turn("nope", {"messages": [{"role": "user", "content": "x"}]}),
    ):
        with pytest.raises(SessionError) as e:
            call()
        assert e.value.status == 404 and "session not found" in e.value.message
    assert core.sessions == {}
    r = chat(core, "nope", [{"role": "user", "content": "x"}], FakeRouter())
    assert r.status == 404 and "error" in r.body


def test_view_of_a_new_session_and_delete_twice():
    core = SessionCore()
    sid = core.create_session(0.0)
    assert core.get_view(sid) == {
        "session_id": sid,
        "records": [],
        "metadata": {"accumulated_token_ids": [], "max_trim_tokens": 0},
    }
    core.delete(sid)
    with pytest.raises(SessionError) as e:
        core.delete(sid)
    assert e.value.status == 404


def test_max_sessions_and_idle_ttl():
    core = SessionCore(max_sessions=2, idle_ttl=10.0)
    a = core.create_session(0.0)
    b = core.create_session(5.0)
    with pytest.raises(SessionError) as e:
        core.create_session(6.0)
    assert e.value.status == 503
    chat(core, a, [{"role": "user", "content": "hi"}], FakeRouter())  # touches a at now=1.0
    c = core.create_session(12.0)  # a (last used at 1.0) is idle for > 10 s, b (5.0) is not
    assert set(core.sessions) == {b, c}
    assert SessionCore().idle_ttl is None and SessionCore().max_sessions is None


# --- token-in/token-out ---------------------------------------------------------------------------

tool_texts = st.lists(st.text(alphabet="abc xyz", max_size=30), min_size=0, max_size=5)


@given(tool_texts, st.integers(0, 2**32))
def test_input_ids_are_the_stored_tokens_plus_appended_messages(tools, seed):
    core, router, log = SessionCore(), FakeRouter(seed=seed), []
    sid = core.create_session(0.0)
    messages, results = conversation(core, sid, router, tools, log)
    assert "input_ids" not in log[0].json
    s = core.sessions[sid]
    for k in range(1, len(log)):
        prev = results[k - 1].body["choices"][0]
        stored = prev["prompt_token_ids"] + [t[1] for t in prev["meta_info"]["output_token_logprobs"]]
        appended = [{"role": "tool", "content": tools[k - 1]}]
        assert log[k].json["input_ids"] == [*stored, *tok.render(appended, False), *tok.GENERATION_PROMPT]
        assert log[k].json["input_ids"][: len(log[k - 1].json.get("input_ids", []))] == log[k - 1].json.get(
            "input_ids", []
        )
    # with an additive template the merge equals re-rendering the whole conversation
    assert log[-1].json.get("input_ids", tok.render(messages[:-1])) == tok.render(messages[:-1])
    assert len(s.records) == len(tools) + 1 == s.num_assistant
    view = core.get_view(sid)
    assert view["metadata"]["accumulated_token_ids"] == s.checkpoints[-1]
    assert [r["request"] for r in view["records"]] == [q.json for q in log]
    for req in log:
        for k, v in FORCED_FIELDS.items():
            assert req.json[k] == v


def test_forced_fields_override_the_client_and_client_input_ids_are_dropped():
    core, router, log = SessionCore(), FakeRouter(), []
    sid = core.create_session(0.0)
    chat(
        core,
        sid,
        [{"role": "user", "content": "q"}],
        router,
        log=log,
        logprobs=False,
        return_meta_info=False,
        no_stop_trim=True,
        input_ids=[5, 5],
        sim_time=3.5,
        extra_field=1,
    )
    sent = log[0].json
    assert sent["logprobs"] is True and sent["return_prompt_token_ids"] is True
    assert sent["return_meta_info"] is True and sent["no_stop_trim"] is False
    assert "input_ids" not in sent and sent["extra_field"] == 1 and sent["sim_time"] == 3.5
    assert core.get_view(sid)["records"][0]["timestamp"] == 3.5  # virtual time when the request has it


def test_append_only_with_allowed_roles():
    router = FakeRouter()
    core = SessionCore()
    sid = core.create_session(0.0)
    m = [{"role": "user", "content": "q"}]
    r1 = chat(core, sid, m, router)
    r = chat(core, sid, [*m, reply_of(r1), {"role": "user", "content": "more"}], router)
    assert r.status == 400 and "not append-only" in r.body["error"] and "--tito-allowed-append-roles" in r.body["error"]
    r = chat(core, sid, [{"role": "user", "content": "other"}, reply_of(r1)], router)
    assert r.status == 400
    assert len(core.sessions[sid].records) == 1

    core2 = SessionCore(allowed_append_roles=["TOOL", "user"])
    sid2 = core2.create_session(0.0)
    r1 = chat(core2, sid2, m, router)
    r = chat(core2, sid2, [*m, reply_of(r1), {"role": "user", "content": "more"}], router)
    assert r.status == 200 and len(core2.sessions[sid2].records) == 2
    with pytest.raises(ValueError):
        SessionCore(allowed_append_roles=["robot"])


def test_agent_retry_rolls_back_one_model_turn_and_no_more():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages, _ = conversation(core, sid, router, ["t one", "t two"])
    s = core.sessions[sid]
    assert s.num_assistant == 3
    # the agent drops the third reply and retries that turn with another tool answer
    retry_msgs = [*messages[:-2], {"role": "tool", "content": "t two again"}]
    before = [list(c) for c in s.checkpoints[:2]]
    r = chat(core, sid, retry_msgs, router)
    assert r.status == 200 and r.recorded
    assert s.num_assistant == 3 and len(s.records) == 3 and s.checkpoints[:2] == before
    assert s.records[-1]["request"]["input_ids"] == tok.render(retry_msgs)
    # popping the last reply only is also a one-step rollback
    r = chat(core, sid, retry_msgs, router)
    assert r.status == 200 and s.num_assistant == 3
    # going back two model turns is refused and changes nothing
    snapshot = (list(s.messages), [list(c) for c in s.checkpoints], list(s.records), s.version)
    r = chat(core, sid, messages[:3], router)
    assert r.status == 400 and r.body["error"].startswith("rollback failed: discard_count=2")
    r = chat(core, sid, [messages[0], {"role": "user", "content": "different"}], router)
    assert r.status == 400 and "rollback failed: no assistant" in r.body["error"]
    assert (s.messages, s.checkpoints, s.records, s.version) == snapshot


def test_a_failed_turn_leaves_the_session_unchanged_even_when_it_would_roll_back():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages, _ = conversation(core, sid, router, ["t one"])
    s = core.sessions[sid]
    snapshot = (list(s.messages), [list(c) for c in s.checkpoints], list(s.records), s.version)
    router.fail_next(500, {"error": "boom"})
    r = chat(core, sid, [*messages[:-2], {"role": "tool", "content": "retry"}], router)
    assert r.status == 500 and not r.recorded and r.body == {"error": "boom"}
    assert (s.messages, s.checkpoints, s.records, s.version) == snapshot
    assert s.inflight == 0


def test_prefix_violation_is_a_502_and_records_nothing():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages, _ = conversation(core, sid, router, [])
    router.corrupt_prefix = True
    r = chat(core, sid, [*messages, {"role": "tool", "content": "x"}], router)
    assert r.status == 502 and "prefix invariant" in r.body["error"] and "index 0" in r.body["error"]
    assert len(core.sessions[sid].records) == 1


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


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"{not json", 400, "invalid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"messages": "hello"}', 400, "'messages' must be a list"),
        (b'{"model": "m"}', 400, "'messages' must be a list"),
        (b'{"messages": []}', 400, "must not be empty"),
        (b'{"messages": [3]}', 400, "messages[0] must be an object"),
        (b'{"messages": [{"content": "x"}]}', 400, "role"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": true}', 400, "stream"),
        (b'{"messages": [{"role": "user", "content": "' + b"x" * 300 + b'"}]}', 413, "too large"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_records_nothing(body, status, needle):
    core = SessionCore(max_body_bytes=256)
    sid = core.create_session(0.0)
    r = core.run_turn(sid, body, (), upstream_of(FakeRouter()))
    assert r.status == status and needle in r.body["error"]
    assert core.sessions[sid].records == [] and core.sessions[sid].inflight == 0


# --- the rollback retry -------------------------------------------------------------------------


@given(
    st.sampled_from([400, 409, 500, 502]),
    st.sampled_from(["rollback failed", "ROLLBACK FAILED: x", "Rollback Failed", "roll back failed", "nope"]),
    st.booleans(),
)
def test_retry_trigger(status, text, second_turn):
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages = [{"role": "user", "content": "q"}]
    if second_turn:
        messages, _ = conversation(core, sid, router, ["t"])
    plan = core.prepare_turn(sid, {"messages": messages}, {"x-smg-routing-key": "client"})
    first = plan.request
    resp = UpstreamResponse(status, content=f'{{"error": "{text}"}}'.encode())
    retry = core.retry_request(plan, resp)
    expected = status == 400 and "rollback failed" in text.lower() and second_turn
    assert (retry is not None) == expected
    if retry is not None:
        assert "input_ids" not in retry.json and "input_ids" in first.json
        assert retry.headers == first.headers and retry.headers["X-SMG-Routing-Key"] == sid
        assert {k: v for k, v in first.json.items() if k != "input_ids"} == retry.json
        assert core.retry_request(plan, resp) is None  # exactly once
    core.abandon(plan)


def test_a_successful_retry_records_the_body_without_input_ids():
    core, router, log = SessionCore(), FakeRouter(), []
    sid = core.create_session(0.0)
    messages, _ = conversation(core, sid, router, [])
    router.fail_next(400, ROLLBACK_FAILED_BODY, times=1)
    messages = [*messages, {"role": "tool", "content": "out"}]
    r = chat(core, sid, messages, router, log=log)
    assert r.status == 200 and r.retried and r.recorded
    assert len(log) == 2 and "input_ids" in log[0].json and "input_ids" not in log[1].json
    rec = core.get_view(sid)["records"][-1]
    assert "input_ids" not in rec["request"]
    assert rec["response"]["choices"][0]["prompt_token_ids"] == tok.render(messages)
    # a retry that fails again is passed through, unrecorded, and not retried a second time
    router.fail_next(400, ROLLBACK_FAILED_BODY, times=2)
    log.clear()
    r = chat(core, sid, [*messages, reply_of(r), {"role": "tool", "content": "y"}], router, log=log)
    assert r.status == 400 and r.retried and not r.recorded and len(log) == 2
    assert len(core.sessions[sid].records) == 2


# --- headers ---------------------------------------------------------------------------------------

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


# --- split-lock contract, in-process -------------------------------------------------------------


def test_stale_update_guard_records_only_the_first_of_two_overlapping_turns():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    m = {"messages": [{"role": "user", "content": "same"}]}
    p1, p2 = core.prepare_turn(sid, m), core.prepare_turn(sid, m)
    r2 = core.commit_turn(p2, UpstreamResponse(200, data=router.answer(p2.request.json)))
    r1 = core.commit_turn(p1, UpstreamResponse(200, data=router.answer(p1.request.json)))
    assert (r2.status, r2.outcome, r1.status, r1.outcome) == (200, "recorded", 200, "stale")
    assert len(core.sessions[sid].records) == 1 and core.sessions[sid].inflight == 0


def test_a_turn_finishing_after_delete_started_is_answered_but_not_recorded():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    plan = core.prepare_turn(sid, {"messages": [{"role": "user", "content": "q"}]})
    core.begin_delete(sid)
    with pytest.raises(SessionError):
        core.prepare_turn(sid, {"messages": [{"role": "user", "content": "q"}]})  # closing: 404
    r = core.commit_turn(plan, UpstreamResponse(200, data=router.answer(plan.request.json)))
    assert r.status == 200 and r.outcome == "closing" and not r.recorded
    core.finish_delete(sid)
    assert sid not in core.sessions


# --- interleaved turns never corrupt a session ------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["start_append", "start_rollback", "start_bad", "finish"]),
        st.integers(0, 7),
        st.sampled_from([200, 200, 200, 500, 400]),
    ),
    max_size=25,
)


@pytest.mark.parametrize("arrays", [False, True])
@given(script=ops)
def test_any_interleaving_of_turns_keeps_records_checkpoints_and_messages_consistent(arrays, script):
    core, router = SessionCore(token_arrays=arrays), FakeRouter()
    sid = core.create_session(0.0)
    s = core.sessions[sid]
    open_plans = []
    seen: list[tuple[np.ndarray, list[int]]] = []  # every id array handed out, with its ids at that time
    for op, pick, status in script:
        if op == "finish":
            if not open_plans:
                continue
            plan = open_plans.pop(pick % len(open_plans))
            data = router.answer(as_json(plan.request.json))
            sent = plan.request.json.get("input_ids")
            if isinstance(sent, np.ndarray):  # echoed as the very array, as the worker core does in-process
                data["choices"][0]["prompt_token_ids"] = sent
            resp = UpstreamResponse(200, data=data) if status == 200 else UpstreamResponse(status, content=b'{"e": 1}')
            before = s.version
            r = core.commit_turn(plan, resp)
            assert r.recorded == (r.outcome == "recorded") and (s.version == before + 1) == r.recorded
            if r.recorded:
                assert plan.expected_version == before and status == 200
        else:
            if op == "start_append" or not s.messages:
                messages = (
                    [*s.messages, {"role": "tool", "content": f"t{pick}"}]
                    if s.messages
                    else [{"role": "user", "content": "go"}]
                )
            elif op == "start_rollback":
                messages = [*s.messages[: s.reply_positions[-1]], {"role": "tool", "content": f"again {pick}"}]
            else:
                messages = [{"role": "user", "content": "unrelated"}]
            try:
                open_plans.append(core.prepare_turn(sid, {"messages": messages, "max_tokens": 1 + pick % 3}))
            except SessionError as e:
                assert e.status == 400
            else:
                sent = open_plans[-1].request.json.get("input_ids")
                if isinstance(sent, np.ndarray):
                    seen.append((sent, sent.tolist()))
        # invariants: arrays once handed out never change (the session appends to its buffer, never rewrites)
        seen.extend((c, c.tolist()) for c in s.checkpoints if isinstance(c, np.ndarray))
        assert all(a.tolist() == ids for a, ids in seen)
        assert len(s.records) == len(s.checkpoints) == len(s.reply_positions) == s.num_assistant
        assert all(isinstance(c, np.ndarray) == arrays for c in s.checkpoints)
        checkpoints = [ids_of(c) for c in s.checkpoints]
        assert s.inflight == len(open_plans)
        for i, (rec, ckpt, pos) in enumerate(zip(s.records, checkpoints, s.reply_positions, strict=True)):
            choice = rec["response"]["choices"][0]
            prompt = ids_of(choice["prompt_token_ids"])
            assert ckpt == prompt + [t[1] for t in choice["meta_info"]["output_token_logprobs"]]
            assert s.messages[pos]["content"] == choice["message"]["content"]
            if i:
                assert ckpt[: len(checkpoints[i - 1])] == checkpoints[i - 1]
                assert as_json(rec["request"])["input_ids"] == prompt
        if s.messages:
            assert s.reply_positions[-1] == len(s.messages) - 1
            assert checkpoints[-1] == s.token_ids == tok.render(s.messages, add_generation_prompt=False)


def test_records_do_not_change_when_an_in_process_caller_reuses_its_lists():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    body = {"messages": [{"role": "user", "content": "q"}]}
    r = core.run_turn(sid, body, (), upstream_of(router))
    body["messages"].extend([reply_of(r), {"role": "tool", "content": "t"}])
    assert core.get_view(sid)["records"][0]["request"]["messages"] == [{"role": "user", "content": "q"}]
    assert core.run_turn(sid, body, (), upstream_of(router)).status == 200
    assert len(core.sessions[sid].messages) == 4


# --- in-process fast paths: int64 token arrays, resent message objects -----------------------------


def run_agent(core: SessionCore, tools: list[str], retry_at: int | None, log: list) -> tuple[str, list]:
    """An agent as sim.agents runs one: it resends its own message objects and retries one turn."""
    router = FakeRouter(seed=3)
    sid = core.create_session(0.0)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "task alpha beta"}]
    results = []
    for i, tool_text in enumerate([*tools, None]):
        r = core.run_turn(sid, {"messages": messages, "max_tokens": 3 + i}, (), upstream_of(router, log))
        if i == retry_at:  # the agent drops that answer and asks again with the same messages
            r = core.run_turn(sid, {"messages": messages, "max_tokens": 2}, (), upstream_of(router, log))
        assert r.status == 200, r.body
        results.append(r.body)
        if tool_text is None:
            break
        messages = [
            *messages,
            {"role": "assistant", "content": reply_of(r)["content"]},
            {"role": "tool", "content": tool_text, "tool_call_id": str(i)},
        ]
    return sid, results


@given(tool_texts, st.none() | st.integers(1, 5))  # a retry of the first turn has nothing to roll back to
def test_token_arrays_send_and_keep_the_same_ids_as_read_only_int64_arrays(tools, retry_at):
    plain, arrays = SessionCore(), SessionCore(token_arrays=True)
    log_p, log_a = [], []
    sid_p, res_p = run_agent(plain, tools, retry_at, log_p)
    sid_a, res_a = run_agent(arrays, tools, retry_at, log_a)
    assert res_p == res_a and len(log_p) == len(log_a)
    for p, a in zip(log_p, log_a, strict=True):
        assert as_json(a.json) == p.json
        ids = a.json.get("input_ids")
        if ids is not None:
            assert isinstance(ids, np.ndarray) and ids.dtype == np.int64 and not ids.flags.writeable
    sp, sa = plain.sessions[sid_p], arrays.sessions[sid_a]
    assert all(isinstance(c, list) for c in sp.checkpoints) and all(isinstance(c, np.ndarray) for c in sa.checkpoints)
    assert [ids_of(c) for c in sa.checkpoints] == sp.checkpoints
    assert arrays.get_view(sid_a)["metadata"] == plain.get_view(sid_p)["metadata"]
    assert [as_json(r["request"]) for r in arrays.get_view(sid_a)["records"]] == [
        r["request"] for r in plain.get_view(sid_p)["records"]
    ]


def test_ids_beyond_int64_fall_back_to_lists():
    core, log = SessionCore(token_arrays=True), []
    sid = core.create_session(0.0)
    messages = [{"role": "user", "content": "q"}]

    def huge(req: UpstreamRequest) -> UpstreamResponse:  # answers one id that no int64 holds, then <|im_end|>
        log.append(req)
        prompt = as_json(req.json).get("input_ids") or tok.render(req.json["messages"])
        meta = {"output_token_logprobs": [[-0.1, 2**70, None], [-0.1, tok.IM_END, None]], "completion_tokens": 2}
        choice = {"message": {"role": "assistant", "content": "big"}, "prompt_token_ids": prompt, "meta_info": meta}
        return UpstreamResponse(200, data={"choices": [choice]})

    r = core.run_turn(sid, {"messages": messages}, (), huge)
    s = core.sessions[sid]
    assert r.status == 200 and isinstance(s.checkpoints[0], list) and s.checkpoints[0][-2] == 2**70
    messages = [*messages, reply_of(r), {"role": "tool", "content": "t"}]
    assert core.run_turn(sid, {"messages": messages}, (), huge).status == 200
    sent = log[-1].json["input_ids"]
    assert isinstance(sent, list) and sent[: len(s.checkpoints[0])] == s.checkpoints[0] and 2**70 in sent
    assert isinstance(s.checkpoints[1], list) and s.checkpoints[1][: len(sent)] == sent


def test_resent_message_objects_are_still_checked_after_the_known_prefix():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    r = chat(core, sid, messages, router)
    for bad, needle in [
        ("not a message", "messages[3] must be an object"),
        ({"role": ""}, "messages[3].role must be a non-empty string"),
        ({"role": "user", "content": "u"}, "messages[3] has role 'user'"),
    ]:
        r2 = chat(core, sid, [*messages, reply_of(r), bad], router)
        assert r2.status == 400 and needle in r2.body["error"]
    # the resent objects are the ones checked before; a different earlier message is still a rollback error
    r3 = chat(core, sid, [messages[0], {"role": "user", "content": "other"}, reply_of(r)], router)
    assert r3.status == 400 and "rollback failed" in r3.body["error"]
    assert len(core.sessions[sid].records) == 1


@pytest.mark.parametrize("arrays", [False, True])
def test_an_int64_prompt_echo_from_an_in_process_upstream_is_taken_as_is(arrays):
    """An in-process upstream may echo ``prompt_token_ids`` as a 1-D int64 array: same session as with a list."""

    def run(echo: str) -> tuple[SessionCore, str]:
        core, router = SessionCore(token_arrays=arrays), FakeRouter(seed=9)
        sid = core.create_session(0.0)

        def send(req: UpstreamRequest) -> UpstreamResponse:
            data = router.answer(as_json(req.json))
            choice = data["choices"][0]
            if echo == "array":
                choice["prompt_token_ids"] = np.array(choice["prompt_token_ids"], dtype=np.int64)
            elif echo == "sent" and isinstance(req.json.get("input_ids"), np.ndarray):
                choice["prompt_token_ids"] = req.json["input_ids"]  # the very array sent
            return UpstreamResponse(200, data=data)

        messages = [{"role": "user", "content": "q"}]
        for tool in ("a b", "c d e"):
            r = core.run_turn(sid, {"messages": messages}, (), send)
            assert r.status == 200 and r.recorded
            messages = [*messages, reply_of(r), {"role": "tool", "content": tool}]
        return core, sid

    (c1, s1), (c2, s2), (c3, s3) = run("list"), run("array"), run("sent")
    for c, sid in ((c2, s2), (c3, s3)):
        assert [ids_of(x) for x in c1.sessions[s1].checkpoints] == [ids_of(x) for x in c.sessions[sid].checkpoints]
        assert c1.get_view(s1)["metadata"] == c.get_view(sid)["metadata"]


def test_a_prompt_echo_array_of_another_dtype_is_refused_as_before():
    core = SessionCore(token_arrays=True)
    sid = core.create_session(0.0)
    data = FakeRouter().answer({"messages": [{"role": "user", "content": "q"}]})
    data["choices"][0]["prompt_token_ids"] = np.array(data["choices"][0]["prompt_token_ids"], dtype=np.float64)
    r = core.run_turn(
        sid, {"messages": [{"role": "user", "content": "q"}]}, (), lambda req: UpstreamResponse(200, data=data)
    )
    assert r.status == 502 and "prompt_token_ids" in r.body["error"] and not core.sessions[sid].records


def test_an_echo_of_the_sent_id_objects_passes_and_anything_else_is_still_checked_per_id():
    """The echo of ``input_ids`` object for object needs no type check; an equal echo with a bool is still a 502."""
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages = [{"role": "user", "content": "q"}]
    r = chat(core, sid, messages, router)
    messages = [*messages, reply_of(r), {"role": "tool", "content": "t u"}]

    def echo(swap_bool: bool):
        def send(req: UpstreamRequest) -> UpstreamResponse:
            data = router.answer(req.json)
            choice = data["choices"][0]
            assert choice["prompt_token_ids"] is req.json["input_ids"]  # the fake router echoes the very list
            ids = choice["prompt_token_ids"] = list(req.json["input_ids"])
            if swap_bool:
                ids[ids.index(tok.IM_START)] = True  # == 1, but a JSON true is not a token id
            return UpstreamResponse(200, data=data)

        return send

    bad = core.run_turn(sid, {"messages": messages}, (), echo(True))
    assert bad.status == 502 and "prompt_token_ids" in bad.body["error"] and len(core.sessions[sid].records) == 1
    good = core.run_turn(sid, {"messages": messages}, (), echo(False))
    assert good.status == 200 and good.recorded
    assert core.sessions[sid].token_ids == tok.render([*messages, reply_of(good)], add_generation_prompt=False)


def test_relay_headers_off_leaves_the_result_headers_empty_and_changes_nothing_else():
    results = []
    for relay in (True, False):
        core, router = SessionCore(session_id_seed=1), FakeRouter()
        sid = core.create_session(0.0)
        body = {"messages": [{"role": "user", "content": "q"}]}
        r = core.run_turn(sid, body, (), upstream_of(router), relay_headers=relay)
        results.append((r, core.get_view(sid)))
    (on, view_on), (off, view_off) = results
    assert on.headers == {"content-type": "application/json"} and off.headers == {}
    assert (on.status, on.body, on.outcome) == (off.status, off.body, off.outcome) and view_on == view_off


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


def test_an_in_process_view_may_hold_the_read_only_id_array_with_the_same_ids():
    core, router = SessionCore(token_arrays=True), FakeRouter()
    sid = core.create_session(0.0)
    conversation(core, sid, router, ["one two"])
    plain, arrays = core.get_view(sid), core.get_view(sid, id_arrays=True)
    assert type(plain["metadata"]["accumulated_token_ids"]) is list
    assert ids_of(arrays["metadata"]["accumulated_token_ids"]) == plain["metadata"]["accumulated_token_ids"]
    assert arrays["records"] == plain["records"]
    lists = SessionCore()  # a list-keeping core answers lists either way
    sid2 = lists.create_session(0.0)
    conversation(lists, sid2, FakeRouter(), ["one two"])
    assert lists.get_view(sid2, id_arrays=True) == lists.get_view(sid2)
    assert lists.get_view(sid2)["metadata"]["accumulated_token_ids"] == plain["metadata"]["accumulated_token_ids"]


# --- vocabulary texts tokenized in numpy: the tokenizer's ids, or no answer ---------------------------------------

vocab_words = st.sampled_from(tok.vocabulary())
separators = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", "\x1c", "", " \u00a0"])
edits = st.sampled_from([None, "upper", "non_ascii", "lead_space", "trail_space", "other_word", "cut"])


def vocab_text(words: list[str], sep: str, edit: str | None, at: int) -> str:
    words = list(words)
    i = at % len(words)
    if edit == "upper":
        words[i] = words[i].upper()
    elif edit == "non_ascii":
        words[i] = words[i][:3] + "\u00e9" + words[i][4:]
    elif edit == "other_word":
        words[i] = "zz" + words[i][2:]  # six letters, not three syllables of the vocabulary
    elif edit == "cut":
        words[i] = words[i][:5]
    text = sep.join(words)
    return {"lead_space": " " + text, "trail_space": text + " "}.get(edit, text)


@given(st.lists(vocab_words, min_size=1, max_size=150), separators, edits, st.integers(0, 10**6))
def test_vocab_texts_get_the_tokenizers_ids_and_anything_else_no_answer(words, sep, edit, at):
    text = vocab_text(words, sep, edit, at)
    ids = tok.vocab_text_ids(text)
    if ids is not None:
        assert ids.dtype == np.int64 and ids.tolist() == tok.encode(text)
    if sep == " " and edit is None:
        assert ids is not None  # plain vocabulary text always takes the fast path


@given(st.lists(st.tuples(st.sampled_from(["tool", "user", "assistant", "", 7]),
                          st.lists(vocab_words, min_size=1, max_size=160), separators, edits, st.integers(0, 999),
                          st.booleans(), st.booleans()), max_size=4))
def test_render_ids_are_the_tokenizers_render_with_the_generation_prompt(specs):
    """Long vocabulary texts go through numpy and texts made from vocabulary words (``tok.remember_vocab_text``,
    as the simulated tools' are) give their noted ids: either way the tokenizer's ids."""
    messages, made = [], []
    for role, words, sep, edit, at, as_parts, noted in specs:
        text = vocab_text(words, sep, edit, at)
        content = [{"type": "text", "text": text}] if as_parts else text
        messages.append({"role": role, "content": content})
        if noted and sep == " " and edit is None:
            tok.remember_vocab_text(text, np.array([tok.vocabulary().index(w) for w in words]))
            made.append(text)
    long_plain = [m for m in messages if type(m["content"]) is str and len(m["content"]) >= tok.VOCAB_TEXT_MIN_CHARS
                  and tok.vocab_text_ids(m["content"]) is not None]
    got = render_ids(messages)
    assert (got.tolist() if isinstance(got, np.ndarray) else got) == tok.render(messages, add_generation_prompt=True)
    plain_made = [t for t in made if any(m["content"] is t for m in messages)]
    assert isinstance(got, np.ndarray) == bool(long_plain or plain_made)
    assert all(tok.made_text_ids(t) is None for t in plain_made)  # taken
    for t in made:  # left by the parts-list contents, which are not looked up
        tok.made_text_ids(t)


def worker_upstream(deferred: bool):
    """An in-process mock worker (``token_arrays``), answering with bodies or (``deferred``) typed answers."""
    from sim.engine.types import WorkerConfig
    from sim.worker.core import WorkerCore

    worker = WorkerCore(WorkerConfig(name="w0", kv_capacity_tokens=100_000), seed=5, token_arrays=True)

    def send(req: UpstreamRequest) -> UpstreamResponse:
        reply = worker.infer("chat", dict(req.json), deferred=deferred)
        return UpstreamResponse(reply.status, reply.headers, data=reply.body, answer=reply.answer)

    return send


@given(tool_texts, st.none() | st.integers(1, 5))
def test_typed_answers_are_recorded_as_is_and_read_as_the_bodies_they_defer(tools, retry_at):
    """A session core fed typed answers (``UpstreamResponse.answer``) sends, keeps and answers what it does when
    fed their bodies; its records hold the answers unbuilt until a view is read whole."""
    from testbed_common.fastjson import ChatAnswer, dumps

    views, sids, results = [], [], []
    for deferred in (False, True):
        core, up = SessionCore(token_arrays=True), worker_upstream(deferred)
        sid = core.create_session(0.0)
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "task alpha beta"}]
        got = []
        for i, tool_text in enumerate([*tools, None]):
            r = core.run_turn(sid, {"messages": messages, "max_tokens": 3 + i}, (), up)
            if i == retry_at:  # the agent drops that answer and asks again with the same messages
                r = core.run_turn(sid, {"messages": messages, "max_tokens": 2}, (), up)
            assert r.status == 200 and r.recorded, r.body
            assert isinstance(r.body, ChatAnswer) == deferred
            body = r.body.value() if deferred else r.body
            got.append(dumps(body))
            if tool_text is None:
                break
            content = body["choices"][0]["message"]["content"]
            messages = [*messages, {"role": "assistant", "content": content},
                        {"role": "tool", "content": tool_text, "tool_call_id": str(i)}]
        kept = core.get_view(sid, deferred=True)["records"]
        assert all(isinstance(rec["response"], ChatAnswer) == deferred for rec in kept)
        views.append(dumps(core.get_view(sid, id_arrays=True)))
        assert dumps(core.get_view(sid, deferred=True)) == views[-1]  # written out, a kept answer is its body
        sids.append(sid)
        results.append(got)
    assert results[0] == results[1]
    assert views[0] == views[1].replace(sids[1].encode(), sids[0].encode())

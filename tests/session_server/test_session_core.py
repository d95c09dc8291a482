"""The session core: the sessions store, turns (forced fields, bad input, failed turns), the rollback retry,
the split-lock contract and the records."""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from session_turns import as_json, chat, conversation, ids_of, reply_of, upstream_of

from session_server.core import SessionCore
from session_server.errors import SessionError
from session_server.testing import ROLLBACK_FAILED_BODY, FakeRouter
from session_server.tokens import EMPTY_IDS
from session_server.upstream import UpstreamResponse
from testbed_common import tokenizer as tok

HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --- session ids and store ------------------------------------------------------------------------


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
        "metadata": {"accumulated_token_ids": EMPTY_IDS, "max_trim_tokens": 0},
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


# --- turns ----------------------------------------------------------------------------------------


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


def test_a_failed_turn_leaves_the_session_unchanged_even_when_it_would_roll_back():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages, _ = conversation(core, sid, router, ["t one"])
    s = core.sessions[sid]
    snapshot = (list(s.messages), [ids_of(c) for c in s.checkpoints], list(s.records), s.version)
    router.fail_next(500, {"error": "boom"})
    r = chat(core, sid, [*messages[:-2], {"role": "tool", "content": "retry"}], router)
    assert r.status == 500 and not r.recorded and r.body == {"error": "boom"}
    assert (s.messages, [ids_of(c) for c in s.checkpoints], s.records, s.version) == snapshot
    assert s.inflight == 0


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


def test_records_do_not_change_when_an_in_process_caller_reuses_its_lists():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    body = {"messages": [{"role": "user", "content": "q"}]}
    r = core.run_turn(sid, body, (), upstream_of(router))
    body["messages"].extend([reply_of(r), {"role": "tool", "content": "t"}])
    assert core.get_view(sid)["records"][0]["request"]["messages"] == [{"role": "user", "content": "q"}]
    assert core.run_turn(sid, body, (), upstream_of(router)).status == 200
    assert len(core.sessions[sid].messages) == 4


# --- the rollback retry ---------------------------------------------------------------------------


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


# --- split-lock contract, in-process --------------------------------------------------------------


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


@pytest.mark.parametrize("echo_sent", [False, True])  # JSON lists (HTTP), or the very array sent (in-process)
@given(script=ops)
def test_any_interleaving_of_turns_keeps_records_checkpoints_and_messages_consistent(echo_sent, script):
    core, router = SessionCore(), FakeRouter()
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
            if echo_sent and sent is not None:  # echoed as the very array, as the worker core does in-process
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
        seen.extend((c, c.tolist()) for c in s.checkpoints)
        assert all(a.tolist() == ids for a, ids in seen)
        assert len(s.records) == len(s.checkpoints) == len(s.reply_positions) == s.num_assistant
        checkpoints = [ids_of(c) for c in s.checkpoints]
        assert s.inflight == len(open_plans)
        for i, (rec, ckpt, pos) in enumerate(zip(s.records, checkpoints, s.reply_positions, strict=True)):
            choice = rec["response"]["choices"][0]
            prompt = ids_of(choice["prompt_token_ids"]) if echo_sent and i else choice["prompt_token_ids"]
            assert ckpt == prompt + [t[1] for t in choice["meta_info"]["output_token_logprobs"]]
            assert s.messages[pos]["content"] == choice["message"]["content"]
            if i:
                assert ckpt[: len(checkpoints[i - 1])] == checkpoints[i - 1]
                assert as_json(rec["request"])["input_ids"] == prompt
        if s.messages:
            assert s.reply_positions[-1] == len(s.messages) - 1
            assert checkpoints[-1] == s.token_ids == tok.render(s.messages, add_generation_prompt=False)

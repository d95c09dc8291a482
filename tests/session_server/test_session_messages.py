"""miles' message rules: message equality, append-only roles, the one-turn rollback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from session_turns import chat, conversation, ids_of, reply_of

from session_server.core import SessionCore
from session_server.messages import message_matches
from session_server.testing import FakeRouter
from testbed_common import tokenizer as tok

# --- message equality ---------------------------------------------------------------------------

empties = st.sampled_from([None, "", []])
roles = st.sampled_from(["system", "user", "assistant", "tool"])


@given(roles, empties, empties, empties, empties, empties, empties)
def test_none_empty_string_and_empty_list_are_equal(role, c1, c2, r1, r2, t1, t2):
    a = {"role": role, "content": c1, "reasoning_content": r1, "tool_calls": t1}
    b = {"role": role, "content": c2, "reasoning_content": r2, "tool_calls": t2}
    assert message_matches(a, b) and message_matches(b, a)
    assert message_matches({"role": role}, a)


@given(roles, st.text(min_size=1), st.text())
def test_only_the_four_fields_count(role, content, other):
    a = {"role": role, "content": content}
    assert message_matches(a, {**a, "provider_specific_fields": other, "name": other, "tool_call_id": other})
    assert not message_matches(a, {**a, "content": content + "x"})
    assert not message_matches(a, {**a, "role": role + "x"})
    assert not message_matches(a, {**a, "tool_calls": [{"id": "1"}]})


# --- appended messages and rollback ---------------------------------------------------------------


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
    before = [ids_of(c) for c in s.checkpoints[:2]]
    r = chat(core, sid, retry_msgs, router)
    assert r.status == 200 and r.recorded
    assert s.num_assistant == 3 and len(s.records) == 3 and [ids_of(c) for c in s.checkpoints[:2]] == before
    assert ids_of(s.records[-1]["request"]["input_ids"]) == tok.render(retry_msgs)
    # popping the last reply only is also a one-step rollback
    r = chat(core, sid, retry_msgs, router)
    assert r.status == 200 and s.num_assistant == 3
    # going back two model turns is refused and changes nothing
    snapshot = (list(s.messages), [ids_of(c) for c in s.checkpoints], list(s.records), s.version)
    r = chat(core, sid, messages[:3], router)
    assert r.status == 400 and r.body["error"].startswith("rollback failed: discard_count=2")
    r = chat(core, sid, [messages[0], {"role": "user", "content": "different"}], router)
    assert r.status == 400 and "rollback failed: no assistant" in r.body["error"]
    assert (s.messages, [ids_of(c) for c in s.checkpoints], s.records, s.version) == snapshot


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

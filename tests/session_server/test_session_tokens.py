"""Token checkpoints: the TITO merge, the prefix invariant, int64 arrays, the tokenizer fast paths they use."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from session_turns import as_json, chat, conversation, ids_of, reply_of, tool_texts, upstream_of

from session_server.core import FORCED_FIELDS, SessionCore
from session_server.testing import FakeRouter
from session_server.upstream import UpstreamRequest, UpstreamResponse
from testbed_common import fastjson
from testbed_common import tokenizer as tok
from testbed_common.tokenizer import render_ids

# --- token-in/token-out ---------------------------------------------------------------------------


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
        sent = ids_of(log[k].json["input_ids"])
        assert sent == [*stored, *tok.render(appended, False), *tok.GENERATION_PROMPT]
        before = ids_of(log[k - 1].json["input_ids"]) if k > 1 else []
        assert sent[: len(before)] == before
        assert ids_of(s.checkpoints[k - 1]) == stored
    # with an additive template the merge equals re-rendering the whole conversation
    if len(log) > 1:
        assert ids_of(log[-1].json["input_ids"]) == tok.render(messages[:-1])
    assert len(s.records) == len(tools) + 1 == s.num_assistant
    view = core.get_view(sid)
    assert view["metadata"]["accumulated_token_ids"] is s.checkpoints[-1]
    assert [r["request"] for r in view["records"]] == [q.json for q in log]
    for req in log:
        for k, v in FORCED_FIELDS.items():
            assert req.json[k] == v


def test_prefix_violation_is_a_502_and_records_nothing():
    core, router = SessionCore(), FakeRouter()
    sid = core.create_session(0.0)
    messages, _ = conversation(core, sid, router, [])
    router.corrupt_prefix = True
    r = chat(core, sid, [*messages, {"role": "tool", "content": "x"}], router)
    assert r.status == 502 and "prefix invariant" in r.body["error"] and "index 0" in r.body["error"]
    assert len(core.sessions[sid].records) == 1


# --- int64 token arrays --------------------------------------------------------------------------


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
def test_sent_ids_and_checkpoints_are_read_only_int64_arrays_written_as_the_json_lists(tools, retry_at):
    """``input_ids`` sent and checkpoints kept are read-only int64 arrays (``ids_of`` checks); each checkpoint is
    its answer's prompt + output ids, and a view written out is the JSON of the same ids as lists."""
    core, log = SessionCore(), []
    sid, results = run_agent(core, tools, retry_at, log)
    for req in log:
        if "input_ids" in req.json:
            ids_of(req.json["input_ids"])
    s = core.sessions[sid]
    assert len(s.checkpoints) == len(results)
    for kept, body in zip(s.checkpoints, results, strict=True):
        choice = body["choices"][0]
        output = [t[1] for t in choice["meta_info"]["output_token_logprobs"]]
        assert ids_of(kept) == [*choice["prompt_token_ids"], *output]
    written = fastjson.loads(fastjson.dumps(core.get_view(sid)))
    assert written["metadata"]["accumulated_token_ids"] == ids_of(s.checkpoints[-1])
    assert [r["request"] for r in written["records"]] == [as_json(r["request"]) for r in s.records]


def test_ids_beyond_int64_are_an_invalid_upstream_answer():
    """No model's vocabulary needs ids beyond int64: such an answer is a 502 and changes nothing."""
    core = SessionCore()
    sid = core.create_session(0.0)

    def huge(req: UpstreamRequest) -> UpstreamResponse:  # answers one id that no int64 holds, then <|im_end|>
        prompt = tok.render(req.json["messages"])
        meta = {"output_token_logprobs": [[-0.1, 2**70, None], [-0.1, tok.IM_END, None]], "completion_tokens": 2}
        choice = {"message": {"role": "assistant", "content": "big"}, "prompt_token_ids": prompt, "meta_info": meta}
        return UpstreamResponse(200, data={"choices": [choice]})

    r = core.run_turn(sid, {"messages": [{"role": "user", "content": "q"}]}, (), huge)
    assert r.status == 502 and r.outcome == "invalid_upstream" and "int64" in r.body["error"]
    s = core.sessions[sid]
    assert s.checkpoints == [] and s.records == [] and s.messages == []


def test_an_int64_prompt_echo_from_an_in_process_upstream_is_taken_as_is():
    """An in-process upstream may echo ``prompt_token_ids`` as a 1-D int64 array: same session as with a list."""

    def run(echo: str) -> tuple[SessionCore, str]:
        core, router = SessionCore(), FakeRouter(seed=9)
        sid = core.create_session(0.0)

        def send(req: UpstreamRequest) -> UpstreamResponse:
            data = router.answer(as_json(req.json))
            choice = data["choices"][0]
            if echo == "array":
                choice["prompt_token_ids"] = np.array(choice["prompt_token_ids"], dtype=np.int64)
            elif echo == "sent" and "input_ids" in req.json:
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
        assert fastjson.dumps(c1.get_view(s1)["metadata"]) == fastjson.dumps(c.get_view(sid)["metadata"])


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

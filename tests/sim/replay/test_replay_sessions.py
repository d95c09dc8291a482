"""Recorded sessions: the schema, the TRIE and LLMServingSim converters, and an exact closed-loop replay."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.replay import baselines as bl
from sim.replay.mooncake import TraceError
from sim.replay.run import load_trace, run_one
from sim.replay.sessions import (
    APPEND_MIN,
    FIRST_OVERHEAD,
    SessionSpec,
    TurnSpec,
    dump_sessions,
    from_llmservingsim,
    from_trie,
    load_sessions,
    parse_session,
    session_segments,
    to_plans,
)
from sim.runner import PolicyConfig, make_setup


def write(tmp_path, rows, name="s.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


SESSIONS = [
    {"session_id": "a", "start_time": 0.0, "initial_prompt_tokens": 300, "shared_prefix_tokens": 200,
     "turns": [{"input_tokens": 0, "output_tokens": 50, "tool_latency": 1.0},
               {"input_tokens": 120, "output_tokens": 30, "tool_latency": 0.5},
               {"input_tokens": 3, "output_tokens": 20}]},
    {"session_id": "b", "start_time": 100.0, "initial_prompt_tokens": 260, "shared_prefix_tokens": 150,
     "turns": [{"output_tokens": 40, "tool_latency": 2.0}, {"input_tokens": 60, "output_tokens": 25}]},
    {"session_id": "c", "start_time": 200.0, "initial_prompt_tokens": 100,
     "turns": [{"output_tokens": 10, "tool_latency": 0.1}, {"input_tokens": 10, "output_tokens": 10}]},
]


def test_prompts_follow_the_schema():
    specs = [parse_session(o, i) for i, o in enumerate(SESSIONS)]
    assert specs[0].prompts() == [300, 300 + 50 + 120, 470 + 30 + APPEND_MIN]  # 3 appended tokens raised to 5
    assert specs[1].prompts() == [260, 260 + 40 + 60]
    plans, raised = to_plans(specs)
    assert raised == 1
    assert [t.tool_output_tokens for t in plans[0].turns] == [120 - APPEND_MIN, 0, 0]
    assert plans[1].start == 100.0 and plans[0].turns[0].tool_latency == 1.0


@pytest.mark.parametrize("transport", ["direct", "http"])
def test_replay_sends_exactly_the_recorded_prompts(tmp_path, transport):
    trace = load_trace(str(write(tmp_path, SESSIONS)), "sessions", None, workers=1, kv=None)
    setup = make_setup(trace.scenario, PolicyConfig("manual", "min_load"), True)
    seen = []
    row = run_one(trace, setup, transport, on_request=seen.append)
    assert row["errors"] == 0
    by_session: dict[int, list[int]] = {}
    for r in seen:
        by_session.setdefault(r.session, []).append(r.prompt_tokens)
    assert [by_session[i] for i in range(3)] == [s.prompts() for s in trace.sessions]
    assert [r.output_tokens for r in seen if r.session == 0] == [50, 30, 20]
    # sessions do not overlap in time, so one worker with unbounded KV is the trace's single pool, less the one
    # token per finished turn that SGLang never caches (the last sampled token has no KV)
    assert all(r.oracle_cached - 1 <= r.cached_tokens <= r.oracle_cached for r in seen)
    assert sum(r.oracle_cached - r.cached_tokens for r in seen) == sum(1 for r in seen if r.turn > 0)
    assert row["oracle_reuse"] == pytest.approx(row["single_pool_reuse"])
    assert row["random_baseline_reuse"] == pytest.approx(row["single_pool_reuse"])  # one worker
    # the shared prefix counts: session b reuses the frame and 150 shared tokens of session a's prompt
    first_b = next(r for r in seen if r.session == 1 and r.turn == 0)
    assert first_b.cached_tokens == 5 + 150


def test_the_session_key_keeps_sessions_sticky_and_reuse_at_the_single_pool(tmp_path):
    rows = [{"session_id": f"s{i}", "start_time": 0.0, "initial_prompt_tokens": 400,
             "turns": [{"input_tokens": 50 + i, "output_tokens": 20, "tool_latency": 0.5} for _ in range(5)]}
            for i in range(13)]  # 13 sessions on 4 workers: round robin cannot stay sticky by accident
    trace = load_trace(str(write(tmp_path, rows)), "sessions", None, workers=4, kv=None)
    seen = []
    on = run_one(trace, make_setup(trace.scenario, PolicyConfig("manual", "min_load"), True), "direct",
                 on_request=seen.append)
    rr = run_one(trace, make_setup(trace.scenario, PolicyConfig("round_robin"), True), "direct")
    assert on["stickiness"] == 1.0
    # sticky: every follow-up turn finds its whole previous turn but the never-cached last output token
    assert all(r.cached_tokens == r.oracle_cached - (r.turn > 0) for r in seen)
    assert rr["stickiness"] < 1.0 and rr["kv_reuse"] < on["kv_reuse"]
    assert on["single_pool_reuse"] > on["random_baseline_reuse"]


@pytest.mark.parametrize("bad, msg", [
    ({"initial_prompt_tokens": 100}, "turns"),
    ({"initial_prompt_tokens": 100, "turns": [{"input_tokens": 1}]}, "output_tokens"),
    ({"initial_prompt_tokens": 100, "turns": [{"output_tokens": 0}]}, "output_tokens must be >= 1"),
    ({"initial_prompt_tokens": 5, "turns": [{"output_tokens": 3}]}, "template"),
    ({"initial_prompt_tokens": 100, "shared_prefix_tokens": 95, "turns": [{"output_tokens": 3}]}, "template"),
    ({"initial_prompt_tokens": 100, "turns": [{"output_tokens": 3, "tool_latency": -1}]}, "tool_latency"),
    ({"initial_prompt_tokens": 10.5, "turns": [{"output_tokens": 3}]}, "integer"),
    ({"initial_prompt_tokens": 100, "turns": ["x"]}, "JSON object"),
])
def test_bad_sessions_are_clear_errors(bad, msg):
    with pytest.raises(TraceError, match=msg):
        parse_session(bad, 0)


turn_st = st.builds(TurnSpec, st.integers(0, 300), st.integers(1, 200), st.floats(0, 10, allow_nan=False))
session_st = st.builds(lambda sid, start, init, shared, turns: SessionSpec(sid, start, init + FIRST_OVERHEAD + shared,
                                                                          shared, tuple(turns)),
                       st.text("abc", min_size=1, max_size=3), st.floats(0, 100, allow_nan=False),
                       st.integers(0, 500), st.integers(0, 100), st.lists(turn_st, min_size=1, max_size=4))


@settings(max_examples=30, deadline=None)
@given(st.lists(session_st, min_size=1, max_size=4))
def test_schema_round_trips(tmp_path_factory, sessions):
    p = tmp_path_factory.mktemp("rt") / "s.jsonl"
    dump_sessions(sessions, p)
    assert load_sessions(p) == sessions


@settings(max_examples=30, deadline=None)
@given(st.lists(session_st, min_size=1, max_size=4))
def test_segments_have_the_replayed_prompt_lengths(sessions):
    segs = session_segments(sessions)
    assert sorted(sum(x for _, x in p) for p, _ in segs) == sorted(n for s in sessions for n in s.prompts())
    b = bl.compute(segs, workers=1)
    # within a session every later prompt extends the previous prompt and answer: at least that is cached
    within = sum(s.prompts()[k] + s.turns[k].output_tokens for s in sessions for k in range(len(s.turns) - 1))
    assert b.single_pool_cached >= within


TRIE = {"num_turns": 3, "input_prompt_length": 1000, "assistant_response_length": [100, 80, 60],
        "tool_call_output_length": [400, 300, 200], "tool_call_latency": [1.5, 0.5, 2.0],
        "final_assistant_response_length": 40}


def test_trie_record_converts_turn_by_turn():
    s = from_trie(TRIE, 0)
    assert [t.output_tokens for t in s.turns] == [100, 80, 60, 40]
    assert [t.input_tokens for t in s.turns] == [0, 400, 300, 200]
    assert [t.tool_latency for t in s.turns] == [1.5, 0.5, 2.0, 0.0]
    # TRIE: turn i's prompt is the previous prompt plus the assistant reply plus the tool output
    assert s.prompts() == [1000, 1500, 1880, 2140]
    no_final = from_trie({k: v for k, v in TRIE.items() if k != "final_assistant_response_length"}, 0)
    assert no_final.prompts() == [1000, 1500, 1880]


def test_llmservingsim_session_converts_full_prompts_to_appends():
    rec = {"session_id": "x", "arrival_time_ns": 2_500_000_000,
           "sub_requests": [{"input_toks": 1200, "output_toks": 100, "tool_duration_ns": 150_000_000},
                            {"input_toks": 1500, "output_toks": 50, "tool_duration_ns": 0}]}
    s = from_llmservingsim(rec, 0)
    assert s.start_time == 2.5 and s.session_id == "x"
    assert s.prompts() == [1200, 1500]
    assert s.turns[0].tool_latency == pytest.approx(0.15)
    rec["sub_requests"][1]["input_toks"] = 1000
    with pytest.raises(TraceError, match="append-only"):
        from_llmservingsim(rec, 0)


def test_converted_files_load_through_the_replay(tmp_path):
    p = write(tmp_path, [TRIE, {**TRIE, "input_prompt_length": 2000}], "trie.jsonl")
    trace = load_trace(str(p), "trie", None, workers=2, kv=None)
    assert trace.format == "sessions" and trace.source_format == "trie"
    assert [s.prompts()[0] for s in trace.sessions] == [1000, 2000]
    with pytest.raises(TraceError):
        load_trace(str(p), "llmservingsim", None, workers=2, kv=None)

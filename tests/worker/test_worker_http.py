"""The mock SGLang worker over real HTTP (uvicorn on loopback): SGLang's surface as SMG and miles use it."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from worker_testing import recording_owner

from sim.engine.types import LatencyModel, WorkerConfig
from sim.worker.app import serve_in_thread
from sim.worker.core import WorkerCore
from sim.worker.faults import Faults
from testbed_common import fastjson, tokenizer, vtime

SYSTEM = {"role": "system", "content": "you are a careful coding agent working in a repository"}
USER = {"role": "user", "content": "list the files and then read the readme please"}


def make_core(
    name: str = "w0",
    seed: int = 7,
    kv: int | None = 100_000,
    latency: LatencyModel | None = None,
    faults: Faults | None = None,
    **kw,
) -> WorkerCore:
    cfg = WorkerConfig(name=name, kv_capacity_tokens=kv, latency=latency or LatencyModel())
    return WorkerCore(cfg, seed=seed, faults=faults, **kw)


@contextlib.contextmanager
def worker(core: WorkerCore | None = None, **kw) -> Iterator[httpx.Client]:
    core = core or make_core()
    with (
        serve_in_thread(core, **kw) as server,
        httpx.Client(base_url=server.url, timeout=30.0, trust_env=False) as client,
    ):
        client.core = core  # type: ignore[attr-defined]
        yield client


@pytest.fixture
def w() -> Iterator[httpx.Client]:
    with worker(max_payload_size=64 * 1024) as client:
        yield client


def chat(client: httpx.Client, messages, max_tokens: int = 8, **extra) -> httpx.Response:
    body = {"model": "mock-model", "messages": messages, "max_tokens": max_tokens, **extra}
    return client.post("/v1/chat/completions", json=body)


def output_ids(body: dict) -> list[int]:
    return [pair[1] for pair in body["choices"][0]["meta_info"]["output_token_logprobs"]]


# ---- registration surface -------------------------------------------------------------------


def test_registration_endpoints_answer_what_smg_probes(w):
    assert w.get("/health").status_code == 200
    models = w.get("/v1/models").json()
    assert models["data"][0]["owned_by"] == "sglang"
    assert models["data"][0]["id"] == "mock-model"
    for path in ("/server_info", "/get_server_info"):
        info = w.get(path).json()
        assert info["served_model_name"] == "mock-model"
        assert info["max_running_requests"] == 256
    for path in ("/model_info", "/get_model_info"):
        assert w.get(path).json()["model_path"] == "mock-model"
    # a 200 on /version would make SMG classify the worker as vLLM
    assert w.get("/version").status_code == 404


def test_served_model_name_is_configurable():
    with worker(make_core(model_name="Qwen/Qwen3-8B")) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "Qwen/Qwen3-8B"
        r = chat(c, [USER], sim_time=0.0)
        assert r.json()["model"] == "Qwen/Qwen3-8B"


# ---- chat completions -------------------------------------------------------------------------


def test_chat_answer_is_openai_shaped_with_sglang_extras(w):
    r = chat(w, [SYSTEM, USER], max_tokens=12, return_prompt_token_ids=True, sim_time=1.0)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "stop"
    meta = choice["meta_info"]
    pairs = meta["output_token_logprobs"]
    assert len(pairs) == meta["completion_tokens"] == 12
    assert all(isinstance(lp, float) and lp <= 0 and isinstance(tid, int) for lp, tid, *_ in pairs)
    assert pairs[-1][1] == tokenizer.IM_END
    assert tokenizer.encode(choice["message"]["content"]) == output_ids(body)[:-1]
    assert choice["prompt_token_ids"] == tokenizer.render([SYSTEM, USER])
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(choice["prompt_token_ids"]) == meta["prompt_tokens"]
    assert usage["completion_tokens"] == 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12
    assert usage["prompt_tokens_details"]["cached_tokens"] == meta["cached_tokens"] == 0
    sim = body["sim"]
    assert sim["worker"] == "w0"
    assert sim["arrival"] == 1.0 <= sim["start"] <= sim["first_token"] <= sim["finish"]
    assert r.headers[vtime.HEADER_WORKER] == "w0"
    assert float(r.headers[vtime.HEADER_FINISH]) == sim["finish"]
    assert float(r.headers[vtime.HEADER_FIRST_TOKEN]) == sim["first_token"]
    assert float(r.headers[vtime.HEADER_START]) == sim["start"]
    assert float(r.headers[vtime.HEADER_ARRIVAL]) == 1.0


def test_prompt_token_ids_only_when_asked_and_openai_logprobs_when_asked(w):
    choice = chat(w, [USER], sim_time=0.0).json()["choices"][0]
    assert "prompt_token_ids" not in choice
    assert choice["logprobs"] is None
    choice = chat(w, [USER], logprobs=True, sim_time=0.0).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert [c["logprob"] for c in content] == [p[0] for p in choice["meta_info"]["output_token_logprobs"]]
    assert content[-1]["token"] == "<|im_end|>"


def test_second_turn_reports_first_turn_prompt_and_output_as_cached(w):
    """The token-in/token-out invariant holds and the radix cache covers turn 1's prompt + output."""
    turn1 = chat(w, [SYSTEM, USER], max_tokens=10, return_prompt_token_ids=True, sim_time=0.0).json()
    c1 = turn1["choices"][0]
    answer = {"role": "assistant", "content": c1["message"]["content"]}
    tool = {"role": "tool", "content": tokenizer.synth_text(3, 40)}
    history = c1["prompt_token_ids"] + output_ids(turn1)
    assert history == tokenizer.render([SYSTEM, USER, answer], add_generation_prompt=False)

    t2 = turn1["sim"]["finish"] + 0.5
    turn2 = chat(w, [SYSTEM, USER, answer, tool], max_tokens=6, return_prompt_token_ids=True, sim_time=t2).json()
    c2 = turn2["choices"][0]
    assert c2["prompt_token_ids"][: len(history)] == history
    cached = turn2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == c2["meta_info"]["cached_tokens"] == turn2["sim"]["cached_tokens"]
    assert cached >= len(history)
    assert cached < turn2["usage"]["prompt_tokens"]


def test_input_ids_win_over_messages(w):
    ids = tokenizer.render([SYSTEM])
    body = chat(w, [USER], input_ids=ids, return_prompt_token_ids=True, sim_time=0.0).json()
    assert body["choices"][0]["prompt_token_ids"] == ids
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_default_output_length_is_configurable():
    with worker(make_core(default_max_tokens=5)) as c:
        r = c.post("/v1/chat/completions", json={"model": "mock-model", "messages": [USER], "sim_time": 0.0})
        assert r.json()["usage"]["completion_tokens"] == 5


# ---- streaming ----------------------------------------------------------------------------------


def sse_events(r: httpx.Response) -> list:
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    return [json.loads(f[len("data: ") :]) for f in frames[:-1]]


def test_chat_stream_is_sse_with_usage_in_the_last_chunk(w):
    plain = chat(w, [USER], max_tokens=40, sim_time=0.0).json()
    r = chat(w, [USER], max_tokens=40, stream=True, stream_options={"include_usage": True}, sim_time=1.0)
    assert r.status_code == 200
    assert float(r.headers[vtime.HEADER_ARRIVAL]) == 1.0
    events = sse_events(r)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finals) == 1
    assert output_ids(finals[0]) == output_ids(plain)
    assert events[-1]["choices"] == []
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 40
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0  # the same prompt again
    assert events[-1]["sim"]["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]


def test_stream_without_include_usage_has_no_usage_chunk(w):
    events = sse_events(chat(w, [USER], max_tokens=4, stream=True, sim_time=0.0))
    assert all("usage" not in e for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_generate_stream_carries_cumulative_text(w):
    r = w.post(
        "/generate",
        json={"text": "hello world", "sampling_params": {"max_new_tokens": 20}, "stream": True, "sim_time": 0.0},
    )
    events = sse_events(r)
    texts = [e["text"] for e in events]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert events[-1]["meta_info"]["completion_tokens"] == 20


# ---- /generate and /v1/completions --------------------------------------------------------------


def test_generate_takes_text_or_input_ids(w):
    r = w.post("/generate", json={"text": "one two three", "sampling_params": {"max_new_tokens": 5}, "sim_time": 0.0})
    body = r.json()
    assert r.status_code == 200
    meta = body["meta_info"]
    assert meta["prompt_tokens"] == 3
    assert meta["completion_tokens"] == 5 == len(body["output_ids"])
    assert [p[1] for p in meta["output_token_logprobs"]] == body["output_ids"]
    assert tokenizer.encode(body["text"]) == body["output_ids"][:-1]
    again = w.post(
        "/generate",
        json={
            "text": "ignored words",
            "input_ids": tokenizer.encode("one two three"),
            "sampling_params": {"max_new_tokens": 5},
            "sim_time": 1.0,
        },
    ).json()
    assert again["output_ids"] == body["output_ids"]  # same prompt ids, same answer
    assert again["meta_info"]["cached_tokens"] == 2  # at least one prompt token is always computed


def test_completions_shape(w):
    body = w.post(
        "/v1/completions", json={"model": "mock-model", "prompt": "cmp", "max_tokens": 3, "sim_time": 0.0}
    ).json()
    assert body["object"] == "text_completion"
    assert isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] == 3


def test_body_fields_added_by_the_gateway_are_accepted(w):
    """The exact bodies SMG 1.13.0 forwards (specs/smg-live-observations.md §2.3)."""
    r = w.post(
        "/v1/chat/completions",
        json={
            "messages": [USER],
            "model": "mock-model",
            "logprobs": False,
            "max_tokens": 8,
            "stream": False,
            "temperature": 0.2,
            "custom_field": 123,
            "sim_time": 0.0,
        },
    )
    assert r.status_code == 200
    r = w.post(
        "/generate",
        json={
            "text": "gen",
            "model": "unknown",
            "sampling_params": {"temperature": 0.0, "max_new_tokens": 3},
            "return_text_in_logprobs": False,
            "stream": False,
            "log_metrics": True,
            "background": False,
            "no_logs": False,
            "return_bytes": False,
            "return_entropy": False,
            "rid": "abc",
            "custom_field": 1,
        },
    )
    assert r.status_code == 200
    assert r.json()["meta_info"]["id"] == "abc"
    r = w.post(
        "/v1/completions",
        json={"model": "mock-model", "prompt": "cmp", "echo": False, "max_tokens": 3, "stream": False},
    )
    assert r.status_code == 200


# ---- load reporting ---------------------------------------------------------------------------


def test_loads_have_smg_worker_load_response_shape_and_follow_sim_time(w):
    body = w.get("/v1/loads", params={"include": "core,disagg,queues,memory"}).json()
    assert body["dp_rank_count"] == 1
    assert isinstance(body["timestamp"], str)
    (rank,) = body["loads"]
    for key in (
        "dp_rank",
        "num_running_reqs",
        "num_waiting_reqs",
        "num_waiting_uncached_tokens",
        "num_total_reqs",
        "num_used_tokens",
        "max_total_num_tokens",
        "token_usage",
        "gen_throughput",
        "cache_hit_rate",
        "utilization",
        "max_running_requests",
    ):
        assert key in rank
    assert rank["max_total_num_tokens"] == 100_000
    timing = chat(w, [USER], max_tokens=50, sim_time=10.0).json()["sim"]
    during = w.get("/v1/loads", params={"sim_time": (timing["first_token"] + timing["finish"]) / 2}).json()
    assert during["loads"][0]["num_running_reqs"] == 1
    assert during["loads"][0]["num_total_reqs"] == 1
    after = w.get("/v1/loads", params={"sim_time": timing["finish"] + 1.0}).json()
    assert after["loads"][0]["num_running_reqs"] == 0
    assert w.get("/v1/loads", params={"sim_time": "soon"}).status_code == 400
    assert w.get("/v1/loads", params={"sim_time": "-1"}).status_code == 400


def metric_values(text: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = s.value
    return out


def test_metrics_expose_sglang_names_and_token_counters(w):
    t1 = chat(w, [SYSTEM, USER], max_tokens=5, sim_time=0.0).json()
    t2 = chat(w, [SYSTEM, USER], max_tokens=5, sim_time=1.0).json()
    r = w.get("/metrics", params={"sim_time": 2.0})
    assert r.status_code == 200
    values = metric_values(r.text)
    for name in (
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "sglang:cache_hit_rate",
        "sglang:gen_throughput",
    ):
        assert name in values
    prompt = t1["usage"]["prompt_tokens"] + t2["usage"]["prompt_tokens"]
    cached = t2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    assert values["sglang:prompt_tokens_total"] == prompt
    assert values["sglang:cached_tokens_total"] == cached
    assert values["sglang:cache_hit_rate"] == pytest.approx(cached / prompt)


def test_metrics_registry_is_per_worker():
    with worker(make_core(name="a")) as a, worker(make_core(name="b")) as b:
        chat(a, [USER], sim_time=0.0)
        assert metric_values(a.get("/metrics").text)["sglang:num_requests_total"] == 1
        assert metric_values(b.get("/metrics").text)["sglang:num_requests_total"] == 0


def test_flush_cache_empties_the_radix_cache(w):
    chat(w, [SYSTEM, USER], sim_time=0.0)
    assert chat(w, [SYSTEM, USER], sim_time=1.0).json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    refused = w.post("/flush_cache", params={"sim_time": 1.0})  # turn 2 is still running at t=1.0
    assert refused.status_code == 400
    assert "pending" in refused.json()["message"]
    assert w.post("/flush_cache", params={"sim_time": 1.5}).status_code == 200
    assert chat(w, [SYSTEM, USER], sim_time=2.0).json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


# ---- faults --------------------------------------------------------------------------------------


def test_fail_rate_answers_5xx_json(w):
    assert w.post("/admin/faults", json={"fail_rate": 1.0}).json()["fail_rate"] == 1.0
    r = chat(w, [USER], sim_time=0.0)
    assert r.status_code == 500
    assert r.json()["code"] == 500
    assert w.post("/admin/faults", json={"fail_rate": 0.0}).status_code == 200
    assert chat(w, [USER], sim_time=0.0).status_code == 200


def test_rollback_failed_only_for_requests_with_input_ids(w):
    w.post("/admin/faults", json={"rollback_fail_rate": 1.0})
    r = chat(w, [USER], input_ids=tokenizer.render([USER]), sim_time=0.0)
    assert r.status_code == 400
    assert "rollback failed" in r.text.lower()
    assert chat(w, [USER], sim_time=0.0).status_code == 200  # the miles retry: same turn without input_ids


def test_fault_pattern_is_deterministic_for_a_seed():
    def pattern(seed: int) -> list[int]:
        with worker(make_core(seed=seed, faults=Faults(fail_rate=0.5))) as c:
            return [chat(c, [USER], max_tokens=2, sim_time=float(i)).status_code for i in range(24)]

    first = pattern(1)
    assert first == pattern(1)
    assert set(first) == {200, 500}


def test_unhealthy_fault_turns_health_to_503(w):
    w.post("/admin/faults", json={"unhealthy": True})
    assert w.get("/health").status_code == 503
    assert w.get("/admin/faults").json()["unhealthy"] is True
    w.post("/admin/faults", json={"unhealthy": False})
    assert w.get("/health").status_code == 200


def test_slowdown_stretches_the_modelled_timeline():
    with worker() as fast, worker() as slow:
        assert slow.post("/admin/faults", json={"slowdown": 3.0}).status_code == 200
        a = chat(fast, [USER], max_tokens=20, sim_time=0.0).json()["sim"]
        b = chat(slow, [USER], max_tokens=20, sim_time=0.0).json()["sim"]
        assert slow.post("/admin/faults", json={"slowdown": 1.0}).status_code == 200
        c = chat(slow, [SYSTEM], max_tokens=20, sim_time=10.0).json()["sim"]
        d = chat(fast, [SYSTEM], max_tokens=20, sim_time=10.0).json()["sim"]
    assert b["finish"] - b["arrival"] == pytest.approx(3 * (a["finish"] - a["arrival"]))
    assert b["first_token"] - b["arrival"] == pytest.approx(3 * (a["first_token"] - a["arrival"]))
    assert c["finish"] - c["arrival"] == pytest.approx(d["finish"] - d["arrival"])


def test_exit_fault_stops_the_server():
    with worker() as c:
        assert c.post("/admin/faults", json={"exit": True}).status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                c.get("/health")
            except httpx.TransportError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker still answers after the exit fault")


@pytest.mark.parametrize(
    "body",
    [
        {"fail_rate": 1.5},
        {"fail_rate": "half"},
        {"slowdown": 0.5},
        {"unhealthy": "yes"},
        {"explode": True},
        [1, 2],
    ],
)
def test_bad_fault_updates_are_refused(w, body):
    r = w.post("/admin/faults", json=body)
    assert r.status_code == 400
    assert w.get("/admin/faults").json() == Faults().as_dict()


# ---- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b""),
        ("/v1/chat/completions", b"\xff\xfe"),
        ("/v1/chat/completions", b"[1, 2]"),
        ("/v1/chat/completions", b'{"model": "m"}'),
        ("/v1/chat/completions", b'{"messages": "hello"}'),
        ("/v1/chat/completions", b'{"messages": []}'),
        ("/v1/chat/completions", b'{"messages": [{"content": "no role"}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": true}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 2}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "sim_time": "now"}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 999999999}'),
        ("/v1/chat/completions", b'{"input_ids": ["a", "b"]}'),
        ("/v1/chat/completions", b'{"input_ids": [[1, 2], [3]]}'),
        ("/v1/chat/completions", b'{"input_ids": [-1]}'),
        ("/v1/chat/completions", b'{"input_ids": []}'),
        ("/generate", b'{"sampling_params": {"max_new_tokens": 3}}'),
        ("/generate", b'{"text": ["a", "b"]}'),
        ("/generate", b'{"text": "a", "sampling_params": 3}'),
        ("/generate", b'{"text": "a", "sampling_params": {"max_new_tokens": -3}}'),
        ("/generate", b'{"text": "   "}'),
        ("/v1/completions", b'{"prompt": 12}'),
        ("/v1/completions", b'{"prompt": "x", "logprobs": "many"}'),
    ],
)
def test_bad_input_gets_a_4xx_json_error(w, path, content):
    r = w.post(path, content=content, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["message"], str)


def test_deeply_nested_json_gets_400(w):
    r = w.post("/v1/chat/completions", content=b"[" * 20_000 + b"]" * 20_000)
    assert r.status_code == 400


def test_oversize_body_gets_413(w):
    big = {"messages": [{"role": "user", "content": "word " * 20_000}]}
    r = w.post("/v1/chat/completions", json=big)
    assert r.status_code == 413
    assert "exceeds" in r.json()["message"]


def test_oversize_body_without_content_length_gets_413(w):
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"word " * 200
        yield b'"}]}'

    r = w.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# ---- determinism and time -------------------------------------------------------------------------


def test_answers_depend_on_seed_and_prompt_not_on_the_worker():
    msgs = [SYSTEM, USER]
    with (
        worker(make_core(name="w0", seed=3)) as a,
        worker(make_core(name="w1", seed=3)) as b,
        worker(make_core(name="w0", seed=4)) as c,
    ):
        ra, rb, rc = (chat(x, msgs, max_tokens=16, sim_time=0.0).json() for x in (a, b, c))
    assert ra["choices"][0]["message"] == rb["choices"][0]["message"]
    assert output_ids(ra) == output_ids(rb)
    assert [p[0] for p in ra["choices"][0]["meta_info"]["output_token_logprobs"]] == [
        p[0] for p in rb["choices"][0]["meta_info"]["output_token_logprobs"]
    ]
    assert output_ids(ra) != output_ids(rc)


def test_http_and_direct_core_give_identical_answers():
    """The in-process transport calls WorkerCore.infer; the HTTP app must add nothing to it."""
    requests = [
        (
            "chat",
            "/v1/chat/completions",
            {"messages": [SYSTEM, USER], "max_tokens": 9, "sim_time": 0.0, "return_prompt_token_ids": True},
        ),
        ("generate", "/generate", {"text": "a b c d", "sampling_params": {"max_new_tokens": 4}, "sim_time": 0.5}),
        ("chat", "/v1/chat/completions", {"messages": [SYSTEM, USER], "max_tokens": 9, "sim_time": 1.0}),
        ("completions", "/v1/completions", {"prompt": "a b c d e", "max_tokens": 2, "sim_time": 2.0}),
    ]
    direct = make_core()
    with worker(make_core()) as c:
        for route, path, body in requests:
            r = c.post(path, json=body)
            d = direct.infer(route, body)
            assert r.status_code == d.status == 200
            assert r.content == fastjson.dumps(d.body)  # byte for byte: the app writes the core's answer
            assert {k: r.headers[k] for k in d.headers} == d.headers


def test_live_time_waits_out_the_modelled_latency():
    """Without sim_time the answer is held until the modelled finish (a lower bound; no speed assertion)."""
    slow = LatencyModel(decode_floor=0.02)  # 20 output tokens -> about 0.4 model seconds
    virtual = make_core(latency=slow).infer("chat", {"messages": [USER], "max_tokens": 20, "sim_time": 0.0}).body
    assert virtual is not None
    virtual = virtual["sim"]
    with worker(make_core(latency=slow), speedup=2.0) as c:
        started = time.monotonic()
        live = chat(c, [USER], max_tokens=20).json()["sim"]
        elapsed = time.monotonic() - started
    modelled = live["finish"] - live["arrival"]
    assert modelled == pytest.approx(virtual["finish"] - virtual["arrival"], rel=0.05)
    assert elapsed >= modelled / 2.0 * 0.95


def test_live_stream_events_arrive_in_modelled_order():
    slow = LatencyModel(decode_floor=0.01)
    with worker(make_core(latency=slow), speedup=1.0) as c:
        arrivals, frames = [], []
        started = time.monotonic()
        body = {"model": "mock-model", "messages": [USER], "max_tokens": 32, "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - started)
                    frames.append(line)
    assert frames[-1] == "data: [DONE]"
    last = json.loads(frames[-2][len("data: ") :])
    e2e = last["sim"]["finish"] - last["sim"]["arrival"]
    assert arrivals == sorted(arrivals)
    assert arrivals[-1] >= e2e * 0.95


def test_live_request_after_virtual_ones_waits_only_its_own_latency():
    """Mixing is a misuse, but a live request must not wait out the gap to a far-ahead virtual clock."""
    with worker() as c:
        chat(c, [USER], max_tokens=4, sim_time=1e6)
        r = chat(c, [SYSTEM], max_tokens=4)  # the client timeout (30 s) is far below the 1e6 s gap
        assert r.status_code == 200
        sim = r.json()["sim"]
        assert sim["arrival"] >= 1e6


# ---- the iteration-level engine: held answers, the /sim control endpoints, live stepping ----------------------------


def iteration_core(latency: LatencyModel | None = None) -> WorkerCore:
    cfg = WorkerConfig(name="w0", kv_capacity_tokens=100_000, latency=latency or LatencyModel(), engine="iteration")
    return WorkerCore(cfg, seed=7)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_virtual_request_is_held_reported_and_answered_when_the_engine_is_advanced_past_its_finish():
    """What the in-process core answers, byte for byte, once ``/sim/advance`` reaches the finish; not before."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": "mock-model", "messages": [SYSTEM, USER], "max_tokens": 9, "sim_time": 0.5}
    direct = iteration_core()
    handle = direct.infer("chat", body).pending
    first_event = direct.next_event_time()
    (expected,) = direct.advance(1e9)
    core = iteration_core()
    with (recording_owner() as (owner_url, reports), serve_in_thread(core, owner_url=owner_url) as server,
          httpx.Client(base_url=server.url, timeout=30.0, trust_env=False) as c, ThreadPoolExecutor(1) as pool):
        answer = pool.submit(c.post, "/v1/chat/completions", json=body)
        wait_for(lambda: reports)
        assert reports == [{"worker": "w0", "handle": handle, "next_event_time": first_event, "leg": None}]
        early = c.post("/sim/advance", json={"until": expected.timing.finish / 2}).json()
        assert early["finished"] == [] and not answer.done()
        late = c.post("/sim/advance", json={"until": expected.timing.finish}).json()
        assert late == {"finished": [handle], "next_event_time": None, "notices": []}  # idle again
        r = answer.result(timeout=10)
    assert r.status_code == 200
    assert r.content == fastjson.dumps(expected.body)
    assert {k: r.headers[k] for k in expected.headers} == expected.headers


def test_a_dying_worker_resets_the_connections_of_the_requests_its_engine_held():
    """``/sim/abort`` empties the engine; ``/sim/drop`` then resets each held request's connection: the client sees a
    transport failure (what the gateway counts as a failed connection), not an answer."""
    from concurrent.futures import ThreadPoolExecutor

    core = iteration_core()
    with (recording_owner() as (owner_url, reports), serve_in_thread(core, owner_url=owner_url) as server,
          httpx.Client(base_url=server.url, timeout=30.0, trust_env=False) as c, ThreadPoolExecutor(1) as pool):
        held = pool.submit(chat, c, [USER], max_tokens=8, sim_time=0.0)
        wait_for(lambda: reports)
        assert c.post("/sim/abort", json={}).json() == {"aborted": [reports[0]["handle"]]}
        assert core.pending == 0
        assert c.post("/sim/drop", json={"handles": [reports[0]["handle"]]}).status_code == 200
        with pytest.raises(httpx.TransportError):
            held.result(timeout=10)
        assert c.get("/health").status_code == 200  # the server itself goes on until it is stopped


@pytest.mark.parametrize("body,param", [({}, "until"), ({"until": -1}, "until"), ({"until": "inf"}, "until"),
                                        ({"until": True}, "until")])
def test_advance_needs_a_finite_non_negative_time(body, param):
    with worker(iteration_core()) as c:
        r = c.post("/sim/advance", json=body)
    assert r.status_code == 400 and r.json()["param"] == param


def test_control_endpoints_refuse_non_loopback_clients_and_live_time():
    import asyncio

    from sim.worker.app import create_app

    async def control(app, client: tuple[str, int], live_first: bool) -> list[int]:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
            if live_first:
                assert (await c.post("/v1/chat/completions", json={"messages": [USER], "max_tokens": 2})).is_success
            return [(await c.post(f"/sim/{p}", json=b)).status_code
                    for p, b in (("advance", {"until": 1.0}), ("abort", {}), ("drop", {"handles": []}))]

    assert asyncio.run(control(create_app(make_core()), ("10.1.2.3", 40000), False)) == [403, 403, 403]
    assert asyncio.run(control(create_app(make_core()), ("127.0.0.1", 40000), True)) == [409, 409, 409]
    assert asyncio.run(control(create_app(make_core()), ("127.0.0.1", 40000), False)) == [200, 200, 200]


def test_live_time_steps_the_iteration_engine_on_the_wall_clock():
    """Concurrent live requests are answered by the engine stepping on the scaled wall clock: each not before its
    modelled finish, a stream all at once then; virtual-time requests cannot join that engine."""
    from concurrent.futures import ThreadPoolExecutor

    slow = LatencyModel(decode_floor=0.02)  # 20 output tokens: about 0.4 model seconds
    with worker(iteration_core(slow), speedup=4.0) as c, ThreadPoolExecutor(3) as pool:
        started = time.monotonic()
        plain = [pool.submit(chat, c, [USER, {"role": "user", "content": f"task {i}"}], max_tokens=20)
                 for i in range(2)]
        streamed = pool.submit(chat, c, [SYSTEM], max_tokens=20, stream=True)
        answers = [f.result(timeout=30) for f in plain]
        elapsed = time.monotonic() - started
        stream = streamed.result(timeout=30)
        refused = chat(c, [USER], max_tokens=2, sim_time=0.0)
        assert c.post("/sim/advance", json={"until": 1.0}).status_code == 409
    assert all(r.status_code == 200 for r in answers)
    sims = [r.json()["sim"] for r in answers]
    assert all(s["arrival"] < s["first_token"] < s["finish"] for s in sims)
    assert elapsed >= max(s["finish"] - s["arrival"] for s in sims) / 4.0 * 0.9
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    assert refused.status_code == 400 and "live time" in refused.json()["message"]
    assert c.core.pending == 0  # type: ignore[attr-defined]


def test_an_iteration_worker_without_a_clock_owner_refuses_virtual_time_at_once():
    """Nobody would advance its engine: a clear 400 naming the ways out, not a request held forever."""
    core = iteration_core()
    with worker(core) as c:
        r = chat(c, [USER], max_tokens=4, sim_time=0.0)
        assert r.status_code == 400 and "--engine arrival" in r.json()["message"] and core.pending == 0
        assert chat(c, [USER], max_tokens=4).status_code == 200  # live time steps the engine on the wall clock


def test_a_request_the_owner_refuses_to_hold_is_dropped_at_once():
    """An owner releasing nothing (its run is over or interrupted) would never advance the engine for it: the
    request's connection is reset instead of held, so the servers in front can stop."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from testbed_common.procs import ThreadServer

    async def refuse(_request) -> JSONResponse:
        return JSONResponse({"error": "no request is being released"}, status_code=409)

    with (ThreadServer(Starlette(routes=[Route("/arrivals", refuse, methods=["POST"])])) as owner,
          serve_in_thread(iteration_core(), owner_url=f"{owner.url}/arrivals") as server,
          httpx.Client(base_url=server.url, timeout=10.0, trust_env=False) as c):
        with pytest.raises(httpx.TransportError):
            chat(c, [USER], max_tokens=4, sim_time=0.0)
        assert c.get("/health").status_code == 200

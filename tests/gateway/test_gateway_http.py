"""The mock gateway end to end through real HTTP on loopback, in front of tiny fake SGLang workers."""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import pytest

from mock_gateway.app import create_app
from mock_gateway.config import parse_args
from mock_gateway.testing import MODEL, chat, fake_worker_app, sample
from testbed_common.procs import ThreadServer, free_port


@contextlib.contextmanager
def workers(n=3):
    states = [{} for _ in range(n)]
    servers = [ThreadServer(fake_worker_app(f"w{i}", state=states[i])).start() for i in range(n)]
    try:
        yield servers, states
    finally:
        for s in servers:
            s.stop()


@contextlib.contextmanager
def gateway(urls, *flags, expect=None):
    cfg = parse_args(["--worker-urls", *urls, "--worker-startup-check-interval", "0.05", "--seed", "1", *flags])
    app = create_app(cfg)
    with ThreadServer(app) as srv, httpx.Client(base_url=srv.url, trust_env=False, timeout=10) as client:
        want = len(urls) if expect is None else expect
        deadline = time.monotonic() + 10
        while len(client.get("/workers").json()["workers"]) < want:
            assert time.monotonic() < deadline, "workers did not register"
            time.sleep(0.02)
        yield client, app.state.gateway.core


@pytest.fixture
def pool():
    with workers() as (servers, states):
        yield [s.url for s in servers], states


def post(client, body, key=None, path="/v1/chat/completions", **headers):
    if key is not None:
        headers["x-smg-routing-key"] = key
    return client.post(path, json=body, headers=headers)


def test_manual_pins_keys_and_reports_the_worker(pool):
    urls, _states = pool
    with gateway(urls, "--policy", "manual", "--assignment-mode", "min_load") as (client, core):
        first = {}
        for turn in range(3):
            for k in range(6):
                r = post(client, chat(f"turn {turn}"), key=f"s{k}")
                assert r.status_code == 200
                first.setdefault(k, r.headers["x-smg-routed-worker-id"])
                assert r.headers["x-smg-routed-worker-id"] == first[k]
                assert r.headers["x-fake-worker"] == f"w{urls.index(first[k])}"
        assert sample(core, "smg_manual_policy_branch_total", branch="vacant") == 6
        assert sample(core, "smg_manual_policy_branch_total", branch="occupied_hit") == 12
        assert all(core.registry.get(u).load == 0 for u in urls)


def test_only_the_header_allow_list_is_forwarded_and_defaults_are_added(pool):
    urls, states = pool
    with gateway(urls, "--policy", "round_robin", "--routing-key-headers", "x-session-id") as (client, _):
        r = post(
            client,
            chat("hi", rid="abc", foo=1),
            key="k",
            **{
                "authorization": "Bearer t",
                "x-request-id": "req-1",
                "x-custom": "no",
                "x-session-id": "s",
                "traceparent": "00-1",
                "user-agent": "ua",
                "x-forwarded-for": "1.2.3.4",
            },
        )
        assert r.headers["x-request-id"] == "req-1"
        _, headers, body = next(req for st in states for req in st["requests"])
        assert {"authorization", "x-request-id", "traceparent", "x-smg-routing-key"} <= set(headers)
        assert not {"x-custom", "x-session-id", "user-agent", "x-forwarded-for"} & set(headers)
        assert body["rid"] == "abc" and body["foo"] == 1
        assert body["logprobs"] is False and body["stream"] is False
        r = client.post("/generate", json={"text": "x"})
        assert r.status_code == 200 and r.headers["x-request-id"].startswith("gnt-")
        gen = next(b for st in states for p, _, b in st["requests"] if p == "/generate")
        assert gen["model"] == "unknown" and gen["log_metrics"] is True


def test_streams_are_relayed_and_released(pool):
    urls, _ = pool
    with gateway(urls, "--policy", "round_robin") as (client, core):
        with client.stream("POST", "/v1/chat/completions", json=chat("s", stream=True)) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            text = "".join(r.iter_text())
        assert "data: [DONE]" in text and text.count("data:") == 3
        assert all(core.registry.get(u).load == 0 for u in urls)


@pytest.mark.parametrize(
    ("content", "ctype", "status", "code"),
    [
        (b"not json", "application/json", 400, "invalid_json"),
        (b'{"messages": []}', "application/json", 400, "missing_required_parameter"),
        (b'{"model": 5, "messages": []}', "application/json", 400, "invalid_type"),
        (json.dumps(chat(model="nope")).encode(), "application/json", 404, "model_not_found"),
        (b"x" * 300, "application/json", 413, "payload_too_large"),
        (b"{}", "text/plain", 400, "json_parse_error"),
    ],
)
def test_bad_input_gets_smgs_json_errors(pool, content, ctype, status, code):
    urls, _ = pool
    with gateway(urls, "--policy", "round_robin", "--max-payload-size", "200") as (client, _):
        r = client.post("/v1/chat/completions", content=content, headers={"content-type": ctype})
        assert r.status_code == status
        assert r.json()["error"]["code"] == code


def test_retryable_status_reruns_selection(pool):
    urls, states = pool
    states[0]["status"] = 503
    with gateway(urls, "--policy", "round_robin") as (client, core):
        for _ in range(4):
            r = post(client, chat())
            assert r.status_code == 200 and r.headers["x-smg-routed-worker-id"] != urls[0]
        assert sample(core, "smg_worker_retries_total", worker_type="regular", endpoint="chat") >= 1
        # every request found a healthy worker in time: no retry budget ran out
        assert sample(core, "smg_worker_retries_exhausted_total", worker_type="regular", endpoint="chat") == 0


def test_retries_exhausted_counts_only_requests_that_ran_out_of_attempts(pool):
    urls, states = pool
    for state in states:
        state["status"] = 503
    with gateway(urls, "--policy", "round_robin", "--retry-max-retries", "2") as (client, core):
        assert post(client, chat()).status_code == 503
        assert sample(core, "smg_worker_retries_exhausted_total", worker_type="regular", endpoint="chat") == 1
        assert sample(core, "smg_worker_retries_total", worker_type="regular", endpoint="chat") == 1


def test_connection_refused_is_retried_then_breaker_opens_and_disable_retries_gives_500(pool):
    urls, _ = pool
    dead = f"http://127.0.0.1:{free_port()}"
    with gateway(urls, "--policy", "round_robin", "--cb-failure-threshold", "2") as (client, core):
        core.add_worker(dead, MODEL)
        assert all(post(client, chat()).status_code == 200 for _ in range(8))
        assert sample(core, "smg_worker_cb_state", worker=dead) == 1
    with gateway(urls[:1], "--policy", "round_robin", "--disable-retries") as (client, core):
        core.add_worker(dead, MODEL)
        codes = {post(client, chat()).status_code for _ in range(2)}
        assert codes == {200, 500}


def test_all_workers_dead_gives_503_no_available_workers():
    with gateway([], "--policy", "manual", "--cb-failure-threshold", "1", expect=0) as (client, core):
        core.add_worker(f"http://127.0.0.1:{free_port()}", MODEL)
        first = post(client, chat(), key="k")
        assert first.status_code == 500 and first.json()["error"]["code"] == "call_upstream_connection_failed"
        r = post(client, chat(), key="k")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_available_workers"
        assert sample(core, "smg_manual_policy_branch_total", branch="no_healthy_workers") >= 1


def test_health_checks_move_keys_and_bring_them_back(pool):
    urls, states = pool
    flags = [
        "--policy",
        "manual",
        "--health-check-interval-secs",
        "0.05",
        "--health-failure-threshold",
        "2",
        "--health-success-threshold",
        "1",
    ]
    with gateway(urls, *flags) as (client, core):
        home = post(client, chat(), key="k").headers["x-smg-routed-worker-id"]
        states[urls.index(home)]["health_status"] = 503
        deadline = time.monotonic() + 5
        while core.registry.get(home).ready:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        moved = post(client, chat(), key="k").headers["x-smg-routed-worker-id"]
        assert moved != home
        assert sample(core, "smg_manual_policy_branch_total", branch="occupied_miss") == 1
        states[urls.index(home)]["health_status"] = 200
        while not core.registry.get(home).ready:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert post(client, chat(), key="k").headers["x-smg-routed-worker-id"] == home


def test_runtime_add_and_remove_workers_and_read_endpoints(pool):
    urls, _ = pool
    with gateway(urls[:2], "--policy", "round_robin") as (client, core):
        assert client.get("/readiness").json() == {"status": "ready", "healthy_workers": 2, "total_workers": 2}
        assert client.get("/liveness").status_code == 200 and client.get("/health").status_code == 200
        assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
        r = client.post("/workers", json={"url": urls[2]})
        assert r.status_code == 202
        deadline = time.monotonic() + 5
        while len(core.registry) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        wid = next(w["id"] for w in client.get("/workers").json()["workers"] if w["url"] == urls[0])
        assert client.delete(f"/workers/{wid}").status_code == 202
        assert client.delete("/workers/nope").status_code == 404
        assert {post(client, chat()).headers["x-smg-routed-worker-id"] for _ in range(4)} == set(urls[1:])
        assert client.post("/workers", json={"url": 5}).status_code == 400


def test_virtual_time_keeps_requests_in_flight_until_x_sim_finish_and_polls_on_the_clock(pool):
    urls, states = pool
    for st in states:
        st["sim_duration"] = 2.0
    with gateway(urls, "--policy", "manual", "--assignment-mode", "min_load", "--load-monitor-interval", "5") as (
        client,
        core,
    ):
        placed = [post(client, chat(sim_time=0.5 * i), key=f"k{i}").headers["x-smg-routed-worker-id"] for i in range(3)]
        assert sorted(placed) == sorted(urls)  # each was still in flight when the next arrived
        assert sum(core.registry.get(u).load for u in urls) == 3
        post(client, chat(sim_time=2.6), key="k0")  # releases the two that finished at 2.0 and 2.5
        assert sum(core.registry.get(u).load for u in urls) == 2
        post(client, chat(sim_time=5.0), key="k0")
        polls = [p for st in states for p in st.get("polls", [])]
        assert {p.get("sim_time") for p in polls} == {"0.0", "5.0"}


def test_live_time_timers_evict_idle_keys_and_poll_loads_in_the_background(pool):
    urls, states = pool
    states[0]["loads"] = {"loads": [{"dp_rank": 0, "num_running_reqs": 50}]}
    flags = [
        "--policy",
        "manual",
        "--max-idle-secs",
        "0.3",
        "--eviction-interval-secs",
        "0.1",
        "--load-monitor-interval",
        "0.1",
    ]
    with gateway(urls, *flags) as (client, core):
        post(client, chat(), key="k")
        assert "k" in core.policy.entries
        deadline = time.monotonic() + 5
        while "k" in core.policy.entries or len(states[1].get("polls", [])) < 3:
            assert time.monotonic() < deadline, "live timers did not run"
            time.sleep(0.05)
        assert all("sim_time" not in p for p in states[1]["polls"])
        assert core.registry.get(urls[0]).report.running == 50
        assert sample(core, "smg_engine_running_requests", worker=urls[0], model=MODEL, dp_rank="0") == 50


def test_live_least_load_avoids_a_worker_reporting_load(pool):
    urls, states = pool
    states[0]["loads"] = {"loads": [{"dp_rank": 0, "num_running_reqs": 50}]}
    with gateway(urls, "--policy", "least_load", "--load-monitor-interval", "0.1") as (client, core):
        deadline = time.monotonic() + 10
        while any(core.registry.get(u).report is None for u in urls):  # every worker's load known, not just w0's
            assert time.monotonic() < deadline, "the load monitor did not poll every worker"
            post(client, chat())
        assert all(post(client, chat()).headers["x-smg-routed-worker-id"] != urls[0] for _ in range(10))


def test_a_stream_stays_in_flight_until_it_ends(pool):
    urls, states = pool
    for st in states:
        st["chunk_delay"] = 0.3
    with gateway(urls, "--policy", "round_robin") as (client, core):
        with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
            worker = r.headers["x-smg-routed-worker-id"]
            assert core.registry.get(worker).load == 1
            assert sample(core, "smg_worker_requests_active", worker=worker) == 1
            r.read()
        assert core.registry.get(worker).load == 0

"""The real SMG gateway (``smg launch`` from ``smg==1.13.0``) in front of three mock workers.

Virtual time: every request body carries ``sim_time``; the gateway keeps unknown body fields, so
the workers answer at once with their modelled timeline. That keeps the test deterministic and
shows that the time field passes through the real gateway.
"""

from __future__ import annotations

import time

import httpx
import pytest

from sim.real_smg import gateway_argv, wait_ready
from testbed_common import tokenizer, vtime
from testbed_common.procs import consecutive_free_ports, free_ports, python_module, running

pytestmark = pytest.mark.real_smg

MODEL = "mock-model"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, smg_bin):
    logs = tmp_path_factory.mktemp("real_smg")
    base = consecutive_free_ports(3)
    gw_port, prom_port = free_ports(2)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(3)]
    workers = python_module(
        "sim.worker", "--host", "127.0.0.1", "--port", str(base), "--count", "3", "--model-name", MODEL, "--seed", "11"
    )
    flags = ["--policy", "manual", "--worker-startup-check-interval", "1"]
    gw = ["timeout", "120", *gateway_argv("smg", flags, urls, gw_port, prom_port, defaults={}, smg_bin=smg_bin.path)]
    with (
        running(workers, f"{urls[-1]}/health", timeout=30, log_path=logs / "workers.log"),
        running(gw, f"http://127.0.0.1:{gw_port}/readiness", timeout=60, log_path=logs / "smg.log"),
        httpx.Client(base_url=f"http://127.0.0.1:{gw_port}", timeout=30, trust_env=False) as client,
    ):
        wait_ready(f"http://127.0.0.1:{gw_port}", 3, timeout=30)  # /readiness is 200 with the first ready worker
        yield client, urls


def test_the_three_mock_workers_register(gateway):
    client, urls = gateway
    ready = client.get("/readiness").json()
    assert ready["healthy_workers"] == ready["total_workers"] == 3
    workers = client.get("/workers").json()["workers"]
    assert sorted(w["url"] for w in workers) == urls
    assert {w["model_id"] for w in workers} == {MODEL}
    assert all(w["runtime_type"] == "sglang" for w in workers)
    # the load monitor parsed the WorkerLoadResponse of /v1/loads
    assert all(w["engine_load"]["loads"][0]["max_total_num_tokens"] > 0 for w in workers if w.get("engine_load"))


def test_second_turn_routes_to_the_same_worker_and_reuses_the_first_turn(gateway):
    client, urls = gateway
    key = {"X-SMG-Routing-Key": "session-real-smg-1"}
    system = {"role": "system", "content": tokenizer.synth_text(1, 60)}
    user = {"role": "user", "content": tokenizer.synth_text(2, 30)}
    r1 = client.post(
        "/v1/chat/completions",
        headers=key,
        json={
            "model": MODEL,
            "messages": [system, user],
            "max_tokens": 24,
            "sim_time": 100.0,
            "return_prompt_token_ids": True,
        },
    )
    assert r1.status_code == 200, r1.text
    worker1 = r1.headers["x-smg-routed-worker-id"]
    assert worker1 in urls
    t1 = r1.json()
    assert t1["sim"]["arrival"] == 100.0  # sim_time passed through the gateway
    assert float(r1.headers[vtime.HEADER_FINISH]) == t1["sim"]["finish"]  # worker headers pass back
    prompt1, output1 = t1["usage"]["prompt_tokens"], t1["usage"]["completion_tokens"]

    answer = {"role": "assistant", "content": t1["choices"][0]["message"]["content"]}
    tool = {"role": "tool", "tool_call_id": "call_1", "content": tokenizer.synth_text(3, 50)}  # SMG requires the id
    r2 = client.post(
        "/v1/chat/completions",
        headers=key,
        json={
            "model": MODEL,
            "messages": [system, user, answer, tool],
            "max_tokens": 8,
            "sim_time": t1["sim"]["finish"] + 2.0,
        },
    )
    assert r2.status_code == 200, r2.text
    assert r2.headers["x-smg-routed-worker-id"] == worker1
    t2 = r2.json()
    cached = t2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == t2["choices"][0]["meta_info"]["cached_tokens"]
    assert cached >= prompt1 + output1
    # SMG re-serializes the body; its float parsing is not exactly round-trip (seen: a 1-ulp change)
    assert t2["sim"]["arrival"] == pytest.approx(t1["sim"]["finish"] + 2.0, rel=1e-12)


def test_stream_and_generate_pass_through_the_gateway(gateway):
    client, urls = gateway
    r = client.post(
        "/v1/chat/completions",
        headers={"X-SMG-Routing-Key": "s-stream"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "stream please"}],
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
            "sim_time": 200.0,
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.rstrip().endswith("data: [DONE]")
    assert '"completion_tokens":6' in r.text
    r = client.post(
        "/generate", json={"text": "one two three", "sampling_params": {"max_new_tokens": 4}, "sim_time": 201.0}
    )
    assert r.status_code == 200
    assert r.json()["meta_info"]["completion_tokens"] == 4
    assert r.headers["x-smg-routed-worker-id"] in urls


def test_a_live_time_request_is_held_for_its_modelled_latency(gateway):
    """Without sim_time the worker waits out its modelled latency (lower bound only, never a speed check)."""
    client, _ = gateway
    started = time.monotonic()
    r = client.post(
        "/v1/chat/completions",
        headers={"X-SMG-Routing-Key": "s-live"},
        json={"model": MODEL, "messages": [{"role": "user", "content": tokenizer.synth_text(9, 40)}], "max_tokens": 30},
    )
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    sim = r.json()["sim"]
    assert elapsed >= (sim["finish"] - sim["arrival"]) * 0.95


def test_worker_faults_through_the_gateway(gateway):
    """A 5xx from the pinned worker is retried elsewhere; a 400 "rollback failed" reaches the client as is."""
    client, urls = gateway
    key = {"X-SMG-Routing-Key": "s-faults"}
    msgs = [{"role": "user", "content": tokenizer.synth_text(21, 20)}]
    first = client.post(
        "/v1/chat/completions", headers=key, json={"model": MODEL, "messages": msgs, "max_tokens": 4, "sim_time": 300.0}
    )
    pinned = first.headers["x-smg-routed-worker-id"]
    try:
        assert client.post(f"{pinned}/admin/faults", json={"fail_rate": 1.0}).status_code == 200
        r = client.post(
            "/v1/chat/completions",
            headers=key,
            json={"model": MODEL, "messages": msgs, "max_tokens": 4, "sim_time": 301.0},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-smg-routed-worker-id"] != pinned

        for url in urls:
            client.post(f"{url}/admin/faults", json={"fail_rate": 0.0, "rollback_fail_rate": 1.0})
        r = client.post(
            "/v1/chat/completions",
            headers=key,
            json={
                "model": MODEL,
                "messages": msgs,
                "input_ids": tokenizer.render(msgs),
                "max_tokens": 4,
                "sim_time": 302.0,
            },
        )
        assert r.status_code == 400
        assert "rollback failed" in r.text
        r = client.post(
            "/v1/chat/completions",
            headers=key,
            json={"model": MODEL, "messages": msgs, "max_tokens": 4, "sim_time": 303.0},
        )
        assert r.status_code == 200
    finally:
        for url in urls:
            client.post(f"{url}/admin/faults", json={"fail_rate": 0.0, "rollback_fail_rate": 0.0})

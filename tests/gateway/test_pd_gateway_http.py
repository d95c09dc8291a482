"""The mock gateway's app in PD mode over loopback, in front of small recording workers (``testing.pd_workers``):
both legs get the request with the same bootstrap fields, the client gets the decode's answer, failures answer as
SMG's PD router does, registration probes the prefill's bootstrap port, and the PD metrics."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from mock_gateway.app import create_app
from mock_gateway.config import parse_args
from mock_gateway.testing import chat, pd_workers, sample
from testbed_common.procs import ThreadServer, free_ports

BOOTSTRAP = ("bootstrap_host", "bootstrap_port", "bootstrap_room")


@contextlib.contextmanager
def gateway(flags):
    app = create_app(parse_args([*flags, "--worker-startup-check-interval", "0.05", "--seed", "7"]))
    expected = sum(1 for f in flags if f in ("--prefill", "--decode"))
    with ThreadServer(app) as srv, httpx.Client(base_url=srv.url, trust_env=False, timeout=10) as client:
        deadline = time.monotonic() + 10
        while len(app.state.gateway.core.registry) < expected:
            assert time.monotonic() < deadline, "the gateway did not register every worker"
            time.sleep(0.02)
        client.core = app.state.gateway.core
        yield client


@pytest.fixture(scope="module")
def workers():
    with pd_workers(prefill=1, decode=1) as pool:
        yield pool


@pytest.fixture(autouse=True)
def fresh(workers):
    for st in workers.states.values():
        st.clear()
        st["requests"] = []


def bodies(workers, url):
    return [body for _, _, body in workers.states[url]["requests"]]


def test_both_legs_get_the_request_with_the_same_bootstrap_fields_and_the_decode_answers(workers):
    (prefill, port), decode = workers.prefill[0], workers.decode[0]
    with gateway([*workers.flags(), "--policy", "manual"]) as gw:
        r = gw.post("/v1/chat/completions", json=chat("hi", max_tokens=3), headers={"x-smg-routing-key": "s1"})
        assert r.status_code == 200
        assert r.headers["x-smg-routed-worker-id"] == decode
        assert r.headers["x-fake-worker"] == "d0" and r.json()["worker"] == "d0"
        (p_body,), (d_body,) = bodies(workers, prefill), bodies(workers, decode)
        assert {k: p_body[k] for k in BOOTSTRAP} == {k: d_body[k] for k in BOOTSTRAP}
        assert (p_body["bootstrap_host"], p_body["bootstrap_port"]) == ("127.0.0.1", port)
        assert 0 <= p_body["bootstrap_room"] < 2**63
        assert p_body["messages"] == d_body["messages"] == [{"role": "user", "content": "hi"}]
        listed = {w["url"]: w for w in gw.get("/workers").json()["workers"]}
        assert listed[prefill]["worker_type"] == "prefill" and listed[prefill]["bootstrap_port"] == port
        assert listed[decode]["worker_type"] == "decode" and "bootstrap_port" not in listed[decode]
        labels = {"backend_type": "pd", "model": "fake-model", "runtime": "sglang"}
        assert sample(gw.core, "smg_pd_ttft_seconds_count", **labels) == 1
        assert sample(gw.core, "smg_pd_prefill_duration_seconds_count", **labels) == 1
        assert sample(gw.core, "smg_manual_policy_branch_total", branch="vacant") == 2
        assert sample(gw.core, "smg_pd_rendezvous_failures_total", leg="prefill", phase="probe") == 0


def test_a_stream_is_the_decode_stream_and_holds_both_legs_until_its_end(workers):
    with gateway([*workers.flags(), "--policy", "round_robin"]) as gw:
        r = gw.post("/v1/chat/completions", json=chat("hi", stream=True))
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        assert r.headers["x-smg-routed-worker-id"] == workers.decode[0]
        assert [w.load for w in gw.core.registry] == [0, 0]


def test_in_virtual_time_both_legs_stay_in_flight_until_the_decodes_finish(workers):
    decode = workers.decode[0]
    workers.states[decode]["sim_duration"] = 10.0
    with gateway([*workers.flags(), "--policy", "round_robin"]) as gw:
        assert gw.post("/v1/chat/completions", json=chat(sim_time=1.0)).status_code == 200
        gw.core.advance(10.9)
        assert [w.load for w in gw.core.registry] == [1, 1]
        gw.core.advance(11.0)
        assert [w.load for w in gw.core.registry] == [0, 0]
        labels = {"backend_type": "pd", "model": "fake-model", "runtime": "sglang"}
        assert sample(gw.core, "smg_pd_prefill_duration_seconds_sum", **labels) == 1.0  # fake prefill: 1 s
        assert sample(gw.core, "smg_pd_ttft_seconds_sum", **labels) == 10.0  # a JSON answer's head: its finish


@pytest.mark.parametrize(("leg", "status", "code"), [("decode", 400, "decode_bad_request"),
                                                     ("decode", 503, "decode_unavailable"),
                                                     ("prefill", 404, "prefill_not_found")])
def test_a_legs_error_status_is_answered_under_smgs_code(workers, leg, status, code):
    url = workers.prefill[0][0] if leg == "prefill" else workers.decode[0]
    workers.states[url]["status"] = status
    with gateway([*workers.flags(), "--policy", "round_robin", "--disable-retries"]) as gw:
        r = gw.post("/v1/chat/completions", json=chat())
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)


def test_a_legs_connection_failure_is_a_502_and_a_retry_picks_the_pair_again(workers):
    dead, = free_ports(1)
    flags = ["--pd-disaggregation", "--prefill", workers.prefill[0][0], "--decode", workers.decode[0],
             "--policy", "round_robin", "--retry-max-retries", "2", "--retry-initial-backoff-ms", "1"]
    with gateway(flags) as gw:
        gw.core.add_worker(f"http://127.0.0.1:{dead}", "fake-model", worker_type="decode")
        answers = [gw.post("/v1/chat/completions", json=chat()) for _ in range(2)]
        assert {r.status_code for r in answers} == {200}  # the pair on the dead decode worker was retried
        assert sample(gw.core, "smg_worker_retries_total", worker_type="decode", endpoint="chat") == 1
        assert sample(gw.core, "smg_router_upstream_responses_total", router_type="http", status_code="502",
                      error_code="") == 1


def test_a_prefill_without_a_listening_bootstrap_port_fails_the_registration_probe(workers):
    closed, = free_ports(1)
    flags = ["--pd-disaggregation", "--prefill", workers.prefill[0][0], str(closed), "--decode", workers.decode[0]]
    with gateway([*flags, "--policy", "round_robin"]) as gw:
        assert sample(gw.core, "smg_pd_rendezvous_failures_total", leg="prefill", phase="probe") == 1
        assert gw.post("/v1/chat/completions", json=chat()).status_code == 200  # registered anyway


def test_workers_can_be_added_with_a_type_and_bad_types_are_refused(workers):
    with gateway(["--pd-disaggregation", "--policy", "round_robin"]) as gw:
        r = gw.post("/workers", json={"url": workers.decode[0], "worker_type": "encoder"})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "worker_type")
        r = gw.post("/workers", json={"url": workers.decode[0], "worker_type": "decode", "bootstrap_port": 9})
        assert r.status_code == 400
        assert gw.post("/workers", json={"url": workers.decode[0], "worker_type": "decode"}).status_code == 202
        deadline = time.monotonic() + 10
        while not len(gw.core.registry):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert gw.get("/workers").json()["workers"][0]["worker_type"] == "decode"

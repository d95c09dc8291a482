"""The http and direct transports run the same routing code: for a seed, identical decisions and counters.

HTTP: the mock gateway app in front of mock SGLang worker apps, virtual time. Direct: the simulator's
in-process wiring (``sim.transports.direct.DirectGateway``) over the same worker cores.
"""

from __future__ import annotations

import contextlib

import httpx
import pytest

from mock_gateway.app import create_app
from mock_gateway.config import parse_args
from sim.engine.types import WorkerConfig
from sim.worker.app import create_app as worker_app
from sim.worker.core import WorkerCore
from testbed_common.procs import ThreadServer

direct = pytest.importorskip("sim.transports.direct")
from session_server.upstream import UpstreamRequest  # noqa: E402

MODEL = "mock-model"
BRANCHES = (
    "smg_manual_policy_branch_total",
    "smg_cache_aware_policy_branch_total",
    "smg_consistent_hashing_policy_branch_total",
    "smg_prefix_hash_policy_branch_total",
)


def cores(n=3):
    return [WorkerCore(WorkerConfig(name=f"w{i}"), model_name=MODEL, seed=7) for i in range(n)]


def workload():
    """Interleaved multi-turn sessions in nondecreasing virtual time; some unkeyed requests."""
    history: dict[int, list[dict]] = {}
    t = 0.0
    for turn in range(4):
        for s in range(6):
            t += 0.37
            msgs = history.setdefault(s, [{"role": "system", "content": f"agent {s % 2} system prompt " * 4}])
            msgs.append({"role": "user", "content": f"session {s} turn {turn} asks something"})
            body = {"model": MODEL, "messages": list(msgs), "max_tokens": 8 + s, "sim_time": round(t, 3)}
            headers = {"x-smg-routing-key": f"sess-{s}"} if s != 5 else {}
            yield headers, body
            msgs.append({"role": "assistant", "content": f"answer {s}.{turn}"})


def counters(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if "_created" in line:
            continue
        if line.startswith(BRANCHES) or line.startswith(("smg_worker_requests_total", "smg_routing_key_source")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@contextlib.contextmanager
def http_gateway(argv):
    servers = [ThreadServer(worker_app(c)).start() for c in cores()]
    try:
        urls = [s.url for s in servers]
        cfg = parse_args([*argv, "--worker-urls", *urls, "--worker-startup-check-interval", "0.05"])
        app = create_app(cfg)
        with ThreadServer(app) as gw, httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as client:
            while len(app.state.gateway.core.registry) < len(urls):
                client.get("/workers")
            yield urls, client, app.state.gateway.core
    finally:
        for s in servers:
            s.stop()


@pytest.mark.parametrize(
    "argv",
    [
        ["--policy", "manual", "--assignment-mode", "min_load"],
        ["--policy", "manual", "--assignment-mode", "min_group"],
        ["--policy", "cache_aware", "--load-monitor-interval", "1"],
        ["--policy", "cache_aware", "--routing-key-override", "--load-monitor-interval", "1"],
        ["--policy", "consistent_hashing"],
        ["--policy", "least_load", "--load-monitor-interval", "2"],
        ["--policy", "power_of_two"],
        ["--policy", "prefix_hash"],
        ["--policy", "round_robin", "--routing-key-override"],
        ["--policy", "random"],
    ],
)
def test_http_and_direct_give_identical_decisions(argv):
    argv = [*argv, "--seed", "11"]
    with http_gateway(argv) as (urls, client, core):
        http_seq = []
        for headers, body in workload():
            r = client.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200
            assert r.headers["x-smg-routed-worker-id"] == urls[int(r.headers["x-sim-worker"][1:])]
            http_seq.append(r.headers["x-sim-worker"])
        http_counts = counters(core.metrics.render().decode())
    gw = direct.DirectGateway([*argv, "--worker-urls", *urls], dict(zip(urls, cores(), strict=True)))
    direct_seq = []
    for headers, body in workload():
        resp = gw(UpstreamRequest("POST", "v1/chat/completions", headers, json=body))
        assert resp.status == 200
        direct_seq.append(resp.headers["x-sim-worker"])
    assert http_seq == direct_seq
    assert http_counts == counters(gw.metrics_text())

"""Differential test of PD mode: the same keyed multi-turn traffic through the real ``smg launch
--pd-disaggregation`` (smg==1.13.0) and through the mock gateway in PD mode, in front of the same prefill and
decode workers.

- manual's branch counters are equal (two events per request: one per leg);
- consistent_hashing picks the same prefill and the same decode URL for every request;
- ``smg_worker_selection_total`` by worker type is equal;
- the bootstrap fields reach both workers (the same room in both legs of a request, the prefill worker's bootstrap
  address in both), as the workers received them, and the decode worker's KV transfer came from the prefill worker
  the fields named (its answer's ``sim.pd.prefill_worker``: the live rendezvous on the bootstrap port);
- the real gateway's registration probe of every bootstrap port succeeds.

The workers are the project's own PD workers (``sim.worker``: a prefill worker serving its bootstrap port, as
``smg-testbed worker --disaggregation-mode prefill --disaggregation-bootstrap-port P`` does) in live time, each app
wrapped to record the inference requests it receives.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mock_gateway.app import create_app
from mock_gateway.config import parse_args
from mock_gateway.testing import MODEL, PdWorkers, chat
from sim.engine.types import WorkerConfig
from sim.worker.app import create_app as worker_app
from sim.worker.core import WorkerCore
from testbed_common.procs import LOOPBACK, ThreadServer, free_ports, spawn, wait_http

pytestmark = pytest.mark.real_smg
SESSIONS, TURNS = 4, 3
BOOTSTRAP = ("bootstrap_host", "bootstrap_port", "bootstrap_room")
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/generate")
SPEEDUP = 100.0  # live time: a worker waits out its modelled latency / SPEEDUP


def recording(app: Any, requests: list) -> Any:
    """``app`` recording each inference request it receives as (path, headers, body), then serving it as usual."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in INFERENCE_PATHS:
            await app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        requests.append((scope["path"], {k.decode(): v.decode() for k, v in scope["headers"]}, json.loads(body)))
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return wrapped


@contextlib.contextmanager
def start_pd_workers(prefill: int = 2, decode: int = 2) -> Iterator[PdWorkers]:
    """The PD workers both gateways front: the project's prefill workers (each serving its bootstrap port) and decode
    workers, in live time, on loopback; ``states[url]["requests"]``: what each received. Stopped on exit."""
    servers: list[ThreadServer] = []
    sockets: list[socket.socket] = []
    pool = PdWorkers([], [])
    bootstrap = free_ports(prefill)
    try:
        for i in range(prefill + decode):
            role, name = ("prefill", f"p{i}") if i < prefill else ("decode", f"d{i - prefill}")
            core = WorkerCore(WorkerConfig(name=name, engine="iteration", disaggregation_mode=role), model_name=MODEL)
            sock = socket.create_server((LOOPBACK, bootstrap[i])) if role == "prefill" else None
            if sock is not None:
                sockets.append(sock)
            state: dict = {"requests": [], "name": name}
            srv = ThreadServer(recording(worker_app(core, speedup=SPEEDUP, bootstrap=sock), state["requests"]))
            servers.append(srv.start())
            pool.states[srv.url] = state
            if role == "prefill":
                pool.prefill.append((srv.url, bootstrap[i]))
            else:
                pool.decode.append(srv.url)
        yield pool
    finally:
        for srv in servers:
            srv.stop()
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def workers() -> Iterator[PdWorkers]:
    with start_pd_workers() as pool:
        yield pool


def forget_requests(workers: PdWorkers) -> None:
    for st in workers.states.values():
        st["requests"].clear()


@pytest.fixture(autouse=True)
def fresh(workers):
    forget_requests(workers)


@contextlib.contextmanager
def real_gateway(binary: str, workers: PdWorkers, *flags: str) -> Iterator[httpx.Client]:
    port, pport = free_ports(2)
    args = [binary, "launch", "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1",
            "--prometheus-port", str(pport), *workers.flags(), "--worker-startup-check-interval", "1",
            "--log-level", "warn", *flags]
    proc = spawn(args)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readiness", timeout=30, proc=proc.popen)
        with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
            total = len(workers.prefill) + len(workers.decode)
            deadline = time.monotonic() + 30
            while client.get("/readiness").json().get("healthy_workers") != total:
                assert time.monotonic() < deadline, "real smg did not register every worker"
                time.sleep(0.05)
            client.metrics_text = lambda: httpx.get(f"http://127.0.0.1:{pport}/metrics", timeout=10).text
            yield client
    finally:
        proc.kill()  # by its PID (SIGKILL: a graceful smg shutdown takes ~5 s; ports are fresh each time)


@contextlib.contextmanager
def mock_gateway(workers: PdWorkers, *flags: str) -> Iterator[httpx.Client]:
    app = create_app(parse_args([*workers.flags(), "--worker-startup-check-interval", "0.05", "--seed", "5", *flags]))
    total = len(workers.prefill) + len(workers.decode)
    with ThreadServer(app) as srv, httpx.Client(base_url=srv.url, trust_env=False, timeout=10) as client:
        deadline = time.monotonic() + 10
        while len(app.state.gateway.core.registry) < total:
            assert time.monotonic() < deadline, "the mock did not register every worker"
            time.sleep(0.02)
        client.metrics_text = lambda: app.state.gateway.core.metrics.render().decode()
        yield client


def traffic() -> list[tuple[dict, dict]]:
    """Keyed multi-turn chats, the sessions' turns interleaved."""
    out = []
    history: dict[int, list[dict]] = {s: [] for s in range(SESSIONS)}
    for turn in range(TURNS):
        for s in range(SESSIONS):
            history[s] = [*history[s], {"role": "user", "content": f"session {s} turn {turn}"}]
            out.append(({"x-smg-routing-key": f"session-{s}"}, chat(max_tokens=4) | {"messages": history[s]}))
            history[s] = [*history[s], {"role": "assistant", "content": "ok"}]
    return out


def run(client: httpx.Client, workers: PdWorkers) -> tuple[list[tuple[str, str]], dict[str, dict[tuple, float]]]:
    """Send the traffic; each request's (prefill URL, decode URL) as the workers saw it, and the metrics."""
    pairs = []
    for headers, body in traffic():
        r = client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        decode = r.headers["x-smg-routed-worker-id"]
        d_body = workers.states[decode]["requests"][-1][2]
        room = d_body["bootstrap_room"]
        (prefill, port, p_body), = [(url, port, b) for url, port in workers.prefill
                                    for _, _, b in workers.states[url]["requests"] if b["bootstrap_room"] == room]
        assert {k: p_body[k] for k in BOOTSTRAP} == {k: d_body[k] for k in BOOTSTRAP} == {
            "bootstrap_host": "127.0.0.1", "bootstrap_port": port, "bootstrap_room": room}
        sim = r.json()["sim"]  # the decode worker's answer: its KV came from the prefill worker the fields named
        assert sim["worker"] == workers.states[decode]["name"]
        assert sim["pd"]["prefill_worker"] == workers.states[prefill]["name"]
        pairs.append((prefill, decode))
    metrics: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(client.metrics_text()):
        for s in fam.samples:
            metrics.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return pairs, metrics


def by(metrics: dict[str, dict[tuple, float]], name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for labels, v in metrics.get(name, {}).items() if v}


@pytest.mark.parametrize("policy", ["manual", "consistent_hashing"])
def test_pd_mode_routes_and_counts_as_the_real_gateway(smg_bin, workers, policy):
    with real_gateway(smg_bin.path, workers, "--policy", policy) as real:
        real_pairs, real_metrics = run(real, workers)
    forget_requests(workers)
    with mock_gateway(workers, "--policy", policy) as mock:
        mock_pairs, mock_metrics = run(mock, workers)
    requests = SESSIONS * TURNS
    assert by(real_metrics, "smg_pd_rendezvous_failures_total", "phase") == {}
    assert by(mock_metrics, "smg_pd_rendezvous_failures_total", "phase") == {}
    selection = by(real_metrics, "smg_worker_selection_total", "worker_type")
    assert selection == by(mock_metrics, "smg_worker_selection_total", "worker_type") == {
        "prefill": requests, "decode": requests}
    if policy == "manual":
        branches = by(real_metrics, "smg_manual_policy_branch_total", "branch")
        assert branches == by(mock_metrics, "smg_manual_policy_branch_total", "branch")
        assert sum(branches.values()) == 2 * requests
        for pairs in (real_pairs, mock_pairs):  # each session stays on its pair
            assert len(set(pairs)) <= SESSIONS
    else:
        assert mock_pairs == real_pairs

"""The runner through the real cores: the oracle bound, http == direct, bit-for-bit repeats, branch counters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sim.runner import COMPARE_POLICIES, PolicyConfig, make_setup, public, run_setup
from sim.workload.scenario import Scenario, load_scenario

TINY = Scenario(name="tiny", seed=7, workers=3, kv_capacity_tokens=20_000, sessions=10, group_size=5,
                system_prompt_tokens=200, task_prompt_tokens=40, max_context_tokens=4000, retry_rate=0.15,
                turns={"dist": "uniform", "low": 3, "high": 8},
                output_tokens={"dist": "lognormal", "median": 40, "sigma": 0.5, "min": 4},
                tool_output_tokens={"dist": "lognormal", "median": 80, "sigma": 0.8, "min": 4},
                tool_latency={"dist": "lognormal", "median": 1.0, "sigma": 0.8})
MANUAL = PolicyConfig("manual", "min_load")


def without_transport(row: dict) -> dict:
    return {k: v for k, v in public(row).items() if k != "transport"}


@pytest.mark.parametrize("transport", ["direct", "http"])
def test_one_worker_with_unbounded_kv_reaches_the_oracle_less_the_uncached_last_token(transport):
    """The oracle caches prompt + output; SGLang (the iteration-level engine) leaves prompt + output - 1 (the last
    sampled token never gets KV), so a request whose match reaches the end of its session's previous one finds
    exactly one token less; every other match is the oracle's."""
    s = TINY.replace(workers=1, kv_capacity_tokens=None)
    seen: list = []
    row = run_setup(make_setup(s, MANUAL, True), transport, on_request=seen.append)
    assert row["errors"] == 0 and row["requests"] > 40
    assert all(r.oracle_cached - r.cached_tokens in (0, 1) for r in seen)
    assert sum(r.oracle_cached - r.cached_tokens for r in seen) > len(seen) / 2  # most later turns lose that token
    assert 0.5 < row["kv_reuse"] < row["oracle_reuse"]
    assert row["stickiness"] == 1.0


def test_on_the_arrival_time_engine_one_worker_reaches_the_oracle_exactly():
    row = run_setup(make_setup(TINY.replace(workers=1, kv_capacity_tokens=None, engine="arrival"), MANUAL, True),
                    "direct")
    assert row["kv_reuse"] == row["oracle_reuse"] > 0.5


def test_bounded_kv_stays_under_the_oracle():
    row = run_setup(make_setup(TINY.replace(workers=1, kv_capacity_tokens=3000), MANUAL, True), "direct")
    assert row["errors"] == 0
    assert row["kv_reuse"] < row["oracle_reuse"]
    assert row["workers"][0]["peak_kv_tokens"] <= 3000 + 4000  # one oversized request may run alone


def usual_urls(setup) -> list[str]:
    """The worker URLs ``http`` takes by itself: the usual block, or the next free one when a port of it is held
    (then ``direct`` is given the same, so both transports see the same ring; README "Limits")."""
    from sim.transports.pool import port_salt, stable_ports, worker_urls

    return worker_urls(stable_ports(port_salt(setup), setup.scenario.workers))


@pytest.mark.parametrize("policy,key", [(MANUAL, True), (PolicyConfig("manual", "random"), False),
                                        (PolicyConfig("consistent_hashing"), True),
                                        (PolicyConfig("cache_aware"), True)])
def test_http_and_direct_agree_exactly(policy, key):
    setup = make_setup(TINY, policy, key)
    urls = usual_urls(setup)
    direct = run_setup(setup, "direct", worker_urls=urls)
    http = run_setup(setup, "http", worker_urls=urls)
    assert direct["errors"] == 0 and direct["retries"] > 0
    assert json.dumps(without_transport(http)) == json.dumps(without_transport(direct))


def test_http_and_direct_agree_exactly_under_faults_also_for_requests_held_when_a_worker_dies(monkeypatch):
    """A dead interval, rollback failures (the session server's retry) and upstream 500s (the gateway's) on TINY's
    iteration-level engines: the requests a worker's engine held when it died are lost in both transports alike
    (dropped connections, retried elsewhere), and the rows are equal."""
    from sim.faults import parse_faults
    from sim.worker.core import WorkerCore

    lost: dict[str, list[int]] = {"direct": [], "http": []}
    abort = WorkerCore.abort_pending
    transport = "direct"

    def recorded_abort(core: WorkerCore) -> list[int]:
        handles = abort(core)
        lost[transport].extend(handles)
        return handles

    monkeypatch.setattr(WorkerCore, "abort_pending", recorded_abort)
    # w2 dies at the first request from 2 s on, with a request in its engine (the dead window was chosen for that)
    faults = parse_faults([{"kind": "dead", "worker": 2, "start": 2.0, "end": 8.0},
                           {"kind": "rollback_rate", "rate": 0.3}, {"kind": "error_rate", "rate": 0.05}], 3)
    setup = make_setup(TINY.replace(faults=faults), MANUAL, True)
    urls = usual_urls(setup)
    rows = {}
    for transport in ("direct", "http"):
        rows[transport] = without_transport(run_setup(setup, transport, worker_urls=urls))
    direct, http = rows["direct"], rows["http"]
    assert lost["direct"] and lost["http"] == lost["direct"]
    assert direct["gateway_retries"] > 0 and direct["rollback_retries"] > 0 and direct["re_pins"] > 0
    assert json.dumps(http) == json.dumps(direct)


def test_http_with_arrival_time_engines_needs_no_clock_owner():
    """Workers that answer at arrival (``engine = "arrival"``): no co-simulated clock, and still http == direct."""
    from sim.transports.http import HttpTransport

    setup = make_setup(TINY.replace(engine="arrival", sessions=4), MANUAL, True)
    urls = usual_urls(setup)
    tr = HttpTransport(setup, urls=urls)
    try:
        assert tr.owner is None and tr.bind_clock(None) is None  # type: ignore[arg-type]
    finally:
        tr.close()
    direct = run_setup(setup, "direct", worker_urls=urls)
    http = run_setup(setup, "http", worker_urls=urls)
    assert direct["errors"] == 0
    assert json.dumps(without_transport(http)) == json.dumps(without_transport(direct))


def test_a_request_that_never_reaches_an_engine_nor_returns_fails_with_a_transport_error():
    """The clock's owner never waits without bound: a stuck release names what it waited for."""
    import asyncio

    from sim.transports.base import TransportError
    from sim.transports.owner import ClockOwner

    owner = ClockOwner(["w0"], timeout=0.2)
    try:
        steps = owner.steps(asyncio.sleep(1.0))
        with pytest.raises(TransportError, match=r"neither reached a worker's engine nor was answered within 0\.2 s"):
            next(steps)
    finally:
        owner.close()


def test_http_runs_repeat_bit_for_bit():
    setup = make_setup(TINY, PolicyConfig("manual", "random"), True)
    urls = usual_urls(setup)
    a, b = run_setup(setup, "http", worker_urls=urls), run_setup(setup, "http", worker_urls=urls)
    assert json.dumps(public(a)) == json.dumps(public(b))


def test_seed_changes_the_run():
    a = run_setup(make_setup(TINY, PolicyConfig("manual", "random"), True), "direct")
    b = run_setup(make_setup(TINY.replace(seed=8), PolicyConfig("manual", "random"), True, seed=8), "direct")
    assert public(a) != public(b)


def test_manual_branch_counters_match_sessions_and_turns():
    on = run_setup(make_setup(TINY, MANUAL, True), "direct")
    sessions, requests = on["sessions"], on["requests"]
    assert on["gateway_branches"]["manual"] == {"vacant": sessions, "occupied_hit": requests - sessions}
    off = run_setup(make_setup(TINY, MANUAL, False), "direct")
    assert off["gateway_branches"]["manual"] == {"no_routing_id": off["requests"]}


def test_per_worker_counts_add_up():
    row = run_setup(make_setup(TINY, PolicyConfig("round_robin"), True), "direct")
    ws = row["workers"]
    assert [w["name"] for w in ws] == ["w0", "w1", "w2"]
    assert sum(w["requests"] for w in ws) == row["requests"]
    assert sum(w["prefill_tokens"] for w in ws) == row["prefill_tokens"]
    assert all(w["peak_kv_tokens"] > 0 for w in ws)
    assert row["imbalance"] >= 1.0


def test_default_scenario_key_on_reaches_the_oracle_and_off_falls_to_round_robin():
    s = load_scenario("default")
    on = run_setup(make_setup(s, MANUAL, True), "direct")
    off = run_setup(make_setup(s, MANUAL, False), "direct")
    rr = run_setup(make_setup(s, PolicyConfig("round_robin"), True), "direct")
    assert on["errors"] == off["errors"] == rr["errors"] == 0
    assert on["kv_reuse"] >= 0.9 * on["oracle_reuse"]
    assert abs(off["kv_reuse"] - rr["kv_reuse"]) < 0.05
    assert off["kv_reuse"] < 0.75 * on["kv_reuse"]
    assert on["gateway_branches"]["manual"]["vacant"] == s.sessions == on["sessions"]
    assert on["gateway_branches"]["manual"]["occupied_hit"] == on["requests"] - s.sessions


def test_compare_covers_the_issue_policies():
    names = {p.name for p in COMPARE_POLICIES}
    assert names == {"manual/random", "manual/min_load", "manual/min_group", "consistent_hashing", "cache_aware",
                     "round_robin"}


def test_direct_worker_urls_do_not_depend_on_ports_other_processes_hold():
    """The gateway hashes worker URLs, so ``direct`` must not probe the machine's ports to choose them."""
    import socket

    from sim.transports.direct import DirectTransport
    from sim.transports.pool import port_salt, stable_ports

    setup = make_setup(TINY, PolicyConfig("prefix_hash"), True)  # a setup no other test runs over http
    usual = stable_ports(port_salt(setup), TINY.workers, check=False)
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", usual[0]))
        except OSError:
            pytest.skip("the usual port is taken by something else already")
        held.listen()
        t = DirectTransport(setup)
        try:
            assert list(t.worker_cores) == [f"http://127.0.0.1:{p}" for p in usual]
        finally:
            t.close()


def test_kv_bound_makespan_is_set_by_kv_capacity():
    """kv-bound exists so that routing can move the rollout's makespan: with the same workload on an
    unbounded cache the step is much shorter (in kv-pressure it is not: tool time sets it there)."""
    s = load_scenario("kv-bound")
    bounded = run_setup(make_setup(s, MANUAL, True), "direct")
    unbounded = run_setup(make_setup(s.replace(kv_capacity_tokens=10**9), MANUAL, True), "direct")
    # near the oracle's reuse: less the never-cached last tokens (see the first test), plus what a request queued
    # behind KV admission finds at admission that finished after its arrival (the oracle matches at arrival)
    assert unbounded["kv_reuse"] == pytest.approx(unbounded["oracle_reuse"], abs=0.005)
    assert unbounded["makespan"] < 0.9 * bounded["makespan"]
    assert bounded["kv_reuse"] < 0.8 * unbounded["kv_reuse"]


def test_http_waits_for_its_usual_ports_before_taking_another_block():
    """A port of the usual block held for a moment (a client's ephemeral port) does not change the URLs."""
    import socket
    import threading

    from sim.transports.pool import stable_ports

    salt = "test-wait-for-usual-ports"
    usual = stable_ports(salt, 3, check=False)
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", usual[1]))
    except OSError:
        held.close()
        pytest.skip("the usual port is taken by something else already")
    held.listen()
    threading.Timer(0.3, held.close).start()
    assert stable_ports(salt, 3, wait=5.0) == usual
    with socket.socket() as again:
        again.bind(("127.0.0.1", usual[1]))
        again.listen()
        assert stable_ports(salt, 3, wait=0.2) != usual  # held past the wait: the next free block


def test_port_holders_names_the_sockets_on_a_port():
    """What the http warning reports when the usual block is taken: a listener, a client's ephemeral port."""
    import socket

    from sim.transports.pool import port_holders

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.socket() as client:
            client.connect(("127.0.0.1", port))
            ephemeral = client.getsockname()[1]
            held = port_holders([port, ephemeral])
    assert "LISTEN" in held[port]
    assert "ESTABLISHED" in held[ephemeral]


@pytest.mark.parametrize("transport", ["direct", "http", "external", "live"])
def test_runs_tune_the_cyclic_gc_and_give_it_back(transport):
    """direct: no cyclic GC; http/external: young passes every 10,000 net allocations; live: untouched. The
    caller's settings come back afterwards, also when the run fails."""
    import gc

    from sim.runner import _gc_for

    before, enabled = gc.get_threshold(), gc.isenabled()
    with pytest.raises(RuntimeError), _gc_for(transport):
        if transport == "direct":
            assert not gc.isenabled()
        else:
            assert gc.isenabled()
            assert gc.get_threshold() == ((10_000, *before[1:]) if transport in ("http", "external") else before)
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == before and gc.isenabled() == enabled


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket table")
def test_an_http_run_leaves_no_time_wait_on_a_client_port():
    """Every connection of an http run is closed by its server first, so the 60 s TIME_WAIT of each close sits
    on a server's own port. On a client's ephemeral port it would block binding that port (SO_REUSEADDR or not)
    for 60 s, and ephemeral ports fall inside the blocks later runs need for their workers."""
    from sim.agents import run_workload
    from sim.transports.http import HttpTransport

    def time_waits() -> set[tuple[int, int]]:
        out = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "06":
                out.add(tuple(int(a.rsplit(":", 1)[1], 16) for a in fields[1:3]))
        return out

    before = time_waits()  # an earlier test's closes on these ports (same blocks) are not this run's
    tr = HttpTransport(make_setup(TINY.replace(sessions=4), MANUAL, True))
    try:
        result = run_workload(tr.setup.scenario, tr)
        assert result.requests and all(r.ok for r in result.requests)
        assert tr.gateway_metrics()
        roles = {s.port: "worker" for s in tr._worker_servers}
        roles[int(tr.gateway_url.rsplit(":", 1)[1])] = "gateway"
        roles[int(tr.session_url.rsplit(":", 1)[1])] = "session server"
        roles[int(tr.metrics_url.rsplit(":", 1)[1].split("/")[0])] = "gateway metrics"
    finally:
        tr.close()
    client_side = [(local, roles[remote]) for local, remote in time_waits() - before
                   if remote in roles and local not in roles]
    assert client_side == []  # (client port, the server it talked to)


def test_a_port_whose_server_closed_its_connections_is_free_again_at_once():
    """The TIME_WAIT a stopped server leaves on its own port does not keep the next run off it (both bind with
    SO_REUSEADDR), so a setup run twice in a row gets its usual block both times without waiting."""
    import httpx
    from fastapi import FastAPI

    from sim.transports.pool import _ports_free, port_holders
    from testbed_common.procs import ThreadServer

    app = FastAPI()
    app.get("/x")(lambda: {})
    server = ThreadServer(app).start()
    with httpx.Client(trust_env=False) as client:
        assert client.get(f"{server.url}/x").status_code == 200
        server.stop()  # the server closes the kept-alive connection first
    assert "TIME_WAIT" in port_holders([server.port]).get(server.port, [])
    assert _ports_free(server.port, 1)


def test_direct_reads_the_workers_timelines_typed_and_writes_no_timeline_headers(monkeypatch):
    """The in-process gateway takes a worker's virtual finish from ``Reply.timing`` (the value ``x-sim-finish``
    would carry, exactly), so a ``direct`` run renders no worker headers (its results are ``http``'s:
    ``test_http_and_direct_agree_exactly``)."""
    from sim.worker.reply import Reply

    reads = []
    rendered = Reply.headers.fget
    monkeypatch.setattr(Reply, "headers", property(lambda r: reads.append(r) or rendered(r), Reply.headers.fset))
    setup = make_setup(TINY.replace(sessions=3), MANUAL, True)
    row = run_setup(setup, "direct")
    assert row["errors"] == 0 and row["requests"] > 3 and reads == []


class ViewSpy:
    """A transport that keeps the session views its agents read."""

    def __init__(self, transport) -> None:
        self.transport, self.views = transport, []

    def get_session(self, session_id):
        reply = self.transport.get_session(session_id)
        self.views.append(reply.body)
        return reply

    def __getattr__(self, name):
        return getattr(self.transport, name)


def test_direct_builds_answer_bodies_only_when_read_and_they_are_what_http_carries():
    """``direct`` hands a worker's chat answers to the session core and the agents typed (``fastjson.ChatAnswer``):
    a run builds none of their bodies (agents count records, they do not read them); read whole, every session's
    records are the ones the ``http`` stack's session server answers with."""
    from sim.agents import AgentRunner
    from sim.runner import open_transport
    from testbed_common.fastjson import ChatAnswer, dumps, loads

    setup = make_setup(TINY.replace(sessions=4), MANUAL, True)
    urls = usual_urls(setup)
    records = {}
    for transport in ("direct", "http"):
        with open_transport(transport, setup, worker_urls=urls) as tr:
            spy = ViewSpy(tr)
            result = AgentRunner(setup.scenario, spy).run()
        assert len(spy.views) == len(result.sessions) == 4 and all(s.error is None for s in result.sessions)
        records[transport] = [v["records"] for v in spy.views]
    direct = [r["response"] for rs in records["direct"] for r in rs]
    assert direct and all(isinstance(r, ChatAnswer) for r in direct)
    assert not any(r._body for r in direct)  # never built
    built = [[{**r, "response": r["response"].value()} for r in rs] for rs in records["direct"]]
    assert loads(dumps(built)) == records["http"]

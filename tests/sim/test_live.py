"""Live time: the SimPy workload paced by the wall clock, requests concurrent, and the stack around it.

- ``LiveEnvironment`` runs calls concurrently in threads and resumes the waiting process with the result;
  model time follows the scaled wall clock and SimPy timeouts still end at their exact model times;
- ``LiveAgentRunner`` sends no ``sim_time``, keeps records on one clock, and feeds the oracle in arrival order;
- ``LiveTransport`` runs a whole live stack (mock gateway process), crashes and restarts a worker on its URL;
- ``sim.real_smg`` translates flags for the real binary and refuses the testbed's extensions;
- ``run_setup(setup, "live")`` and ``smg-testbed run --gateway smg`` (real binary) give result rows.
"""

from __future__ import annotations

import itertools
import json
import threading

import httpx
import pytest

from sim.commands import run as run_cmd
from sim.live import Fault, LiveAgentRunner, LiveEnvironment, LiveTransport, live_setup
from sim.measures import summarize
from sim.real_smg import LIVE_DEFAULTS, GatewayFlagError, gateway_argv, smg_args, with_defaults, without_flag
from sim.runner import PolicyConfig, make_setup, public, run_setup
from sim.workload.scenario import load_scenario
from testbed_common.procs import smg_binary

SMALL = load_scenario("conformance").replace(sessions=4)


# ---- LiveEnvironment --------------------------------------------------------------------------------------------


def test_calls_run_concurrently_and_resume_their_process():
    env = LiveEnvironment(speedup=100.0)
    barrier = threading.Barrier(3, timeout=10)  # only passes if three calls are in flight at once
    got = []

    def proc(i):
        value = yield env.call(lambda: (barrier.wait(), i * 10)[1])
        got.append((i, value, env.now))

    for i in range(3):
        env.process(proc(i))
    env.run()
    assert sorted(v for _, v, _ in got) == [0, 10, 20]
    assert all(t >= 0 for _, _, t in got)


def test_timeouts_end_at_their_model_times_and_the_clock_never_goes_back():
    env = LiveEnvironment(speedup=200.0)
    seen = []

    def proc():
        yield env.timeout(1.5)
        seen.append(env.now)
        yield env.call(lambda: None)
        seen.append(env.now)
        yield env.timeout(0.5)
        seen.append(env.now)

    env.process(proc())
    env.run()
    assert seen[0] == 1.5
    assert seen[1] >= seen[0]
    assert seen[2] == pytest.approx(seen[1] + 0.5)


def test_a_failing_call_hands_its_exception_to_the_process():
    env = LiveEnvironment(speedup=50.0)
    out = []

    def boom():
        raise KeyError("x")

    def proc():
        out.append((yield env.call(boom)))

    env.process(proc())
    env.run()
    assert isinstance(out[0], KeyError)


def test_speedup_must_be_positive():
    with pytest.raises(ValueError):
        LiveEnvironment(speedup=0)
    with pytest.raises(ValueError):
        live_setup(make_setup(SMALL, PolicyConfig("manual", "min_load"), True), "mock", -1)


# ---- flags for the real binary ----------------------------------------------------------------------------------


def test_smg_args_drop_the_seed_and_refuse_testbed_extensions():
    assert smg_args(["--policy", "manual", "--seed", "3", "--assignment-mode", "min_load"]) == [
        "--policy", "manual", "--assignment-mode", "min_load"]
    assert smg_args(["--seed=4", "--policy", "prefix_hash"]) == ["--policy", "prefix_hash"]
    for bad in (["--policy", "bounded_load"], ["--policy", "manual", "--assignment-mode", "min_kv"],
                ["--policy", "manual", "--kv-hot-min-keys", "2"], ["--bounded-load-epsilon", "0.2"]):
        with pytest.raises(GatewayFlagError):
            smg_args(bad)


def test_live_defaults_are_added_only_when_not_set():
    args = with_defaults(["--policy", "manual", "--health-check-interval-secs", "7"])
    assert args.count("--health-check-interval-secs") == 1
    assert args[args.index("--health-check-interval-secs") + 1] == "7"
    for flag, value in LIVE_DEFAULTS.items():
        if flag != "--health-check-interval-secs":
            assert args[args.index(flag) + 1] == value
    assert without_flag(["--a", "1", "--b=2", "--c", "3"], "--b") == ["--a", "1", "--c", "3"]


def test_gateway_command_lines_are_loopback_and_carry_the_same_policy():
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    mock = gateway_argv("mock", ["--policy", "consistent_hashing"], urls, 10, 11, seed=5)
    assert mock[mock.index("--host") + 1] == "127.0.0.1" and mock[mock.index("--prometheus-host") + 1] == "127.0.0.1"
    assert mock[mock.index("--seed") + 1] == "5"
    assert mock[mock.index("--worker-startup-check-interval") + 1] == "1"
    if smg_binary() is not None:
        real = gateway_argv("smg", ["--policy", "consistent_hashing", "--seed", "5"], urls, 10, 11)
        assert real[1] == "launch" and "--seed" not in real
        assert real[real.index("--policy") + 1] == "consistent_hashing"
        assert real[real.index("--prometheus-host") + 1] == "127.0.0.1"
    with pytest.raises(ValueError):
        gateway_argv("nginx", [], urls, 10, 11)


# ---- the live stack (mock gateway process) ----------------------------------------------------------------------


def test_live_run_behind_the_mock_gateway():
    setup = live_setup(make_setup(SMALL, PolicyConfig("manual", "min_group"), True), "mock", 40.0)
    tr = LiveTransport(setup)
    bodies = []
    try:
        runner = tr.agent_runner(SMALL)
        orig = tr.chat

        def spy(sid, body):
            bodies.append(body)
            return orig(sid, body)

        tr.chat = spy  # type: ignore[method-assign]
        result = runner.run()
        metrics = tr.gateway_metrics()
        m = summarize(result, tr.workers, tr.worker_stats(), metrics)
    finally:
        tr.close()
    assert isinstance(runner, LiveAgentRunner)
    assert m["errors"] == 0 and m["requests"] == 4 * 12
    assert bodies and all("sim_time" not in b for b in bodies)  # live time: workers wait, gateway counts in flight
    assert m["gateway_branches"] == {"manual": {"occupied_hit": 44, "vacant": 4}}
    assert m["stickiness"] == 1.0
    assert 0 < m["kv_reuse"] <= m["oracle_reuse"] + 0.02
    for r in result.requests:
        assert r.arrival <= r.first_token <= r.finish <= result.end_time + 1e-9
        assert r.sent <= r.finish
    by_session: dict[int, list] = {}
    for r in result.requests:
        by_session.setdefault(r.session, []).append(r)
    for reqs in by_session.values():  # a session's turns follow one another on the runner's clock
        assert all(a.finish <= b.sent + 1e-9 for a, b in itertools.pairwise(reqs))
    assert sum(r.oracle_cached for r in result.requests) == result.oracle.cached_tokens


def test_a_crashed_worker_refuses_connections_and_comes_back_empty_on_its_url():
    setup = live_setup(make_setup(SMALL.replace(sessions=2), PolicyConfig("consistent_hashing"), True), "mock", 40.0)
    tr = LiveTransport(setup)
    try:
        url = tr.worker_urls[1]
        old = tr.cores[1]
        tr.kill_worker(1)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
        tr.restart_worker(1)
        assert httpx.get(f"{url}/health", timeout=2).status_code == 200
        assert tr.cores[1] is not old and tr.cores[1].name == old.name
        assert tr.worker_stats()[old.name]["restarts"] == 1
    finally:
        tr.close()


def test_faults_are_logged_on_the_runner_clock():
    scenario = SMALL.replace(sessions=3)
    setup = live_setup(make_setup(scenario, PolicyConfig("manual", "random"), True), "mock", 40.0)
    tr = LiveTransport(setup)
    try:
        runner = tr.agent_runner(scenario, faults=[Fault(0, 5.0, 12.0)])
        result = runner.run()
        branches = summarize(result, tr.workers, None, tr.gateway_metrics())["gateway_branches"]
    finally:
        tr.close()
    (k, kname, kt), (r, rname, rt) = runner.fault_log
    assert (k, kname, r, rname) == ("kill", "w0", "restart", "w0")
    assert 5.0 <= kt < rt and rt >= 12.0
    assert sum(1 for r in result.requests if not r.ok) == 0  # the gateway retried on another worker
    assert "manual" in branches


def test_run_setup_live_gives_a_row_with_gateway_and_speedup():
    setup = live_setup(make_setup(SMALL.replace(sessions=2), PolicyConfig("prefix_hash"), True), "mock", 40.0)
    row = run_setup(setup, "live")
    assert row["transport"] == "live" and row["gateway"] == "mock" and row["speedup"] == 40.0
    assert row["errors"] == 0 and row["requests"] == 24
    assert public(row)["gateway_branches"]["prefix_hash"]["ring_hit"] == 24


# ---- the real binary --------------------------------------------------------------------------------------------


@pytest.mark.real_smg
@pytest.mark.skipif(smg_binary() is None, reason="smg 1.13.0 not installed")
def test_run_command_against_the_real_smg(capsys):
    code = run_cmd.main(["--scenario", "conformance", "--sessions", "3", "--gateway", "smg", "--speedup", "40",
                         "--policy", "consistent_hashing", "--json"])
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert row["gateway"] == "smg" and row["transport"] == "live"
    assert row["errors"] == 0 and row["requests"] == 36
    assert row["gateway_branches"] == {"consistent_hashing": {"routing_key_hit": 36}}
    assert row["stickiness"] == 1.0


@pytest.mark.real_smg
@pytest.mark.skipif(smg_binary() is None, reason="smg 1.13.0 not installed")
def test_run_command_refuses_testbed_policies_for_smg():
    assert run_cmd.main(["--scenario", "conformance", "--sessions", "1", "--gateway", "smg",
                         "--policy", "bounded_load", "--json"]) == 2


def test_sweep_live_with_the_mock(tmp_path):
    from sim.commands import sweep

    code = sweep.main(["--scenario", "conformance", "--sessions", "2", "--policy", "consistent_hashing", "--live",
                       "--speedup", "40", "--out", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert doc["transport"] == "live"
    [run] = doc["runs"]
    assert run["gateway"] == "mock" and run["errors"] == 0 and run["requests"] == 24


def test_live_options_are_checked():
    from sim.commands import compare

    assert compare.main(["--scenario", "conformance", "--live", "--speedup", "0"]) == 2
    assert run_cmd.main(["--scenario", "conformance", "--live", "--transport", "external",
                         "--gateway-url", "http://127.0.0.1:1"]) == 2

"""Live time on a PD pool: the workers run their roles (each prefill worker listening on its bootstrap port, the
live KV-transfer rendezvous), the gateway (the mock, or the real ``smg``) runs in PD mode with the pool's
``--pd-disaggregation --prefill URL PORT ... --decode URL ...``, and the oracle is the PD one (prompt-only)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sim.live import LiveTransport, live_setup
from sim.measures import summarize
from sim.real_smg import GatewayFlagError, gateway_argv, smg_args
from sim.runner import PolicyConfig, make_setup
from sim.transports.pool import bootstrap_ports, worker_flags
from sim.workload.scenario import load_scenario

PD = load_scenario("pd").replace(sessions=4)
SPEEDUP = 20.0


def test_the_live_gateway_gets_the_pd_pool_as_prefill_and_decode_workers():
    urls = [f"http://127.0.0.1:{p}" for p in range(30000, 30000 + PD.workers)]
    flags = worker_flags(PD, urls)
    ports = bootstrap_ports(PD, urls)
    assert flags == ["--pd-disaggregation", "--prefill", urls[0], str(ports[0]), "--prefill", urls[1], str(ports[1]),
                     *[x for u in urls[2:] for x in ("--decode", u)]]
    argv = gateway_argv("mock", ["--policy", "manual"], urls, 10, 11, seed=3, worker_flags=flags)
    assert "--worker-urls" not in argv
    assert argv[argv.index("--pd-disaggregation"):][:len(flags)] == flags
    co = load_scenario("conformance")
    co_urls = urls[:co.workers]
    assert worker_flags(co, co_urls) == ["--worker-urls", *co_urls]


def test_a_legs_testbed_policy_is_refused_for_smg():
    assert smg_args(["--pd-disaggregation", "--policy", "manual", "--decode-policy", "round_robin", "--seed", "1"]) \
        == ["--pd-disaggregation", "--policy", "manual", "--decode-policy", "round_robin"]
    for flag in ("--prefill-policy", "--decode-policy"):
        with pytest.raises(GatewayFlagError, match=f"{flag} bounded_load"):
            smg_args(["--policy", "manual", flag, "bounded_load"])


def probe_failures(metrics: str) -> dict[str, float]:
    return {s.labels["phase"]: s.value for fam in text_string_to_metric_families(metrics)
            for s in fam.samples if s.name == "smg_pd_rendezvous_failures_total" and s.value}


@pytest.mark.parametrize("gateway", ["mock", pytest.param("smg", marks=pytest.mark.real_smg)])
def test_a_short_live_pd_run_completes_on_both_legs(gateway, request):
    smg_bin = request.getfixturevalue("smg_bin").path if gateway == "smg" else None
    setup = live_setup(make_setup(PD, PolicyConfig("manual", "min_load"), True), gateway, SPEEDUP, smg_bin)
    tr = LiveTransport(setup)
    try:
        result = tr.agent_runner(PD).run()
        metrics = tr.gateway_metrics()
        m = summarize(result, tr.workers, tr.worker_stats(), metrics,
                      roles={name: PD.role_of(i) for i, name in enumerate(tr.workers)})
    finally:
        tr.close()
    assert m["errors"] == 0 and m["requests"] == len(result.requests) > 0
    assert probe_failures(metrics) == {}
    assert result.oracle.prompt_only and sum(r.oracle_cached for r in result.requests) == result.oracle.cached_tokens
    for r in result.requests:
        assert r.prefill_worker in ("p0", "p1") and r.worker.startswith("d")
        assert r.transfer_bytes > 0
        # one clock (the runner's): the prefill, the transfer, then the decode worker's first token and answer
        assert r.start <= r.prefill_end <= r.transfer_ready <= r.first_token <= r.finish
    assert m["stickiness"] == 1.0

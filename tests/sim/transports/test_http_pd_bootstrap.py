"""The ``http`` transport's PD pool: each prefill worker listens on the bootstrap port the gateway's ``--prefill URL
PORT`` names, so the gateway's registration probe succeeds (no ``smg_pd_rendezvous_failures_total{phase="probe"}``),
and the port is closed again with the run."""

from __future__ import annotations

import socket

from prometheus_client.parser import text_string_to_metric_families

from sim.agents import AgentRunner
from sim.runner import PolicyConfig, make_setup, open_transport
from sim.transports.pool import bootstrap_ports, gateway_argv
from sim.workload.scenario import load_scenario
from testbed_common.procs import LOOPBACK


def accepts(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=2).close()
        return True
    except OSError:
        return False


def probe_failures(metrics: str) -> dict[str, float]:
    return {s.labels["phase"]: s.value for fam in text_string_to_metric_families(metrics)
            for s in fam.samples if s.name == "smg_pd_rendezvous_failures_total" and s.value}


def test_an_http_pd_run_serves_every_bootstrap_port_the_gateway_probes():
    scenario = load_scenario("pd").replace(sessions=2)
    setup = make_setup(scenario, PolicyConfig("manual", "min_load"), True)
    with open_transport("http", setup) as tr:
        ports = bootstrap_ports(scenario, tr.worker_urls)
        assert tr.bootstrap_ports == ports and len(ports) == scenario.prefill_workers
        argv = gateway_argv(setup, tr.worker_urls)
        assert [argv[i + 2] for i, a in enumerate(argv) if a == "--prefill"] == [str(p) for p in ports]
        assert all(accepts(p) for p in ports)
        result = AgentRunner(scenario, tr).run()
        metrics = tr.gateway_metrics()
    assert result.requests and all(r.ok for r in result.requests)
    assert probe_failures(metrics) == {}
    assert not any(accepts(p) for p in ports)

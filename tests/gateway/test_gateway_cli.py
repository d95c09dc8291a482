"""`python -m mock_gateway` / `smg-testbed gateway`: smg launch flags, unknown flags warned, metrics port."""

from __future__ import annotations

import contextlib

import httpx

from mock_gateway.config import parse_args
from mock_gateway.testing import chat, fake_worker_app
from testbed_common.procs import ThreadServer, free_ports, python_module, spawn, wait_http


def test_parse_args_mirrors_smg_launch_defaults_and_aliases():
    cfg = parse_args([])
    assert (cfg.policy, cfg.cache_threshold, cfg.balance_abs_threshold, cfg.balance_rel_threshold) == (
        "cache_aware",
        0.3,
        64,
        1.5,
    )
    assert (cfg.max_idle_secs, cfg.eviction_interval_secs, cfg.load_monitor_interval) == (14400, 60, 10)
    assert cfg.routing_key_headers == ["x-smg-routing-key"] and cfg.max_attempts == 5
    cfg = parse_args(
        [
            "--sticky-sessions",
            "--sticky-key-idle-secs",
            "3",
            "--spill-abs-threshold",
            "9",
            "--routing-key-headers",
            "X-Session-Id",
            "--disable-retries",
            "--model-path",
            "m",
            "--log-dir",
            "/tmp/x",
            "--enable-igw",
        ]
    )
    assert cfg.routing_key_override and cfg.max_idle_secs == 3 and cfg.balance_abs_threshold == 9
    assert cfg.routing_key_headers == ["x-session-id"] and cfg.max_attempts == 1
    assert cfg.ignored == ["--model-path", "--log-dir", "--enable-igw"]


def test_module_entry_point_serves_routes_and_prometheus_metrics(tmp_path):
    state: dict = {}
    with ThreadServer(fake_worker_app("w0", state=state)) as worker:
        port, pport = free_ports(2)
        args = python_module(
            "mock_gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(pport),
            "--worker-urls",
            worker.url,
            "--policy",
            "manual",
            "--assignment-mode",
            "min_load",
            "--worker-startup-check-interval",
            "0.1",
            "--model-path",
            "ignored-model",
        )
        proc = spawn(args, log_path=tmp_path / "gw.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/readiness", timeout=30, proc=proc.popen)
            with httpx.Client(trust_env=False, timeout=10) as c:
                r = c.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions", json=chat("hi"), headers={"x-smg-routing-key": "k"}
                )
                assert r.status_code == 200 and r.headers["x-smg-routed-worker-id"] == worker.url
                text = c.get(f"http://127.0.0.1:{pport}/metrics").text
            for name in (
                "smg_manual_policy_branch_total",
                "smg_manual_policy_cache_entries",
                "smg_worker_requests_total",
                "smg_worker_requests_active",
                "smg_worker_health",
                "smg_worker_selection_total",
                "smg_router_requests_total",
            ):
                assert name in text
            assert 'smg_manual_policy_branch_total{branch="vacant"} 1.0' in text
        finally:
            proc.stop()
        assert "--model-path" in proc.log()


def test_smg_testbed_dispatches_to_the_gateway(capsys):
    from sim.cli import main

    with contextlib.suppress(SystemExit):
        main(["gateway", "--help"])
    assert "--routing-key-override" in capsys.readouterr().out

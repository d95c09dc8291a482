"""``smg-testbed worker``: one process serving N workers on N consecutive loopback ports."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from sim.worker.cli import build_parser, main, make_cores
from testbed_common import vtime
from testbed_common.procs import consecutive_free_ports, python_module, running


def test_one_process_serves_n_named_workers_and_the_exit_fault_ends_it(tmp_path):
    base = consecutive_free_ports(2)
    args = python_module(
        "sim.worker",
        "--host",
        "127.0.0.1",
        "--port",
        str(base),
        "--count",
        "2",
        "--kv-capacity-tokens",
        "5000",
        "--model-name",
        "m-test",
        "--seed",
        "5",
    )
    with (
        running(args, f"http://127.0.0.1:{base + 1}/health", timeout=30, log_path=tmp_path / "w.log") as proc,
        httpx.Client(timeout=10, trust_env=False) as client,
    ):
        names = []
        for port in (base, base + 1):
            url = f"http://127.0.0.1:{port}"
            assert client.get(f"{url}/v1/models").json()["data"][0]["id"] == "m-test"
            assert client.get(f"{url}/v1/loads").json()["loads"][0]["max_total_num_tokens"] == 5000
            r = client.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "m-test",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3,
                    "sim_time": 0.0,
                },
            )
            names.append(r.headers[vtime.HEADER_WORKER])
        assert names == ["w0", "w1"]

        # the exit fault stops one worker; the other keeps serving; the process ends with the last one
        client.post(f"http://127.0.0.1:{base + 1}/admin/faults", json={"exit": True})
        _wait_closed(client, f"http://127.0.0.1:{base + 1}/health")
        assert client.get(f"http://127.0.0.1:{base}/health").status_code == 200
        assert proc.alive()
        client.post(f"http://127.0.0.1:{base}/admin/faults", json={"exit": True})
        proc.popen.wait(timeout=15)
        assert proc.popen.returncode == 3


def test_sigterm_stops_all_workers_cleanly(tmp_path):
    base = consecutive_free_ports(3)
    args = python_module("sim.worker", "--port", str(base), "--count", "3")
    with running(args, f"http://127.0.0.1:{base + 2}/health", timeout=30, log_path=tmp_path / "w.log") as proc:
        assert proc.stop() == 0


def _wait_closed(client: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.get(url)
        except httpx.TransportError:
            return
        time.sleep(0.05)
    pytest.fail(f"{url} still answers")


def test_flags_reach_the_worker_configs():
    args = build_parser().parse_args(
        [
            "--count",
            "3",
            "--kv-capacity-tokens",
            "0",
            "--page-size",
            "16",
            "--max-running-requests",
            "8",
            "--slowdown",
            "2",
            "--decode-floor",
            "0.01",
            "--fail-rate",
            "0.25",
            "--rollback-fail-rate",
            "0.5",
            "--unhealthy",
        ]
    )
    cores = make_cores(args)
    assert [c.name for c in cores] == ["w0", "w1", "w2"]
    cfg = cores[0].config
    assert cfg.kv_capacity_tokens is None
    assert (cfg.page_size, cfg.max_running_requests, cfg.slowdown) == (16, 8, 2.0)
    assert cfg.latency.decode_floor == 0.01
    assert (cores[2].faults.fail_rate, cores[2].faults.rollback_fail_rate) == (0.25, 0.5)
    assert cores[1].health()[0] == 503


@pytest.mark.parametrize(
    "argv", [["--count", "0"], ["--speedup", "0"], ["--fail-rate", "2"], ["--port", "65535", "--count", "2"]]
)
def test_bad_flags_are_refused(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_a_busy_port_fails_the_command_cleanly(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--port", str(port), "--count", "1"]) == 1
    assert "cannot bind" in capsys.readouterr().err

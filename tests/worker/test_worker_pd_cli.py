"""``smg-testbed worker --disaggregation-mode prefill|decode``: SGLang's PD flags, and the prefill worker's bootstrap
port (the real SMG's registration probe is a TCP connect to it)."""

from __future__ import annotations

import socket

import httpx
import pytest

from sim.worker.cli import build_parser, main, make_cores
from testbed_common.procs import consecutive_free_ports, free_port, python_module, running


def test_pd_flags_reach_the_worker_configs_and_a_pd_role_implies_the_iteration_engine():
    args = build_parser().parse_args([
        "--count", "2", "--disaggregation-mode", "decode", "--num-reserved-decode-tokens", "256",
        "--disaggregation-decode-enable-radix-cache", "--kv-bytes-per-token", "54144",
        "--transfer-bandwidth-gb-s", "40",
    ])
    cfg = make_cores(args)[1].config
    assert (cfg.disaggregation_mode, cfg.engine) == ("decode", "iteration")
    assert (cfg.num_reserved_decode_tokens, cfg.decode_radix_cache) == (256, True)
    assert (cfg.kv_bytes_per_token, cfg.transfer_bandwidth) == (54144, 40e9)


def test_without_a_pd_role_the_worker_is_co_located_on_the_arrival_engine_as_before():
    [core] = make_cores(build_parser().parse_args([]))
    assert (core.config.disaggregation_mode, core.config.engine) == (None, "arrival")
    assert not core.iteration
    [core] = make_cores(build_parser().parse_args(["--disaggregation-mode", "null", "--engine", "iteration"]))
    assert (core.config.disaggregation_mode, core.iteration) == (None, True)


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_an_explicit_arrival_engine_with_a_pd_role_is_refused_with_a_reason(mode, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--disaggregation-mode", mode, "--engine", "arrival"])
    assert e.value.code == 2
    assert "needs the iteration-level engine" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", "65535", "--count", "2"],
    ["--disaggregation-mode", "prefill", "--port", "20000", "--disaggregation-bootstrap-port", "20001", "--count", "2"],
    ["--kv-bytes-per-token", "0"], ["--transfer-bandwidth-gb-s", "0"], ["--num-reserved-decode-tokens", "-1"],
    ["--disaggregation-mode", "both"],
])
def test_bad_pd_flags_are_refused(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_a_busy_bootstrap_port_fails_the_command_cleanly(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--disaggregation-mode", "prefill", "--port", str(free_port()),
                     "--disaggregation-bootstrap-port", str(port)]) == 1
    assert "cannot bind" in capsys.readouterr().err


def test_each_prefill_worker_listens_on_its_bootstrap_port_and_reports_its_mode(tmp_path):
    base = consecutive_free_ports(4)  # two workers, then their two bootstrap ports
    args = python_module("sim.worker", "--port", str(base), "--count", "2", "--disaggregation-mode", "prefill",
                         "--disaggregation-bootstrap-port", str(base + 2))
    with (running(args, f"http://127.0.0.1:{base + 1}/health", timeout=30, log_path=tmp_path / "w.log"),
          httpx.Client(timeout=10, trust_env=False) as client):
        for bootstrap in (base + 2, base + 3):
            socket.create_connection(("127.0.0.1", bootstrap), timeout=5).close()  # SMG's registration probe
        info = client.get(f"http://127.0.0.1:{base}/server_info").json()
        assert info["disaggregation_mode"] == "prefill"

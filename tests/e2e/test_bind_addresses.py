"""Every server binds loopback unless told otherwise (issue 22).

Specification: ``smg-testbed gateway`` (gateway and metrics ports), ``smg-testbed session-server`` and
``smg-testbed worker`` started with no ``--host`` listen on 127.0.0.1 only, read from the kernel's socket
tables (``/proc/net/tcp`` and ``tcp6``); each CLI warns on stderr, in one line, when a bind address is not
loopback. The servers are stopped by PID.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

import pytest

from testbed_common.loopback import is_loopback
from testbed_common.procs import free_ports, python_module, spawn

LISTEN = "0A"
TABLES = {Path("/proc/net/tcp"): 4, Path("/proc/net/tcp6"): 16}

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")


def kernel_address(hex_address: str, size: int) -> str:
    """An address of /proc/net/tcp*: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
    return str(ipaddress.ip_address(words))


def listening(ports: set[int]) -> dict[int, set[str]]:
    """The local addresses listening on each of ``ports``."""
    out: dict[int, set[str]] = {p: set() for p in ports}
    for table, size in TABLES.items():
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, port = local.partition(":")
            if state == LISTEN and int(port, 16) in ports:
                out[int(port, 16)].add(kernel_address(address, size))
    return out


def smg_testbed(*args: str) -> list[str]:
    return python_module("sim.cli", *args)


def test_the_three_servers_listen_on_loopback_only_by_default(tmp_path):
    gw, metrics, session, worker = free_ports(4)
    commands = {
        "gateway": smg_testbed("gateway", "--port", str(gw), "--prometheus-port", str(metrics)),
        "session-server": smg_testbed("session-server", "--port", str(session)),
        "worker": smg_testbed("worker", "--port", str(worker)),
    }
    procs = {name: spawn(cmd, log_path=tmp_path / f"{name}.log") for name, cmd in commands.items()}
    ports = {gw, metrics, session, worker}
    try:
        deadline = time.monotonic() + 60
        while not all((bound := listening(ports)).values()) and time.monotonic() < deadline:
            for name, p in procs.items():
                assert p.alive(), f"{name} exited: {p.log()}"
            time.sleep(0.2)
        assert bound == {p: {"127.0.0.1"} for p in ports}
    finally:
        for p in procs.values():
            p.stop()
    for name, p in procs.items():
        assert "warning" not in p.log(), name


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (["gateway", "--port", "1", "--prometheus-port", "2"], ["--host", "--prometheus-host"]),
        (["session-server", "--port", "1"], ["--host"]),
        (["worker", "--port", "1"], ["--host"]),
    ],
)
def test_each_cli_warns_when_a_bind_address_is_not_loopback(command, flags):
    # a name that never resolves: the warning comes first, then the server fails to bind (nothing is exposed)
    host = "not-loopback.invalid"
    argv = [*command, *(x for f in flags for x in (f, host))]
    p = subprocess.run(smg_testbed(*argv), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    for flag in flags:
        assert (f"smg-testbed {command[0]}: warning: {flag} {host} is not a loopback address: this unauthenticated "
                f"server is reachable from the network (leave {flag} out to bind 127.0.0.1)\n") in p.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.org", False)],
)
def test_what_counts_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_kernel_addresses_decode_as_the_kernel_writes_them():
    assert kernel_address("0100007F", 4) == "127.0.0.1"
    assert kernel_address("00000000000000000000000001000000", 16) == "::1"

"""The loopback process harness: free ports, readiness, and stop-by-PID."""

import socket
import sys

import pytest
from fastapi import FastAPI

from testbed_common import procs


def test_free_ports_are_distinct_and_bindable():
    ports = procs.free_ports(5)
    assert len(set(ports)) == 5
    for p in ports:
        with socket.socket() as s:
            s.bind((procs.LOOPBACK, p))


def test_consecutive_free_ports():
    base = procs.consecutive_free_ports(4)
    for p in range(base, base + 4):
        with socket.socket() as s:
            s.bind((procs.LOOPBACK, p))


def test_running_starts_waits_and_stops_by_pid():
    port = procs.free_port()
    args = [sys.executable, "-m", "http.server", str(port), "--bind", procs.LOOPBACK]
    with procs.running(args, f"http://{procs.LOOPBACK}:{port}/", timeout=20) as proc:
        assert proc.alive()
    assert not proc.alive()


def test_running_reports_a_child_that_dies_before_ready():
    args = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with pytest.raises(RuntimeError, match="exited with 3"), procs.running(args, "http://127.0.0.1:9/", timeout=10):
        pass


def test_thread_server_serves_and_stops():
    app = FastAPI()

    @app.get("/ping")
    def ping():
        return {"ok": True}

    with procs.ThreadServer(app) as server:
        import httpx

        assert httpx.get(server.url + "/ping", trust_env=False).json() == {"ok": True}
    with socket.socket() as s:
        s.bind((procs.LOOPBACK, server.port))

"""Ctrl-C stops a command cleanly with one line; a wait for ports is said at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from sim.runner import PolicyConfig, make_setup
from sim.transports.pool import port_candidates, port_salt, stable_ports
from sim.workload.scenario import load_scenario


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ctrl_c_during_an_http_run_stops_the_servers_with_one_line(tiny):
    setup = make_setup(load_scenario(str(tiny)).replace(sessions=400), PolicyConfig("manual", "min_load"), True)
    first = stable_ports(port_salt(setup), setup.scenario.workers, check=False)[0]
    proc = subprocess.Popen([sys.executable, "-c", "from sim.cli import main; raise SystemExit(main())", "run",
                             "--transport", "http", "--scenario", str(tiny), "--sessions", "400"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _listening(first):  # the workers are up: the run is under way
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "smg-testbed run: interrupted; servers stopped"
    assert "Traceback" not in err
    assert not _listening(first)
    try:
        os.killpg(proc.pid, 0)
        left = True
    except ProcessLookupError:
        left = False
    assert not left, "a process of the run's group is still alive"


def test_waiting_for_the_usual_ports_is_said_at_once(capsys):
    base = port_candidates("wait-test", 2)[0]
    with socket.socket() as held:
        held.bind(("127.0.0.1", base))
        held.listen()
        t0 = time.monotonic()
        ports = stable_ports("wait-test", 2, wait=0.5)
    assert time.monotonic() - t0 >= 0.5 and ports[0] != base
    err = capsys.readouterr().err
    assert f"waiting up to 0.5 s for the workers' usual ports {base}-{base + 1} (held: {base} LISTEN)" in err

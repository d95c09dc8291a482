"""The three servers on loopback in threads, for tests that probe them together (bad input, fuzzing).

Two mock workers <- the mock gateway (``--policy manual``) <- the session server, every server with the same
payload cap. Not a test module: imported by the tests that share it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from mock_gateway.app import create_app as gateway_app
from mock_gateway.config import parse_args
from session_server.app import ServerConfig
from session_server.app import create_app as session_app
from sim.engine.types import WorkerConfig
from sim.worker.app import create_app as worker_app
from sim.worker.core import WorkerCore
from testbed_common.procs import ThreadServer

# uvicorn logs a 500's traceback, and Python 3.11 formats it with ast.parse in the server thread; racing pytest's
# own ast.parse in the main thread that corrupts the AST recursion counter (CPython gh-106905: "AST constructor
# recursion depth mismatch", an INTERNALERROR). A 500 is still seen, in the response.
QUIET = "critical"


@dataclass
class Loopback:
    worker: str  # the first worker's URL
    gateway: str
    session: str
    gateway_core: Any


@contextlib.contextmanager
def loopback_stack(cap: int, model: str) -> Iterator[Loopback]:
    """Start the stack, wait until the gateway has registered both workers, stop everything on exit."""
    with contextlib.ExitStack() as es:
        workers = [
            es.enter_context(
                ThreadServer(
                    worker_app(
                        WorkerCore(WorkerConfig(name=f"w{i}"), model_name=model, context_length=8192),
                        speedup=1000.0,
                        max_payload_size=cap,
                    ),
                    log_level=QUIET,
                )
            )
            for i in range(2)
        ]
        argv = ["--worker-urls", *(w.url for w in workers), "--policy", "manual", "--seed", "1"]
        argv += ["--worker-startup-check-interval", "0.05", "--max-payload-size", str(cap), "--log-level", "error"]
        gw_app = gateway_app(parse_args(argv))
        gw = es.enter_context(ThreadServer(gw_app, log_level=QUIET))
        ss = es.enter_context(
            ThreadServer(session_app(ServerConfig(router_url=gw.url, max_body_bytes=cap)), log_level=QUIET)
        )
        with httpx.Client(trust_env=False, timeout=30) as c:
            deadline = time.monotonic() + 15
            while len(c.get(f"{gw.url}/workers").json()["workers"]) < 2:
                assert time.monotonic() < deadline, "workers did not register"
                time.sleep(0.02)
        yield Loopback(workers[0].url, gw.url, ss.url, gw_app.state.gateway.core)

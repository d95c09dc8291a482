"""The three servers on loopback with one payload cap, for tests that probe them together (bad input, fuzzing).

Two mock workers <- the mock gateway (``--policy manual``) <- the session server, as processes: the plugin's
``start_stack`` (``sim.pytest_plugin``) with every server's payload cap set to ``cap``. Not a test module:
imported by the tests that share it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sim.pytest_plugin import STACK_MODEL, Stack, start_stack

MODEL = STACK_MODEL  # the model the workers serve


@contextlib.contextmanager
def loopback_stack(cap: int) -> Iterator[Stack]:
    """Start the stack (the gateway has registered both workers when it is yielded), stop everything on exit."""
    gateway_args = ["--policy", "manual", "--seed", "1", "--worker-startup-check-interval", "0.05",
                    "--max-payload-size", str(cap), "--log-level", "error"]
    with start_stack(workers=2, gateway_args=gateway_args,
                     worker_args=["--max-payload-size", str(cap), "--context-length", "8192"],
                     session_args=["--max-body-bytes", str(cap)]) as stack:
        yield stack

"""Start and stop servers on loopback: free ports, readiness polling, stop by PID.

Used by tests, the runner and the conformance harness. Every server started here is bound to
127.0.0.1, bounded by a timeout, and stopped by the code that started it (context managers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

LOOPBACK = "127.0.0.1"
# for short-lived polling clients: the server closes each connection after its answer, so the TIME_WAIT of the
# close (60 s on Linux) sits on the server's port; a client closing first leaves it on its ephemeral port, where
# it blocks binding (even with SO_REUSEADDR) a port that a later run's workers may need (sim.transports.pool)
SERVER_CLOSES = {"connection": "close"}
# h11 refuses a request head (request line + headers) still incomplete past this many bytes with its own text/plain
# 400. Its default, 16 KiB, made the outcome depend on TCP segmentation: a 20 KiB path read in one piece reached the
# app (and its JSON error), read in two it did not. Every server here parses heads up to 1 MiB.
MAX_REQUEST_HEAD = 1 << 20
UVICORN_DEFAULTS = {"http": "h11", "h11_max_incomplete_event_size": MAX_REQUEST_HEAD}
_RESET_ON_CLOSE = (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def polling_client(timeout: float) -> httpx.Client:
    """A client for short-lived polls and scrapes on loopback that never leaves a TIME_WAIT on its own port.

    It asks the server to close each connection after its answer (``SERVER_CLOSES``), so the close's TIME_WAIT sits
    on the server's port. That alone is a race: a server that is slow to close (a busy event loop) lets the client,
    done reading, close first now and then. So the client's sockets also linger 0 s: a close the client makes first
    is a reset, which leaves no TIME_WAIT on either side (the answer was read whole before it)."""
    transport = httpx.HTTPTransport(socket_options=[_RESET_ON_CLOSE])
    return httpx.Client(timeout=timeout, trust_env=False, headers=SERVER_CLOSES, transport=transport)


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def consecutive_free_ports(n: int, attempts: int = 200) -> int:
    """The first of ``n`` consecutive free loopback ports (for ``worker --count N``)."""
    for _ in range(attempts):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((LOOPBACK, p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports found on {LOOPBACK}")


def wait_http(
    url: str, timeout: float = 30.0, ok: Sequence[int] = (200,), proc: subprocess.Popen | None = None
) -> None:
    """Poll ``url`` until it answers one of the ``ok`` statuses; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    with polling_client(2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
            try:
                r = client.get(url)
                if r.status_code in ok:
                    return
                last = r.status_code
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last!r})")


@dataclass
class Process:
    """A child process we started; ``stop()`` ends it (SIGTERM, then SIGKILL) by PID."""

    args: list[str]
    popen: subprocess.Popen
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL now (a crash, for failure tests)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""


def spawn(args: Sequence[str], log_path: Path | None = None, env: dict | None = None) -> Process:
    """Start ``args`` in its own process group (so stop() reaches its children too)."""
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        popen = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    finally:
        if log_path:
            out.close()
    return Process(list(args), popen, log_path)


def python_module(module: str, *args: str) -> list[str]:
    """A command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


SMG_BIN_ENV = "SMG_BIN"


def smg_binary(path: str | None = None) -> str | None:
    """Where the real ``smg`` launcher is: ``path`` when given, else ``$SMG_BIN``, else the ``smg`` next to this
    interpreter or on PATH; None when none is found. It only locates: ``sim.real_smg.resolve_smg`` checks it."""
    chosen = path or os.environ.get(SMG_BIN_ENV)
    if chosen:
        return chosen
    here = Path(sys.executable).parent / "smg"
    if here.exists():
        return str(here)
    return shutil.which("smg")


@contextlib.contextmanager
def running(args: Sequence[str], ready_url: str, timeout: float = 30.0, log_path: Path | None = None,
            ok: Sequence[int] = (200,), env: dict | None = None, grace: float = 10.0) -> Iterator[Process]:
    """Run a server process for the duration of a ``with`` block; it is stopped on exit (SIGTERM, then
    SIGKILL after ``grace`` seconds)."""
    proc = spawn(args, log_path=log_path, env=env)
    try:
        wait_http(ready_url, timeout=timeout, ok=ok, proc=proc.popen)
        yield proc
    except BaseException:
        proc.stop(timeout=grace)
        raise
    else:
        proc.stop(timeout=grace)


class ThreadServer:
    """A uvicorn server for an ASGI app, run in a background thread on loopback.

    Cheaper than a subprocess for tests and for the in-process ``http`` transport.
    """

    def __init__(self, app, port: int | None = None, log_level: str = "warning", **config) -> None:
        self.port = port or free_port()
        # h11 whatever else is installed: its refusals (and our apps' JSON errors behind it) are what the
        # bad-input tests specify; the loop is uvloop when installed (~1 ms less CPU per http-transport request)
        config = {**UVICORN_DEFAULTS, "loop": "auto", **config}
        self.config = uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level=log_level,
                                     lifespan="on", access_log=False, **config)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 15.0) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {self.port} did not start in {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

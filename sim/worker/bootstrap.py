"""PD rendezvous in live time: a prefill worker's bootstrap server, and the decode worker's call to it.

SGLang 0.5.23 (shared/specs/pd-hicache.md section 2): a prefill worker runs a bootstrap server on
``--disaggregation-bootstrap-port`` (default 8998), where the decode worker that shares a request's
``bootstrap_room`` finds the prefill's KV endpoints; the KV then goes by RDMA. The real SMG only probes that port
at registration (a TCP connect). Here the port serves ``POST /pd/transfer``: a decode worker posts its
``DecodeReady`` (``sim.engine.transfer``) once its engine has pre-allocated the request's KV; the prefill worker
answers when its own engine has finished that room's prefill, with the ``Transfer``; both cores then get
``transfer_ready`` (the prefill's answer is due at the transfer's end, the decode's request runs from then). A
handoff that fails (the bootstrap server unreachable, stopping: 503, or refusing: 4xx) fails the decode's request as
SGLang's ``KVPoll.Failed`` does: out of the engine with its KV, answered 500 at once (``WorkerCore.fail_transfer``).

Each worker has its own live clock (started with its app), so times go over the wire as offsets from the sender's
``now`` and are read against the receiver's ``now``. The virtual-time counterpart is the co-simulated clock's
owner (``sim.cosim``), which pairs the notices the ``/sim/advance`` answers carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Callable, Generator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sim.engine.transfer import (
    DecodeReady,
    Notice,
    PrefillDone,
    Transfer,
    TransferFabric,
    notice_from_json,
    notice_to_json,
    transfer_from_json,
    transfer_to_json,
)
from sim.worker.core import WorkerCore
from sim.worker.reply import Reply
from testbed_common import fastjson
from testbed_common.loopback import LOOPBACK
from testbed_common.procs import UVICORN_DEFAULTS

DEFAULT_BOOTSTRAP_PORT = 8998  # SGLang's --disaggregation-bootstrap-port
TRANSFER_PATH = "/pd/transfer"
# SGLang's bootstrap and waiting timeouts (SGLANG_DISAGGREGATION_*_TIMEOUT, 300 s): how long a decode worker waits
# for the prefill side of its room, wall seconds
BOOTSTRAP_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
_JSON = {"content-type": "application/json"}
log = logging.getLogger(__name__)


def shifted_notice(n: Notice, dt: float) -> Notice:
    """``n`` with its times moved by ``dt`` (to another worker's clock, or to offsets from a ``now``)."""
    if isinstance(n, PrefillDone):
        return dataclasses.replace(n, arrival=n.arrival + dt, start=n.start + dt, end=n.end + dt)
    return dataclasses.replace(n, at=n.at + dt)


def shifted_transfer(t: Transfer, dt: float) -> Transfer:
    """``t`` with all its times moved by ``dt``."""
    p, d = shifted_notice(t.prefill, dt), shifted_notice(t.decode, dt)
    return dataclasses.replace(t, ready=t.ready + dt, prefill=p, decode=d)


class RendezvousClosed(Exception):
    """The prefill worker stops: the rooms a decode worker waits for here will not be prefilled."""


class Rendezvous:
    """One worker's side of the live-time rendezvous; ``noticed`` takes what its core's ``advance`` produced.

    Prefill: its ``PrefillDone`` notices wait here for the decode worker's ``DecodeReady`` of the same room
    (``decode_ready``, the bootstrap route), or pair with one already here. Decode: each ``DecodeReady`` is posted to
    the bootstrap server its request named (``bootstrap_port`` null: this worker's own ``--disaggregation-bootstrap-
    port``, as SGLang); when that fails (no answer, or an error), the core fails the request (``fail_transfer``) and
    ``on_failed`` gets its error answer. ``on_transfer`` is called after a core got a transfer or failed one: its
    engine has a new next event."""

    def __init__(self, core: WorkerCore, now: Callable[[], float], on_transfer: Callable[[], None],
                 bootstrap_port: int = DEFAULT_BOOTSTRAP_PORT,
                 on_failed: Callable[[Reply], None] = lambda reply: None) -> None:
        self.core, self.now, self.on_transfer, self.on_failed = core, now, on_transfer, on_failed
        self.bootstrap_port = bootstrap_port
        self.fabric = TransferFabric()
        self._waiting: dict[int, asyncio.Future[Transfer]] = {}  # prefill: the rooms a decode worker waits for
        self._asks: set[asyncio.Task[None]] = set()  # decode: the calls to bootstrap servers under way
        self._client: httpx.AsyncClient | None = None

    def noticed(self, notices: list[Notice]) -> None:
        for n in notices:
            if isinstance(n, PrefillDone):
                try:
                    t = self.fabric.post(n)
                except ValueError as e:  # a room used twice: the first pairing stands
                    log.warning("worker %s: %s", self.core.name, e)
                    continue
                if t is not None:
                    self._paired(t)
            else:
                task = asyncio.get_running_loop().create_task(self._ask(n))
                self._asks.add(task)
                task.add_done_callback(self._asks.discard)

    # ---- prefill side ---------------------------------------------------------------------------------------------

    async def decode_ready(self, d: DecodeReady) -> Transfer:
        """The transfer of ``d``'s room, once this worker's prefill of it is done (``d`` in this worker's clock).
        ValueError when the room already has a decode side here."""
        if d.room in self._waiting:
            raise ValueError(f"room {d.room} already has a decode_ready")
        t = self.fabric.post(d)
        if t is not None:
            self._paired(t)
            return t
        fut = self._waiting[d.room] = asyncio.get_running_loop().create_future()
        try:
            return await fut
        finally:
            self._waiting.pop(d.room, None)

    def _paired(self, t: Transfer) -> None:
        self.core.transfer_ready(t)
        self.on_transfer()
        fut = self._waiting.get(t.room)
        if fut is not None and not fut.done():
            fut.set_result(t)

    # ---- decode side ----------------------------------------------------------------------------------------------

    async def _ask(self, d: DecodeReady) -> None:
        host, port = d.bootstrap_host or LOOPBACK, d.bootstrap_port or self.bootstrap_port
        url = f"http://{host}:{port}{TRANSFER_PATH}"
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=BOOTSTRAP_TIMEOUT, trust_env=False)
        body = fastjson.dumps(notice_to_json(shifted_notice(d, -self.now())))
        try:
            r = await self._client.post(url, content=body, headers=_JSON)
        except httpx.HTTPError as e:
            return self._failed(d, f"the bootstrap server {url} did not answer ({type(e).__name__}: {e})")
        if r.status_code != 200:
            return self._failed(d, f"the bootstrap server {url} answered {r.status_code}: {r.text[:200]}")
        try:
            t = shifted_transfer(transfer_from_json(fastjson.loads(r.content)), self.now())
        except (ValueError, RecursionError) as e:
            return self._failed(d, f"the bootstrap server {url} answered no transfer: {e}")
        self.core.transfer_ready(t)
        self.on_transfer()

    def _failed(self, d: DecodeReady, why: str) -> None:
        """No KV will come for ``d``'s room (SGLang: ``KVPoll.Failed``): the request leaves the engine, its handler
        gets the error answer at once, and the engine, with KV freed, may take the next request."""
        log.warning("worker %s: no KV transfer for room %s: %s", self.core.name, d.room, why)
        reply = self.core.fail_transfer(d.room, why)
        if reply is not None:
            self.on_failed(reply)
            self.on_transfer()

    async def close(self) -> None:
        """Stop asking (decode) and answer whoever waits for a room (prefill): the worker stops."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RendezvousClosed())
        for task in list(self._asks):
            task.cancel()
        await asyncio.gather(*self._asks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


def bootstrap_app(rendezvous: Rendezvous) -> Starlette:
    """The prefill worker's bootstrap server: ``POST /pd/transfer`` (a ``decode_ready`` notice, times as offsets from
    the sender's now) answers the room's transfer (times as offsets from this worker's now) once its prefill is done.
    """

    async def pd_transfer(request: Request) -> Response:
        try:
            d = notice_from_json(fastjson.loads(await request.body()))
            if not isinstance(d, DecodeReady):
                raise ValueError("expected a decode_ready notice")
        except (ValueError, RecursionError) as e:
            return JSONResponse({"error": f"bad decode_ready: {e}"}, status_code=400)
        try:
            t = await rendezvous.decode_ready(shifted_notice(d, rendezvous.now()))
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=409)
        except RendezvousClosed:
            return JSONResponse({"error": "the prefill worker is stopping"}, status_code=503)
        return Response(fastjson.dumps(transfer_to_json(shifted_transfer(t, -rendezvous.now()))),
                        media_type="application/json")

    return Starlette(routes=[Route(TRANSFER_PATH, pd_transfer, methods=["POST"])])


class _Server(uvicorn.Server):
    """Serves on the worker's own loop, next to its main server: signals are the process's business."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class BootstrapServer:
    """The bootstrap app on an already bound socket, as a task of the running loop (the worker app's lifespan)."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        # a decode worker still waiting for a room's prefill does not hold the worker's stop for long
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, **UVICORN_DEFAULTS)
        self.server = _Server(config)
        self.sock = sock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started and not self._task.done():
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()  # its startup failed: raise why

    async def stop(self) -> None:
        if self._task is not None:
            self.server.should_exit = True
            await self._task
            self._task = None

"""The mock SGLang worker's HTTP surface: a thin FastAPI layer over one ``WorkerCore``.

Routes (SGLang's names; what the real SMG gateway probes is in specs/smg-live-observations.md §2):
``GET /health`` (``/health_generate``), ``GET /v1/models`` (``owned_by: "sglang"``), ``GET /server_info``,
``/model_info`` (and ``/get_server_info``, ``/get_model_info``), ``GET /v1/loads`` (SMG's
``WorkerLoadResponse``; ``?sim_time=``), ``GET /metrics`` (``?sim_time=``), ``GET|POST /flush_cache`` (``?sim_time=``),
``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /generate``, ``GET|POST /admin/faults``.
``/v1/loads?include=disagg`` (or ``all``) adds SGLang's PD queue fields.
``/version`` is deliberately absent: a 200 there makes SMG classify the worker as vLLM.

Time: a body with ``sim_time`` is answered at once with its modelled timeline. Without it (live
time) the core's clock is ``(wall seconds since the app was made) * speedup`` and the answer is
held until the modelled finish (stream events until their own modelled times), i.e. the modelled
latency divided by ``speedup``. The first inference request sets the app's time (``app.state.mode``).

With the iteration-level engine (``WorkerCore.iteration``) a request's answer waits until the engine finishes it
(DESIGN.md "Time"); the handler holds it on a future keyed by the engine's handle:

- virtual time: the clock's owner (``sim.transports.owner``) steps the engine. The handler reports the arrival
  (``POST owner_url`` ``{"worker", "handle", "next_event_time", "leg"}``, ``leg`` the PD role or null) before it
  waits; the owner's control endpoints, which exist only in virtual time and only for loopback clients:
  ``POST /sim/advance`` ``{"until": t}`` runs the engine to ``t`` and releases the finished answers
  (``{"finished": [handles], "next_event_time": t | null, "notices": [...]}``, null: idle; ``notices``: the PD
  notices of that advance, ``sim.engine.transfer.notice_to_json``); ``POST /sim/transfer`` (a
  ``transfer_to_json`` body: the owner paired a room) hands the transfer to the core (``{"next_event_time"}``);
  ``POST /sim/abort`` drops what the engine holds, as a dying server (``{"aborted": [handles]}``), and
  ``POST /sim/drop`` ``{"handles": [...]}`` then closes those requests' connections, one call per request so
  that the owner can follow each one's retry.
- live time: a task started with the first live request steps the engine on the scaled wall clock: it sleeps
  until the engine's next event (woken early by a new request or a KV transfer), advances the engine to now and
  releases the finished answers. An answer is released at (or just after) its modelled finish, so the wait for its
  finish is over and the stream events, all due by then, go out at once. A PD worker's notices go to its
  rendezvous (``sim.worker.bootstrap``): a prefill worker serves it on its bootstrap socket; a decode leg whose KV
  handoff fails is answered SGLang's 500 at once (``WorkerCore.fail_transfer``).

Bad input (malformed JSON, wrong types, bodies over ``max_payload_size``) gets a 4xx JSON error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from sim.engine.transfer import Notice, notice_to_json, transfer_from_json
from sim.worker.bootstrap import DEFAULT_BOOTSTRAP_PORT, BootstrapServer, Rendezvous, bootstrap_app
from sim.worker.core import WorkerCore
from sim.worker.remote_storage import StoreUnavailable
from sim.worker.reply import Reply, error_body, error_reply
from testbed_common import fastjson, vtime
from testbed_common.asgi_fastpath import FastPathApp
from testbed_common.loopback import LOOPBACK, is_loopback
from testbed_common.procs import ThreadServer

DEFAULT_MAX_PAYLOAD_SIZE = 64 * 1024 * 1024
REPORT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# the report client's sockets reset when it closes first: no TIME_WAIT on its ephemeral port (procs.polling_client)
_RESET_ON_CLOSE = (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
log = logging.getLogger(__name__)


def _dumps(obj: Any) -> bytes:
    return fastjson.dumps(obj)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(body), status_code=status, headers=headers, media_type="application/json")


def _error(status: int, message: str, param: str | None = None) -> Response:
    return json_response(status, error_body(message, status, param))


class _BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LiveClock:
    """Scaled wall clock: ``(clock() - t0) * speedup`` model seconds."""

    def __init__(self, speedup: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not speedup > 0:
            raise ValueError("speedup must be > 0")
        self.speedup = speedup
        self._clock = clock
        self._t0 = clock()

    def now(self) -> float:
        return (self._clock() - self._t0) * self.speedup

    async def sleep_until(self, t: float) -> None:
        delay = (t - self.now()) / self.speedup
        if delay > 0:
            await asyncio.sleep(delay)


class Dropped(Exception):
    """The worker died with the request (``/sim/drop``): its connection is closed without an answer."""


class HeldRequests:
    """The requests an iteration-level engine holds, each a future its handler waits on, keyed by the handle."""

    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[Reply]] = {}

    def hold(self, handle: int) -> asyncio.Future[Reply]:
        fut = self._futures[handle] = asyncio.get_running_loop().create_future()
        return fut

    def release(self, replies: list[Reply]) -> list[int]:
        """Hand each finished request's answer to its handler; their handles, in finish order."""
        out = []
        for r in replies:
            assert r.pending is not None
            fut = self._futures.pop(r.pending, None)
            if fut is not None and not fut.done():
                fut.set_result(r)
            out.append(r.pending)
        return out

    def fail(self, handles: list[int], reply: Reply) -> None:
        """Answer each of these requests with ``reply`` (an error)."""
        for h in handles:
            fut = self._futures.pop(h, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def drop(self, handles: list[int]) -> None:
        for h in handles:
            fut = self._futures.pop(h, None)
            if fut is not None and not fut.done():
                fut.set_exception(Dropped())

    def __len__(self) -> int:
        return len(self._futures)


class LiveStepper:
    """Live time: steps the iteration-level engine on the scaled wall clock (module docstring); a PD engine's
    notices go to ``on_notices`` after each step."""

    def __init__(self, core: WorkerCore, clock: LiveClock, held: HeldRequests,
                 on_notices: Callable[[list[Notice]], None] | None = None) -> None:
        self.core, self.clock, self.held = core, clock, held
        self.on_notices = on_notices
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """A request reached the engine (or a KV transfer did): start stepping if not yet, and look at the engine's
        next event again."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        while True:
            t = self.core.next_event_time()
            delay = math.inf if t == math.inf else (t - self.clock.now()) / self.clock.speedup
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if delay == math.inf else delay)
                self._wake.clear()
                continue
            try:
                self.held.release(self.core.advance(self.core.now(self.clock.now())))
            except StoreUnavailable as e:  # HiCache's L3 is gone: the requests the engine held fail, and say why
                log.error("worker %s: %s", self.core.name, e)
                self.held.fail(self.core.abort_pending(), error_reply(str(e), status=503))
                continue
            if self.on_notices is not None and (notices := self.core.notices()):
                self.on_notices(notices)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _drop_connection(request: Request) -> bool:
    """Reset the request's TCP connection at once, as a dying server does: the client sees a transport failure, not
    an answer. uvicorn's ``send`` (what a fast route's ``Request`` is given) is its request cycle's bound method, whose
    ``transport`` is the connection; False when there is none (an in-process ASGI client)."""
    transport = getattr(getattr(request._send, "__self__", None), "transport", None)
    if transport is None:
        return False
    transport.abort()
    return True


def create_app(
    core: WorkerCore,
    *,
    speedup: float = 1.0,
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
    on_exit: Callable[[], None] | None = None,
    owner_url: str | None = None,
    bootstrap: socket.socket | None = None,
    bootstrap_port: int = DEFAULT_BOOTSTRAP_PORT,
) -> FastAPI:
    """The FastAPI app of one worker. ``on_exit`` is what the ``exit`` fault calls (the CLI stops
    this worker's server); without it the ``exit`` fault is refused. ``owner_url``: where a virtual-time request
    held by the iteration-level engine is reported (the co-simulated clock's owner); None reports nothing.
    ``bootstrap``: a prefill worker's bound bootstrap socket, served while the app runs (the real SMG probes it; the
    live-time rendezvous); ``bootstrap_port``: a decode worker's for requests whose ``bootstrap_port`` is null."""
    clock = LiveClock(speedup)
    held = HeldRequests()
    pd = core.config.disaggregation_mode

    def transfer_failed(reply: Reply) -> None:  # a decode leg's KV never came: its handler answers the error now
        held.release([reply])

    rendezvous = (Rendezvous(core, clock.now, lambda: stepper.wake(), bootstrap_port, on_failed=transfer_failed)
                  if pd is not None else None)
    stepper = LiveStepper(core, clock, held, rendezvous.noticed if rendezvous is not None else None)
    bootstrap_server = (BootstrapServer(bootstrap_app(rendezvous), bootstrap)
                        if rendezvous is not None and pd == "prefill" and bootstrap is not None else None)
    reporter: list[httpx.AsyncClient] = []  # made on first use, on the server's loop

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if bootstrap_server is not None:
            await bootstrap_server.start()
        yield
        await stepper.stop()
        if rendezvous is not None:
            await rendezvous.close()
        if bootstrap_server is not None:
            await bootstrap_server.stop()
        for client in reporter:
            await client.aclose()

    app = FastPathApp(title=f"mock SGLang worker {core.name}", docs_url=None, redoc_url=None, openapi_url=None,
                      lifespan=lifespan)
    app.state.core = core
    app.state.clock = clock
    app.state.on_exit = on_exit
    app.state.held = held
    app.state.mode = None  # "virtual" or "live": the time of the first inference request

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _error(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> Response:  # a bug, but still a JSON answer
        return _error(500, f"internal error in mock worker {core.name}: {type(exc).__name__}: {exc}")

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > max_payload_size:
                    raise _BadBody(413, f"request body exceeds {max_payload_size} bytes")
            except ValueError:
                raise _BadBody(400, "invalid content-length") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_payload_size:
                raise _BadBody(413, f"request body exceeds {max_payload_size} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise _BadBody(400, "request body is empty; expected a JSON object")
        try:
            return fastjson.loads(raw)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
            raise _BadBody(400, f"malformed JSON body: {e}") from None

    def sim_time_query(request: Request) -> float | None:
        raw = request.query_params.get(vtime.SIM_TIME_QUERY)
        if raw is None:
            return clock.now()
        t = vtime.request_time({vtime.SIM_TIME_FIELD: _to_float(raw)})
        if t is None:
            raise _BadBody(400, "sim_time must be a finite non-negative number")
        return t

    def next_event() -> float | None:
        """The engine's next event time as JSON has it (no infinity: None)."""
        t = core.next_event_time()
        return None if t == math.inf else t

    async def report(handle: int) -> None:
        """Tell the clock's owner that the engine holds ``handle`` now (virtual time). An owner that refuses it is
        releasing no request (its run is over, or being interrupted): nobody would ever advance the engine for
        it, so its connection is dropped at once (a server that waited for it could not stop)."""
        if owner_url is None:
            return
        if not reporter:
            transport = httpx.AsyncHTTPTransport(socket_options=[_RESET_ON_CLOSE])
            reporter.append(httpx.AsyncClient(timeout=REPORT_TIMEOUT, trust_env=False, transport=transport))
        body = {"worker": core.name, "handle": handle, "next_event_time": next_event(), "leg": pd}
        try:
            r = await reporter[0].post(owner_url, content=_dumps(body), headers={"content-type": "application/json"})
            if r.status_code >= 300:
                log.warning("worker %s: the clock's owner refused arrival %s: %s", core.name, handle, r.text[:200])
                held.drop([handle])
        except httpx.HTTPError as e:  # the owner then times out waiting, and says so
            log.warning("worker %s: arrival %s not reported to %s: %s", core.name, handle, owner_url, e)

    async def serve(route: str, request: Request) -> Response:
        try:
            body = await read_json(request)
        except _BadBody as e:
            return _error(e.status, str(e))
        mode = "virtual" if isinstance(body, dict) and body.get(vtime.SIM_TIME_FIELD) is not None else "live"
        if core.iteration and app.state.mode not in (None, mode):  # one clock steps the engine: not both
            return _error(400, f"worker {core.name} serves {app.state.mode} time (its first request's); a "
                               f"{mode}-time request cannot join its engine")
        if mode == "virtual" and core.iteration and owner_url is None:  # nobody would ever advance its engine
            return _error(400, f"worker {core.name} runs the iteration-level engine, which answers a virtual-time "
                               "request only when the co-simulated clock's owner advances it (smg-testbed's http "
                               "transport); for other clients start the worker with --engine arrival, or send "
                               "live-time requests (no sim_time)")
        if app.state.mode is None:
            app.state.mode = mode
        received = clock.now()
        reply = core.infer(route, body, received)
        if reply.pending is not None and reply.timing is None:  # the engine holds it (iteration-level)
            fut = held.hold(reply.pending)
            if reply.virtual:
                await report(reply.pending)
            else:
                stepper.wake()
            try:
                reply = await fut
            except Dropped:
                if _drop_connection(request):
                    await request.receive()  # until uvicorn has seen the connection go: nothing is sent then
                return _error(500, f"worker {core.name} died with this request")  # only an ASGI test client reads it
        # live time: hold each part until its modelled time, counted from this request's arrival (the
        # core's clock may be ahead of the wall clock if the worker also served virtual-time requests)
        offset = received - reply.timing.arrival if reply.timing is not None else 0.0
        return await send(reply, offset)

    async def send(reply: Reply, offset: float) -> Response:
        if reply.events is None:
            if reply.status == 200 and not reply.virtual and reply.timing is not None:
                await clock.sleep_until(reply.timing.finish + offset)
            return json_response(reply.status, reply.body, reply.headers)
        return StreamingResponse(
            _sse(reply, offset), status_code=reply.status, headers=reply.headers, media_type="text/event-stream"
        )

    async def _sse(reply: Reply, offset: float) -> AsyncIterator[bytes]:
        for event, t in zip(reply.events or [], reply.event_times, strict=True):
            if not reply.virtual:
                await clock.sleep_until(t + offset)
            yield b"data: " + _dumps(event) + b"\n\n"
        yield b"data: [DONE]\n\n"

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        status, body = core.health()
        return json_response(status, body)

    @app.get("/v1/models")
    async def models() -> Response:
        return json_response(200, core.models())

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> Response:
        return json_response(200, core.server_info())

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> Response:
        return json_response(200, core.model_info())

    @app.get("/v1/loads")
    async def loads(request: Request) -> Response:
        try:
            t = sim_time_query(request)
        except _BadBody as e:
            return _error(e.status, str(e))
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sections = {s.strip() for s in request.query_params.get("include", "").split(",")}  # SGLang's ?include=
        if sections & {"disagg", "all"}:
            return json_response(200, core.loads(t, timestamp=stamp, include_disagg=True))
        return json_response(200, core.loads(t, timestamp=stamp))

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        try:
            t = sim_time_query(request)
        except _BadBody as e:
            return _error(e.status, str(e))
        return Response(core.metrics(t), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache(request: Request) -> Response:
        try:
            t = sim_time_query(request)
        except _BadBody as e:
            return _error(e.status, str(e))
        return json_response(*core.flush_cache(t))

    @app.get("/admin/faults")
    async def get_faults() -> Response:
        return json_response(200, core.faults.as_dict())

    @app.post("/admin/faults")
    async def set_faults(request: Request) -> Response:
        try:
            body = await read_json(request)
        except _BadBody as e:
            return _error(e.status, str(e))
        if isinstance(body, dict) and body.get("exit") is True and app.state.on_exit is None:
            return _error(400, "this server cannot exit on request (no exit hook)", "exit")
        status, out = core.update_faults(body)
        if status == 200 and core.faults.exit:
            asyncio.get_running_loop().call_later(0.05, app.state.on_exit)
        return json_response(status, out)

    def control_refusal(request: Request) -> Response | None:
        """The control endpoints serve the clock's owner alone: virtual time, loopback clients."""
        if request.client is None or not is_loopback(request.client.host):
            return _error(403, "the /sim control endpoints answer loopback clients only")
        if app.state.mode == "live":
            return _error(409, f"worker {core.name} serves live time: its engine steps on the wall clock, and the "
                               "/sim control endpoints exist only in virtual time")
        return None

    async def control_body(request: Request) -> tuple[Any, Response | None]:
        """A control call's JSON body, or the answer refusing it (``control_refusal``, or a body that is no JSON)."""
        if (refused := control_refusal(request)) is not None:
            return None, refused
        try:
            return await read_json(request), None
        except _BadBody as e:
            return None, _error(e.status, str(e))

    @app.post("/sim/advance")
    async def sim_advance(request: Request) -> Response:
        body, refused = await control_body(request)
        if refused is not None:
            return refused
        until = body.get("until") if isinstance(body, dict) else None
        if isinstance(until, bool) or not isinstance(until, int | float) or not 0 <= until < math.inf:
            return _error(400, 'expected {"until": t}, t a finite non-negative number of virtual seconds', "until")
        finished = held.release(core.advance(float(until)))
        return json_response(200, {"finished": finished, "next_event_time": next_event(),
                                   "notices": [notice_to_json(n) for n in core.notices()]})

    @app.post("/sim/transfer")
    async def sim_transfer(request: Request) -> Response:
        body, refused = await control_body(request)
        if refused is not None:
            return refused
        if pd is None:
            return _error(400, f"worker {core.name} is co-located (no --disaggregation-mode): it has no KV transfers")
        try:
            transfer = transfer_from_json(body)
        except ValueError as e:
            return _error(400, f"expected a transfer (sim.engine.transfer.transfer_to_json): {e}")
        core.transfer_ready(transfer)
        return json_response(200, {"next_event_time": next_event()})

    @app.post("/sim/abort")
    async def sim_abort(request: Request) -> Response:
        if (refused := control_refusal(request)) is not None:
            return refused
        return json_response(200, {"aborted": core.abort_pending()})

    @app.post("/sim/drop")
    async def sim_drop(request: Request) -> Response:
        body, refused = await control_body(request)
        if refused is not None:
            return refused
        handles = body.get("handles") if isinstance(body, dict) else None
        if not isinstance(handles, list) or not all(type(h) is int for h in handles):
            return _error(400, 'expected {"handles": [int, ...]}', "handles")
        held.drop(handles)
        return json_response(200, {"dropped": handles})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await serve("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve("completions", request)

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        return await serve("generate", request)

    for path, endpoint in (("/v1/chat/completions", chat), ("/v1/completions", completions), ("/generate", generate)):
        app.fast_route("POST", path, endpoint)
    return app


def _to_float(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None


@contextlib.contextmanager
def serve_in_thread(
    core: WorkerCore, *, speedup: float = 1.0, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
    port: int | None = None, owner_url: str | None = None, bootstrap_port: int | None = None,
) -> Iterator[ThreadServer]:
    """Serve one worker with uvicorn in a background thread on loopback (tests, the ``http`` transport,
    the demo); stopped when the block ends. The ``exit`` fault stops this server. ``bootstrap_port``: a prefill
    worker listens there too (loopback); a decode worker's fallback for requests whose ``bootstrap_port`` is null."""
    holder: list[ThreadServer] = []

    def on_exit() -> None:
        holder[0].server.should_exit = True

    sock = None
    if bootstrap_port is not None and core.config.disaggregation_mode == "prefill":
        sock = socket.create_server((LOOPBACK, bootstrap_port))
    try:
        server = ThreadServer(
            create_app(core, speedup=speedup, max_payload_size=max_payload_size, on_exit=on_exit,
                       owner_url=owner_url, bootstrap=sock,
                       bootstrap_port=DEFAULT_BOOTSTRAP_PORT if bootstrap_port is None else bootstrap_port),
            port=port,
        )
        holder.append(server)
        with server:
            yield server
    finally:
        if sock is not None:
            sock.close()

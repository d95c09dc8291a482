"""The mock SGLang worker's HTTP surface: a thin FastAPI layer over one ``WorkerCore``.

Routes (SGLang's names; what the real SMG gateway probes is in specs/smg-live-observations.md §2):
``GET /health`` (``/health_generate``), ``GET /v1/models`` (``owned_by: "sglang"``), ``GET /server_info``,
``/model_info`` (and ``/get_server_info``, ``/get_model_info``), ``GET /v1/loads`` (SMG's
``WorkerLoadResponse``; ``?sim_time=``), ``GET /metrics`` (``?sim_time=``), ``GET|POST /flush_cache`` (``?sim_time=``),
``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /generate``, ``GET|POST /admin/faults``.
``/version`` is deliberately absent: a 200 there makes SMG classify the worker as vLLM.

Time: a body with ``sim_time`` is answered at once with its modelled timeline. Without it (live
time) the core's clock is ``(wall seconds since the app was made) * speedup`` and the answer is
held until the modelled finish (stream events until their own modelled times), i.e. the modelled
latency divided by ``speedup``.

Bad input (malformed JSON, wrong types, bodies over ``max_payload_size``) gets a 4xx JSON error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from sim.worker.core import WorkerCore
from sim.worker.reply import Reply, error_body
from testbed_common import fastjson, vtime
from testbed_common.asgi_fastpath import FastPathApp
from testbed_common.procs import ThreadServer

DEFAULT_MAX_PAYLOAD_SIZE = 64 * 1024 * 1024


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


def create_app(
    core: WorkerCore,
    *,
    speedup: float = 1.0,
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
    on_exit: Callable[[], None] | None = None,
) -> FastAPI:
    """The FastAPI app of one worker. ``on_exit`` is what the ``exit`` fault calls (the CLI stops
    this worker's server); without it the ``exit`` fault is refused."""
    app = FastPathApp(title=f"mock SGLang worker {core.name}", docs_url=None, redoc_url=None, openapi_url=None)
    clock = LiveClock(speedup)
    app.state.core = core
    app.state.clock = clock
    app.state.on_exit = on_exit

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

    async def serve(route: str, request: Request) -> Response:
        try:
            body = await read_json(request)
        except _BadBody as e:
            return _error(e.status, str(e))
        received = clock.now()
        reply = core.infer(route, body, received)
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
    core: WorkerCore, *, speedup: float = 1.0, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE, port: int | None = None
) -> Iterator[ThreadServer]:
    """Serve one worker with uvicorn in a background thread on loopback (tests, the ``http`` transport,
    the demo); stopped when the block ends. The ``exit`` fault stops this server."""
    holder: list[ThreadServer] = []

    def on_exit() -> None:
        holder[0].server.should_exit = True

    server = ThreadServer(
        create_app(core, speedup=speedup, max_payload_size=max_payload_size, on_exit=on_exit), port=port
    )
    holder.append(server)
    with server:
        yield server

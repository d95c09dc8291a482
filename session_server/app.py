"""The session server's HTTP adapter: FastAPI routes, per-session locks, the pooled upstream client.

All session logic lives in the pure core (``session_server.core`` and the modules it uses); this
module only reads requests, holds the split lock (held to prepare and to commit a turn, never
during the upstream call), calls the upstream and writes answers. ``create_app(config, upstream=...)``
accepts any ``AsyncUpstream``, so an in-process upstream can replace the pooled ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from session_server.core import DEFAULT_MAX_BODY_BYTES, DEFAULT_ROUTING_KEY_HEADER, Session, SessionCore, TurnResult
from session_server.errors import BodyTooLargeError, SessionError
from session_server.upstream import UpstreamRequest, UpstreamResponse, response_headers
from testbed_common import fastjson, http_client
from testbed_common.asgi_fastpath import FastPathApp


class AsyncUpstream(Protocol):
    """Where turns and passthrough requests go (the router / gateway)."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def _dumps(data: object) -> bytes:
    try:
        return fastjson.dumps(data)
    except UnicodeEncodeError:  # lone surrogates (valid JSON escapes, not UTF-8): keep them as \u escapes
        return fastjson.dumps(data, ensure_ascii=True)


class HttpUpstream:
    """One pooled httpx transport to the router (``http_client``); a transport error becomes a synthetic 502."""

    def __init__(self, base_url: str, timeout: float | None = None, max_connections: int = 1024) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = http_client.AsyncPool(
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=None),
            label="session server -> gateway",
        )
        self._urls: dict[str, httpx.URL] = {}  # parsed once: the chat path of every turn

    def _url(self, request: UpstreamRequest) -> httpx.URL:
        if request.query:
            return httpx.URL(f"{self.base_url}/{request.path}?{request.query}")
        url = self._urls.get(request.path)
        if url is None:
            url = httpx.URL(f"{self.base_url}/{request.path}")
            if len(self._urls) < 64:  # passthrough paths are the client's: keep only a few
                self._urls[request.path] = url
        return url

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        # values as the ASGI server decoded them (latin-1), sent as the same bytes (httpx encodes str as ASCII)
        headers = {k: v.encode("latin-1", "replace") if isinstance(v, str) else v for k, v in request.headers.items()}
        content = request.content
        if content is None and request.json is not None:
            content = _dumps(request.json)
            if not any(k.lower() == "content-type" for k in headers):
                headers["content-type"] = "application/json"
        try:
            r = await self.client.fetch(request.method, self._url(request), headers, content)
        except httpx.InvalidURL as e:  # a passthrough path no URL can carry: control characters, over 64 KiB
            return UpstreamResponse(
                400, {"content-type": "application/json"}, _dumps({"error": f"invalid path for the router: {e}"})
            )
        except httpx.TransportError as e:
            return UpstreamResponse(
                502,
                {"content-type": "application/json"},
                _dumps({"error": f"backend transport error: {type(e).__name__}: {e}"}),
            )
        self.client.count(r)
        return UpstreamResponse(r.status_code, dict(r.headers), r.content)

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class ServerConfig:
    router_url: str = "http://127.0.0.1:30080"
    routing_key: bool = True
    routing_key_header: str = DEFAULT_ROUTING_KEY_HEADER
    timeout: float | None = None  # upstream timeout in seconds; None = none (miles' default)
    allowed_append_roles: tuple[str, ...] = ("tool",)
    session_id_seed: int | None = None
    max_sessions: int | None = None
    idle_ttl: float | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_connections: int = 1024
    instance_id: str | None = None

    def make_core(self) -> SessionCore:
        return SessionCore(
            allowed_append_roles=self.allowed_append_roles,
            routing_key=self.routing_key,
            routing_key_header=self.routing_key_header,
            session_id_seed=self.session_id_seed,
            max_sessions=self.max_sessions,
            idle_ttl=self.idle_ttl,
            max_body_bytes=self.max_body_bytes,
            instance_id=self.instance_id,
        )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def _turn_response(result: TurnResult) -> Response:
    headers = dict(result.headers)
    if result.content is not None:
        return Response(result.content, status_code=result.status, headers=headers)
    if result.body is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        return JSONResponse(result.body, status_code=result.status, headers=headers)
    return Response(b"", status_code=result.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"request body too large: {declared} bytes (limit {limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"request body too large: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_SESSION_PREFIX, _CHAT_SUFFIX = "/sessions/", "/v1/chat/completions"


def _session_params(path: str) -> dict[str, str] | None:
    """``{"sid": ...}`` for ``/sessions/{sid}`` (``sid`` one non-empty path segment, as FastAPI matches it)."""
    if path.startswith(_SESSION_PREFIX):
        sid = path[len(_SESSION_PREFIX) :]
        if sid and "/" not in sid:
            return {"sid": sid}
    return None


def _chat_params(path: str) -> dict[str, str] | None:
    """``{"sid": ...}`` for ``/sessions/{sid}/v1/chat/completions`` (``sid`` one non-empty path segment)."""
    return _session_params(path[: -len(_CHAT_SUFFIX)]) if path.endswith(_CHAT_SUFFIX) else None


def create_app(
    config: ServerConfig | None = None,
    *,
    core: SessionCore | None = None,
    upstream: AsyncUpstream | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The session server app. ``upstream`` defaults to an ``HttpUpstream`` to ``config.router_url``."""
    config = config or ServerConfig()
    core = core or config.make_core()
    locks: weakref.WeakKeyDictionary[Session, asyncio.Lock] = weakref.WeakKeyDictionary()

    def lock_of(s: Session) -> asyncio.Lock:
        lock = locks.get(s)
        if lock is None:
            lock = locks[s] = asyncio.Lock()
        return lock

    def get_upstream() -> AsyncUpstream:
        # made in the serving event loop: at startup, or on first use when the host runs no lifespan
        up = getattr(app.state, "upstream", None)
        if up is None:
            up = app.state.upstream = upstream or HttpUpstream(
                config.router_url, config.timeout, config.max_connections
            )
        return up

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        up = get_upstream()
        try:
            yield
        finally:
            app.state.upstream = None
            await up.aclose()

    app = FastPathApp(title="smg-testbed session server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.core = core
    app.state.config = config

    @app.exception_handler(SessionError)
    async def _session_error(_: Request, exc: SessionError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/health")
    async def health() -> dict:
        return core.health()

    @app.post("/sessions")
    async def create_session() -> dict:
        return {"session_id": core.create_session(clock())}

    @app.get("/sessions/{sid}")
    async def get_session(sid: str) -> Response:
        # serialized directly: FastAPI's encoder would walk every token id of every record
        return Response(_dumps(core.get_view(sid)), media_type="application/json")

    @app.delete("/sessions/{sid}")
    async def delete_session(sid: str) -> Response:
        s = core.begin_delete(sid)
        try:
            async with lock_of(s):
                core.finish_delete(sid)
        except asyncio.CancelledError:
            core.finish_delete(sid)  # a half-deleted session would stay unreachable; commits check `closing`
            raise
        return Response(status_code=204)

    @app.post("/sessions/{sid}/v1/chat/completions")
    async def chat(sid: str, request: Request) -> Response:
        s = core.open_session(sid)
        raw = await _read_body(request, core.max_body_bytes)
        lock = lock_of(s)
        async with lock:
            plan = core.prepare_turn(sid, raw, request.headers.items(), clock())
        up = get_upstream()
        try:
            resp = await up.send(plan.request)
            retry = core.retry_request(plan, resp)
            if retry is not None:
                resp = await up.send(retry)
            async with lock:
                result = core.commit_turn(plan, resp, clock())
        finally:
            core.abandon(plan)  # no-op once committed; releases the plan if the request was cancelled
        return _turn_response(result)

    app.fast_route("POST", _chat_params, lambda request: chat(request.path_params["sid"], request))
    # the agent's other calls, once per session each, past FastAPI's per-request machinery too (same answers:
    # the JSONResponse FastAPI makes of the returned dict, the same exception handlers)

    async def _create(_: Request) -> Response:
        return JSONResponse(await create_session())

    app.fast_route("POST", "/sessions", _create)
    app.fast_route("GET", _session_params, lambda request: get_session(request.path_params["sid"]))
    app.fast_route("DELETE", _session_params, lambda request: delete_session(request.path_params["sid"]))

    @app.api_route("/sessions/{sid}/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def passthrough(sid: str, path: str, request: Request) -> Response:
        core.open_session(sid)
        raw = await _read_body(request, core.max_body_bytes)
        req = core.passthrough_request(sid, request.method, path, request.url.query, request.headers.items(), raw)
        resp = await get_upstream().send(req)
        return Response(resp.content, status_code=resp.status, headers=response_headers(resp.headers))

    return app

"""The hops every simulated request crosses, with less Python per request: clients (httpx without its
``Client`` layer) and servers (``FastPathApp``: FastAPI without its per-request machinery on hot routes).

``httpx.Client.send`` merges URLs, copies headers, runs auth and redirect generators, logs, and feeds a
cookie jar on every request: ~0.3 ms of CPU per request on top of the transport. The adapters need none of
it (they send absolute URLs, set their own headers, follow no redirects, and no server here sets cookies),
so ``Pool``/``AsyncPool`` hand an ``httpx.Request`` straight to httpx's own transport: the same connection
pool (httpcore), the same ``httpx`` exceptions, the same ``httpx.Response`` (case-insensitive headers, bodies
decoded per ``content-encoding``), the same bytes on the wire (the client's default headers, then the
request's, as ``httpx.Client`` merges them; ``Host`` and ``Content-Length`` as ``httpx.Request`` adds them).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

HeaderValues = Mapping[str, str] | Mapping[str, bytes] | Mapping[str, str | bytes]

# body bytes per labelled hop in this process: label -> [requests, request bytes, response bytes]
# (benchmarks/sim_bench.py sizes its no-op chain after the http transport's real traffic)
TRAFFIC: dict[str, list[int]] = {}
# a uniform sample of SAMPLE_SIZE counted exchanges (request body, response body) per label, by reservoir
# sampling; off (0) unless a benchmark sets it (sim_bench.py replays them in its JSON floor)
SAMPLES: dict[str, list[tuple[bytes, bytes]]] = {}
SAMPLE_SIZE = 0
_SAMPLER = random.Random(0)


def traffic() -> dict[str, dict[str, float]]:
    """Per labelled hop: requests and mean request/response body bytes so far."""
    return {label: {"requests": n, "request_bytes": sent / n, "response_bytes": received / n}
            for label, (n, sent, received) in TRAFFIC.items() if n}


@functools.cache
def client_headers() -> httpx.Headers:
    """The default headers of an ``httpx.Client`` (accept, accept-encoding, connection, user-agent)."""
    with httpx.Client(trust_env=False) as c:
        return c.headers.copy()


class _Base:
    def __init__(self, timeout: httpx.Timeout | float | None, headers: httpx.Headers | None, label: str | None
                 ) -> None:
        self.timeout = {"timeout": httpx.Timeout(timeout).as_dict()}
        self.headers = client_headers() if headers is None else headers
        self.label = label
        self.counts = TRAFFIC.setdefault(label, [0, 0, 0]) if label else None

    def count(self, response: httpx.Response, label: str | None = None) -> None:
        """Add a read response and its request to ``label``'s ``TRAFFIC`` (by default the pool's own label, if
        it has one)."""
        label = label or self.label
        counts = self.counts if label == self.label else TRAFFIC.setdefault(label, [0, 0, 0]) if label else None
        if counts is not None:
            counts[0] += 1
            counts[1] += len(response.request.content)
            counts[2] += len(response.content)
            if SAMPLE_SIZE:
                kept = SAMPLES.setdefault(label, [])
                if len(kept) < SAMPLE_SIZE:
                    kept.append((response.request.content, response.content))
                elif (j := _SAMPLER.randrange(counts[0])) < SAMPLE_SIZE:
                    kept[j] = (response.request.content, response.content)

    def request(self, method: str, url: httpx.URL | str, headers: HeaderValues | None, content: bytes | None
                ) -> httpx.Request:
        """An ``httpx.Request`` as ``httpx.Client.build_request`` makes it (``InvalidURL`` for a bad URL)."""
        merged = self.headers.copy()
        if headers:
            merged.update(headers)
        return httpx.Request(method, url, headers=merged, content=content, extensions=self.timeout)


class AsyncPool(_Base):
    """Requests to any URL through one ``httpx.AsyncHTTPTransport`` (one httpcore pool).

    ``headers=httpx.Headers()`` sends only what each request sets (no user-agent)."""

    def __init__(self, *, timeout: httpx.Timeout | float | None = None, limits: httpx.Limits | None = None,
                 headers: httpx.Headers | None = None, label: str | None = None) -> None:
        super().__init__(timeout, headers, label)
        self.transport = httpx.AsyncHTTPTransport(trust_env=False, **({"limits": limits} if limits else {}))

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """The response, its body read (and the connection released) unless ``stream``."""
        response = await self.transport.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    async def fetch(self, method: str, url: httpx.URL | str, headers: HeaderValues | None = None,
                    content: bytes | None = None) -> httpx.Response:
        return await self.send(self.request(method, url, headers, content))

    async def aclose(self) -> None:
        await self.transport.aclose()


class Pool(_Base):
    """The blocking twin of ``AsyncPool`` over one ``httpx.HTTPTransport``."""

    def __init__(self, *, timeout: httpx.Timeout | float | None = None, limits: httpx.Limits | None = None,
                 headers: httpx.Headers | None = None, label: str | None = None) -> None:
        super().__init__(timeout, headers, label)
        self.transport = httpx.HTTPTransport(trust_env=False, **({"limits": limits} if limits else {}))

    def fetch(self, method: str, url: httpx.URL | str, headers: HeaderValues | None = None,
              content: bytes | None = None) -> httpx.Response:
        request = self.request(method, url, headers, content)
        response = self.transport.handle_request(request)
        response.request = request
        try:
            response.read()
        except BaseException:
            response.close()
            raise
        return response

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- servers: a FastAPI app whose hot routes skip the framework's per-request machinery ---------------

Endpoint = Callable[[Request], Awaitable[Response]]
Matcher = Callable[[str], "dict[str, str] | None"]


class FastPathApp(FastAPI):
    """A FastAPI app with fast routes: a request a fast route matches goes straight to its endpoint, past
    FastAPI's middleware stack, router and dependency solving (~0.3 ms of CPU per request), with the app's
    exception handlers applied as Starlette applies them. Everything else takes the ordinary way, so each
    fast route should also be an ordinary route (same endpoint) for documentation and method checks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_routes: list[tuple[str, Matcher, Endpoint]] = []

    def fast_route(self, method: str, path: str | Matcher, endpoint: Endpoint) -> None:
        """``endpoint(request)`` for ``method`` requests to ``path`` (or to the paths ``path(p)`` returns the
        path parameters of, as ``request.path_params``)."""
        match = path if callable(path) else (lambda p, exact=path: {} if p == exact else None)
        self.fast_routes.append((method, match, endpoint))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            method, path = scope["method"], scope["path"]
            for m, match, endpoint in self.fast_routes:
                if m == method and (params := match(path)) is not None:
                    scope["app"] = self
                    scope["path_params"] = params
                    await self._serve_fast(endpoint, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    def _handler(self, exc: Exception) -> Any:
        """The handler Starlette's ExceptionMiddleware picks (status handlers first for HTTPException)."""
        handlers = self.exception_handlers
        if isinstance(exc, HTTPException) and exc.status_code != 500 and exc.status_code in handlers:
            return handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None

    async def _serve_fast(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        request = Request(scope, receive, send)
        try:
            try:
                response = await endpoint(request)
                await response(scope, receive, sender)
            except Exception as exc:  # as the route's and the ExceptionMiddleware's wrap_app_handling_exceptions
                handler = self._handler(exc)
                if handler is None:
                    raise
                if started:
                    raise RuntimeError("Caught handled exception, but response already started.") from exc
                response = await handler(request, exc)
                if response is not None:
                    await response(scope, receive, sender)
        except Exception as exc:  # as ServerErrorMiddleware: the 500 handler's answer, then re-raised for the log
            handler = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)
            response = (await handler(Request(scope), exc) if handler is not None
                        else PlainTextResponse("Internal Server Error", status_code=500))
            if not started:
                await response(scope, receive, send)
            raise

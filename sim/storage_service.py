"""The pool's shared L3 across processes: a small HTTP service holding one ``L3Store``, and its client.

SGLang's HiCache L3 (``--hicache-storage-backend`` mooncake, hf3fs, nixl, ...; shared/specs/pd-hicache.md section 3)
is one store every worker of a cluster reads and writes by page hash. In one process the workers share an
``sim.engine.storage.L3Store`` object (the ``direct`` transport); across processes (the ``http`` transport, or
``smg-testbed worker`` processes) they share this service (``smg-testbed l3-store``), each through a
``RemoteStorage``, which is a ``StorageTier`` as the in-process store is: the same calls give the same answers.

Wire forms (JSON; page keys as hex strings, times in virtual seconds), loopback clients only (403 otherwise):

``GET /info``     ``{"page_size": p, "capacity_pages": n | null}``
``POST /match``   ``{"keys": [hex, ...], "now": t}`` -> ``{"matched": n}``: the leading keys readable at ``t``
``POST /write``   ``{"keys": [hex, ...], "ready": t}`` -> ``{"new": n}``: readable from ``t`` on; n pages were new
``GET /health``   ``{"status": "ok"}``

Bad input (malformed JSON, wrong types, keys that are not hex, non-finite times) gets a 400 with a JSON error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sim.engine.storage import L3Store, match_request, parse_match_request, parse_write_request, write_request
from testbed_common import fastjson
from testbed_common.loopback import is_loopback

CLIENT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class BadStoreRequest(ValueError):
    """A request body the store cannot read (answered 400)."""


async def _body(request: Request) -> Any:
    try:
        return fastjson.loads(await request.body())
    except (ValueError, RecursionError):
        raise BadStoreRequest("the body must be JSON") from None


def _parsed(parse: Callable[[Any], tuple[list[bytes], float]], body: Any) -> tuple[list[bytes], float]:
    try:
        return parse(body)
    except ValueError as e:
        raise BadStoreRequest(str(e)) from None


def store_app(store: L3Store) -> _LoopbackOnly:
    """The service over ``store`` (module docstring). One event loop serves it, so calls reach the store one at a
    time, in the order they arrive."""

    async def info(_: Request) -> Response:
        return JSONResponse({"page_size": store.page_size, "capacity_pages": store.capacity_pages})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def match(request: Request) -> Response:
        keys, now = _parsed(parse_match_request, await _body(request))
        return JSONResponse({"matched": store.match(keys, now)})

    async def write(request: Request) -> Response:
        keys, ready = _parsed(parse_write_request, await _body(request))
        return JSONResponse({"new": store.write(keys, ready)})

    async def bad_request(_: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    app = Starlette(
        routes=[Route("/info", info), Route("/health", health), Route("/match", match, methods=["POST"]),
                Route("/write", write, methods=["POST"])],
        exception_handlers={BadStoreRequest: bad_request, HTTPException: http_error},
    )
    return _LoopbackOnly(app)


class _LoopbackOnly:
    """An ASGI wrapper that answers 403 to clients that are not on loopback."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and (client is None or not is_loopback(client[0])):
            await JSONResponse({"error": "the L3 store answers loopback clients only"}, status_code=403)(
                scope, receive, send)
            return
        await self.app(scope, receive, send)


class StoreUnavailable(RuntimeError):
    """The L3 store service did not answer (a worker cannot go on without its storage tier)."""


class RemoteStorage:
    """A ``StorageTier`` over the store service at ``url`` (one kept-alive synchronous connection): the engine's
    ``match`` and ``write`` calls, one HTTP call each. ``page_size`` is the store's. ``close()`` when done."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT, trust_env=False)
        info = self._call("GET", "/info")
        self.page_size: int = info["page_size"]
        self.capacity_pages: int | None = info["capacity_pages"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._client.request(method, path, content=fastjson.dumps(body) if body is not None else None,
                                     headers={"content-type": "application/json"} if body is not None else None)
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"the L3 store at {self.url}: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise StoreUnavailable(f"the L3 store at {self.url} answered {r.status_code} to {path}: {r.text[:200]}")
        return fastjson.loads(r.content)

    def match(self, keys: Sequence[bytes], now: float) -> int:
        """``L3Store.match``; ``now`` = inf (held at all, SGLang's ``batch_exists``) goes over the wire as the largest
        float: JSON has no infinity, and every write is ready at a finite time."""
        if not keys:
            return 0
        return self._call("POST", "/match", match_request(keys, min(now, sys.float_info.max)))["matched"]

    def write(self, keys: Sequence[bytes], ready: float) -> int:
        if not keys:
            return 0
        return self._call("POST", "/write", write_request(keys, ready))["new"]

    def close(self) -> None:
        self._client.close()

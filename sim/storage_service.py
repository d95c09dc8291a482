"""The pool's shared L3 across processes: a small HTTP service holding one ``L3Store`` (its client:
``sim.worker.remote_storage.RemoteStorage``).

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

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sim.engine.storage import L3Store, parse_match_request, parse_write_request
from testbed_common import fastjson
from testbed_common.loopback import is_loopback


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

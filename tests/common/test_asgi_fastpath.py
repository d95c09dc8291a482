"""testbed_common.asgi_fastpath: a fast route answers exactly as the same endpoint behind FastAPI's ordinary route,
errors included; other methods and paths take the ordinary way."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from testbed_common.asgi_fastpath import FastPathApp
from testbed_common.procs import ThreadServer


class Refused(Exception):
    pass


class Other(Exception):
    pass


def make_app() -> FastPathApp:
    """One endpoint served both ways: ``/fast/{what}`` as a fast route, ``/slow/{what}`` as an ordinary one."""
    app = FastPathApp()

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> Response:
        return JSONResponse({"refused": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Response:
        return JSONResponse({"internal": type(exc).__name__}, status_code=500)

    async def endpoint(request: Request) -> Response:
        what = request.path_params["what"]
        body = await request.body()
        if what == "refused":
            raise Refused(body.decode())
        if what == "http":
            raise HTTPException(418, detail="teapot")
        if what == "bug":
            raise Other("boom")
        return JSONResponse({"ok": body.decode(), "query": request.url.query, "ct": request.headers["content-type"]})

    app.add_api_route("/slow/{what}", endpoint, methods=["POST"])
    app.add_api_route("/fast/{what}", endpoint, methods=["POST"])

    def fast(path: str) -> dict[str, str] | None:
        return {"what": path[len("/fast/"):]} if path.startswith("/fast/") and "/" not in path[6:] else None

    app.fast_route("POST", fast, endpoint)
    return app


@pytest.mark.parametrize("what", ["fine", "refused", "http", "bug"])
def test_a_fast_route_answers_as_the_ordinary_route(what):
    with ThreadServer(make_app(), log_level="critical") as server:
        def call(kind: str) -> tuple:  # a new connection each: uvicorn closes one after an unhandled error
            with httpx.Client(trust_env=False) as client:
                r = client.post(f"{server.url}/{kind}/{what}?q=1", content=b"payload",
                                headers={"content-type": "text/plain"})
            return r.status_code, r.content, sorted((k, v) for k, v in r.headers.items() if k != "date")

        assert call("fast") == call("slow")
        assert call("fast")[0] == {"fine": 200, "refused": 409, "http": 418, "bug": 500}[what]


def test_other_methods_and_paths_take_the_ordinary_way():
    with ThreadServer(make_app(), log_level="critical") as server, httpx.Client(trust_env=False) as client:
        assert client.get(f"{server.url}/fast/fine").status_code == 405
        assert client.post(f"{server.url}/fast/a/b").status_code == 404

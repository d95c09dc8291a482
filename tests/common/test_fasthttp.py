"""testbed_common.fasthttp: the clients send what httpx.Client sends and return what it returns; a fast route answers
exactly as the same endpoint behind FastAPI's ordinary route, errors included."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from testbed_common import fasthttp
from testbed_common.procs import ThreadServer


async def echo(scope, receive, send) -> None:
    """A raw ASGI app answering with the request line, headers and body it received."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    lines = [f"{scope['method']} {scope['raw_path'].decode()}?{scope['query_string'].decode()}".encode()]
    lines += [k + b": " + v for k, v in scope["headers"]]
    out = b"\n".join(lines) + b"\n\n" + body
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-echo", b"1"), (b"x-echo", b"2")]})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture(scope="module")
def echo_url():
    with ThreadServer(echo) as server:
        yield server.url


CASES = [
    ("POST", "/v1/chat/completions", {"content-type": "application/json", "x-smg-routing-key": "s1"}, b'{"a":1}'),
    ("GET", "/sessions/abc?x=1&y=%20", None, None),
    ("DELETE", "/sessions/abc", {"Accept": "text/plain", "user-agent": "agent/1"}, None),
]


@pytest.mark.parametrize(("method", "path", "headers", "content"), CASES)
def test_pool_sends_and_returns_what_httpx_client_does(echo_url, method, path, headers, content):
    with httpx.Client(trust_env=False) as client, fasthttp.Pool() as pool:
        want = client.request(method, echo_url + path, headers=headers, content=content)
        got = pool.fetch(method, echo_url + path, headers, content)
    assert got.status_code == want.status_code == 201
    assert got.content == want.content  # request line, header names, values and order, body
    assert got.headers.multi_items() == want.headers.multi_items()
    assert got.headers["x-echo"] == "1, 2"


@pytest.mark.parametrize(("method", "path", "headers", "content"), CASES)
def test_async_pool_sends_and_returns_what_httpx_async_client_does(echo_url, method, path, headers, content):
    async def both():
        async with httpx.AsyncClient(trust_env=False) as client:
            want = await client.request(method, echo_url + path, headers=headers, content=content)
        pool = fasthttp.AsyncPool()
        try:
            got = await pool.fetch(method, echo_url + path, headers, content)
        finally:
            await pool.aclose()
        return want, got

    want, got = asyncio.run(both())
    assert (got.status_code, got.content, got.headers.multi_items()) == (
        want.status_code, want.content, want.headers.multi_items())


def test_pool_without_default_headers_sends_only_its_own(echo_url):
    async def one():
        pool = fasthttp.AsyncPool(headers=httpx.Headers())
        try:
            return await pool.fetch("POST", echo_url + "/x", {"content-type": "application/json"}, b"{}")
        finally:
            await pool.aclose()

    head = asyncio.run(one()).content.split(b"\n\n")[0].split(b"\n")[1:]
    assert sorted(h.split(b":")[0] for h in head) == [b"content-length", b"content-type", b"host"]


def test_pools_raise_httpx_errors_and_count_labelled_traffic(echo_url):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens on loopback
    with fasthttp.Pool(timeout=2.0, label="test hop") as pool:
        with pytest.raises(httpx.ConnectError):
            pool.fetch("GET", dead + "/x")
        with pytest.raises(httpx.InvalidURL):
            pool.fetch("GET", echo_url + "/\x00")
        before = list(fasthttp.TRAFFIC["test hop"])
        r = pool.fetch("POST", echo_url + "/x", None, b"12345")
        pool.count(r)
    n, sent, received = (a - b for a, b in zip(fasthttp.TRAFFIC["test hop"], before, strict=True))
    assert (n, sent, received) == (1, 5, len(r.content))
    assert fasthttp.traffic()["test hop"]["requests"] >= 1


def test_count_under_another_label_and_keep_a_sample_of_the_exchanges(echo_url, monkeypatch):
    monkeypatch.setattr(fasthttp, "SAMPLE_SIZE", 2)
    monkeypatch.setattr(fasthttp, "SAMPLES", {})
    bodies = [b"a", b"bb", b"ccc", b"dddd", b"eeeee", b"ffffff"]
    with fasthttp.Pool(timeout=2.0, label="sampled hop") as pool:
        for body in bodies:
            r = pool.fetch("POST", echo_url + "/x", None, body)
            pool.count(r, "sampled hop (other)")
            if body == b"bb":
                assert [req for req, _ in fasthttp.SAMPLES["sampled hop (other)"]] == [b"a", b"bb"]  # room left
    assert fasthttp.TRAFFIC["sampled hop (other)"][:2] == [6, 21]
    assert "sampled hop" not in fasthttp.traffic()  # nothing counted under the pool's own label
    kept = fasthttp.SAMPLES["sampled hop (other)"]
    assert len(kept) == 2 and len({req for req, _ in kept}) == 2 and {req for req, _ in kept} <= set(bodies)
    assert all(resp for _, resp in kept)  # with their answers


class Refused(Exception):
    pass


class Other(Exception):
    pass


def make_app() -> fasthttp.FastPathApp:
    """One endpoint served both ways: ``/fast/{what}`` as a fast route, ``/slow/{what}`` as an ordinary one."""
    app = fasthttp.FastPathApp()

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

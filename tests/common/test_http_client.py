"""testbed_common.http_client: the pools send what httpx.Client sends and return what it returns, and hand the
exchanges they count to the traffic observer, if one is installed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from testbed_common import http_client
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
    with httpx.Client(trust_env=False) as client, http_client.Pool() as pool:
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
        pool = http_client.AsyncPool()
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
        pool = http_client.AsyncPool(headers=httpx.Headers())
        try:
            return await pool.fetch("POST", echo_url + "/x", {"content-type": "application/json"}, b"{}")
        finally:
            await pool.aclose()

    head = asyncio.run(one()).content.split(b"\n\n")[0].split(b"\n")[1:]
    assert sorted(h.split(b":")[0] for h in head) == [b"content-length", b"content-type", b"host"]


@pytest.fixture
def observed():
    """The exchanges the pools count while the test runs: (label, request body, response body)."""
    seen: list[tuple[str, bytes, bytes]] = []
    http_client.set_traffic_observer(lambda label, request, response: seen.append((label, request, response)))
    try:
        yield seen
    finally:
        http_client.set_traffic_observer(None)


def test_pools_raise_httpx_errors_and_hand_counted_exchanges_to_the_observer(echo_url, observed):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens on loopback
    with http_client.Pool(timeout=2.0, label="test hop") as pool:
        with pytest.raises(httpx.ConnectError):
            pool.fetch("GET", dead + "/x")
        with pytest.raises(httpx.InvalidURL):
            pool.fetch("GET", echo_url + "/\x00")
        assert observed == []  # fetching alone counts nothing
        r = pool.fetch("POST", echo_url + "/x", None, b"12345")
        pool.count(r)
    assert observed == [("test hop", b"12345", r.content)]


def test_count_under_another_label_and_not_without_one(echo_url, observed):
    with http_client.Pool(timeout=2.0, label="labelled hop") as labelled, http_client.Pool(timeout=2.0) as plain:
        r = labelled.fetch("POST", echo_url + "/x", None, b"a")
        labelled.count(r, "labelled hop (other)")
        s = plain.fetch("POST", echo_url + "/x", None, b"bb")
        plain.count(s)  # no label: nothing to count under
        plain.count(s, "named at the call")
    assert observed == [("labelled hop (other)", b"a", r.content), ("named at the call", b"bb", s.content)]


def test_a_removed_observer_sees_nothing_more(echo_url):
    seen: list[str] = []
    http_client.set_traffic_observer(lambda label, request, response: seen.append(label))
    http_client.set_traffic_observer(None)
    with http_client.Pool(timeout=2.0, label="unobserved hop") as pool:
        pool.count(pool.fetch("POST", echo_url + "/x", None, b"x"))
    assert seen == []

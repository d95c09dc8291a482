"""Hand-picked bad inputs for the three servers, each with the status it must get: a 4xx JSON error, never a 5xx.

One stack on loopback serves the whole module: two mock workers <- the mock gateway (``--policy manual``) <- the
session server. Payload caps are set low (1 MiB) so the "huge body" rows stay cheap. Rows that only touch a
gateway or worker run against them directly; session rows use a fresh session, one that already has a turn, an
unknown id or a deleted one. Odd but valid input (lone surrogate escapes, NUL, bidi controls) must be served.
A ``text/plain`` chat body is served by the worker (it ignores the header), refused by the gateway (as SMG), and
so refused by the session server too, which forwards the client's content type with the body (as miles does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import pytest
from loopback_stack import MODEL, loopback_stack

from mock_gateway.app import create_app as gateway_app
from mock_gateway.config import parse_args
from session_server.app import ServerConfig
from session_server.app import create_app as session_app
from sim.engine.types import WorkerConfig
from sim.measures import gateway_branches
from sim.worker.app import create_app as worker_app
from sim.worker.core import WorkerCore
from testbed_common import procs

CAP = 1 << 20  # payload cap of every server in this module
KEY = "x-smg-routing-key"


@dataclass
class Stack:
    worker: str
    gateway: str
    session: str
    metrics: str  # the gateway's Prometheus URL
    sid: str  # a session with one committed turn
    deleted: str  # a session that was created, used and deleted


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    with loopback_stack(CAP) as lb:
        ss = lb.session_url
        with httpx.Client(trust_env=False, timeout=30) as c:
            sid = c.post(f"{ss}/sessions").json()["session_id"]
            assert c.post(f"{ss}/sessions/{sid}/v1/chat/completions", json=chat()).status_code == 200
            deleted = c.post(f"{ss}/sessions").json()["session_id"]
            assert c.post(f"{ss}/sessions/{deleted}/v1/chat/completions", json=chat()).status_code == 200
            assert c.delete(f"{ss}/sessions/{deleted}").status_code == 204
        yield Stack(lb.worker_urls[0], lb.gateway_url, ss, lb.metrics_url, sid, deleted)


@pytest.fixture(scope="module")
def env() -> Iterator[Stack]:
    with stack() as s:
        yield s


def chat(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


def raw_json(text: str) -> bytes:
    return text.encode()


DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
BIG_INT = b'{"model":"mock-model","messages":[{"role":"user","content":"a"}],"max_tokens":' + b"9" * 5000 + b"}"
HUGE = json.dumps(chat("word " * (CAP // 5 + 10))).encode()  # just over the 1 MiB cap
SURROGATE = b'{"model":"mock-model","messages":[{"role":"user","content":"\\ud800 \\udfff"}],"max_tokens":4}'
BAD_UTF8 = b'{"model":"mock-model","messages":[{"role":"user","content":"\xff\xfe"}],"max_tokens":4}'
ODD_TEXT = "\x00 \u202e\u200b\ufeff e\u0301 \U0001f600 \U0010ffff \t\r\n"


@dataclass
class Case:
    id: str
    server: str  # "worker" | "gateway" | "session"
    path: str  # "{sid}" / "{deleted}" are replaced by the stack's session ids, "{fresh}" by a new session's
    expect: int
    method: str = "POST"
    content: bytes | None = None
    json: Any = None
    headers: dict[str, Any] = field(default_factory=dict)
    xfail: str | None = None
    raw: bool = False  # sent over a plain socket (a declared length the body does not have)
    chunked: bool = False  # sent with Transfer-Encoding: chunked (no Content-Length to refuse it by)

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=self.xfail)] if self.xfail else []
        return pytest.param(self, id=f"{self.server}-{self.id}", marks=marks)


def body_cases(server: str, path: str, *, no_ctype: int, deep_xfail: str | None = None) -> list[Case]:
    """The malformed-body rows every inference route must answer with a 4xx."""
    J = {"content-type": "application/json"}
    return [
        Case("invalid-json", server, path, 400, content=b'{"model": ', headers=J),
        Case("trailing-garbage", server, path, 400, content=json.dumps(chat()).encode() + b"}x", headers=J),
        Case("empty-body", server, path, 400, content=b"", headers=J),
        Case("whitespace-body", server, path, 400, content=b"  \n ", headers=J),
        Case("json-array", server, path, 400, json=[chat()]),
        Case("json-string", server, path, 400, json="hello"),
        Case("json-null", server, path, 400, content=b"null", headers=J),
        Case("messages-string", server, path, 400, json=chat() | {"messages": "hi"}),
        Case("messages-missing", server, path, 400, json={"model": MODEL, "max_tokens": 4}),
        Case("message-not-object", server, path, 400, json=chat() | {"messages": [["user", "hi"]]}),
        Case("max-tokens-string", server, path, 400, json=chat(max_tokens="4")),
        Case("max-tokens-negative", server, path, 400, json=chat(max_tokens=-1)),
        Case("max-tokens-float", server, path, 400, json=chat(max_tokens=2.5)),
        Case("stream-string", server, path, 400, json=chat(stream="yes")),
        Case("deep-array", server, path, 400, content=DEEP_ARRAY, headers=J, xfail=deep_xfail),
        Case("deep-object", server, path, 400, content=DEEP_OBJECT, headers=J, xfail=deep_xfail),
        Case("5000-digit-int", server, path, 400, content=BIG_INT, headers=J),
        Case("nan-literal", server, path, 400, content=raw_json('{"model":"mock-model","messages":NaN}'), headers=J),
        Case("invalid-utf8", server, path, 400, content=BAD_UTF8, headers=J),
        Case("huge-body", server, path, 413, content=HUGE, headers=J),
        Case("huge-chunked-body", server, path, 413, content=HUGE, headers=J, chunked=True),
        Case(
            "huge-declared-length",
            server,
            path,
            413,
            content=b"{}",
            headers=J | {"content-length": str(CAP * 4)},
            raw=True,
        ),
        Case(
            "text-plain",
            server,
            path,
            no_ctype,
            content=json.dumps(chat()).encode(),
            headers={"content-type": "text/plain"},
        ),
        # odd but valid Unicode is served, not refused
        Case("lone-surrogates", server, path, 200, content=SURROGATE, headers=J),
        Case("odd-unicode", server, path, 200, json=chat(ODD_TEXT)),
    ]


CASES: list[Case] = [
    # --- mock worker ----------------------------------------------------------------------------------
    *body_cases("worker", "/v1/chat/completions", no_ctype=200),
    Case("sim-time-string", "worker", "/v1/chat/completions", 400, json=chat(sim_time="now")),
    Case("sim-time-negative", "worker", "/v1/chat/completions", 400, json=chat(sim_time=-1)),
    Case("role-int", "worker", "/v1/chat/completions", 400, json=chat() | {"messages": [{"role": 1, "content": "x"}]}),
    Case(
        "content-int",
        "worker",
        "/v1/chat/completions",
        400,
        json=chat() | {"messages": [{"role": "user", "content": 1}]},
    ),
    Case("over-context", "worker", "/v1/chat/completions", 400, json=chat(max_tokens=10**6)),
    Case("generate-ids-strings", "worker", "/generate", 400, json={"input_ids": ["a"]}),
    Case("generate-ids-too-big", "worker", "/generate", 400, json={"input_ids": [2**40]}),
    Case("generate-text-int", "worker", "/generate", 400, json={"text": 5}),
    Case("completions-prompt-dict", "worker", "/v1/completions", 400, json={"model": MODEL, "prompt": {"a": 1}}),
    Case("loads-sim-time-junk", "worker", "/v1/loads?sim_time=abc", 400, method="GET"),
    Case("loads-sim-time-inf", "worker", "/v1/loads?sim_time=inf", 400, method="GET"),
    Case("faults-unknown", "worker", "/admin/faults", 400, json={"explode": True}),
    Case("faults-array", "worker", "/admin/faults", 400, json=[1]),
    Case("faults-rate-range", "worker", "/admin/faults", 400, json={"fail_rate": 2}),
    Case("unknown-route", "worker", "/v2/nothing", 404),
    Case("wrong-method", "worker", "/v1/chat/completions", 405, method="GET"),
    # --- mock gateway ---------------------------------------------------------------------------------
    *body_cases("gateway", "/v1/chat/completions", no_ctype=400),
    Case("role-int", "gateway", "/v1/chat/completions", 400, json=chat() | {"messages": [{"role": 1, "content": "x"}]}),
    Case(
        "role-object",
        "gateway",
        "/v1/chat/completions",
        400,
        json=chat() | {"messages": [{"role": {}, "content": "x"}]},
    ),
    Case(
        "role-array",
        "gateway",
        "/v1/chat/completions",
        400,
        json=chat() | {"messages": [{"role": [], "content": "x"}]},
    ),
    Case("model-int", "gateway", "/v1/chat/completions", 400, json=chat() | {"model": 7}),
    Case("unknown-model", "gateway", "/v1/chat/completions", 404, json=chat() | {"model": "no-such-model"}),
    Case("completions-prompt-int", "gateway", "/v1/completions", 400, json={"model": MODEL, "prompt": 5}),
    Case("generate-text-int", "gateway", "/generate", 422, json={"text": 5}),
    Case("workers-junk-json", "gateway", "/workers", 400, content=b"{", headers={"content-type": "application/json"}),
    Case("workers-bad-url", "gateway", "/workers", 400, json={"url": "ftp://x"}),
    Case("workers-delete-unknown", "gateway", "/workers/no-such-worker", 404, method="DELETE"),
    Case("unknown-route", "gateway", "/v2/nothing", 404),
    # --- session server -------------------------------------------------------------------------------
    *body_cases("session", "/sessions/{fresh}/v1/chat/completions", no_ctype=400),
    Case("stream-true", "session", "/sessions/{sid}/v1/chat/completions", 400, json=chat(stream=True)),
    Case(
        "role-missing",
        "session",
        "/sessions/{sid}/v1/chat/completions",
        400,
        json=chat() | {"messages": [{"content": "x"}]},
    ),
    Case(
        "chat-unknown-sid",
        "session",
        "/sessions/0123456789abcdef0123456789abcdef/v1/chat/completions",
        404,
        json=chat(),
    ),
    Case("chat-deleted-sid", "session", "/sessions/{deleted}/v1/chat/completions", 404, json=chat()),
    Case("get-unknown-sid", "session", "/sessions/nope", 404, method="GET"),
    Case("get-deleted-sid", "session", "/sessions/{deleted}", 404, method="GET"),
    Case("delete-unknown-sid", "session", "/sessions/nope", 404, method="DELETE"),
    Case("delete-deleted-sid", "session", "/sessions/{deleted}", 404, method="DELETE"),
    Case("passthrough-deleted-sid", "session", "/sessions/{deleted}/v1/models", 404, method="GET"),
    Case("sid-10k-chars", "session", "/sessions/" + "a" * 10_000, 404, method="GET"),
    Case("sid-unicode", "session", "/sessions/%E2%80%AE%F0%9F%98%80", 404, method="GET"),
    Case("sid-encoded-slash", "session", "/sessions/{sid}%2Fx", 404, method="GET"),
    # passthrough: whatever the path, the request stays on the router; paths that would change the URL's shape
    # (dot segments, an injected query or fragment, control characters) are refused before anything is sent
    Case("passthrough-control", "session", "/sessions/{sid}/v1/models", 200, method="GET"),
    Case("passthrough-double-slash", "session", "/sessions/{sid}//v1/models", 200, method="GET"),
    Case("passthrough-userinfo", "session", "/sessions/{sid}/@example.com/v1/models", 404, method="GET"),
    Case("passthrough-unknown-sid", "session", "/sessions/nope/v1/models", 404, method="GET"),
    Case("passthrough-huge-body", "session", "/sessions/{sid}/v1/models", 413, content=HUGE),
    Case("passthrough-nul", "session", "/sessions/{sid}/v1/a%00b", 400, method="GET"),
    Case("passthrough-cr", "session", "/sessions/{sid}/v1/a%0Db", 400, method="GET"),
    Case("passthrough-tab", "session", "/sessions/{sid}/v1/a%09b", 400, method="GET"),
    Case("passthrough-del", "session", "/sessions/{sid}/v1/a%7Fb", 400, method="GET"),
    Case("passthrough-70k-path", "session", "/sessions/{sid}/" + "a" * 70_000, 400, method="GET", raw=True),
    # a path with a line feed matches no route (the {path:path} pattern stops at newlines): nothing is forwarded
    Case("passthrough-crlf", "session", "/sessions/{sid}/v1/a%0D%0AX-Injected:%20y", 404, method="GET"),
    Case("passthrough-dot-segments", "session", "/sessions/{sid}/%2e%2e/%2e%2e/workers", 400, method="GET"),
    Case("passthrough-encoded-query", "session", "/sessions/{sid}/v1/models%3Fa=1", 400, method="GET"),
    Case("passthrough-encoded-fragment", "session", "/sessions/{sid}/v1/models%23a", 400, method="GET"),
    Case("unknown-route", "session", "/v2/nothing", 404),
    Case("sessions-wrong-method", "session", "/sessions", 405, method="PUT"),
]


def send(env: Stack, case: Case) -> httpx.Response:
    base = {"worker": env.worker, "gateway": env.gateway, "session": env.session}[case.server]
    path = case.path.replace("{sid}", env.sid).replace("{deleted}", env.deleted)
    if "{fresh}" in path:
        with httpx.Client(trust_env=False, timeout=30) as c:
            path = path.replace("{fresh}", c.post(f"{env.session}/sessions").json()["session_id"])
    if case.raw:
        return raw_send(base, case.method, path, case.headers, case.content or b"")
    with httpx.Client(trust_env=False, timeout=30) as c:  # a fresh connection per row: no row can spoil the next
        content = case.content
        if case.chunked and content is not None:
            content = iter([content[i : i + 65536] for i in range(0, len(content), 65536)])
        req = c.build_request(case.method, base + path, json=case.json, content=content, headers=case.headers)
        return c.send(req)


HEAD_PIECE = 8192


def send_head_in_pieces(sock: socket.socket, head: bytes) -> None:
    """Write a request head in 8 KiB pieces with a pause between them, so the server reads it in several parts.

    The outcome must not depend on how TCP segments the head: h11's default limit on an incomplete head
    (16 KiB) once let a 70 KiB path through when it arrived in one read and refused it as text/plain when not.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(head), HEAD_PIECE):
        if i:
            time.sleep(0.002)
        sock.sendall(head[i : i + HEAD_PIECE])


def raw_send(base: str, method: str, path: str, headers: dict[str, str], content: bytes) -> httpx.Response:
    """One request written to a socket as is (headers may lie about the body); the answer parsed with h11."""
    host, port = base.removeprefix("http://").split(":")
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method=method, target=path, headers=[("host", host), ("connection", "close"), *headers.items()]
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        send_head_in_pieces(sock, conn.send(request))
        sock.sendall(content)  # the body bytes bypass h11, which would check the length
        status, hdrs, body = 0, [], b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, hdrs = event.status_code, [(k.decode(), v.decode()) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return httpx.Response(status, headers=hdrs, content=body)


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input_gets_its_status(env: Stack, case: Case) -> None:
    r = send(env, case)
    assert r.status_code == case.expect, r.text[:300]
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.text[:300]
        assert r.json()  # a JSON error body, not a trace


# --- routing keys at the gateway: invalid values count as absent, never as an error (smg-policies.md §1.2) --


def branch(env: Stack, name: str) -> float:
    text = httpx.get(env.metrics, trust_env=False, timeout=10).text
    return float(gateway_branches(text).get("manual", {}).get(name, 0))


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        pytest.param(b"k" * 128, True, id="128-bytes"),
        pytest.param("é".encode() * 64, True, id="128-bytes-utf8"),
        pytest.param(b"k" * 129, False, id="129-bytes"),
        pytest.param("é".encode() * 64 + b"k", False, id="129-bytes-utf8"),
        pytest.param(b"", False, id="empty"),
        pytest.param(b"\xff\xfe", False, id="not-utf8"),
        pytest.param(b"a b\tc", True, id="space-tab"),
    ],
)
def test_gateway_routing_key_validity(env: Stack, value: bytes, valid: bool) -> None:
    before = {b: branch(env, b) for b in ("no_routing_id", "vacant", "occupied_hit")}
    with httpx.Client(trust_env=False, timeout=30) as c:
        for _ in range(2):
            r = c.post(f"{env.gateway}/v1/chat/completions", json=chat(), headers={KEY: value})
            assert r.status_code == 200, r.text[:300]
    after = {b: branch(env, b) for b in before}
    if valid:  # first request pins the key (or hits an earlier pin), the second hits it
        assert after["no_routing_id"] == before["no_routing_id"]
        assert after["occupied_hit"] >= before["occupied_hit"] + 1
    else:
        assert after["no_routing_id"] == before["no_routing_id"] + 2


@pytest.mark.parametrize("value", [b"k" * 129, b"", b"\xff"], ids=["129-bytes", "empty", "not-utf8"])
def test_session_server_replaces_a_bad_client_key(env: Stack, value: bytes) -> None:
    """A client's own key header (whatever it holds) is replaced by the session id, so the turn is served."""
    before = branch(env, "no_routing_id")
    with httpx.Client(trust_env=False, timeout=30) as c:
        sid = c.post(f"{env.session}/sessions").json()["session_id"]
        r = c.post(f"{env.session}/sessions/{sid}/v1/chat/completions", json=chat(), headers={KEY: value})
        assert r.status_code == 200, r.text[:300]
        c.delete(f"{env.session}/sessions/{sid}")
    assert branch(env, "no_routing_id") == before


# --- payload caps hold for streamed bodies: a server stops reading soon after the cap -----------------------


async def pulled_before_answer(app: Any, path: str) -> tuple[int | None, int]:
    """Call an ASGI app with a chunked body 32x the cap; return its status and how many body bytes it pulled."""
    chunk, total = b" " * 65536, 32 * CAP
    pulled, status = 0, None

    async def receive() -> dict:
        nonlocal pulled
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": pulled < total}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return status, pulled


@pytest.mark.parametrize(
    "server",
    [
        "worker",
        "gateway",
        "session",
    ],
)
def test_chunked_body_is_refused_before_it_is_all_read(server: str) -> None:
    """With no Content-Length to refuse it by, a body over the cap is cut off once the cap is passed: the app
    answers 413 having pulled about the cap, not the whole 32 MiB stream (memory stays bounded)."""
    path = "/v1/chat/completions"
    if server == "worker":
        app = worker_app(WorkerCore(WorkerConfig(name="w0"), model_name=MODEL), max_payload_size=CAP)
    elif server == "gateway":
        app = gateway_app(parse_args(["--max-payload-size", str(CAP), "--log-level", "error"]))
    else:
        app = session_app(ServerConfig(router_url="http://127.0.0.1:9", max_body_bytes=CAP))
        path = f"/sessions/{app.state.core.create_session(0.0)}/v1/chat/completions"
    status, pulled = asyncio.run(pulled_before_answer(app, path))
    assert status == 413
    assert pulled <= CAP + 2 * 65536, f"pulled {pulled} bytes of a body capped at {CAP}"


# --- the servers as their commands start them: a long request head split across reads reaches the app ---------


@contextlib.contextmanager
def cli_chain() -> Iterator[dict[str, str]]:
    """A worker, the mock gateway and the session server, each started by its own command."""
    worker, gateway, prom, session = procs.free_ports(4)
    url = {
        "worker": f"http://127.0.0.1:{worker}",
        "gateway": f"http://127.0.0.1:{gateway}",
        "session": f"http://127.0.0.1:{session}",
    }
    loopback = ("--host", "127.0.0.1")
    worker_args = procs.python_module("sim.worker", *loopback, "--port", str(worker), "--count", "1")
    gateway_args = procs.python_module(
        "sim.cli",
        "gateway",
        *loopback,
        "--port",
        str(gateway),
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(prom),
        "--worker-urls",
        url["worker"],
        "--policy",
        "manual",
    )
    session_args = procs.python_module(
        "session_server", *loopback, "--port", str(session), "--router-url", url["gateway"]
    )
    with (
        procs.running(worker_args, f"{url['worker']}/health", timeout=30),
        procs.running(gateway_args, f"{url['gateway']}/readiness", timeout=30),
        procs.running(session_args, f"{url['session']}/health", timeout=30),
    ):
        yield url


def test_commands_parse_long_request_heads_whatever_their_segmentation() -> None:
    with cli_chain() as url:
        for server, path in [
            ("worker", "/" + "a" * 40_000),
            ("gateway", "/" + "a" * 40_000),
            ("session", "/sessions/" + "0" * 32 + "/" + "a" * 40_000),
        ]:
            r = raw_send(url[server], "GET", path, {}, b"")
            assert r.headers.get("content-type", "").startswith("application/json"), (server, r.status_code, r.text)
            assert 400 <= r.status_code < 500, (server, r.status_code, r.text)

"""The session server through real HTTP, in front of a fake router that records what it receives."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import sys
from collections.abc import Iterator

import httpx
import pytest

from session_server.app import ServerConfig, create_app
from session_server.core import SessionCore
from session_server.direct import DirectSessionServer
from session_server.testing import ROLLBACK_FAILED_BODY, FakeRouter
from session_server.upstream import UpstreamResponse
from testbed_common import fastjson, procs
from testbed_common import tokenizer as tok

KEY = "x-smg-routing-key"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@contextlib.contextmanager
def stack(router: FakeRouter | None = None, **config) -> Iterator[tuple[httpx.Client, FakeRouter, object]]:
    """A fake router and a session server in front of it, both on loopback; stopped on exit."""
    router = router or FakeRouter()
    with procs.ThreadServer(router.app()) as up:
        app = create_app(ServerConfig(router_url=up.url, **config))
        with procs.ThreadServer(app) as ss, httpx.Client(base_url=ss.url, timeout=30, trust_env=False) as client:
            yield client, router, app


def new_session(client: httpx.Client) -> str:
    r = client.post("/sessions", json={})
    assert r.status_code == 200
    return r.json()["session_id"]


def turn(client: httpx.Client, sid: str, messages, headers=None, **extra) -> httpx.Response:
    body = {"model": "fake-model", "messages": messages, "max_tokens": 4, **extra}
    return client.post(f"/sessions/{sid}/v1/chat/completions", json=body, headers=headers)


def reply(r: httpx.Response) -> dict:
    return r.json()["choices"][0]["message"]


def two_turns(client, sid, tool="tool output") -> list[dict]:
    m = [{"role": "user", "content": "find the bug"}]
    r = turn(client, sid, m)
    assert r.status_code == 200
    return [*m, reply(r), {"role": "tool", "content": tool}]


# --- routes ------------------------------------------------------------------------------------


def test_routes_health_create_get_delete():
    with stack() as (client, _, _app):
        h1, h2 = client.get("/health").json(), client.get("/health").json()
        assert h1 == h2 and h1["status"] == "ok" and HEX32.match(h1["session_server_instance_id"])
        sid = new_session(client)
        assert HEX32.match(sid) and sid != new_session(client)
        view = client.get(f"/sessions/{sid}")
        assert view.status_code == 200
        assert view.json() == {
            "session_id": sid,
            "records": [],
            "metadata": {"accumulated_token_ids": [], "max_trim_tokens": 0},
        }
        r = client.delete(f"/sessions/{sid}")
        assert r.status_code == 204 and r.content == b""
        for r in (
            client.delete(f"/sessions/{sid}"),
            client.get(f"/sessions/{sid}"),
            turn(client, sid, [{"role": "user", "content": "x"}]),
            client.get(f"/sessions/{sid}/v1/models"),
        ):
            assert r.status_code == 404 and "session not found" in r.json()["error"]


def test_each_turn_appends_one_record_and_the_token_prefix_grows():
    with stack() as (client, router, _app):
        sid = new_session(client)
        messages = [{"role": "system", "content": "you fix bugs"}, {"role": "user", "content": "task"}]
        prefixes = []
        for k in range(4):
            r = turn(client, sid, messages, sim_time=float(k))
            assert r.status_code == 200
            assert r.headers["x-fake-router"] == "1"  # upstream headers are relayed
            view = client.get(f"/sessions/{sid}").json()
            assert len(view["records"]) == k + 1
            rec = view["records"][-1]
            assert rec["path"] == "/v1/chat/completions" and rec["status_code"] == 200 and rec["method"] == "POST"
            assert rec["timestamp"] == float(k) and rec["response"] == r.json()
            acc = view["metadata"]["accumulated_token_ids"]
            assert acc == tok.render([*messages, reply(r)], add_generation_prompt=False)
            prefixes.append(acc)
            messages = [*messages, reply(r), {"role": "tool", "content": f"result {k} ok"}]
        for a, b in itertools.pairwise(prefixes):
            assert len(b) > len(a) and b[: len(a)] == a
        chats = router.chats()
        assert "input_ids" not in chats[0].body
        for k in range(1, 4):
            assert chats[k].body["input_ids"][: len(prefixes[k - 1])] == prefixes[k - 1]
            assert chats[k].body["input_ids"] == chats[k].body["input_ids"][: len(prefixes[k - 1])] + tok.render(
                [{"role": "tool", "content": f"result {k - 1} ok"}], False
            ) + list(tok.GENERATION_PROMPT)
        # the fake router's cache sees the stored prefix from turn 2 on
        caches = [c["meta_info"]["cached_tokens"] for c in (rec["response"]["choices"][0] for rec in view["records"])]
        assert caches[0] == 0 and all(c == len(p) for c, p in zip(caches[1:], prefixes, strict=False))


def test_a_view_carries_each_answer_as_the_upstream_wrote_it():
    """Records keep an answer that came as bytes as those bytes (``fastjson.RawJSON``): the view splices them in
    unchanged, and the core's view keeps them so (written out, it is the HTTP view)."""
    with stack() as (client, _router, app):
        sid = new_session(client)
        answers = []
        messages = [{"role": "user", "content": "find the bug é☃"}]
        for k in range(3):
            r = turn(client, sid, messages)
            assert r.status_code == 200
            answers.append(r.content)  # the upstream's bytes, relayed as they came
            messages = [*messages, reply(r), {"role": "tool", "content": f"result {k}"}]
        raw = client.get(f"/sessions/{sid}").content
        for answer in answers:
            assert b'"response":' + answer + b',"status_code":200' in raw
        view = json.loads(raw)
        assert [rec["response"] for rec in view["records"]] == [json.loads(a) for a in answers]
        core = app.state.core
        kept = core.get_view(sid)
        assert all(isinstance(rec["response"], fastjson.RawJSON) for rec in kept["records"])
        assert fastjson.dumps(kept) == raw


# --- the routing key -----------------------------------------------------------------------------


def test_header_is_the_session_id_replacing_any_client_key():
    with stack() as (client, router, _app):
        sid = new_session(client)
        m = two_turns(client, sid)
        assert (
            turn(client, sid, m, headers={"X-Smg-Routing-Key": "client-value", "Authorization": "Bearer t"}).status_code
            == 200
        )
        r = client.post(f"/sessions/{sid}/v1/echo?a=1&b=2", content=b"raw", headers={"x-SMG-routing-key": "c2"})
        assert r.status_code == 200 and r.json()["echo"] == "v1/echo" and r.json()["query"] == "a=1&b=2"
        assert r.json()["body"] == "raw"
        for rec in router.received:
            assert rec.header_values(KEY) == [sid]
        assert router.received[1].header_values("authorization") == ["Bearer t"]
        assert len(router.received) == 3


def test_no_routing_key_sends_no_header_and_custom_header_name():
    with stack(routing_key=False) as (client, router, _app):
        sid = new_session(client)
        turn(client, sid, two_turns(client, sid))
        client.get(f"/sessions/{sid}/v1/model_info")
        assert len(router.received) == 3 and all(rec.header_values(KEY) == [] for rec in router.received)
    with stack(routing_key_header="X-Session-Id") as (client, router, _app):
        sid = new_session(client)
        two_turns(client, sid)
        assert router.received[0].header_values("x-session-id") == [sid]
        assert router.received[0].header_values(KEY) == []


# --- the rollback retry ------------------------------------------------------------------------------


def test_rollback_failed_is_retried_once_without_input_ids_and_with_the_same_header():
    with stack() as (client, router, _app):
        sid = new_session(client)
        m = two_turns(client, sid)
        router.fail_next(400, {"error": "ROLLBACK FAILED: cache state mismatch"})
        r = turn(client, sid, m, headers={"x-request-id": "req-7"})
        assert r.status_code == 200
        first, retry = router.chats()[1:]
        assert "input_ids" in first.body and "input_ids" not in retry.body
        assert {k: v for k, v in first.body.items() if k != "input_ids"} == retry.body
        assert first.header_values(KEY) == retry.header_values(KEY) == [sid]
        assert first.header_values("x-request-id") == retry.header_values("x-request-id") == ["req-7"]
        records = client.get(f"/sessions/{sid}").json()["records"]
        assert len(records) == 2 and "input_ids" not in records[1]["request"]


@pytest.mark.parametrize(
    "status, body, second_turn, expected_calls",
    [
        (400, ROLLBACK_FAILED_BODY, True, 3),  # trigger: one retry, which fails again; no second retry
        (400, ROLLBACK_FAILED_BODY, False, 2),  # first turn has no input_ids: no retry
        (500, ROLLBACK_FAILED_BODY, True, 2),  # not a 400
        (400, {"error": "bad request"}, True, 2),  # no "rollback failed"
    ],
)
def test_retry_happens_only_on_its_trigger_and_at_most_once(status, body, second_turn, expected_calls):
    with stack() as (client, router, _app):
        sid = new_session(client)
        m = two_turns(client, sid) if second_turn else [{"role": "user", "content": "q"}]
        router.fail_next(status, body, times=2)
        r = turn(client, sid, m)
        assert r.status_code == status and r.json() == body  # passed through as the upstream said
        assert len(router.chats()) == expected_calls - (0 if second_turn else 1)
        assert len(client.get(f"/sessions/{sid}").json()["records"]) == (1 if second_turn else 0)


# --- upstream faults and bad input ----------------------------------------------------------------


def test_transport_error_is_a_502_json_error_and_timeout_is_configurable():
    dead = procs.free_port()
    with (
        procs.ThreadServer(create_app(ServerConfig(router_url=f"http://127.0.0.1:{dead}"))) as ss,
        httpx.Client(base_url=ss.url, trust_env=False) as client,
    ):
        sid = new_session(client)
        r = turn(client, sid, [{"role": "user", "content": "x"}])
        assert r.status_code == 502 and r.json()["error"].startswith("backend transport error: ConnectError")
        assert client.get(f"/sessions/{sid}").json()["records"] == []
    with stack(FakeRouter(delay=2.0), timeout=0.2) as (client, _router, _app):
        sid = new_session(client)
        r = turn(client, sid, [{"role": "user", "content": "x"}])
        assert r.status_code == 502 and "ReadTimeout" in r.json()["error"]


def test_prefix_violation_from_upstream_is_a_502_and_nothing_is_recorded():
    with stack() as (client, router, _app):
        sid = new_session(client)
        m = two_turns(client, sid)
        router.corrupt_prefix = True
        r = turn(client, sid, m)
        assert r.status_code == 502 and "prefix invariant" in r.json()["error"]
        assert len(client.get(f"/sessions/{sid}").json()["records"]) == 1


@pytest.mark.parametrize(
    "content, status, needle",
    [
        (b"{oops", 400, "invalid JSON"),
        (b'"a string"', 400, "JSON object"),
        (b'{"messages": {"role": "user"}}', 400, "'messages' must be a list"),
        (b'{"messages": [{"role": "user", "content": "' + b"w " * 600 + b'"}]}', 413, "too large"),
    ],
)
def test_bad_input_gets_a_clear_4xx(content, status, needle):
    with stack(max_body_bytes=1000) as (client, router, _app):
        sid = new_session(client)
        r = client.post(
            f"/sessions/{sid}/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
        assert r.status_code == status and needle in r.json()["error"]
        assert router.received == [] and client.get(f"/sessions/{sid}").json()["records"] == []


def test_session_limit_and_unknown_routes_answer_json_errors():
    with stack(max_sessions=1) as (client, _router, _app):
        new_session(client)
        r = client.post("/sessions")
        assert r.status_code == 503 and "session limit" in r.json()["error"]
        assert client.get("/nowhere").status_code == 404 and "error" in client.get("/nowhere").json()
        r = client.put("/sessions")
        assert r.status_code == 405 and "error" in r.json()


# --- split-lock contract (spec section 8) ------------------------------------------------------------


async def _gather(*aws):
    return await asyncio.gather(*aws)


def test_race_cases():
    router = FakeRouter(delay=0.3)
    with stack(router) as (client, _router, app):
        base = str(client.base_url)

        async def scenario():
            async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as ac:
                msg = {"model": "m", "messages": [{"role": "user", "content": "same"}], "max_tokens": 3}

                async def chat(sid):
                    return await ac.post(f"/sessions/{sid}/v1/chat/completions", json=msg)

                async def create():
                    return (await ac.post("/sessions")).json()["session_id"]

                # four identical concurrent turns on one session: all 200, exactly one recorded
                sid = await create()
                rs = await asyncio.gather(*(chat(sid) for _ in range(4)))
                assert [r.status_code for r in rs] == [200] * 4
                assert len((await ac.get(f"/sessions/{sid}")).json()["records"]) == 1

                # different sessions run in parallel upstream
                router.max_active = 0
                sids = [await create() for _ in range(4)]
                rs = await asyncio.gather(*(chat(s) for s in sids))
                assert all(r.status_code == 200 for r in rs) and router.max_active >= 3

                # DELETE during a turn: the turn answers 200, DELETE 204, a later turn 404
                sid = await create()
                task = asyncio.create_task(chat(sid))
                await asyncio.sleep(0.1)
                d = await ac.delete(f"/sessions/{sid}")
                r = await task
                assert (r.status_code, d.status_code) == (200, 204)
                assert (await chat(sid)).status_code == 404
                assert (await ac.get(f"/sessions/{sid}")).status_code == 404

                # double DELETE: one 204, one 404
                sid = await create()
                ds = await asyncio.gather(ac.delete(f"/sessions/{sid}"), ac.delete(f"/sessions/{sid}"))
                assert sorted(d.status_code for d in ds) == [204, 404]

                # queued turns then DELETE: every status is 200 or 404, and the session is gone
                sid = await create()
                tasks = [asyncio.create_task(chat(sid)) for _ in range(3)]
                await asyncio.sleep(0.05)
                d = await ac.delete(f"/sessions/{sid}")
                rs = await asyncio.gather(*tasks)
                assert d.status_code == 204 and {r.status_code for r in rs} <= {200, 404}
                assert sid not in app.state.core.sessions

                # rapid create / turn / delete cycles leave nothing behind
                async def cycle():
                    s = await create()
                    r = await chat(s)
                    d = await ac.delete(f"/sessions/{s}")
                    return r.status_code, d.status_code

                router.delay = 0.0
                before = set(app.state.core.sessions)
                assert await asyncio.gather(*(cycle() for _ in range(10))) == [(200, 204)] * 10
                assert set(app.state.core.sessions) == before

        asyncio.run(scenario())


def test_turn_while_closing_is_404():
    with stack() as (client, _router, app):
        sid = new_session(client)
        app.state.core.begin_delete(sid)  # as DELETE does before it waits for the session lock
        r = turn(client, sid, [{"role": "user", "content": "x"}])
        assert r.status_code == 404
        assert client.delete(f"/sessions/{sid}").status_code == 404


# --- the CLI -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", [["-m", "session_server"], ["-m", "sim.cli", "session-server"]])
def test_cli_serves_and_no_routing_key_flag(launcher):
    router = FakeRouter()
    with procs.ThreadServer(router.app()) as up:
        port = procs.free_port()
        args = [
            sys.executable,
            *launcher,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--router-url",
            up.url,
            "--no-routing-key",
            "--session-id-seed",
            "5",
        ]
        with procs.running(args, f"http://127.0.0.1:{port}/health", timeout=30):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
                sid = new_session(client)
                assert sid == SessionCore(session_id_seed=5).create_session(0.0)
                two_turns(client, sid)
            assert router.received[0].header_values(KEY) == []


def test_direct_server_answers_what_the_http_server_answers():
    seed = 3
    router_http, router_direct = FakeRouter(), FakeRouter()

    def upstream(req):
        if req.path == "v1/chat/completions":
            return UpstreamResponse(200, {"content-type": "application/json"}, data=router_direct.answer(req.json))
        return UpstreamResponse(
            200,
            {"content-type": "application/json"},
            data={"echo": req.path, "method": req.method, "query": req.query, "body": None},
        )

    direct = DirectSessionServer(SessionCore(session_id_seed=seed), upstream)
    # turns carry sim_time, so record timestamps do not depend on either server's clock
    first = [{"role": "user", "content": "hello"}]

    def script(create, chat, get, delete, passthrough):
        sid = create()
        out = [
            get(sid),
            get("unknown"),
            chat("unknown", b'{"messages": []}'),
            chat(sid, b"{bad"),
            chat(sid, b'{"messages": 1}'),
            chat(sid, b'{"messages": [], "stream": true}'),
            chat(sid, json.dumps({"messages": first, "sim_time": 1.0}).encode()),
        ]
        m = [*first, out[-1][1]["choices"][0]["message"]]
        out += [
            chat(sid, json.dumps({"messages": [*m, {"role": "user", "content": "no"}]}).encode()),
            chat(sid, json.dumps({"messages": [*m, {"role": "tool", "content": "ok"}], "sim_time": 2.0}).encode()),
            chat(sid, json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()),
            passthrough(sid),
            passthrough("unknown"),
            get(sid),
            delete(sid),
            delete(sid),
            get(sid),
        ]
        return out

    expected = script(
        lambda: direct.create_session().body["session_id"],
        lambda sid, b: (lambda r: (r.status, r.body))(direct.chat(sid, b)),
        lambda sid: (lambda r: (r.status, r.body))(direct.get_session(sid)),
        lambda sid: (lambda r: (r.status, r.body))(direct.delete_session(sid)),
        lambda sid: (lambda r: (r.status, r.body))(direct.passthrough(sid, "GET", "v1/echo", "q=1")),
    )
    with stack(router_http, session_id_seed=seed) as (c, _router, _app):

        def js(r):
            return (r.status_code, r.json() if r.content else None)

        got = script(
            lambda: c.post("/sessions").json()["session_id"],
            lambda sid, b: js(c.post(f"/sessions/{sid}/v1/chat/completions", content=b)),
            lambda sid: js(c.get(f"/sessions/{sid}")),
            lambda sid: js(c.delete(f"/sessions/{sid}")),
            lambda sid: js(c.get(f"/sessions/{sid}/v1/echo?q=1")),
        )
    for e, g in zip(expected, got, strict=True):
        assert e == g
    assert [s for s, _ in got] == [200, 404, 404, 400, 400, 400, 200, 400, 200, 400, 200, 404, 200, 204, 404, 404]


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-sessions", "0"],
        ["--timeout", "-1"],
        ["--idle-ttl", "0"],
        ["--tito-allowed-append-roles", "robot"],
        ["--routing-key-header", "a b"],
    ],
)
def test_cli_rejects_bad_flags(argv, capsys):
    from session_server.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "error" in capsys.readouterr().err


def test_app_works_without_a_lifespan_under_an_asgi_transport():
    router = FakeRouter()

    async def scenario():
        with procs.ThreadServer(router.app()) as up:
            app = create_app(ServerConfig(router_url=up.url))
            transport = httpx.ASGITransport(app=app)  # runs no lifespan events
            async with httpx.AsyncClient(transport=transport, base_url="http://ss") as ac:
                sid = (await ac.post("/sessions")).json()["session_id"]
                r = await ac.post(
                    f"/sessions/{sid}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
                )
                assert r.status_code == 200 and router.chats()[0].header_values(KEY) == [sid]
            await app.state.upstream.aclose()

    asyncio.run(scenario())

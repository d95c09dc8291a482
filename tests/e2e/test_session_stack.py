"""The session server in the full stack over real HTTP: session server -> mock SGLang worker(s), and
session server -> gateway (the real ``smg`` 1.13.0, and the mock gateway when present) -> workers.

The gateway test reproduces offline what the header's author saw on a cluster: with ``--policy manual``,
N sessions of T turns give ``vacant`` = N and ``occupied_hit`` = N*(T-1) (plus one per rollback retry),
``no_routing_id`` = 0; without the header every turn is ``no_routing_id`` and nothing is pinned.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from session_server.app import ServerConfig, create_app
from session_server.core import SessionCore
from session_server.direct import DirectSessionServer
from session_server.upstream import UpstreamResponse
from sim.engine.types import WorkerConfig
from sim.worker.app import create_app as worker_app
from sim.worker.core import WorkerCore
from testbed_common import procs
from testbed_common import tokenizer as tok

KEY = "x-smg-routing-key"
MODEL = "mock-model"
SYSTEM = {"role": "system", "content": "fix the bug"}
# tokens every session shares: the system message and "<|im_start|> user"
SHARED = len(tok.render([SYSTEM], add_generation_prompt=False)) + 2


class HeaderLog:
    """ASGI wrapper recording the path, headers and body size of every HTTP request a worker receives."""

    def __init__(self, app) -> None:
        self.app = app
        self.seen: list[tuple[str, list[tuple[str, str]]]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["path"], [(k.decode(), v.decode()) for k, v in scope["headers"]]))
        await self.app(scope, receive, send)

    def chat_keys(self) -> list[list[str]]:
        return [[v for k, v in h if k == KEY] for p, h in self.seen if p == "/v1/chat/completions"]


@contextlib.contextmanager
def workers(n: int, seed: int = 3) -> Iterator[list[tuple[WorkerCore, HeaderLog, str]]]:
    with contextlib.ExitStack() as stack:
        out = []
        for i in range(n):
            core = WorkerCore(WorkerConfig(name=f"w{i}"), model_name=MODEL, seed=seed)
            log = HeaderLog(worker_app(core))
            server = stack.enter_context(procs.ThreadServer(log))
            out.append((core, log, server.url))
        yield out


@contextlib.contextmanager
def session_server(router_url: str, **config) -> Iterator[str]:
    with procs.ThreadServer(create_app(ServerConfig(router_url=router_url, **config))) as ss:
        yield ss.url


@pytest.fixture
def gateway_command(request: pytest.FixtureRequest, kind: str) -> list[str]:
    """How to start the gateway of ``kind``: the plugin's smg binary (``--smg-bin``/``SMG_BIN``) or the mock."""
    if kind == "smg":
        return [request.getfixturevalue("smg_bin").path, "launch"]
    return [sys.executable, "-m", "sim.cli", "gateway"]


@contextlib.contextmanager
def gateway(
    command: list[str], worker_urls: list[str], tmp_path: Path, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, str]]:
    """A gateway (``command`` and its flags) with ``--policy manual --assignment-mode min_load``; yields (url,
    metrics url)."""
    port, prom = procs.free_ports(2)
    flags = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(prom),
        "--worker-urls",
        *worker_urls,
        "--policy",
        "manual",
        "--assignment-mode",
        "min_load",
        "--worker-startup-check-interval",
        "1",
        *extra,
    ]
    args = [*command, *flags]
    url = f"http://127.0.0.1:{port}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    # smg's graceful shutdown lingers ~5 s; SIGKILL after 2 s keeps tests short
    with procs.running(args, f"{url}/readiness", timeout=60, log_path=tmp_path / "gateway.log", grace=2):
        yield url, f"http://127.0.0.1:{prom}/metrics"


def branch_counts(metrics_text: str) -> tuple[dict[str, float], float | None]:
    """``smg_manual_policy_branch_total`` per branch, and the ``smg_manual_policy_cache_entries`` gauge."""
    branches: dict[str, float] = {}
    for line in metrics_text.splitlines():
        m = re.match(r"^smg_manual_policy_branch_total\{(.*)\}\s+(\S+)$", line)
        if m:
            b = re.search(r'branch="([^"]+)"', m[1])
            if b:
                branches[b[1]] = branches.get(b[1], 0.0) + float(m[2])
    entries = re.search(r"^smg_manual_policy_cache_entries(?:\{[^}]*\})?\s+(\S+)$", metrics_text, re.M)
    return branches, float(entries[1]) if entries else None


async def run_sessions(ss_url: str, n: int, turns: int, salt: int = 0) -> list[dict]:
    """N concurrent sessions of T turns (a task, then tool results); each session's turns in order.
    ``salt`` makes the texts differ between calls, so no call finds another's prefixes cached."""

    async def one(ac: httpx.AsyncClient, i: int) -> dict:
        sid = (await ac.post("/sessions")).json()["session_id"]
        messages = [SYSTEM, {"role": "user", "content": tok.synth_text(1000 * salt + i, 20)}]
        workers_seen, cached, accumulated = [], [], []
        for k in range(turns):
            r = await ac.post(
                f"/sessions/{sid}/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 6}
            )
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            workers_seen.append(r.headers.get("x-sim-worker"))
            cached.append(choice["meta_info"]["cached_tokens"])
            view = (await ac.get(f"/sessions/{sid}")).json()
            assert len(view["records"]) == k + 1
            accumulated.append(view["metadata"]["accumulated_token_ids"])
            tool_text = tok.synth_text(10**6 * (salt + 1) + 100 * i + k, 15)
            tool = {"role": "tool", "content": tool_text, "tool_call_id": f"call{k}"}
            messages = [*messages, choice["message"], tool]
        assert (await ac.delete(f"/sessions/{sid}")).status_code == 204
        return {"sid": sid, "workers": workers_seen, "cached": cached, "accumulated": accumulated}

    async with httpx.AsyncClient(base_url=ss_url, timeout=60, trust_env=False) as ac:
        return await asyncio.gather(*(one(ac, i) for i in range(n)))


def assert_prefix_reuse(session: dict) -> None:
    acc, cached = session["accumulated"], session["cached"]
    assert cached[0] in (0, SHARED)  # nothing of this session is cached before its first turn
    for k in range(1, len(acc)):
        assert acc[k][: len(acc[k - 1])] == acc[k - 1] and len(acc[k]) > len(acc[k - 1])
        assert cached[k] == len(acc[k - 1])  # the sticky worker holds the whole previous conversation


# --- session server -> mock worker --------------------------------------------------------------


def test_through_a_mock_worker_header_retry_and_cached_tokens():
    with workers(1) as ws:
        core, log, url = ws[0]
        with session_server(url) as ss:
            [s] = asyncio.run(run_sessions(ss, 1, 3))
            assert log.chat_keys() == [[s["sid"]]] * 3
            assert_prefix_reuse(s)
            # a worker answering "rollback failed" to every request with input_ids: each later turn is
            # retried once, without input_ids, with the same key, and still reuses the cache
            core.faults.rollback_fail_rate = 1.0
            log.seen.clear()
            [s] = asyncio.run(run_sessions(ss, 1, 3, salt=1))
            assert log.chat_keys() == [[s["sid"]]] * 5
            assert_prefix_reuse(s)
        with session_server(url, routing_key=False) as ss:
            log.seen.clear()
            asyncio.run(run_sessions(ss, 1, 2, salt=2))
            assert log.chat_keys() == [[], [], []]  # a retry too


# --- session server -> gateway (manual) -> workers --------------------------------------------------


@pytest.mark.parametrize("kind", [pytest.param("smg", marks=pytest.mark.real_smg), "mock"])
def test_manual_branch_counts_with_and_without_the_header(gateway_command, tmp_path):
    n, t = 4, 3
    with workers(3) as ws:
        urls = [u for _, _, u in ws]
        with gateway(gateway_command, urls, tmp_path / "keyed") as (gw, metrics):
            with session_server(gw) as ss:
                sessions = asyncio.run(run_sessions(ss, n, t))
            branches, entries = branch_counts(httpx.get(metrics, trust_env=False).text)
            assert branches.get("vacant") == n and branches.get("occupied_hit") == n * (t - 1)
            assert branches.get("no_routing_id", 0) == 0 and branches.get("occupied_miss", 0) == 0
            assert entries == n
            for s in sessions:
                assert len(set(s["workers"])) == 1  # sticky
                assert_prefix_reuse(s)
            keys = sorted(k for _, log, _ in ws for keys in log.chat_keys() for k in keys)
            assert keys == sorted(s["sid"] for s in sessions for _ in range(t))

            # rollback retries are routed with the key too: one more occupied_hit each
            for core, log, _ in ws:
                core.faults.rollback_fail_rate = 1.0
                log.seen.clear()
            with session_server(gw) as ss:
                sessions = asyncio.run(run_sessions(ss, n, t, salt=1))
            keys = sorted(k for _, log, _ in ws for keys in log.chat_keys() for k in keys)
            assert keys == sorted(s["sid"] for s in sessions for _ in range(2 * t - 1))  # retries carry the key
            for s in sessions:
                assert len(set(s["workers"])) == 1
                assert_prefix_reuse(s)
            for core, _, _ in ws:
                core.faults.rollback_fail_rate = 0.0
            branches, entries = branch_counts(httpx.get(metrics, trust_env=False).text)
            assert branches.get("vacant") == 2 * n
            assert branches.get("occupied_hit") == n * (t - 1) + 2 * n * (t - 1)
            assert branches.get("no_routing_id", 0) == 0

        for _, log, _ in ws:
            log.seen.clear()
        with gateway(gateway_command, urls, tmp_path / "unkeyed") as (gw, metrics):
            with session_server(gw, routing_key=False) as ss:
                sessions = asyncio.run(run_sessions(ss, n, t, salt=2))
            branches, entries = branch_counts(httpx.get(metrics, trust_env=False).text)
            assert branches.get("no_routing_id") == n * t
            assert branches.get("vacant", 0) == 0 and branches.get("occupied_hit", 0) == 0
            assert not entries
            chats = [keys for _, log, _ in ws for keys in log.chat_keys()]
            assert len(chats) == n * t and all(keys == [] for keys in chats)


# --- the same logic in-process: http and direct give identical results ----------------------------------


def sim_headers(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-sim-")}


def scripted_agent(create, turn, view, n_sessions: int = 3, turns: int = 5) -> list:
    """Sessions with tool results, one agent retry (rollback) and sim_time; returns everything observed."""
    observed = []
    t = 0.0
    for i in range(n_sessions):
        sid = create()
        messages = [SYSTEM, {"role": "user", "content": tok.synth_text(7000 + i, 12)}]
        for k in range(turns):
            t += 0.5
            body_in = {"model": MODEL, "messages": messages, "max_tokens": 4 + k, "sim_time": t}
            status, body, headers = turn(sid, body_in)
            observed.append((sid, k, status, body, headers))
            assert headers["x-sim-worker"] == "w0"
            if status != 200:
                continue
            reply = body["choices"][0]["message"]
            if k == 2:  # the agent throws this answer away and retries the turn with another tool result
                messages = [
                    *messages[:-1],
                    {"role": "tool", "content": "retry " + tok.synth_text(k, 5), "tool_call_id": "r"},
                ]
            else:
                messages = [
                    *messages,
                    reply,
                    {"role": "tool", "content": tok.synth_text(100 * i + k, 8), "tool_call_id": f"c{k}"},
                ]
        observed.append(view(sid))
    return observed


def test_http_and_direct_paths_give_identical_results():
    seed = 11

    def fresh_worker() -> WorkerCore:
        core = WorkerCore(WorkerConfig(name="w0"), model_name=MODEL, seed=5)
        core.faults.rollback_fail_rate = 0.5
        return core

    # direct: the core with an in-process worker, no HTTP anywhere
    worker = fresh_worker()

    def upstream(req):
        reply = worker.infer("chat", req.json)
        return UpstreamResponse(reply.status, reply.headers, data=reply.body)

    server = DirectSessionServer(SessionCore(session_id_seed=seed), upstream)

    def direct_turn(sid, body):
        r = server.chat(sid, body)
        return r.status, r.body, sim_headers(r.headers)

    direct = scripted_agent(
        lambda: server.create_session().body["session_id"], direct_turn, lambda sid: server.get_session(sid).body
    )

    # http: session server -> mock worker over loopback
    worker = fresh_worker()
    with (
        procs.ThreadServer(worker_app(worker)) as w,
        session_server(w.url, session_id_seed=seed) as ss,
        httpx.Client(base_url=ss, timeout=30, trust_env=False) as c,
    ):

        def http_turn(sid, body):
            r = c.post(f"/sessions/{sid}/v1/chat/completions", json=body)
            return r.status_code, r.json(), sim_headers(r.headers)

        over_http = scripted_agent(
            lambda: c.post("/sessions").json()["session_id"], http_turn, lambda sid: c.get(f"/sessions/{sid}").json()
        )

    assert over_http == direct
    statuses = [o[2] for o in direct if isinstance(o, tuple)]
    assert statuses.count(200) == len(statuses)  # rollback faults were all recovered by the retry
    retried = [r for v in direct if isinstance(v, dict) for r in v["records"] if "input_ids" not in r["request"]]
    assert len(retried) > 3  # first turns plus retried turns
    views = [v for v in direct if isinstance(v, dict)]
    assert [len(v["records"]) for v in views] == [4, 4, 4]  # 5 turns, one of them rolled back by the agent


@pytest.mark.parametrize("kind", [pytest.param("smg", marks=pytest.mark.real_smg), "mock"])
def test_custom_routing_key_header_for_a_gateway_set_up_with_another_name(gateway_command, tmp_path):
    n, t = 2, 3
    header = ("--routing-key-headers", "x-session-id")
    with workers(2) as ws, gateway(gateway_command, [u for _, _, u in ws], tmp_path, header) as (gw, metrics):
        with session_server(gw, routing_key_header="X-Session-Id") as ss:
            sessions = asyncio.run(run_sessions(ss, n, t))
        branches, entries = branch_counts(httpx.get(metrics, trust_env=False).text)
        assert branches.get("vacant") == n and branches.get("occupied_hit") == n * (t - 1)
        assert branches.get("no_routing_id", 0) == 0 and entries == n
        for s in sessions:
            assert len(set(s["workers"])) == 1
            assert_prefix_reuse(s)

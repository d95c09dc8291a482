"""Session server overhead: turns per second through the session server vs a direct call to a no-op upstream.

Three paths, same no-op upstream (``session_server.testing.noop_app``: echoes ``input_ids`` as the
prompt and answers one token), each server in its own process on loopback:

- ``direct``: client -> no-op upstream (``POST /v1/chat/completions``), the floor;
- ``session server``: client -> session server -> no-op upstream (TITO merge, records, routing key);
- ``core in-process``: ``SessionCore.run_turn`` with an in-process no-op upstream (the cost of the
  session logic alone, as the simulator's ``direct`` transport pays it).

Each is run sequentially (one client, keep-alive) and with ``--concurrency`` sessions in parallel.
Run: ``.venv/bin/python benchmarks/session_server_bench.py [--sessions 20 --turns 10 --concurrency 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from session_server.core import SessionCore
from session_server.testing import noop_answer
from session_server.upstream import UpstreamResponse
from testbed_common import procs
from testbed_common import tokenizer as tok

BODY = {"model": "noop", "max_tokens": 1}


def conversation_steps(turns: int, seed: int) -> list[list[dict]]:
    """The message list of each turn of one session (a task, then tool results of 30 words)."""
    messages = [
        {"role": "system", "content": tok.synth_text(seed, 50)},
        {"role": "user", "content": tok.synth_text(seed + 1, 80)},
    ]
    steps = []
    for k in range(turns):
        steps.append(list(messages))
        messages = [
            *messages,
            {"role": "assistant", "content": ""},
            {"role": "tool", "content": tok.synth_text(seed + 2 + k, 30), "tool_call_id": str(k)},
        ]
    return steps


async def run_http(base: str, sessions: int, turns: int, concurrency: int, through_session_server: bool) -> float:
    """Turns per second over HTTP, ``concurrency`` sessions at a time."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, trust_env=False) as ac:

        async def one(i: int) -> None:
            async with sem:
                steps = conversation_steps(turns, 100 * i)
                if through_session_server:
                    sid = (await ac.post("/sessions")).json()["session_id"]
                    path = f"/sessions/{sid}/v1/chat/completions"
                else:
                    path = "/v1/chat/completions"
                for messages in steps:
                    r = await ac.post(path, json={**BODY, "messages": messages})
                    r.raise_for_status()
                if through_session_server:
                    (await ac.delete(f"/sessions/{sid}")).raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(sessions)))
        return sessions * turns / (time.perf_counter() - t0)


def run_core(sessions: int, turns: int) -> float:
    core = SessionCore()

    def upstream(req):
        return UpstreamResponse(200, {"content-type": "application/json"}, data=noop_answer(req.json))

    all_steps = [conversation_steps(turns, 100 * i) for i in range(sessions)]
    t0 = time.perf_counter()
    for steps in all_steps:
        sid = core.create_session(0.0)
        for messages in steps:
            r = core.run_turn(sid, {**BODY, "messages": messages}, {}, upstream)
            assert r.status == 200, r.body
        core.delete(sid)
    return sessions * turns / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)

    up_port, ss_port = procs.free_ports(2)
    up_url, ss_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{ss_port}"
    upstream_args = procs.python_module(
        "uvicorn",
        "session_server.testing:noop_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(up_port),
        "--log-level",
        "warning",
        "--no-access-log",
    )
    server_args = procs.python_module(
        "session_server", "--host", "127.0.0.1", "--port", str(ss_port), "--router-url", up_url
    )
    with procs.running(upstream_args, f"{up_url}/health"), procs.running(server_args, f"{ss_url}/health"):
        n, t = args.sessions, args.turns
        asyncio.run(run_http(ss_url, 2, 2, 1, True))  # warm up
        rows = []
        for conc in (1, args.concurrency):
            direct = asyncio.run(run_http(up_url, n, t, conc, False))
            via = asyncio.run(run_http(ss_url, n, t, conc, True))
            rows.append((conc, direct, via))
        core_rate = run_core(n, t)

    print(f"session server overhead: {n} sessions x {t} turns, no-op upstream, loopback")
    print(f"{'concurrency':>11}  {'direct turns/s':>14}  {'via session server':>18}  {'overhead ratio':>14}")
    for conc, direct, via in rows:
        print(f"{conc:>11}  {direct:>14.0f}  {via:>18.0f}  {direct / via:>13.2f}x")
    print(f"core in-process (SessionCore.run_turn, no HTTP): {core_rate:.0f} turns/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

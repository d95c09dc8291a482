"""Load on loopback: N concurrent agent sessions of T turns through session server -> mock gateway -> mock workers.

Every server runs in its own process (``python -m sim.worker`` with ``--count W``, ``python -m mock_gateway``,
``python -m session_server``), in live time (no ``sim_time``), the workers waiting out their modelled latency
divided by ``--speedup``. Two measurements:

- **hops**: the same chat request (a fresh 2-message prompt each time, ``--max-tokens`` output) sent
  ``--hop-samples`` times, one at a time, straight to a worker, through the gateway (with a routing key), and
  through session server + gateway (a new session's first turn). The difference of the percentiles is what
  each hop adds.
- **load**: ``--sessions`` sessions started at once, each creating its session, running ``--turns`` turns
  (the assistant's answer and a tool result appended each turn, as an agent does) and deleting it. It counts
  errors (any status but 200/204, any transport error) and reports turn latency percentiles, then the peak
  resident memory of each server process (``VmHWM`` in ``/proc/<pid>/status``; psutil is not needed).

Run: ``.venv/bin/python benchmarks/load_bench.py [--sessions 1000 --turns 5 --workers 4 --speedup 1000]``.
``tests/e2e/test_load.py`` drives the same functions with fewer sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from testbed_common import procs
from testbed_common import tokenizer as tok

MODEL = "mock-model"
TIMEOUT = httpx.Timeout(300.0, connect=30.0)


# --- the stack -------------------------------------------------------------------------------------------


@dataclass
class Stack:
    worker_urls: list[str]
    gateway_url: str
    session_url: str
    processes: dict[str, procs.Process] = field(default_factory=dict)

    def memory(self) -> dict[str, dict[str, int]]:
        """``{server: {"rss": bytes, "hwm": bytes}}``: resident now and peak, from /proc/<pid>/status."""
        return {name: proc_memory(p.pid) for name, p in self.processes.items()}

    def cpu(self) -> dict[str, float]:
        return {name: proc_cpu(p.pid) for name, p in self.processes.items()}


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss" if key == "VmRSS" else "hwm"] = int(value.split()[0]) * 1024  # kB
    return out


@contextlib.contextmanager
def loopback_stack(
    workers: int = 4,
    speedup: float = 1000.0,
    policy: str = "manual",
    session_args: tuple[str, ...] = (),
    log_dir: Path | None = None,
) -> Iterator[Stack]:
    """Workers, gateway and session server as separate processes on 127.0.0.1; all stopped on exit."""
    with contextlib.ExitStack() as es:
        logs = log_dir or Path(es.enter_context(tempfile.TemporaryDirectory(prefix="load-bench-")))
        base = procs.consecutive_free_ports(workers)
        urls = [f"http://127.0.0.1:{base + i}" for i in range(workers)]
        worker = es.enter_context(
            procs.running(
                procs.python_module(
                    "sim.worker",
                    "--port",
                    str(base),
                    "--count",
                    str(workers),
                    "--speedup",
                    str(speedup),
                    "--model-name",
                    MODEL,
                ),
                f"{urls[-1]}/health",
                log_path=logs / "workers.log",
            )
        )
        gw_port, prom_port, ss_port = procs.free_ports(3)
        gateway_url = f"http://127.0.0.1:{gw_port}"
        gateway = es.enter_context(
            procs.running(
                procs.python_module(
                    "mock_gateway",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(gw_port),
                    "--prometheus-host",
                    "127.0.0.1",
                    "--prometheus-port",
                    str(prom_port),
                    "--worker-urls",
                    *urls,
                    "--policy",
                    policy,
                    "--worker-startup-check-interval",
                    "0.1",
                    "--log-level",
                    "warn",
                ),
                f"{gateway_url}/readiness",
                log_path=logs / "gateway.log",
            )
        )
        wait_workers(gateway_url, workers)
        session_url = f"http://127.0.0.1:{ss_port}"
        session = es.enter_context(
            procs.running(
                procs.python_module(
                    "session_server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ss_port),
                    "--router-url",
                    gateway_url,
                    *session_args,
                ),
                f"{session_url}/health",
                log_path=logs / "session_server.log",
            )
        )
        yield Stack(urls, gateway_url, session_url, {"workers": worker, "gateway": gateway, "session_server": session})


def wait_workers(gateway_url: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=5) as c:
        while sum(w["is_healthy"] for w in c.get(f"{gateway_url}/workers").json()["workers"]) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway did not register {n} workers")
            time.sleep(0.05)


# --- one agent session -----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    sessions: int
    turns: int
    ok_turns: int = 0
    errors: list[str] = field(default_factory=list)
    turn_latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of the load generator (this process)


def first_messages(seed: int) -> list[dict]:
    return [
        {"role": "system", "content": "You are a coding agent. " + tok.synth_text(7, 120)},  # shared by all
        {"role": "user", "content": tok.synth_text(seed, 60)},
    ]


async def agent_session(client: httpx.AsyncClient, result: LoadResult, seed: int, turns: int, max_tokens: int) -> None:
    """Create a session, run ``turns`` turns (answer + a tool result appended each turn), delete it."""
    try:
        r = await client.post("/sessions")
        if r.status_code != 200:
            result.errors.append(f"create: {r.status_code} {r.text[:200]}")
            return
        sid = r.json()["session_id"]
        messages = first_messages(seed)
        for turn in range(turns):
            body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens}
            t0 = time.perf_counter()
            r = await client.post(f"/sessions/{sid}/v1/chat/completions", json=body)
            result.turn_latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                result.errors.append(f"turn {turn}: {r.status_code} {r.text[:200]}")
                return
            result.ok_turns += 1
            answer = r.json()["choices"][0]["message"]["content"]
            messages = [
                *messages,
                {"role": "assistant", "content": answer},
                # SMG (and the mock gateway) refuse a tool message without tool_call_id
                {"role": "tool", "content": tok.synth_text(seed * 31 + turn, 40), "tool_call_id": f"call_{turn}"},
            ]
        r = await client.delete(f"/sessions/{sid}")
        if r.status_code != 204:
            result.errors.append(f"delete: {r.status_code} {r.text[:200]}")
    except httpx.HTTPError as e:
        result.errors.append(f"transport: {type(e).__name__}: {e}")


async def run_load(session_url: str, sessions: int, turns: int, max_tokens: int = 16, seed: int = 0) -> LoadResult:
    """``sessions`` agent sessions started together, each with its own client and connection (one shared pool of
    1,000 connections costs the client more CPU per request than all three servers together)."""
    result = LoadResult(sessions, turns)
    tls = ssl.create_default_context()  # unused on http://, but each client would otherwise load its own (~0.8 MB)

    async def one(i: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=session_url, timeout=TIMEOUT, limits=limits, trust_env=False, verify=tls
        ) as c:
            await agent_session(c, result, seed * 100_003 + i, turns, max_tokens)

    cpu0 = os.times()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(sessions)))
    result.wall = time.perf_counter() - t0
    cpu1 = os.times()
    result.client_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return result


# --- per-hop latency -------------------------------------------------------------------------------------


def hop_latencies(stack: Stack, samples: int, max_tokens: int = 16) -> dict[str, list[float]]:
    """Seconds per request, one at a time, for the same request shape: worker, gateway, session server."""
    out: dict[str, list[float]] = {"worker": [], "gateway": [], "session_server": []}
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        for i in range(samples):
            body = {"model": MODEL, "messages": first_messages(1_000_000 + i), "max_tokens": max_tokens}
            url = stack.worker_urls[i % len(stack.worker_urls)]
            for name in out:
                if name == "session_server":
                    sid = c.post(f"{stack.session_url}/sessions").json()["session_id"]
                    t0 = time.perf_counter()
                    r = c.post(f"{stack.session_url}/sessions/{sid}/v1/chat/completions", json=body)
                    dt = time.perf_counter() - t0
                    c.delete(f"{stack.session_url}/sessions/{sid}")
                else:
                    target = url if name == "worker" else stack.gateway_url
                    headers = {"x-smg-routing-key": uuid.uuid4().hex} if name == "gateway" else {}
                    t0 = time.perf_counter()
                    r = c.post(f"{target}/v1/chat/completions", json=body, headers=headers)
                    dt = time.perf_counter() - t0
                r.raise_for_status()
                out[name].append(dt)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def hop_table(lat: dict[str, list[float]]) -> str:
    """Percentiles of each path, and of the per-request differences (the three requests of a sample are sent
    back to back, so a difference is what the hop added under the same machine load)."""
    w, g, s = (np.asarray(lat[k]) for k in ("worker", "gateway", "session_server"))
    rows = [
        ("worker (direct)", w),
        ("gateway -> worker", g),
        ("session server -> gateway -> worker", s),
        ("added by the gateway (gateway - worker, per sample)", g - w),
        ("added by the session server (session server - gateway, per sample)", s - g),
    ]
    lines = ["| path | p50 ms | p99 ms |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {pct(list(x), 50) * 1e3:.2f} | {pct(list(x), 99) * 1e3:.2f} |" for name, x in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--speedup", type=float, default=1000.0)
    p.add_argument("--policy", default="manual")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--hop-samples", type=int, default=300)
    args = p.parse_args(argv)
    with loopback_stack(args.workers, args.speedup, args.policy) as stack:
        idle = stack.memory()
        lat = hop_latencies(stack, args.hop_samples, args.max_tokens)
        print(f"## per-hop latency, {args.hop_samples} sequential requests each, {args.max_tokens} output tokens\n")
        print(hop_table(lat))
        cpu0 = stack.cpu()
        res = asyncio.run(run_load(stack.session_url, args.sessions, args.turns, args.max_tokens))
        mem = stack.memory()
        cpu = {name: t - cpu0[name] for name, t in stack.cpu().items()}
    turns = args.sessions * args.turns
    print(
        f"\n## load: {args.sessions} concurrent sessions x {args.turns} turns, {args.workers} workers, "
        f"--policy {args.policy}, speedup {args.speedup:g}\n"
    )
    print(
        f"turns ok {res.ok_turns}/{turns}, errors {len(res.errors)}, wall {res.wall:.1f} s, "
        f"{res.ok_turns / res.wall:.0f} turns/s"
    )
    print(
        f"turn latency p50 {pct(res.turn_latencies, 50) * 1e3:.0f} ms, p99 {pct(res.turn_latencies, 99) * 1e3:.0f} ms, "
        f"max {max(res.turn_latencies, default=float('nan')) * 1e3:.0f} ms\n"
    )
    print("| process | RSS idle MiB | RSS after MiB | peak RSS (VmHWM) MiB | CPU ms per turn |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, m in mem.items():
        per_turn = cpu[name] / max(res.ok_turns, 1) * 1e3
        print(
            f"| {name} | {idle[name]['rss'] / 2**20:.0f} | {m['rss'] / 2**20:.0f} | {m['hwm'] / 2**20:.0f} "
            f"| {per_turn:.1f} |"
        )
    print(f"| load generator (client) | | | | {res.client_cpu / max(res.ok_turns, 1) * 1e3:.1f} |")
    for e in res.errors[:10]:
        print("error:", e, file=sys.stderr)
    return 1 if res.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Gateway benchmark: routing decisions per second of each policy's core (no HTTP), and requests per
second through the mock gateway beside the real ``smg`` 1.13.0 gateway in front of the same mock workers.

    .venv/bin/python benchmarks/gateway_bench.py [--decisions 20000] [--requests 1000] [--concurrency 16]
                                                 [--workers 3] [--skip-http]

Core: ``GatewayCore.route`` + ``finish`` with 8 workers, 200 sessions of growing chat conversations
(keyed with ``X-SMG-Routing-Key``), released at a virtual finish 2 s later. HTTP: non-streaming chat, closed
loop with ``--concurrency`` clients, mock workers (``smg-testbed worker``, speedup 1000, 1 output token),
every server in its own process on loopback; "direct" is the client straight to one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mock_gateway.testing import make_core, urls  # noqa: E402
from sim.real_smg import gateway_argv, wait_ready  # noqa: E402
from testbed_common.procs import consecutive_free_ports, free_ports, python_module, smg_binary, spawn, wait_http  # noqa: E402

POLICIES = [
    ("manual", ["--assignment-mode", "min_load"]),
    ("manual", ["--assignment-mode", "min_group"]),
    ("consistent_hashing", []),
    ("cache_aware", []),
    ("cache_aware", ["--routing-key-override"]),
    ("prefix_hash", []),
    ("round_robin", []),
    ("random", []),
    ("power_of_two", []),
    ("least_load", []),
]
MODEL = "mock-model"


def core_rate(policy: str, flags: list[str], n: int) -> float:
    core = make_core("--policy", policy, *flags, workers=urls(8), model=MODEL)
    sessions = 200
    convs = [
        [{"role": "system", "content": f"you are agent {s % 5}, a careful assistant " * 6}] for s in range(sessions)
    ]
    reqs = []
    for i in range(n):
        s = i % sessions
        convs[s].append({"role": "user", "content": f"turn {i // sessions} of session {s}: do the next step"})
        reqs.append(({"x-smg-routing-key": f"s{s}"}, {"model": MODEL, "messages": list(convs[s][-12:])}))
        if len(convs[s]) > 40:
            del convs[s][1:20]
    load = {"loads": [{"num_running_reqs": 3, "gen_throughput": 500.0}]}
    start = time.perf_counter()
    for i, (headers, body) in enumerate(reqs):
        now = i * 0.01
        core.advance(now)
        for u in core.due_polls(now):
            core.record_load(u, load, now)
        t = core.begin(core.select("chat", headers, body, now))
        core.finish(t, virtual_finish=now + 2.0)
    return n / (time.perf_counter() - start)


async def closed_loop(url: str, n: int, concurrency: int, keyed: bool) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 1}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30, limits=limits) as client:
        for _ in range(20):  # warm-up
            await client.post("/v1/chat/completions", json=body)
        counter = iter(range(n))

        async def one(c: int) -> None:
            for i in counter:
                headers = {"x-smg-routing-key": f"k{i % 64}"} if keyed else {}
                r = await client.post("/v1/chat/completions", json=body, headers=headers)
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(concurrency)))
        return n / (time.perf_counter() - start)


@contextlib.contextmanager
def server(args: list[str], ready: str, log: Path, ok=(200,)):
    proc = spawn(args, log_path=log)
    try:
        wait_http(ready, timeout=60, proc=proc.popen, ok=ok)
        yield proc
    finally:
        proc.kill() if "smg" in Path(args[0]).name else proc.stop()


def http_rates(args: argparse.Namespace, logdir: Path) -> list[tuple[str, str, float]]:
    out = []
    base = consecutive_free_ports(args.workers)
    wurls = [f"http://127.0.0.1:{base + i}" for i in range(args.workers)]
    worker_cmd = python_module(
        "sim.cli",
        "worker",
        "--port",
        str(base),
        "--count",
        str(args.workers),
        "--speedup",
        "1000",
        "--model-name",
        MODEL,
    )
    with server(worker_cmd, f"{wurls[-1]}/health", logdir / "workers.log"):
        run = asyncio.run
        out.append(("direct -> 1 worker", "-", run(closed_loop(wurls[0], args.requests, args.concurrency, False))))
        for policy, keyed in (
            ("round_robin", False),
            ("manual", True),
            ("consistent_hashing", True),
            ("cache_aware", False),
        ):
            gws = [("mock", "mock")] + ([("real smg", "smg")] if smg_binary() else [])
            for name, kind in gws:
                port, pport = free_ports(2)
                flags = ["--policy", policy, "--worker-startup-check-interval", "1", "--log-level", "warn"]
                argv = gateway_argv(kind, flags, wurls, port, pport, defaults={})
                gurl = f"http://127.0.0.1:{port}"
                with server(argv, f"{gurl}/liveness", logdir / f"{name.replace(' ', '_')}-{policy}.log"):
                    wait_ready(gurl, args.workers, timeout=30)
                    out.append(
                        (
                            f"{name} gateway",
                            policy + (" keyed" if keyed else ""),
                            run(closed_loop(gurl, args.requests, args.concurrency, keyed)),
                        )
                    )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decisions", type=int, default=20000)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--logdir", type=Path, default=Path("/tmp/gateway_bench"))
    args = p.parse_args()
    args.logdir.mkdir(parents=True, exist_ok=True)
    print(f"core decisions per second ({args.decisions} keyed chat requests, 8 workers, route + finish):")
    for policy, flags in POLICIES:
        label = " ".join([policy, *flags])
        print(f"  {label:<45} {core_rate(policy, flags, args.decisions):>10,.0f} /s")
    if not args.skip_http:
        print(
            f"\nHTTP requests per second ({args.requests} requests, concurrency {args.concurrency}, "
            f"{args.workers} mock workers):"
        )
        for path, policy, rate in http_rates(args, args.logdir):
            print(f"  {path:<20} {policy:<28} {rate:>8,.0f} /s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

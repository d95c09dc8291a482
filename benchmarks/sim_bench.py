"""Simulated requests per wall-clock second for the ``direct`` and ``http`` transports, with peak memory.

Each measurement runs in its own process (so its peak RSS is its own): the whole ``large`` scenario
(or ``--sessions N`` of it) under ``manual/min_load`` with the routing key, through the real cores
(``direct``) or the real uvicorn servers on loopback (``http``); ``direct-pd`` is ``direct`` on a PD version
of the scenario (the same 16 workers as 4 prefill + 12 decode, ``pd_version``; goal: at least half ``direct``'s
rate); ``direct-hicache`` is ``direct`` with L2 and L3 (``hicache_version``; goal: at least half ``direct``'s rate).
Beside them, the rate of a chain of
three no-op FastAPI servers hosted the same way as the ``http`` transport (uvicorn in threads, the
client a sync ``httpx.Client``): the floor under ``http``, which has three hops too
(agent -> session server -> gateway -> worker). ``noop`` sends a tiny "hello" body; ``noop-sized`` sends
and answers, on each of the three hops, bodies of the mean sizes the ``http`` run carried on that hop
(counted by its clients' ``TrafficCounter``; from the ``http`` run of the same invocation, else
from a short ``http`` run of 100 sessions made for it), so it is the floor for the bytes ``http`` moves.
``noop-json`` is the floor for the protocol's JSON: the same chain, each party parsing and writing real bodies
sampled from the ``http`` run (8 per hop, uniformly) as its role in ``http`` does, and fetching record views
as often as ``http``'s agents did; the gap between ``http`` and it is the simulator's own work.

    .venv/bin/python benchmarks/sim_bench.py [--scenario large] [--sessions N]
        [--only direct|direct-pd|direct-hicache|http|noop|noop-sized|noop-json] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastapi import Request

from sim.transports.http import CHAT_HOP, VIEW_HOP
from sim.workload.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent


class TrafficCounter:
    """The traffic observer of the ``http`` run (``http_client.set_traffic_observer``; the servers are threads of
    the measuring process, so one counter sees every hop): per hop label, the requests and their request and
    response body bytes, and a uniform sample of ``sample_size`` exchanges (reservoir sampling; off at 0)."""

    def __init__(self, sample_size: int = 0) -> None:
        self.counts: dict[str, list[int]] = {}  # label -> [requests, request bytes, response bytes]
        self.samples: dict[str, list[tuple[bytes, bytes]]] = {}  # label -> (request body, response body)
        self.sample_size = sample_size
        self.sampler = random.Random(0)

    def __call__(self, label: str, request: bytes, response: bytes) -> None:
        counts = self.counts.get(label) or self.counts.setdefault(label, [0, 0, 0])
        counts[0] += 1
        counts[1] += len(request)
        counts[2] += len(response)
        if self.sample_size:
            kept = self.samples.setdefault(label, [])
            if len(kept) < self.sample_size:
                kept.append((request, response))
            elif (j := self.sampler.randrange(counts[0])) < self.sample_size:
                kept[j] = (request, response)

    def requests(self, label: str) -> int:
        return self.counts.get(label, [0])[0]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per hop label: requests and mean request/response body bytes."""
        return {label: {"requests": n, "request_bytes": sent / n, "response_bytes": received / n}
                for label, (n, sent, received) in self.counts.items()}


def pd_version(s: Scenario) -> Scenario:
    """``s`` on a PD pool of the same total worker count: a quarter prefill workers, the rest decode."""
    n_prefill = max(1, s.workers // 4)
    return s.replace(prefill_workers=n_prefill, decode_workers=s.workers - n_prefill)


def hicache_version(s: Scenario) -> Scenario:
    """``s`` with SGLang's hierarchical cache: a host pool (L2) of twice the GPU pool per worker and a storage tier
    (L3) shared by the pool, pages of 64 tokens (the ``hicache`` scenario's settings)."""
    return s.replace(enable_hierarchical_cache=True, hicache_storage_backend="mooncake", page_size=64)


VARIANTS = {"pd": pd_version, "hicache": hicache_version}


def measure_transport(transport: str, scenario: str, sessions: int | None, samples_path: str | None = None,
                      variant: str | None = None) -> dict:
    from sim.runner import PolicyConfig, make_setup, run_setup
    from sim.workload.scenario import load_scenario
    from testbed_common.http_client import set_traffic_observer

    s = load_scenario(scenario)
    if sessions:
        s = s.replace(sessions=sessions)
    if variant:
        s = VARIANTS[variant](s)
    traffic = TrafficCounter(SAMPLE_SIZE if samples_path else 0)
    set_traffic_observer(traffic)
    cpu0 = time.process_time()
    try:
        row = run_setup(make_setup(s, PolicyConfig("manual", "min_load"), True), transport)
    finally:
        set_traffic_observer(None)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the samples are written
    meta = row["_meta"]

    if samples_path:
        views = traffic.requests(VIEWS)
        Path(samples_path).write_text(json.dumps({
            "bodies": {label: [[a.decode(), b.decode()] for a, b in kept] for label, kept in traffic.samples.items()},
            "requests_per_view": row["requests"] / views if views else 0.0}))

    return {"what": f"{transport}-{variant}" if variant else transport, "scenario": s.name, "sessions": row["sessions"],
            "requests": row["requests"],
            "errors": row["errors"], "sim_seconds": meta["sim_seconds"], "startup_seconds": meta["startup_seconds"],
            "requests_per_second": row["requests"] / meta["sim_seconds"],
            "cpu_seconds": time.process_time() - cpu0, "kv_reuse": row["kv_reuse"],
            "peak_rss_mib": peak_rss_mib, "traffic": traffic.summary()}


HOPS = (CHAT_HOP, "session server -> gateway", "gateway -> worker")  # the pools' hop labels, front to back
VIEWS = VIEW_HOP
SAMPLE_SIZE = 8  # exchanges of each hop kept for the JSON floor, uniform over the run (~9 MB held: 8 record views)


def hop_sizes(traffic: dict) -> list[tuple[int, int]]:
    """(request bytes, response bytes) per hop, front to back, from an ``http`` result's ``traffic``."""
    return [(round(traffic[h]["request_bytes"]), round(traffic[h]["response_bytes"])) for h in HOPS]


def sized_body(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes (at least 8)."""
    return b'{"x":"' + b"a" * max(size - 8, 0) + b'"}'


def measure_noop(n: int, sizes: list[tuple[int, int]] | None = None, warmup: int = 200,
                 replay: dict | None = None) -> dict:
    """The three-server no-op chain: with ``sizes`` (per hop, front to back), each server forwards a body
    of the next hop's request size and answers one of its own hop's response size; else "hello" bodies.
    ``hits`` and ``received`` (front to back): requests each server served and the body bytes it last got.

    ``replay`` (``http``'s sampled bodies per hop label and its requests per record view, as ``measure_transport``
    writes them): the JSON floor.
    Every party does the JSON work of its role in ``http`` on real bodies and nothing else: the client encodes
    a sampled agent request and parses the answer; each server parses what it gets, encodes a sampled request
    for the next hop, parses that answer and encodes a sampled answer of its own; and the client fetches a
    sampled record view (encoded by the front server, parsed by the client) as often as ``http``'s agents did."""
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import Response

    from testbed_common.procs import ThreadServer

    if replay:
        from testbed_common import fastjson  # numpy with it: the plain chains stay as they were
    bodies = replay["bodies"] if replay else {}
    objs = [[(fastjson.loads(a), fastjson.loads(b)) for a, b in bodies[h]] for h in HOPS] if replay else None
    views = [fastjson.loads(b) for _, b in bodies.get(VIEWS, [])] or None
    view_every = round(replay["requests_per_view"]) if replay and views else 0

    # ``Request`` must be a module global: under ``from __future__ import annotations`` FastAPI resolves the
    # endpoint's annotation by name in the module, and an unresolved ``Request`` makes ``request`` a required
    # query parameter (every call a 422 from the first server, which is what this chain measured until stop 12)

    hits, received = [0, 0, 0], [0, 0, 0]

    def make(next_url: str | None, hop: int) -> FastAPI:
        app = FastAPI()
        state: dict = {}
        forward = sized_body(sizes[hop + 1][0]) if sizes and next_url else None
        answer = sized_body(sizes[hop][1]) if sizes else None

        @app.get("/view")
        async def view() -> Response:
            assert views is not None
            hits[hop] += 1
            return Response(fastjson.dumps(views[hits[hop] % len(views)]), media_type="application/json")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.body()
            hits[hop] += 1
            received[hop] = len(body)
            if objs is not None:
                return await replayed(body)
            if next_url is None:
                return Response(answer or b'{"choices":[{"message":{"role":"assistant","content":"ok"}}]}',
                                media_type="application/json")
            client = state.get("c") or state.setdefault("c", httpx.AsyncClient(trust_env=False))
            r = await client.post(f"{next_url}/v1/chat/completions", content=forward or body,
                                  headers={"content-type": "application/json"})
            if r.status_code != 200:  # pass a failure on: the client refuses it
                return Response(r.content, status_code=r.status_code, media_type="application/json")
            return Response(answer or r.content, media_type="application/json")

        async def replayed(body: bytes) -> Response:
            assert objs is not None
            fastjson.loads(body)
            mine = objs[hop][hits[hop] % len(objs[hop])]
            if next_url is not None:
                client = state.get("c") or state.setdefault("c", httpx.AsyncClient(trust_env=False))
                nxt = objs[hop + 1][hits[hop] % len(objs[hop + 1])]
                r = await client.post(f"{next_url}/v1/chat/completions", content=fastjson.dumps(nxt[0]),
                                      headers={"content-type": "application/json"})
                if r.status_code != 200:
                    return Response(r.content, status_code=r.status_code, media_type="application/json")
                fastjson.loads(r.content)
            return Response(fastjson.dumps(mine[1]), media_type="application/json")

        return app

    servers: list[ThreadServer] = []
    url = None
    try:
        for hop in (2, 1, 0):  # back to front
            s = ThreadServer(make(url, hop)).start()
            servers.append(s)
            url = s.url
        payload = sized_body(sizes[0][0]) if sizes else json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
             "sim_time": 0.0}).encode()
        headers = {"content-type": "application/json"}
        with httpx.Client(trust_env=False) as c:

            sent = 0

            def post() -> None:
                nonlocal sent
                body = fastjson.dumps(objs[0][sent % len(objs[0])][0]) if objs else payload
                sent += 1
                r = c.post(f"{url}/v1/chat/completions", content=body, headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"the no-op chain answered {r.status_code}: {r.text[:300]}")
                if objs:
                    fastjson.loads(r.content)
                    if view_every and sent % view_every == 0:
                        v = c.get(f"{url}/view")
                        if v.status_code != 200:
                            raise RuntimeError(f"the no-op chain answered {v.status_code}: {v.text[:300]}")
                        fastjson.loads(v.content)

            for _ in range(warmup):
                post()
            t0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                post()
            dt = time.perf_counter() - t0
    finally:
        for s in servers:
            s.stop()
    return {"what": "noop-json" if replay else "noop-sized" if sizes else "noop", "requests": n,
            "requests_per_second": n / dt,
            "cpu_seconds": time.process_time() - cpu0, "sizes": sizes, "hits": hits, "received": received,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(what: str, args: argparse.Namespace, sessions: int | None = None, sizes: list | None = None,
          samples: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--scenario", args.scenario, "--noop-requests",
           str(args.noop_requests)]
    if sessions or args.sessions:
        cmd += ["--sessions", str(sessions or args.sessions)]
    if sizes:
        cmd += ["--hop-sizes", json.dumps(sizes)]
    if samples:
        cmd += ["--samples", samples]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="large")
    p.add_argument("--sessions", type=int, default=None, help="run only this many sessions of the scenario")
    p.add_argument("--noop-requests", type=int, default=3000)
    p.add_argument("--only", choices=WHAT, action="append", default=None)
    p.add_argument("--repeat", type=int, default=1,
                   help="run the selection this many times, interleaved, and print each ratio's median (the rates "
                        "move by up to ~12%% between invocations on an idle machine)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--hop-sizes", default=None, help=argparse.SUPPRESS)
    p.add_argument("--samples", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.child:
        if args.child in ("noop", "noop-sized"):
            res = measure_noop(args.noop_requests, json.loads(args.hop_sizes) if args.hop_sizes else None)
        elif args.child == "noop-json":
            res = measure_noop(args.noop_requests, replay=json.loads(Path(args.samples).read_text()))
        elif args.child in ("direct-pd", "direct-hicache"):
            res = measure_transport("direct", args.scenario, args.sessions, variant=args.child.split("-", 1)[1])
        else:
            res = measure_transport(args.child, args.scenario, args.sessions,
                                    args.samples if args.child == "http" else None)
        print(json.dumps(res))
        return 0
    rounds = [run_round(args, i, args.repeat) for i in range(args.repeat)]
    if args.repeat > 1:
        summarize(rounds)
    return 0


def run_round(args: argparse.Namespace, index: int, repeat: int) -> dict[str, float]:
    """One measurement of each selected row, printed as it comes; returns this round's ratios."""
    if repeat > 1:
        print(f"round {index + 1} of {repeat}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        samples = str(Path(tmp) / "http-bodies.json")
        for what in args.only or list(WHAT):
            sizes = None
            if what in ("noop-sized", "noop-json") and "http" not in results:
                results["_http100"] = child("http", args, 100, samples=samples)  # a short run for the bodies
            if what == "noop-sized":
                sizes = hop_sizes(results.get("http", results.get("_http100"))["traffic"])
            body_file = samples if what in ("http", "noop-json") else None
            results[what] = r = child(what, args, sizes=sizes, samples=body_file)
            report(what, r, sizes)
    ratios = {}
    for floor, name in FLOORS:
        if "http" in results and floor in results:
            ratios[f"http / {name}"] = ratio = results["http"]["requests_per_second"] / results[floor][
                "requests_per_second"]
            print(f"http / {name}: {ratio:.2f}" + (" (goal >= 0.5)" if floor != "noop-json" else ""))
    if "noop" in results and "noop-json" in results:
        ratios[JSON_SHARE] = ratio = results["noop-json"]["requests_per_second"] / results["noop"][
            "requests_per_second"]
        print(f"{JSON_SHARE}: {ratio:.2f} (what the protocol's JSON alone leaves of the chain's rate)")
    if "direct" in results:
        ratios[DIRECT_GOAL] = ratio = results["direct"]["requests_per_second"] / 5000
        print(f"{DIRECT_GOAL}: {ratio:.2f}")
    if "direct" in results and "direct-pd" in results:
        ratios[PD_SHARE] = ratio = results["direct-pd"]["requests_per_second"] / results["direct"][
            "requests_per_second"]
        print(f"{PD_SHARE}: {ratio:.2f} (goal >= 0.5)")
    if "direct" in results and "direct-hicache" in results:
        ratios[HICACHE_SHARE] = ratio = results["direct-hicache"]["requests_per_second"] / results["direct"][
            "requests_per_second"]
        print(f"{HICACHE_SHARE}: {ratio:.2f} (goal >= 0.5)")
    for what, r in results.items():
        if not what.startswith("_"):
            ratios[f"{what} {RATE}"] = r["requests_per_second"]
    return ratios


def summarize(rounds: list[dict[str, float]]) -> None:
    """Each figure's median and range over the rounds."""
    print(f"over {len(rounds)} rounds: median (min-max)")
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        fmt = "{:.0f}" if key.endswith(RATE) else "{:.2f}"
        print(f"  {key}: {fmt.format(statistics.median(values))} "
              f"({fmt.format(min(values))}-{fmt.format(max(values))})")


FLOORS = (("noop", "no-op chain (tiny bodies)"), ("noop-sized", "no-op chain (http's body sizes)"),
          ("noop-json", "JSON floor (no-op chain doing http's JSON work)"))
JSON_SHARE = "JSON floor / no-op chain"
DIRECT_GOAL = "direct / goal of 5,000 requests/s"
PD_SHARE = "direct-pd / direct"
HICACHE_SHARE = "direct-hicache / direct"
RATE = "(simulated requests/s)"


WHAT = ("direct", "direct-pd", "direct-hicache", "noop", "http", "noop-sized", "noop-json")


def report(what: str, r: dict, sizes: list | None) -> None:
    if what in ("direct", "direct-pd", "direct-hicache", "http"):
        extra = (f"{r['requests']} requests of {r['sessions']} sessions, startup {r['startup_seconds']:.1f}s, "
                 f"kv_reuse {r['kv_reuse']:.3f}, errors {r['errors']}")
    elif sizes:
        extra = f"{r['requests']} requests through 3 no-op FastAPI servers, bodies per hop (req/resp bytes) " + \
            ", ".join(f"{a}/{b}" for a, b in sizes)
    elif what == "noop-json":
        extra = (f"{r['requests']} requests through 3 FastAPI servers parsing and writing http's sampled bodies, "
                 "with its record views")
    else:
        extra = f"{r['requests']} requests through 3 no-op FastAPI servers"
    print(f"{what:>10}: {r['requests_per_second']:8.0f} simulated requests/s "
          f"({r['requests'] / r['cpu_seconds']:.0f} per CPU second)  peak RSS {r['peak_rss_mib']:4.0f} MiB  "
          f"cpu {r['cpu_seconds']:.1f}s  ({extra})", flush=True)
    if what == "http" and r.get("traffic"):
        hops = [h for h in (*HOPS, VIEWS) if h in r["traffic"]]  # front to back
        print("            body bytes per request, by hop (req/resp): " + ", ".join(
            f"{h} {r['traffic'][h]['request_bytes']:.0f}/{r['traffic'][h]['response_bytes']:.0f}" for h in hops))


if __name__ == "__main__":
    raise SystemExit(main())

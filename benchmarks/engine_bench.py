"""Throughput of the pure worker engine: requests/s for agent sessions over 16 in-process workers.

Closed-loop agent sessions of 30 turns whose contexts grow to ~30k tokens; sessions are pinned to
workers (session id modulo workers) and many are interleaved (``--live`` per worker); a turn is
issued at the previous turn's finish plus an exponential tool time. Prompts and outputs are views
of one pre-drawn token array per session, so the driver copies nothing and the figure is the
engine's. Prints figures plainly; asserts nothing about speed.

    .venv/bin/python benchmarks/engine_bench.py [--sessions 2000] [--workers 16] [--profile]

``--worker SCENARIO`` measures the whole worker core instead (``WorkerCore.infer``: parsing, answer
synthesis, the engine, the JSON body): it runs the scenario (``--sessions`` of them, default 300)
through the ``direct`` transport once, recording every request its worker cores receive, then replays
those requests into fresh cores and prints the CPU time per request (best of ``--repeat``) and its
split (engine ``submit`` alone, replayed the same way).

    .venv/bin/python benchmarks/engine_bench.py --worker large [--sessions 300] [--profile]

``--iteration`` runs the same workload through the iteration-level ``IterationEngine`` (SGLang's
scheduler, event to event) instead: the driver is then a co-simulation loop (arrivals and engines'
next events in one clock; a worker's finishes come out of ``advance``), and the figure includes it.
The machine may be loaded by others: ``--repeat N`` prints every run's rate and the median.

    .venv/bin/python benchmarks/engine_bench.py --iteration [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import heapq
import platform
import resource
import sys
import time
from collections.abc import Callable

import numpy as np

from sim.engine import Engine, IterationEngine, WorkerConfig


def build_session(rng: np.random.Generator, turns: int, first: int, grow: tuple[int, int], out: tuple[int, int]):
    """One session: its token array and, per turn, (prompt_len, output_len); turn k+1 extends turn k."""
    plan = []
    length = first
    for _ in range(turns):
        o = int(rng.integers(out[0], out[1] + 1))
        plan.append((length, o))
        length += o + int(rng.integers(grow[0], grow[1] + 1))
    tokens = rng.integers(1000, 2**32, length, dtype=np.int64)
    tokens[:SYSTEM] = SYSTEM_PROMPT  # a system prompt shared by every session
    return tokens, plan


SYSTEM = 1000
SYSTEM_PROMPT = np.arange(1000, 1000 + SYSTEM, dtype=np.int64)


def run(args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(args.seed)
    workers = [
        Engine(WorkerConfig(name=f"w{i}", kv_capacity_tokens=args.capacity or None)) for i in range(args.workers)
    ]
    live = args.live * args.workers
    events: list[tuple[float, int, int]] = []  # (time, session, turn)
    sessions: dict[int, tuple[np.ndarray, list[tuple[int, int]]]] = {}
    next_session = 0

    def start_session(at: float) -> None:
        nonlocal next_session
        sid = next_session
        next_session += 1
        sessions[sid] = build_session(rng, args.turns, args.first, (args.grow_min, args.grow_max), (50, 250))
        heapq.heappush(events, (at, sid, 0))

    for _ in range(min(live, args.sessions)):
        start_session(float(rng.exponential(1.0)))
    tool = rng.exponential(args.tool_time, args.sessions * args.turns + 1).tolist()
    n_req = 0
    submit_time = 0.0
    max_prompt = 0
    clock = time.perf_counter
    t0 = clock()
    c0 = time.process_time()
    while events:
        now, sid, turn = heapq.heappop(events)
        tokens, plan = sessions[sid]
        p, o = plan[turn]
        engine = workers[sid % args.workers]
        prompt, output = tokens[:p], tokens[p : p + o]
        if args.lists:
            prompt, output = prompt.tolist(), output.tolist()
        s0 = clock()
        timing = engine.submit(now, prompt, output)
        submit_time += clock() - s0
        n_req += 1
        if p > max_prompt:
            max_prompt = p
        if turn + 1 < len(plan):
            heapq.heappush(events, (timing.finish + tool[n_req], sid, turn + 1))
        else:
            del sessions[sid]
            if next_session < args.sessions:
                start_session(timing.finish + tool[n_req])
    wall = clock() - t0
    cpu = time.process_time() - c0
    makespan = max(w.now for w in workers)
    for w in workers:
        w.advance(float("inf"))
    prompt = sum(w.stats.prompt_tokens for w in workers)
    cached = sum(w.stats.cached_tokens for w in workers)
    return {
        "requests": n_req,
        "wall_s": wall,
        "req_per_s": n_req / wall,
        "cpu_s": cpu,
        "req_per_cpu_s": n_req / cpu,
        "submit_s": submit_time,
        "submit_req_per_s": n_req / submit_time,
        "us_per_req": 1e6 * wall / n_req,
        "max_prompt_tokens": max_prompt,
        "kv_reuse": cached / prompt,
        "evicted_tokens": sum(w.stats.evicted_tokens for w in workers),
        "kv_wait_requests": sum(w.stats.kv_wait_requests for w in workers),
        "peak_kv_tokens_max_worker": max(w.stats.peak_kv_tokens for w in workers),
        "resident_tokens_total": sum(w.cache.resident_tokens for w in workers),
        "virtual_makespan_s": makespan,
    }


def run_iteration(args: argparse.Namespace) -> dict[str, float]:
    """``run``'s workload through ``IterationEngine``: one clock over arrivals and the engines' next events."""
    rng = np.random.default_rng(args.seed)
    workers = [
        IterationEngine(WorkerConfig(name=f"w{i}", kv_capacity_tokens=args.capacity or None))
        for i in range(args.workers)
    ]
    live = args.live * args.workers
    arrivals: list[tuple[float, int, int]] = []  # (time, session, turn)
    engine_events: list[tuple[float, int]] = []  # (next event time, worker), validated when popped
    sessions: dict[int, tuple[np.ndarray, list[tuple[int, int]]]] = {}
    turn_of: list[dict[int, int]] = [{} for _ in workers]  # per worker: handle -> session
    next_session = 0

    def start_session(at: float) -> None:
        nonlocal next_session
        sid = next_session
        next_session += 1
        sessions[sid] = build_session(rng, args.turns, args.first, (args.grow_min, args.grow_max), (50, 250))
        heapq.heappush(arrivals, (at, sid, 0))

    for _ in range(min(live, args.sessions)):
        start_session(float(rng.exponential(1.0)))
    tool = rng.exponential(args.tool_time, args.sessions * args.turns + 1).tolist()
    turn_now: dict[int, int] = {}
    n_req = n_done = 0
    inf = float("inf")
    clock = time.perf_counter
    t0 = clock()
    c0 = time.process_time()
    while arrivals or engine_events:
        t_arrival = arrivals[0][0] if arrivals else inf
        while engine_events and workers[engine_events[0][1]].next_event_time() != engine_events[0][0]:
            heapq.heappop(engine_events)  # stale
        t_engine = engine_events[0][0] if engine_events else inf
        if t_arrival == inf and t_engine == inf:
            break
        if t_arrival <= t_engine:
            now, sid, turn = heapq.heappop(arrivals)
            tokens, plan = sessions[sid]
            p, o = plan[turn]
            w = sid % args.workers
            engine = workers[w]
            turn_of[w][engine.submit(now, tokens[:p], tokens[p : p + o])] = sid
            turn_now[sid] = turn
            n_req += 1
        else:
            now, w = heapq.heappop(engine_events)
            engine = workers[w]
            for done in engine.advance(now):
                n_done += 1
                sid = turn_of[w].pop(done.handle)
                turn = turn_now[sid]
                if turn + 1 < len(sessions[sid][1]):
                    heapq.heappush(arrivals, (done.timing.finish + tool[n_done], sid, turn + 1))
                else:
                    del sessions[sid]
                    if next_session < args.sessions:
                        start_session(done.timing.finish + tool[n_done])
        t_next = engine.next_event_time()
        if t_next != inf:
            heapq.heappush(engine_events, (t_next, w))
    wall = clock() - t0
    cpu = time.process_time() - c0
    prompt = sum(w.stats.prompt_tokens for w in workers)
    cached = sum(w.stats.cached_tokens for w in workers)
    return {
        "requests": n_req,
        "finished": n_done,
        "wall_s": wall,
        "req_per_s": n_req / wall,
        "cpu_s": cpu,
        "req_per_cpu_s": n_req / cpu,
        "us_per_req": 1e6 * wall / n_req,
        "kv_reuse": cached / prompt,
        "evicted_tokens": sum(w.stats.evicted_tokens for w in workers),
        "retractions": sum(w.stats.retractions for w in workers),
        "recomputed_tokens": sum(w.stats.recomputed_tokens for w in workers),
        "kv_wait_requests": sum(w.stats.kv_wait_requests for w in workers),
        "peak_kv_tokens_max_worker": max(w.stats.peak_kv_tokens for w in workers),
        "virtual_makespan_s": max(w.now for w in workers),
    }


def record_worker_calls(scenario: str, sessions: int) -> tuple[list, list]:
    """Run ``scenario`` through ``direct`` once; every core's (config, kwargs) and every infer call it got."""
    import copy

    from sim.runner import PolicyConfig, make_setup, run_setup
    from sim.worker import core as wcore
    from sim.workload.scenario import load_scenario

    cores: list = []
    calls: list = []
    index: dict[int, int] = {}  # id(core) -> its place in ``cores`` (the cores live through the run)
    orig_init, orig_infer = wcore.WorkerCore.__init__, wcore.WorkerCore.infer

    def init(self, config, **kw):
        orig_init(self, config, **kw)
        index[id(self)] = len(cores)
        cores.append((config, kw))

    def infer(self, route, body, now=None, **kw):  # kw: known_messages, which the direct gateway passes
        calls.append((index[id(self)], route, copy.deepcopy(body), now, kw))  # before the core sees it
        return orig_infer(self, route, body, now, **kw)

    wcore.WorkerCore.__init__, wcore.WorkerCore.infer = init, infer
    try:
        sc = load_scenario(scenario)
        run_setup(make_setup(sc.replace(sessions=sessions), PolicyConfig("manual", "min_load"), True), "direct")
    finally:
        wcore.WorkerCore.__init__, wcore.WorkerCore.infer = orig_init, orig_infer
    return cores, calls


def run_worker(args: argparse.Namespace) -> dict[str, float]:
    from sim.engine import core as ecore
    from sim.worker.core import WorkerCore

    cores, calls = record_worker_calls(args.worker, args.sessions or 300)
    n = len(calls)
    best = best_submit = float("inf")
    for _ in range(args.repeat):
        workers = [WorkerCore(cfg, **kw) for cfg, kw in cores]
        bodies = [dict(body) for _, _, body, _, _ in calls]  # the core may add keys to a body it is given
        submits: list = []
        orig_submit = ecore.Engine.submit

        def submit(self, now, prompt, output, _orig=orig_submit, _log=submits):
            _log.append((self, now, prompt, output))
            return _orig(self, now, prompt, output)

        ecore.Engine.submit = submit  # type: ignore[method-assign]
        try:
            c0 = time.process_time()
            for (i, route, _, now, kw), body in zip(calls, bodies, strict=True):
                workers[i].infer(route, body, now, **kw)
            cpu = time.process_time() - c0
        finally:
            ecore.Engine.submit = orig_submit  # type: ignore[method-assign]
        engines = {id(e): Engine(e.config) for e, *_ in submits}
        c0 = time.process_time()
        for e, now, prompt, output in submits:
            engines[id(e)].submit(now, prompt, output)
        best_submit = min(best_submit, time.process_time() - c0)
        best = min(best, cpu - _wrapper_cost(len(submits)))
    prompt_tokens = [len(b["input_ids"]) for _, _, b, _, _ in calls if b.get("input_ids") is not None]
    return {
        "requests": n,
        "worker_us_per_req": 1e6 * best / n,
        "engine_submit_us_per_req": 1e6 * best_submit / n,
        "rest_of_worker_us_per_req": 1e6 * (best - best_submit) / n,
        "requests_with_input_ids": len(prompt_tokens),
        "mean_prompt_tokens": float(np.mean(prompt_tokens)) if prompt_tokens else 0.0,
        "mean_output_tokens": float(np.mean([b.get("max_tokens") or 0 for _, _, b, _, _ in calls])),
    }


def _wrapper_cost(calls: int) -> float:
    """CPU seconds the submit-recording wrapper adds for ``calls`` calls (measured, subtracted)."""
    log: list = []

    def inner(*a):
        return a

    def wrapped(*a, _log=log):
        _log.append(a)
        return inner(*a)

    c0 = time.process_time()
    for _ in range(calls):
        wrapped(1, 2, 3, 4)
    mid = time.process_time()
    for _ in range(calls):
        inner(1, 2, 3, 4)
    return max(0.0, (mid - c0) - (time.process_time() - mid))


def _run(fn: Callable[[argparse.Namespace], dict], args: argparse.Namespace, profile_lines: int) -> dict:
    """``fn(args)``, under cProfile (its top ``profile_lines`` functions by own time printed) with ``--profile``."""
    if not args.profile:
        return fn(args)
    import cProfile
    import pstats

    prof = cProfile.Profile()
    res = prof.runcall(fn, args)
    pstats.Stats(prof).sort_stats("tottime").print_stats(profile_lines)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=None, help="sessions in total (default 2000; --worker: 300)")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--live", type=int, default=12, help="concurrent sessions per worker")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--first", type=int, default=2000, help="first prompt length (incl. a 1,000-token system prompt)")
    ap.add_argument("--grow-min", type=int, default=500, help="tool/user tokens appended per turn (min)")
    ap.add_argument("--grow-max", type=int, default=1100, help="tool/user tokens appended per turn (max)")
    ap.add_argument("--tool-time", type=float, default=2.0, help="mean tool time between turns (virtual s)")
    ap.add_argument("--capacity", type=int, default=400_000, help="KV tokens per worker (0 = unbounded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lists", action="store_true", help="pass Python lists (as JSON-fed callers do), not arrays")
    ap.add_argument("--profile", action="store_true", help="run under cProfile and print the top functions")
    ap.add_argument("--worker", metavar="SCENARIO", help="time WorkerCore.infer on SCENARIO's recorded requests")
    ap.add_argument("--repeat", type=int, default=3, help="--worker: replays (the best one counts); --iteration: runs")
    ap.add_argument("--iteration", action="store_true", help="run the workload through IterationEngine")
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)
    args.sessions = args.sessions or 2000
    print(f"python {platform.python_version()} numpy {np.__version__} on {platform.machine()} {platform.processor()}")
    print(
        f"{args.sessions} sessions x {args.turns} turns over {args.workers} workers, {args.live} live per worker, "
        f"capacity {args.capacity or 'unbounded'} tokens/worker"
    )
    if args.iteration:
        return iteration_main(args)
    res = _run(run, args, 18)
    for key, value in res.items():
        print(f"{key:28s} {value:,.3f}" if isinstance(value, float) else f"{key:28s} {value:,}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"{'peak_rss_mib':28s} {rss / 1024:,.1f}")
    return 0


def iteration_main(args: argparse.Namespace) -> int:
    print("IterationEngine (SGLang's scheduler, event to event), co-simulation driver included")
    rates = []
    for _ in range(max(1, args.repeat)):
        res = _run(run_iteration, args, 25)
        rates.append(res["req_per_cpu_s"])
        print(f"run: {res['req_per_s']:,.0f} requests/s wall, {res['req_per_cpu_s']:,.0f} requests/s CPU")
    for key, value in res.items():
        print(f"{key:28s} {value:,.3f}" if isinstance(value, float) else f"{key:28s} {value:,}")
    print(f"{'median_req_per_cpu_s':28s} {sorted(rates)[len(rates) // 2]:,.0f}")
    return 0


def worker_main(args: argparse.Namespace) -> int:
    print(f"python {platform.python_version()} numpy {np.__version__} on {platform.machine()} {platform.processor()}")
    print(f"WorkerCore.infer on the requests of {args.worker} ({args.sessions or 300} "
          "sessions, direct, manual/min_load with the routing key), replayed into fresh cores; CPU time")
    res = _run(run_worker, args, 25)
    for key, value in res.items():
        print(f"{key:28s} {value:,.1f}" if isinstance(value, float) else f"{key:28s} {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A loaded trace, one replay run per gateway configuration, and the results files.

``load_trace(path, fmt, limit, workers, kv, seed) -> LoadedTrace`` reads the trace, derives routing
keys (Mooncake) or plans (sessions) and computes the two baselines once. ``run_one(trace, setup,
transport) -> row`` replays it under one ``Setup`` (from ``sim.runner.make_setup``) and returns a row
shaped like ``sim.runner.run_setup``'s (configuration, every ``sim.measures.summarize`` measure,
``_meta``), plus ``single_pool_reuse`` and ``random_baseline_reuse``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.agents import RequestRecord
from sim.measures import summarize
from sim.replay import baselines as bl
from sim.replay.driver import MooncakeDirect, MooncakeHttp, TraceItem, plan_items, replay_mooncake
from sim.replay.mooncake import derive_keys, load_mooncake
from sim.replay.sessions import (
    ReplayAgentRunner,
    SessionSpec,
    load_sessions,
    scenario_for,
    session_segments,
    to_plans,
    user_texts,
)
from sim.runner import open_transport as default_open_transport
from sim.transports.pool import Setup
from sim.workload.scenario import Scenario


@dataclass
class LoadedTrace:
    name: str
    path: str
    format: str  # "mooncake" or "sessions" (trie / llmservingsim are converted to sessions)
    source_format: str
    scenario: Scenario
    baselines: bl.Baselines
    items: list[TraceItem] = field(default_factory=list)  # mooncake
    sessions: list[SessionSpec] = field(default_factory=list)  # sessions
    raised_inputs: int = 0  # sessions: appended inputs raised to the template minimum
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.format == "mooncake":
            return f"{len(self.items)} requests, {self.info['keys']} derived keys"
        return f"{len(self.sessions)} sessions, {self.info['requests']} requests"


def load_trace(path: str, fmt: str, limit: int | None, workers: int, kv: int | None, seed: int = 0) -> LoadedTrace:
    name = Path(path).stem
    if fmt == "mooncake":
        reqs = load_mooncake(path, limit)
        keys = derive_keys(reqs)
        items = plan_items(reqs, keys)
        b = bl.compute(((list(zip(r.hash_ids, r.block_lengths(), strict=True)), (("out", r.index), r.output_length))
                        for r in reqs), workers)
        scenario = Scenario(name=name, description=f"Mooncake trace {path}", seed=seed, workers=workers,
                            kv_capacity_tokens=kv, sessions=len(set(keys)), group_size=1, arrival="rollout",
                            # an open-loop trace is sent in timestamp order, each answer taken at once: the
                            # arrival-time engine (the iteration engine needs the co-simulated clock of agents)
                            engine="arrival")
        info = {"requests": len(reqs), "keys": len(set(keys)), "prompt_tokens": b.prompt_tokens,
                "routing_key_rule": "mc-<first block id not shared by all requests>"}
        return LoadedTrace(name, path, "mooncake", "mooncake", scenario, b, items=items, info=info)
    sessions = load_sessions(path, fmt, limit)
    b = bl.compute(session_segments(sessions), workers)
    _, raised = to_plans(sessions)
    scenario = scenario_for(sessions, name, workers, kv, seed)
    info = {"requests": sum(len(s.turns) for s in sessions), "sessions": len(sessions),
            "prompt_tokens": b.prompt_tokens, "raised_inputs": raised}
    return LoadedTrace(name, path, "sessions", fmt, scenario, b, sessions=sessions, raised_inputs=raised, info=info)


def run_one(trace: LoadedTrace, setup: Setup, transport: str = "direct",
            open_transport: Callable[..., Any] = default_open_transport,
            on_request: Callable[[RequestRecord], None] | None = None,
            worker_urls: list[str] | None = None) -> dict[str, Any]:
    """Replay ``trace`` under ``setup``; the result row (see the module docstring)."""
    t0 = time.perf_counter()
    if trace.format == "mooncake":
        with contextlib.ExitStack() as stack:
            if transport == "direct":
                sender: Any = MooncakeDirect(setup, worker_urls)
            else:
                sender = MooncakeHttp(stack.enter_context(open_transport(transport, setup, worker_urls=worker_urls)))
            stack.callback(sender.close)
            t1 = time.perf_counter()
            result = replay_mooncake(trace.items, sender, setup.routing_key, on_request)
            t2 = time.perf_counter()
            measures = summarize(result, list(sender.workers), sender.worker_stats(), sender.gateway_metrics())
    else:
        plans, _ = to_plans(trace.sessions)
        texts = user_texts(trace.sessions, setup.seed)
        with open_transport(transport, setup, worker_urls=worker_urls) as tr:
            t1 = time.perf_counter()
            result = ReplayAgentRunner(setup.scenario, tr, plans, texts, on_request=on_request).run()
            t2 = time.perf_counter()
            measures = summarize(result, list(tr.workers), tr.worker_stats(), tr.gateway_metrics())
    row: dict[str, Any] = {
        "label": setup.label,
        "policy": setup.extra.get("policy"),
        "assignment_mode": setup.extra.get("assignment_mode"),
        "routing_key": bool(setup.routing_key),
        "gateway_args": list(setup.gateway_args),
        "transport": transport,
        "seed": setup.seed,
        **measures,
        "single_pool_reuse": trace.baselines.single_pool_reuse,
        "random_baseline_reuse": trace.baselines.random_baseline_reuse,
    }
    ok = [r for r in result.requests if r.ok]
    row["_meta"] = {
        "wall_seconds": time.perf_counter() - t0,
        "startup_seconds": t1 - t0,
        "sim_seconds": t2 - t1,
        "requests_per_second": len(result.requests) / (t2 - t1) if t2 > t1 else 0.0,
        "ttft_first": [r.ttft for r in ok if r.turn == 0],
        "ttft_later": [r.ttft for r in ok if r.turn > 0],
        "errors": ([s.error for s in result.sessions if s.error][:20]
                   or [r.error for r in result.requests if r.error][:20]),
    }
    return row


def trace_section(trace: LoadedTrace) -> dict[str, Any]:
    return {"path": trace.path, "format": trace.format, "source_format": trace.source_format,
            "workers": trace.scenario.workers, "kv_capacity_tokens": trace.scenario.kv_capacity_tokens,
            **trace.info,
            "single_pool_reuse": trace.baselines.single_pool_reuse,
            "random_baseline_reuse": trace.baselines.random_baseline_reuse,
            "random_baseline_method": "exact expectation (analytic), uniform random routing, unbounded caches"}


def write_outputs(out: Path, trace: LoadedTrace, rows: list[dict[str, Any]], plots: bool = True,
                  argv: list[str] | None = None) -> list[Path]:
    """``results.json`` (compare schema + baselines), ``report.md`` and, unless ``plots`` is False, PNGs."""
    from sim.report import write_markdown, write_plots, write_results

    scenario = trace.scenario.to_dict()
    scenario["arrival"] = "trace, open loop" if trace.format == "mooncake" else "trace, closed loop"
    results = write_results(out, scenario, rows, trace=trace_section(trace),
                            single_pool_reuse=trace.baselines.single_pool_reuse,
                            random_baseline_reuse=trace.baselines.random_baseline_reuse)
    names = write_plots(out, rows) if plots and rows else []
    report = write_markdown(out, scenario, rows, names, command="smg-testbed replay")
    b = trace.baselines
    extra = ["", "## Trace baselines", "",
             f"- `single_pool_reuse` {b.single_pool_reuse:.4f}: one infinite cache that sees every request "
             "(the trace alone, zero service time).",
             f"- `random_baseline_reuse` {b.random_baseline_reuse:.4f}: expected reuse of uniform random routing "
             f"over {trace.scenario.workers} workers with unbounded caches (exact, analytic).",
             f"- Trace: `{trace.path}` ({trace.source_format}), {trace.describe()}."]
    if argv is not None:
        extra += ["", "Command: `smg-testbed replay " + " ".join(argv) + "`"]
    with open(report, "a", encoding="utf-8") as f:
        f.write("\n".join(extra) + "\n")
    return [results, report, *[out / n for n in names]]

"""``smg-testbed demo``: a short multi-turn run against real mock workers, KV reuse printed (no gateway).

(``make demo`` runs the main job instead: ``smg-testbed compare --transport http``.)

Starts a few mock SGLang workers (uvicorn on free loopback ports, in this process), plays the same
agent sessions twice over HTTP, without a gateway: once *sticky* (every turn of a session goes to
the session's worker) and once *round-robin* (turns rotate over the workers), then prints per-session
and overall KV reuse with ``rich`` and stops the workers. Virtual time (``sim_time`` in every body),
so it takes a second or two whatever the modelled latencies.

Each session: a system prompt shared by all sessions, a task of its own, then turns of
``assistant answer + tool output``; turn k+1 is issued at turn k's modelled finish plus a tool time.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from sim.engine.types import WorkerConfig
from sim.worker.app import serve_in_thread
from sim.worker.core import WorkerCore
from testbed_common import tokenizer

MODES = ("sticky", "round-robin")


@dataclass
class SessionStats:
    session: int
    turns: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)

    @property
    def reuse(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass
class ModeResult:
    mode: str
    sessions: list[SessionStats]
    ports: list[int]

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.sessions)

    @property
    def cached_tokens(self) -> int:
        return sum(s.cached_tokens for s in self.sessions)

    @property
    def kv_reuse(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def mean_ttft(self) -> float:
        values = [t for s in self.sessions for t in s.ttft]
        return sum(values) / len(values) if values else 0.0


def run_mode(
    mode: str,
    *,
    workers: int,
    sessions: int,
    turns: int,
    seed: int,
    kv_capacity_tokens: int | None,
    system_tokens: int = 300,
    task_tokens: int = 80,
    tool_tokens: int = 120,
    answer_tokens: int = 40,
    tool_time: float = 2.0,
) -> ModeResult:
    """Play ``sessions`` conversations of ``turns`` turns against fresh workers; routing by ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    cores = [
        WorkerCore(WorkerConfig(name=f"w{i}", kv_capacity_tokens=kv_capacity_tokens), seed=seed) for i in range(workers)
    ]
    system = {"role": "system", "content": tokenizer.synth_text(seed * 7919 + 1, system_tokens)}
    history: dict[int, list[dict[str, Any]]] = {
        s: [system, {"role": "user", "content": tokenizer.synth_text(seed * 7919 + 100 + s, task_tokens)}]
        for s in range(sessions)
    }
    stats = {s: SessionStats(s) for s in range(sessions)}
    # (virtual time the session is ready, session): served strictly in time order
    ready = [(0.05 * s, s) for s in range(sessions)]
    heapq.heapify(ready)
    rr = 0
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serve_in_thread(core)) for core in cores]
        client = stack.enter_context(httpx.Client(timeout=30.0, trust_env=False))
        while ready:
            t, s = heapq.heappop(ready)
            if mode == "sticky":
                target = s % workers
            else:
                target, rr = rr % workers, rr + 1
            r = client.post(
                f"{servers[target].url}/v1/chat/completions",
                json={"model": "mock-model", "messages": history[s], "max_tokens": answer_tokens, "sim_time": t},
            )
            r.raise_for_status()
            body = r.json()
            st = stats[s]
            st.turns += 1
            st.prompt_tokens += body["usage"]["prompt_tokens"]
            st.cached_tokens += body["usage"]["prompt_tokens_details"]["cached_tokens"]
            st.ttft.append(body["sim"]["first_token"] - body["sim"]["arrival"])
            st.workers.append(body["sim"]["worker"])
            if st.turns < turns:
                tool = tokenizer.synth_text(seed * 7919 + 1000 * s + st.turns, tool_tokens)
                history[s] += [
                    {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                    {"role": "tool", "content": tool},
                ]
                heapq.heappush(ready, (body["sim"]["finish"] + tool_time, s))
        ports = [srv.port for srv in servers]
    return ModeResult(mode, [stats[s] for s in range(sessions)], ports)


def render(results: Sequence[ModeResult], console: Console) -> None:
    for res in results:
        table = Table(title=f"{res.mode}: per session (workers on 127.0.0.1:{', '.join(map(str, res.ports))})")
        for col in ("session", "turns", "prompt", "cached", "reuse", "TTFT ms", "workers by turn"):
            table.add_column(col, justify="left" if col.startswith("workers") else "right")
        for s in res.sessions:
            table.add_row(
                str(s.session),
                str(s.turns),
                str(s.prompt_tokens),
                str(s.cached_tokens),
                f"{s.reuse:.1%}",
                f"{1000 * sum(s.ttft) / len(s.ttft):.1f}",
                ",".join(s.workers),
            )
        console.print(table)
    summary = Table(title="overall")
    for col in ("routing", "prompt", "cached", "prefilled", "KV reuse", "mean TTFT ms"):
        summary.add_column(col, justify="right" if col != "routing" else "left")
    for res in results:
        prefilled = res.prompt_tokens - res.cached_tokens
        summary.add_row(
            res.mode,
            str(res.prompt_tokens),
            str(res.cached_tokens),
            str(prefilled),
            f"{res.kv_reuse:.1%}",
            f"{1000 * res.mean_ttft:.1f}",
        )
    console.print(summary)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="smg-testbed demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", type=int, default=3, help="mock workers (default 3)")
    p.add_argument(
        "--sessions",
        type=int,
        default=8,
        help="default 8; a multiple of --workers makes round-robin coincide with sticky (turns are served in rounds)",
    )
    p.add_argument("--turns", type=int, default=5, help="turns per session (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the texts and the workers (default 0)")
    p.add_argument("--kv-capacity-tokens", type=int, default=200_000,
                   help="per worker (default 200000; 0: unbounded)")
    args = p.parse_args(argv)
    if min(args.workers, args.sessions, args.turns) < 1:
        p.error("--workers, --sessions and --turns must be >= 1")
    console = Console()
    results = [
        run_mode(
            mode,
            workers=args.workers,
            sessions=args.sessions,
            turns=args.turns,
            seed=args.seed,
            kv_capacity_tokens=args.kv_capacity_tokens or None,
        )
        for mode in MODES
    ]
    render(results, console)
    sticky, rr = results
    console.print(
        f"sticky routing reused {sticky.kv_reuse:.1%} of prompt tokens from the KV cache, "
        f"round-robin {rr.kv_reuse:.1%}; prefill work {sticky.prompt_tokens - sticky.cached_tokens} "
        f"vs {rr.prompt_tokens - rr.cached_tokens} tokens."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

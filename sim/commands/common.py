"""What ``run``, ``compare`` and ``sweep`` share: scenario options, parallel execution with a progress bar."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import multiprocessing as mp
import os
import queue
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sim.commands.gateway_flags import check_gateway_argv
from sim.runner import run_setup
from sim.stats import by_configuration, paired_difference, parse_seeds
from sim.transports.pool import Setup, port_salt
from sim.workload.plans import plan_sessions, planned_requests
from sim.workload.scenario import Scenario, ScenarioError, load_scenario, parse_capacity

_progress_queue: Any = None
PROGRESS_EVERY = 25


def add_scenario_args(p: argparse.ArgumentParser, default: str = "default") -> None:
    p.add_argument("--scenario", default=default, help=f"built-in scenario name or a TOML file (default: {default})")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for the workload, gateway, session ids and workers (default: the scenario's)")


def add_seeds_arg(p: argparse.ArgumentParser) -> None:
    """``--seeds``: run every configuration once per seed (``--seed`` is one seed)."""
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="several seeds, a range or a list (0-9, 0,3,5, 0-4,8): one row per seed and configuration, "
                        "with means and 95%% intervals per configuration")


def seeds_from_args(args: argparse.Namespace, scenario: Scenario) -> list[int]:
    """The seeds to run: ``--seeds``, else ``--seed``, else the scenario's; ValueError (one line) for a bad list
    or both options."""
    if args.seeds is None:
        return [scenario.seed if args.seed is None else args.seed]
    if args.seed is not None:
        raise ValueError("--seed and --seeds exclude each other: --seeds N runs the one seed N")
    return parse_seeds(args.seeds)


def resolve_configuration(text: str, labels: Sequence[str]) -> str:
    """The configuration label ``text`` names: the label itself, or the one label holding all its words
    (``manual/min_load key=on`` in a sweep; a flag with or without its dashes); ValueError (one line) when none or
    several do."""
    if text in labels:
        return text

    def words(s: str) -> set[str]:
        return {w.lstrip("-") for w in s.split()}

    hits = [lab for lab in dict.fromkeys(labels) if words(text) <= words(lab)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(f"--versus {text!r} names {len(hits)} configurations ({'; '.join(hits[:4])}"
                         f"{'; ...' if len(hits) > 4 else ''}): add words to pick one")
    close = difflib.get_close_matches(text, list(dict.fromkeys(labels)), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"--versus {text!r} names no configuration of this run{hint}")


def paired_versus(rows: Sequence[dict[str, Any]], versus: str) -> list[dict[str, Any]]:
    """Every other configuration of ``rows`` minus the ``versus`` one, paired by seed (``sim.stats``)."""
    return [paired_difference(rows, label, versus) for label in by_configuration(rows) if label != versus]


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    s = load_scenario(args.scenario)
    if args.seed is not None:
        s = s.replace(seed=args.seed)
    return s


def add_override_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="override the scenario's worker count")
    p.add_argument("--kv-capacity-tokens", default=None, help="override KV capacity per worker (0 or inf: unbounded)")
    p.add_argument("--sessions", type=int, default=None, help="override the number of sessions")


def apply_overrides(s: Scenario, args: argparse.Namespace) -> Scenario:
    changes: dict[str, Any] = {}
    if getattr(args, "workers", None) is not None:
        changes["workers"] = args.workers
    if getattr(args, "kv_capacity_tokens", None) is not None:
        changes["kv_capacity_tokens"] = parse_capacity(args.kv_capacity_tokens)
    if getattr(args, "sessions", None) is not None:
        changes["sessions"] = args.sessions
    return s.replace(**changes) if changes else s


def console_for(quiet: bool = False) -> Console:
    """A console; when output is not a terminal, wide enough for the results table."""
    c = Console(stderr=quiet)
    if not c.is_terminal:
        c = Console(width=200, stderr=quiet)
    return c


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _init_child(q: Any) -> None:
    global _progress_queue
    _progress_queue = q
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches a child only while it runs a setup (_run_child)


def _run_child(setup: Setup, transport: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    count = 0

    def tick(_rec: Any) -> None:
        nonlocal count
        count += 1
        if count % PROGRESS_EVERY == 0 and _progress_queue is not None:
            _progress_queue.put(PROGRESS_EVERY)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # interrupted: the run's servers stop on the way out
    try:
        row = run_setup(setup, transport, on_request=tick, **kwargs)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _progress_queue is not None:
        _progress_queue.put(count % PROGRESS_EVERY)
    return row


@contextlib.contextmanager
def _cancel_on_interrupt(pool: ProcessPoolExecutor) -> Iterator[None]:
    """On Ctrl-C no queued setup starts; the running ones stop (their children got the SIGINT too)."""
    try:
        yield
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)
        raise


# transports whose runs bind the workers' usual ports (sim.transports.pool.stable_ports)
BINDING_TRANSPORTS = ("http", "live")


def port_blocks(setups: Sequence[Setup], transport: str) -> list[str | None]:
    """Each setup's worker port block when ``transport`` binds it, else None (no two runs of a block at once)."""
    return [port_salt(s) if transport in BINDING_TRANSPORTS else None for s in setups]


def startable(waiting: Sequence[int], blocks: Sequence[str | None], busy: set[str]) -> list[int]:
    """The waiting setups (indices, in order) that may start now: none shares a block with a started one, nor with
    one before it in the list."""
    out, taken = [], set(busy)
    for i in waiting:
        block = blocks[i]
        if block is None or block not in taken:
            out.append(i)
            if block is not None:
                taken.add(block)
    return out


def run_many(setups: Sequence[Setup], transport: str, jobs: int, console: Console,
             kwargs: dict[str, Any] | None = None, on_row: Callable[[dict[str, Any]], None] | None = None,
             show_progress: bool = True) -> list[dict[str, Any]]:
    """Run every setup (``jobs`` at a time in worker processes); rows come back in ``setups`` order.

    Setups whose runs bind the same worker ports (``http``: every configuration of one scenario and seed,
    ``port_blocks``) run one after the other rather than on another block, which would change their worker URLs
    and so the results of hash-based policies; setups of other blocks run beside them."""
    kwargs = kwargs or {}
    total = sum(planned_requests(plan_sessions(s.scenario)) for s in setups)
    rows: list[dict[str, Any] | None] = [None] * len(setups)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("requests"), TimeElapsedColumn(), console=console, transient=True,
                        disable=not show_progress)
    if jobs <= 1 or len(setups) <= 1:
        with progress:
            task = progress.add_task(f"{len(setups)} runs", total=total)
            for i, s in enumerate(setups):
                progress.update(task, description=f"run {i + 1}/{len(setups)}: {s.label}")
                rows[i] = run_setup(s, transport, on_request=lambda _r: progress.advance(task), **kwargs)
                if on_row:
                    on_row(rows[i])  # type: ignore[arg-type]
        return rows  # type: ignore[return-value]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    with ProcessPoolExecutor(max_workers=min(jobs, len(setups)), mp_context=ctx, initializer=_init_child,
                             initargs=(q,)) as pool:
        blocks, busy = port_blocks(setups, transport), set()
        futures: dict[int, Future] = {}
        waiting = list(range(len(setups)))

        def start_what_may() -> set[int]:
            started = startable(waiting, blocks, busy)
            for i in started:
                waiting.remove(i)
                futures[i] = pool.submit(_run_child, setups[i], transport, kwargs)
            busy.update(b for i in started if (b := blocks[i]) is not None)
            return set(started)

        done = 0
        with progress, _cancel_on_interrupt(pool):
            task = progress.add_task(f"{len(setups)} runs, {jobs} at a time", total=total)
            pending = start_what_may()
            while pending or waiting:
                with contextlib.suppress(queue.Empty):
                    progress.advance(task, q.get(timeout=0.2))
                for i in sorted(pending):
                    f = futures[i]
                    if f.done():
                        pending.discard(i)
                        busy.discard(blocks[i] or "")
                        rows[i] = f.result()
                        done += 1
                        progress.update(task, description=f"{done}/{len(setups)} runs done")
                        if on_row:
                            on_row(rows[i])  # type: ignore[arg-type]
                if waiting:
                    pending |= start_what_may()
    return rows  # type: ignore[return-value]


def check_gateway_flags(setups: Sequence[Setup]) -> list[str]:
    """Check every configuration's gateway flags before anything runs (ValueError, one line, when one cannot be
    applied); the SMG flags the mock gateway does not model (it ignores them), for a warning."""
    out: list[str] = []
    for setup in setups:
        for flag in check_gateway_argv(setup.gateway_args):
            if flag not in out:
                out.append(flag)
    return out


def fail(msg: str) -> int:
    """Print ``error: MSG`` (one line, MSG verbatim: no console markup) on stderr; the usage-error exit status."""
    Console(stderr=True).print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True)
    return 2


__all__ = ["ScenarioError", "add_override_args", "add_scenario_args", "add_seeds_arg", "apply_overrides",
           "check_gateway_flags", "console_for", "default_jobs", "fail", "paired_versus", "resolve_configuration",
           "run_many", "scenario_from_args", "seeds_from_args"]

"""Where a batch of configurations runs: this process, a local process pool, or Ray tasks.

Every executor calls ``on_requests(n)`` as requests complete (for a progress bar) and ``on_done(i, row)`` as the
``i``-th setup finishes, in completion order. ``local`` with one job runs in this process; with more, in forked
worker processes that report progress every ``PROGRESS_EVERY`` requests. ``ray`` submits one Ray task per
configuration (``ray.init()`` on this machine when no address is given and Ray is not already initialised) and
reports progress as tasks finish; a failed task is reported by configuration (:class:`RunsFailed`) once the others
have finished. Rows are the same whichever executor ran them: a run depends on its setup only.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from sim.runner import run_setup
from sim.transports.pool import Setup, port_salt
from sim.workload.plans import plan_sessions, planned_requests

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "--executor ray needs Ray, an optional extra: pip install 'smg-testbed[ray]'"
PROGRESS_EVERY = 25

OnRequests = Callable[[int], None]
OnDone = Callable[[int, dict[str, Any]], None]


class RunsFailed(RuntimeError):
    """Some configurations failed; ``rows`` holds the others' rows (None where a configuration failed)."""

    def __init__(self, failures: list[tuple[Setup, str]], rows: list[dict[str, Any] | None]) -> None:
        super().__init__("; ".join(f"{s.label}: {why}" for s, why in failures))
        self.failures = failures
        self.rows = rows


def requests_of(setup: Setup) -> int:
    return planned_requests(plan_sessions(setup.scenario))


def run_serial(setups: Sequence[Setup], transport: str, kwargs: dict[str, Any], on_requests: OnRequests,
               on_done: OnDone) -> None:
    for i, s in enumerate(setups):
        on_done(i, run_setup(s, transport, on_request=lambda _r: on_requests(1), **kwargs))


_progress_queue: Any = None


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


def run_local(setups: Sequence[Setup], transport: str, jobs: int, kwargs: dict[str, Any], on_requests: OnRequests,
              on_done: OnDone) -> None:
    """``jobs`` setups at a time in forked worker processes (in this process when one job or one setup).

    Setups whose runs bind the same worker ports (``http``: every configuration of one scenario and seed,
    ``port_blocks``) run one after the other rather than on another block, which would change their worker URLs
    and so the results of hash-based policies; setups of other blocks run beside them."""
    if jobs <= 1 or len(setups) <= 1:
        run_serial(setups, transport, kwargs, on_requests, on_done)
        return
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

        with _cancel_on_interrupt(pool):
            pending = start_what_may()
            while pending or waiting:
                with contextlib.suppress(queue.Empty):
                    on_requests(q.get(timeout=0.2))
                for i in sorted(pending):
                    if futures[i].done():
                        pending.discard(i)
                        busy.discard(blocks[i] or "")
                        on_done(i, futures[i].result())
                if waiting:
                    pending |= start_what_may()


def _ray_task(setup: Setup, transport: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return run_setup(setup, transport, **kwargs)


def _failure(error: BaseException) -> str:
    """A failed task's cause in one line (a RayTaskError carries the task's own exception as ``cause``)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_ray(setups: Sequence[Setup], transport: str, kwargs: dict[str, Any], on_requests: OnRequests,
            on_done: OnDone, address: str | None = None, jobs: int | None = None) -> None:
    """One Ray task per setup on the cluster at ``address`` (a local Ray instance of ``jobs`` CPUs when None).
    Simulated time only: runs that bind the workers' usual ports could meet on one machine (``run_local`` keeps
    such runs apart), so ``http``/``live`` are refused."""
    if transport in BINDING_TRANSPORTS:
        raise ValueError(f"--executor ray runs the direct transport only, not {transport!r}: runs that bind worker "
                         "ports could meet on one machine; use --executor local")
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(RAY_INSTALL_HINT) from e
    started = not ray.is_initialized()
    if started:
        local = {"num_cpus": jobs, "include_dashboard": False} if address is None else {}
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", **local)
    try:
        task = ray.remote(_ray_task)
        index = {task.remote(s, transport, kwargs): i for i, s in enumerate(setups)}
        rows: list[dict[str, Any] | None] = [None] * len(setups)
        failures: list[tuple[Setup, str]] = []
        pending = list(index)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.2)
                for ref in done:
                    i = index[ref]
                    on_requests(requests_of(setups[i]))
                    try:
                        rows[i] = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        failures.append((setups[i], _failure(e)))
                        continue
                    on_done(i, rows[i])  # type: ignore[arg-type]
        except KeyboardInterrupt:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
    if failures:
        raise RunsFailed(failures, rows)

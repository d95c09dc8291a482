"""Live time (DESIGN.md "Time"): the SimPy workload paced against the wall clock, requests concurrent.

Needed to put the real ``smg`` binary in the loop, which keeps its own wall-clock in-flight counts.

- ``LiveEnvironment``: a SimPy environment whose clock follows the wall clock times ``speedup`` (model
  seconds). Requests run in threads; when one returns, the environment is moved to the current wall time and
  the waiting agent resumes. Tool latency and think time are waited out in scaled wall time.
- ``LiveAgentRunner``: ``sim.agents.AgentRunner`` on that environment. Bodies carry no ``sim_time``, so the
  workers wait out their modelled latency divided by ``speedup`` and the gateway releases in-flight counts when
  answers end. A worker reports its timeline on its own clock; records are shifted onto the runner's clock
  (finish = when the answer came back; durations as modelled). The oracle is fed in arrival order at the end
  (a PD pool's: the prompt-only ceiling, each prompt entering at its prefill's end).
- ``LiveTransport``: mock workers (in-process uvicorn servers, live clock scaled by ``speedup``), a gateway
  process (``mock`` or the real ``smg``, ``sim.real_smg``) and a session server, on loopback; ``kill_worker`` /
  ``restart_worker`` crash a worker and bring it back on the same URL with an empty cache. A PD pool: its
  workers run their roles, each prefill worker also listening on its bootstrap port (``pool.bootstrap_ports``:
  the gateway's registration probe, and the live KV-transfer rendezvous of ``sim.worker.bootstrap``); the gateway
  runs in PD mode (``pool.worker_flags``: ``--pd-disaggregation --prefill URL PORT ... --decode URL ...``).

``setup.extra`` carries ``gateway`` (``mock``/``smg``), ``speedup`` and for smg ``smg_bin`` (the binary):
``live_setup(setup, gateway, speedup, smg_bin)``.
``sim.runner.run_setup(setup, "live")`` runs it like any other transport.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import simpy

from sim.agents import AgentRunner, RequestRecord, WorkloadResult
from sim.oracle import Oracle
from sim.real_smg import Gateway, gateway_process
from sim.transports.base import Reply, TransportError
from sim.transports.http import SessionClient, session_server_app
from sim.transports.pool import (
    Setup,
    bootstrap_ports,
    port_salt,
    session_server_argv,
    stable_ports,
    worker_configs,
    worker_flags,
)
from sim.transports.pool import worker_urls as urls_of
from sim.workload.plans import SessionPlan
from sim.workload.scenario import Scenario
from testbed_common.procs import LOOPBACK, SMG_BIN_ENV, ThreadServer

DEFAULT_SPEEDUP = 10.0
# smg 1.13.0 takes ~5 s to exit after SIGTERM even when idle; a run has read what it needs by then, so after
# this many seconds it gets SIGKILL (nothing of it persists)
GATEWAY_GRACE = 2.0
KEEP_ALIVE = 75  # uvicorn's 5 s default races httpx's 5 s pool expiry (see mock_gateway/cli.py)


def live_setup(setup: Setup, gateway: str = "mock", speedup: float = DEFAULT_SPEEDUP,
               smg_bin: str | None = None) -> Setup:
    """``setup`` marked for a live run against ``gateway`` at ``speedup`` (smg: the binary ``smg_bin``, None for
    ``sim.real_smg.resolve_smg``'s default)."""
    if not speedup > 0:
        raise ValueError("speedup must be > 0")
    extra = {**setup.extra, "gateway": gateway, "speedup": float(speedup)}
    if smg_bin is not None:
        extra["smg_bin"] = smg_bin
    return dataclasses.replace(setup, extra=extra)


class LiveEnvironment(simpy.Environment):
    """SimPy paced by the wall clock: model time = (wall seconds since ``run``) * ``speedup``.

    ``call(fn)`` runs ``fn`` in a thread and returns an event that succeeds with its result (or the
    exception it raised) once it has returned; the environment is then at the wall time it returned at.
    """

    def __init__(self, speedup: float = 1.0, max_threads: int = 256) -> None:
        super().__init__()
        if not speedup > 0:
            raise ValueError("speedup must be > 0")
        self.speedup = speedup
        self._t0: float | None = None
        self._done: queue.Queue[tuple[simpy.Event, Any]] = queue.Queue()
        self._pending = 0
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="live")

    def wall_now(self) -> float:
        """The current wall time in model seconds (0 before ``run``)."""
        return 0.0 if self._t0 is None else (time.monotonic() - self._t0) * self.speedup

    def call(self, fn: Callable[[], Any]) -> simpy.Event:
        ev = self.event()
        self._pending += 1

        def work() -> None:
            try:
                value: Any = fn()
            except BaseException as e:  # handed to the waiting process
                value = e
            self._done.put((ev, value))

        self._pool.submit(work)
        return ev

    def _advance(self, t: float) -> None:
        """Process every event due by ``t``, then set the clock to ``t``."""
        while self.peek() <= t:
            self.step()
        if t > self._now:
            self._now = t

    def run(self, until: Any = None) -> Any:
        if self._t0 is None:
            self._t0 = time.monotonic() - self._now / self.speedup
        limit = float("inf") if until is None else float(until)
        try:
            while True:
                nxt = self.peek()
                if (nxt == float("inf") and self._pending == 0) or self.wall_now() >= limit:
                    return None
                wall = self.wall_now()
                if nxt <= wall:
                    self.step()
                    continue
                timeout = min((nxt - wall) / self.speedup, 0.5)
                try:
                    ev, value = self._done.get(timeout=timeout)
                except queue.Empty:
                    continue
                self._pending -= 1
                self._advance(min(self.wall_now(), limit))
                ev.succeed(value)
        finally:
            if self._pending == 0:
                self._pool.shutdown(wait=False)


class _DeferredOracle(Oracle):
    """Collects observations (answers come back out of arrival order) and replays them sorted at the end."""

    def __init__(self, prompt_only: bool = False) -> None:
        super().__init__(prompt_only=prompt_only)
        self.seen: list[list[Any]] = []

    def observe(self, arrival, finish, prompt_ids, output_ids) -> int:  # type: ignore[override]
        self.seen.append([arrival, finish, list(prompt_ids), list(output_ids), None])
        return 0

    def replay(self) -> Oracle:
        real = Oracle(prompt_only=self.prompt_only)
        for arrival, finish, prompt, output, rec in sorted(self.seen, key=lambda e: e[0]):
            cached = real.observe(arrival, finish, prompt, output)
            if rec is not None:
                rec.oracle_cached = cached
        real.finish()
        return real


@dataclass(frozen=True)
class Fault:
    """Crash worker ``worker`` (index) at model time ``kill_at``; bring it back at ``restart_at`` (if set)."""

    worker: int
    kill_at: float
    restart_at: float | None = None


class LiveAgentRunner(AgentRunner):
    """``AgentRunner`` in live time (module docstring); ``faults`` need a transport with kill/restart_worker."""

    def __init__(self, scenario: Scenario, transport: Any, speedup: float = DEFAULT_SPEEDUP,
                 plans: list[SessionPlan] | None = None, on_request: Callable[[RequestRecord], None] | None = None,
                 until: float | None = None, faults: Sequence[Fault] = ()) -> None:
        super().__init__(scenario, transport, plans, on_request, until)
        self.env = LiveEnvironment(speedup)
        self.speedup = speedup
        self._oracle = _DeferredOracle(prompt_only=scenario.prompt_only_ceiling)
        self.result = WorkloadResult(oracle=self._oracle)
        self.faults = list(faults)
        self.fault_log: list[tuple[str, str, float]] = []  # (kill|restart, worker name, model time)

    def _body(self, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return {"model": "mock-model", "messages": messages, "max_tokens": max_tokens}

    def _chat_steps(self, sid: str, plan: SessionPlan, turn: int, retry: bool, messages: list[dict[str, Any]],
                    max_tokens: int, prev_full: list[int] | None
                    ) -> Generator[simpy.Event, Any, tuple[RequestRecord, list[int] | None, str]]:
        env = self.env
        rec = RequestRecord(plan.index, turn, retry, float(env.now), 0)
        body = self._body(messages, max_tokens)
        value = yield env.call(lambda: (self.transport.chat(sid, body), env.wall_now()))
        if isinstance(value, BaseException):
            if not isinstance(value, TransportError):
                raise value
            rec.error = f"transport: {value}"
            return rec, None, ""
        reply, received = value
        assert isinstance(reply, Reply)
        n_seen = len(self._oracle.seen)
        rec, full, content = self._parse(rec, reply, messages, prev_full)
        if rec.ok:
            # the worker's timeline is on its own clock (PD: the decode worker's, the prefill's times converted to it
            # by the rendezvous): move it so that it ends when the answer came back
            shift = received - rec.finish
            rec.arrival, rec.start = rec.arrival + shift, rec.start + shift
            rec.first_token, rec.finish = rec.first_token + shift, received
            if rec.prefill_worker is not None:
                rec.prefill_end, rec.transfer_ready = rec.prefill_end + shift, rec.transfer_ready + shift
            if len(self._oracle.seen) > n_seen:
                entry = self._oracle.seen[-1]
                inserted = rec.prefill_end if self._oracle.prompt_only else rec.finish
                entry[0], entry[1], entry[4] = rec.arrival, inserted, rec
        return rec, full, content

    def _fault(self, fault: Fault) -> Generator[simpy.Event, Any, None]:
        env, tr = self.env, self.transport
        name = tr.workers[fault.worker]
        if fault.kill_at > env.now:
            yield env.timeout(fault.kill_at - env.now)
        self.fault_log.append(("kill", name, float(env.now)))  # requests sent from now on may find it gone
        yield env.call(lambda: tr.kill_worker(fault.worker))
        if fault.restart_at is not None:
            if fault.restart_at > env.now:
                yield env.timeout(fault.restart_at - env.now)
            yield env.call(lambda: tr.restart_worker(fault.worker))
            self.fault_log.append(("restart", name, float(env.now)))

    def run(self) -> WorkloadResult:
        for f in self.faults:
            self.env.process(self._fault(f))
        result = super().run()
        result.oracle = self._oracle.replay()  # also fills in each record's oracle_cached
        return result


class LiveTransport(SessionClient):
    """Live workers, a gateway process (mock or smg) and a session server on loopback, stopped by ``close()``."""

    def __init__(self, setup: Setup, urls: list[str] | None = None, log_dir: Path | None = None) -> None:
        from sim.transports.direct import engine_stats
        from sim.worker.core import WorkerCore

        self.setup = setup
        self.kind = str(setup.extra.get("gateway", "mock"))
        self.speedup = float(setup.extra.get("speedup", DEFAULT_SPEEDUP))
        self._engine_stats = engine_stats
        self._core_cls = WorkerCore
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        self.configs = worker_configs(setup.scenario)
        self.ports = ([int(u.rsplit(":", 1)[1]) for u in urls] if urls
                      else stable_ports(port_salt(setup), len(self.configs)))
        self.worker_urls = urls_of(self.ports)
        self.bootstrap_ports = bootstrap_ports(setup.scenario, self.worker_urls)  # the prefill workers', in order
        self.cores = [WorkerCore(cfg, seed=setup.seed) for cfg in self.configs]
        self.retired: list[list[Any]] = [[] for _ in self.cores]  # cores replaced by a restart
        self.workers = [c.name for c in self.cores]
        self.servers: list[ThreadServer | None] = [None] * len(self.cores)
        self._bootstrap_sockets: list[socket.socket] = []
        try:
            for i in range(len(self.cores)):
                self._serve(i)
            log = (log_dir / f"gateway-{self.kind}.log") if log_dir else None
            self.gateway: Gateway = self._stack.enter_context(
                gateway_process(self.kind, setup.gateway_args, self.worker_urls, seed=setup.seed, log_path=log,
                                grace=float(setup.extra.get("gateway_grace", GATEWAY_GRACE)),
                                smg_bin=setup.extra.get("smg_bin"),
                                worker_flags=worker_flags(setup.scenario, self.worker_urls)))
            self.gateway_url = self.gateway.url
            self.metrics_url = self.gateway.metrics_url
            ss = ThreadServer(session_server_app(session_server_argv(setup, self.gateway_url)),
                              timeout_keep_alive=KEEP_ALIVE).start()
            self._stack.callback(ss.stop)
            super().__init__(ss.url)
        except BaseException:
            self._close_servers()
            raise

    def _serve(self, i: int) -> None:
        """Start worker ``i``'s server; a prefill worker's with its bootstrap socket (a new one each start: its
        server closes it when it stops)."""
        from sim.worker.app import create_app

        sock = None
        if self.cores[i].config.disaggregation_mode == "prefill":
            sock = socket.create_server((LOOPBACK, self.bootstrap_ports[i]))
            self._bootstrap_sockets.append(sock)
        server = ThreadServer(create_app(self.cores[i], speedup=self.speedup, bootstrap=sock), port=self.ports[i],
                              timeout_keep_alive=KEEP_ALIVE)
        server.start()
        self.servers[i] = server

    def kill_worker(self, i: int) -> None:
        """Crash worker ``i``: stop accepting connections and close idle ones at once (answers already in
        progress still complete: a uvicorn shutdown, quieter than cancelling them)."""
        with self._lock:
            server = self.servers[i]
            if server is None:
                return
            server.stop()
            self.servers[i] = None

    def restart_worker(self, i: int) -> None:
        """Bring worker ``i`` back on the same URL as a fresh process would be: empty cache, same name."""
        with self._lock:
            if self.servers[i] is not None:
                return
            self.retired[i].append(self.cores[i])
            self.cores[i] = self._core_cls(self.configs[i], seed=self.setup.seed)
            self._serve(i)

    def agent_runner(self, scenario: Scenario, on_request: Callable[[RequestRecord], None] | None = None,
                     faults: Sequence[Fault] = ()) -> LiveAgentRunner:
        return LiveAgentRunner(scenario, self, self.speedup, on_request=on_request, faults=faults)

    def gateway_metrics(self) -> str:
        from sim.transports.http import _get_text

        return _get_text(self.metrics_url)

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for i, core in enumerate(self.cores):
            stats = [self._engine_stats(c) for c in [*self.retired[i], core]]
            merged = dict(stats[-1])
            merged["peak_kv_tokens"] = max(s["peak_kv_tokens"] for s in stats)
            for key in ("evicted_tokens", "busy_time", "retractions", "recomputed_tokens", "decode_stall_seconds",
                        "queue_seconds"):  # totals: every life of the worker counts
                merged[key] = sum(s[key] for s in stats)
            merged["restarts"] = len(self.retired[i])
            out[core.name] = merged
        return out

    def _close_servers(self) -> None:
        try:
            self._stack.close()
        finally:
            for i, s in enumerate(self.servers):
                if s is not None:
                    s.stop()
                    self.servers[i] = None
            for sock in self._bootstrap_sockets:
                sock.close()
            self._bootstrap_sockets.clear()

    def close(self) -> None:
        try:
            if hasattr(self, "client"):
                super().close()
        finally:
            self._close_servers()


# ---- command-line options shared by run, compare and sweep -------------------------------------------------------


def add_live_args(p: Any) -> None:
    """``--gateway mock|smg``, ``--smg-bin``, ``--live`` and ``--speedup`` on an argparse parser."""
    from sim.real_smg import GATEWAYS

    p.add_argument("--gateway", choices=GATEWAYS, default="mock",
                   help="mock: the Python mock (virtual time unless --live); smg: the real smg 1.13.0 binary, "
                        "started with the same policy flags, in live time")
    p.add_argument("--smg-bin", default=None, metavar="PATH",
                   help=f"--gateway smg: this smg binary (default: ${SMG_BIN_ENV}, else the installed smg)")
    p.add_argument("--live", action="store_true", help="live time with the mock gateway too")
    p.add_argument("--speedup", type=float, default=DEFAULT_SPEEDUP,
                   help=f"live time: model seconds per wall second (default {DEFAULT_SPEEDUP:g})")


def live_requested(args: Any) -> bool:
    return getattr(args, "gateway", "mock") == "smg" or bool(getattr(args, "live", False))


def live_problem(args: Any) -> str | None:
    """Why the live options cannot be used as given (None when they can).

    For ``--gateway smg`` it resolves the binary (``sim.real_smg.resolve_smg``), sets ``args.smg_bin`` to it and
    exports it as ``$SMG_BIN``, so that worker processes and the results' provenance use the same binary."""
    from sim.real_smg import SmgBinaryError, resolve_smg

    if getattr(args, "smg_bin", None) and getattr(args, "gateway", "mock") != "smg":
        return "--smg-bin needs --gateway smg"
    if not live_requested(args):
        return None
    if not args.speedup > 0:
        return "--speedup must be > 0"
    if getattr(args, "transport", None) == "external":
        return "--gateway smg / --live start their own servers; they do not combine with --transport external"
    if args.gateway == "smg":
        try:
            args.smg_bin = resolve_smg(args.smg_bin).path
        except SmgBinaryError as e:
            return str(e)
        os.environ[SMG_BIN_ENV] = args.smg_bin
    return None


def live_setups(args: Any, setups: Sequence[Setup]) -> list[Setup]:
    smg_bin = args.smg_bin if args.gateway == "smg" else None
    return [live_setup(s, args.gateway, args.speedup, smg_bin) for s in setups]

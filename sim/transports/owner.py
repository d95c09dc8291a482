"""The co-simulated clock's owner over HTTP: the runner's SimPy environment stepping worker apps it reaches by URL.

DESIGN.md "Time", ``sim.cosim``. The ``http`` transport runs the very SimPy program ``direct`` runs, and its servers
see the same requests in the same order:

- Release, one request at a time (``ClockOwner.steps``): an agent's chat request goes out on a background event loop;
  the owner (the SimPy thread) blocks until either its HTTP answer is back (answered at once: returned without a
  SimPy step) or a worker reports that its engine holds it (``POST /arrivals`` on the owner's loopback endpoint,
  ``{"worker", "handle", "next_event_time", "leg"}``, sent by ``sim.worker.app``). Only one request is ever being
  released, so a report belongs to it, whatever retries (the session server's rollback retry, the gateway's) came
  first. The held request is then the engine clock's (``EngineClock.hold``) and the agent waits on a SimPy event.
- PD (prefill and decode workers): the gateway sends each request to a prefill and a decode worker at once, so a
  report naming a PD ``leg`` is followed by the other leg's (or by the answer, if the gateway gave up first). Both
  are held, the prefill engine touched first; the agent waits for the decode leg, and the prefill leg's answer
  goes to the gateway, which waits for the decode's: nobody waits for it here. The clock pairs the two legs'
  notices (``/sim/advance`` answers ``notices``) and hands each side the transfer (``POST /sim/transfer``).
- Engines (``WorkerPort``): a worker's wake-up posts ``/sim/advance`` and then waits until the HTTP answer of every
  request it finished has reached its agent, in finish order, so the gateway and the session server have done with
  each before any agent moves again.
- A worker that dies (``ClockOwner.worker_died``) loses what its engine holds (``/sim/abort``); each lost request's
  connection is then dropped (``/sim/drop``) and released again as above, one at a time: the gateway retries it
  elsewhere (held again) or the turn ends with the gateway's error, as ``direct`` resumes its holders with None.

Every wait has a wall-clock bound (``STEP_TIMEOUT``): a stuck one raises ``TransportError`` saying what it waited for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import queue
import threading
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import simpy
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sim.cosim import EngineClock
from sim.engine.transfer import Notice, Transfer, notice_from_json, transfer_to_json
from sim.transports.base import Reply, TransportError
from testbed_common import fastjson, http_client
from testbed_common.loopback import is_loopback
from testbed_common.procs import ThreadServer

STEP_TIMEOUT = 60.0  # wall seconds for one request to reach a worker or come back, and for a control call
_LEGS = (None, "prefill", "decode")
_JSON = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class Arrival:
    """A worker's report: its engine holds request ``handle``; the engine's next event time after it arrived; the
    PD leg it serves (``"prefill"``, ``"decode"``) or None (co-located)."""

    worker: int
    handle: int
    next_event_time: float
    leg: str | None = None


class BackgroundLoop:
    """An asyncio event loop in a daemon thread: coroutines submitted from other threads run on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="clock-owner-loop", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what still runs on the loop (requests given up on), then stop it."""

        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.submit(cancel_the_rest()).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


def _arrivals_app(on_arrival: Callable[[Arrival], bool], workers: Sequence[str]) -> Starlette:
    """The owner's endpoint: ``POST /arrivals`` from the workers (loopback only)."""
    index = {name: i for i, name in enumerate(workers)}

    async def arrivals(request: Request) -> Response:
        if request.client is None or not is_loopback(request.client.host):
            return JSONResponse({"error": "loopback clients only"}, status_code=403)
        try:
            body = fastjson.loads(await request.body())
            t, leg = body["next_event_time"], body.get("leg")
            if leg not in _LEGS:
                raise ValueError(f"leg must be one of {_LEGS}, got {leg!r}")
            arrival = Arrival(index[body["worker"]], int(body["handle"]), math.inf if t is None else float(t), leg)
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse({"error": f"bad arrival report: {type(e).__name__}: {e}"}, status_code=400)
        if not on_arrival(arrival):
            return JSONResponse({"error": "no request is being released"}, status_code=409)
        return Response(status_code=204)

    return Starlette(routes=[Route("/arrivals", arrivals, methods=["POST"])])


class ClockOwner:
    """The SimPy side of the co-simulation over HTTP (module docstring); ``close()`` stops what it started."""

    def __init__(self, workers: Sequence[str], timeout: float = STEP_TIMEOUT, label: str | None = None) -> None:
        """``workers``: the worker names in pool order (as the reports name them); ``label``: the hop label of the
        agents' requests (``http_client``)."""
        self.workers = list(workers)
        self.timeout = timeout
        self.worker_urls: list[str] = []  # set once the workers listen (their apps need ``arrivals_url`` first)
        self.dead: set[int] = set()  # workers whose server is down: their (fresh, empty) engines are not asked
        self.clock: EngineClock | None = None
        self._env: simpy.Environment | None = None
        self._next = [math.inf] * len(self.workers)  # each engine's next event time, as last reported
        # (worker, handle) -> the future of the agent's answer and its callback; (None, None): a PD prefill leg,
        # whose answer goes to the gateway and nobody here waits for
        self._held: dict[tuple[int, int], tuple[concurrent.futures.Future[Reply] | None,
                                                Callable[[Any], None] | None]] = {}
        self._notices: list[list[Notice]] = [[] for _ in self.workers]  # each engine's, from its last advance
        self._lock = threading.Lock()
        self._releasing: queue.SimpleQueue[Arrival | None] | None = None
        self.loop = BackgroundLoop()
        # the agents' requests, on the loop: no read timeout (a held request waits as long as virtual time takes to
        # reach its finish; the owner's own waits are bounded) and no connection limit (one per held request)
        self.pool = http_client.AsyncPool(timeout=httpx.Timeout(None, connect=10.0), label=label,
                                          limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
        self.control = http_client.Pool(timeout=httpx.Timeout(timeout, connect=10.0))  # /sim/* calls, SimPy thread
        self._server = ThreadServer(_arrivals_app(self._arrived, self.workers)).start()
        self.arrivals_url = f"{self._server.url}/arrivals"

    # ---- the clock ------------------------------------------------------------------------------

    def bind(self, env: simpy.Environment) -> EngineClock:
        self._env = env
        self.clock = EngineClock(env, [WorkerPort(self, i) for i in range(len(self.workers))])
        return self.clock

    def steps(self, request: Coroutine[Any, Any, Reply]) -> Generator[simpy.Event, Any, Reply]:
        """Send ``request`` (an agent's chat) and give its answer, as SimPy steps: none when it is answered at once,
        else a wait in virtual time until the engine that holds it finished it."""
        fut, outcome = self._released(lambda: self.loop.submit(request))
        if isinstance(outcome, Reply):
            return outcome
        if self.clock is None or self._env is None:
            raise TransportError(f"worker {self.workers[outcome[0].worker]} holds the request until its engine "
                                 "finishes it: run the agents under the co-simulated clock (bind_clock, chat_steps)")
        if fut.done():  # one PD leg reported, then the gateway answered without the other: that leg waits for nobody
            self._hold(outcome, fut, None)
            return fut.result()
        done = self._env.event()

        def on_answer(answer: Reply | BaseException) -> None:
            if isinstance(answer, BaseException):
                done.fail(answer)
            else:
                done.succeed(answer)

        self._hold(outcome, fut, on_answer)
        return (yield done)

    def _released(self, release: Callable[[], concurrent.futures.Future[Reply]]
                  ) -> tuple[concurrent.futures.Future[Reply], Reply | list[Arrival]]:
        """Release a request (``release()`` sends it, or lets it go on, and gives the future of its answer) and
        block until it is answered or a worker reports holding it; a PD leg's report is followed by the other
        leg's, or by the answer. The owner listens for the reports *before* the request goes: a worker can report
        within microseconds, before this thread runs again."""
        signals: queue.SimpleQueue[Arrival | None] = queue.SimpleQueue()
        with self._lock:
            self._releasing = signals
        try:
            fut = release()
            fut.add_done_callback(lambda _: signals.put(None))
            signal = signals.get(timeout=self.timeout)
            if signal is None:
                return fut, fut.result()  # a TransportError of the request itself propagates
            arrivals = [signal]
            if signal.leg is not None and (other := self._other_leg(signals, signal)) is not None:
                arrivals.append(other)
            return fut, arrivals
        except queue.Empty:
            raise TransportError(f"a request neither reached a worker's engine nor was answered within "
                                 f"{self.timeout:g} s") from None
        finally:
            with self._lock:
                self._releasing = None

    def _other_leg(self, signals: queue.SimpleQueue[Arrival | None], first: Arrival) -> Arrival | None:
        """The report of the PD leg that is not ``first``; None when the request was answered first."""
        try:
            other = signals.get(timeout=self.timeout)
        except queue.Empty:
            raise TransportError(f"worker {self.workers[first.worker]} reported the {first.leg} leg of a request, "
                                 f"but no worker reported its other leg within {self.timeout:g} s") from None
        if other is not None and other.leg in (None, first.leg):
            raise TransportError(f"the {first.leg} leg of a request (worker {self.workers[first.worker]}) came with "
                                 f"a {other.leg or 'co-located'} leg (worker {self.workers[other.worker]}), not "
                                 "the other PD leg")
        return other

    def _arrived(self, arrival: Arrival) -> bool:
        """An arrival report (the endpoint's thread); False when no request is being released."""
        with self._lock:
            if self._releasing is None:
                return False
            self._releasing.put(arrival)
            return True

    def _hold(self, arrivals: list[Arrival], fut: concurrent.futures.Future[Reply],
              on_answer: Callable[[Any], None] | None) -> None:
        """Hand the reported requests to the engine clock, the prefill leg's engine touched first. The agent's answer
        (``fut``, ``on_answer``; None: already given) waits for the decode (or co-located) leg."""
        assert self.clock is not None
        arrivals = sorted(arrivals, key=lambda a: a.leg != "prefill")
        for a in arrivals:
            waits = on_answer is not None and a.leg != "prefill"
            self._held[(a.worker, a.handle)] = (fut, on_answer) if waits else (None, None)
            self._next[a.worker] = a.next_event_time
            self.clock.hold(a.worker, a.handle, on_answer if waits else _nobody)
        for a in arrivals:
            self.clock.touched(a.worker, a.next_event_time)

    # ---- one engine -----------------------------------------------------------------------------

    def _control(self, i: int, path: str, body: Any) -> Any:
        url = f"{self.worker_urls[i]}/sim/{path}"
        try:
            r = self.control.fetch("POST", url, _JSON, fastjson.dumps(body))
        except httpx.HTTPError as e:
            raise TransportError(f"POST {url}: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise TransportError(f"POST {url}: HTTP {r.status_code}: {r.text[:300]}")
        return fastjson.loads(r.content)

    def next_event_time(self, i: int) -> float:
        return self._next[i]

    def advance(self, i: int, until: float) -> list[tuple[int, Reply | BaseException | None]]:
        """Worker ``i``'s engine to ``until``; the answer of each request it finished once it reached its agent (None:
        a PD prefill leg, answered to the gateway)."""
        if i in self.dead:  # its server is down; the engine it comes back with is empty
            self._next[i] = math.inf
            return []
        out = self._control(i, "advance", {"until": until})
        t = out["next_event_time"]
        self._next[i] = math.inf if t is None else float(t)
        try:
            self._notices[i] = [notice_from_json(n) for n in out["notices"]]
        except ValueError as e:
            raise TransportError(f"worker {self.workers[i]} sent a bad PD notice: {e}") from e
        answers: list[tuple[int, Reply | BaseException | None]] = []
        for h in out["finished"]:
            held = self._held.pop((i, h), None)
            if held is None:
                raise TransportError(f"worker {self.workers[i]} finished request {h}, which it never reported")
            if held[0] is None:  # a PD prefill leg: its answer went to the gateway
                answers.append((h, None))
                continue
            try:
                answers.append((h, held[0].result(timeout=self.timeout)))
            except concurrent.futures.TimeoutError:
                raise TransportError(f"the answer of request {h}, finished by worker {self.workers[i]}, did not "
                                     f"reach its agent within {self.timeout:g} s") from None
            except TransportError as e:
                answers.append((h, e))
        return answers

    def notices(self, i: int) -> list[Notice]:
        """The PD notices of worker ``i``'s last advance (once)."""
        out, self._notices[i] = self._notices[i], []
        return out

    def transfer_ready(self, i: int, t: Transfer) -> None:
        """Hand worker ``i`` the transfer of a room one of its requests is in (``POST /sim/transfer``)."""
        if i in self.dead:
            return
        t_next = self._control(i, "transfer", transfer_to_json(t))["next_event_time"]
        self._next[i] = math.inf if t_next is None else float(t_next)

    def worker_died(self, i: int) -> None:
        """Worker ``i``'s server dies (before it is stopped): its engine loses what it holds, and each lost request
        is dropped and released again, in the engine's order, as ``direct`` resumes its holders."""
        self.dead.add(i)
        if self.clock is None:
            return
        lost = self._control(i, "abort", {})["aborted"]
        self._next[i] = math.inf
        for h in lost:
            self.clock.drop(i, [h])
            held = self._held.pop((i, h), None)
            if held is None:
                self._control(i, "drop", {"handles": [h]})
                continue
            fut, on_answer = held
            if fut is None or on_answer is None:  # a PD prefill leg (PD pools have no dead-worker faults)
                self._control(i, "drop", {"handles": [h]})
                continue

            def drop(h: int = h, fut: concurrent.futures.Future[Reply] = fut) -> concurrent.futures.Future[Reply]:
                self._control(i, "drop", {"handles": [h]})  # the gateway may retry it elsewhere at once
                return fut

            _, outcome = self._released(drop)
            if isinstance(outcome, list):
                self._hold(outcome, fut, on_answer)
            else:
                on_answer(outcome)

    def worker_restarted(self, i: int) -> None:
        self.dead.discard(i)

    def abort_all(self) -> None:
        """Drop every held request (the run is over or failed), so that the worker servers can stop."""
        for i in range(len(self.worker_urls)):
            if i in self.dead:
                continue
            try:
                lost = self._control(i, "abort", {})["aborted"]
                if lost:
                    self._control(i, "drop", {"handles": lost})
            except TransportError:
                continue  # a server that does not answer cannot be holding anything we can release
        self._held.clear()

    def close(self) -> None:
        """After the servers the owner talks to have stopped (they close their connections first)."""
        try:
            self._server.stop()
        finally:
            self.control.close()
            with contextlib.suppress(Exception):
                self.loop.submit(self.pool.aclose()).result(timeout=self.timeout)
            self.loop.close()


class WorkerPort:
    """Worker ``index`` as the engine clock's port (``sim.cosim.EnginePort``), through its owner."""

    __slots__ = ("index", "owner")

    def __init__(self, owner: ClockOwner, index: int) -> None:
        self.owner, self.index = owner, index

    def next_event_time(self) -> float:
        return self.owner.next_event_time(self.index)

    def advance(self, until: float) -> list[tuple[int, Reply | BaseException | None]]:
        return self.owner.advance(self.index, until)

    def notices(self) -> list[Notice]:
        return self.owner.notices(self.index)

    def transfer_ready(self, t: Transfer) -> None:
        self.owner.transfer_ready(self.index, t)


def _nobody(_answer: Any) -> None:
    """The holder of a PD prefill leg: its answer goes to the gateway, not to an agent."""

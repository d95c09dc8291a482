"""The co-simulated clock: the runner's SimPy environment owns virtual time, the worker engines follow it.

DESIGN.md, "Time". With the iteration-level engine a request's timeline depends on what arrives after it, so no
worker can answer at arrival. Each engine tells when it next decides something (``next_event_time``) and runs
its decisions up to a time when told (``advance``); ``EngineClock`` keeps one wake-up per engine in the SimPy
queue and, when it comes due, advances that engine and hands each finished request's answer to whoever holds it.

Order within one virtual instant (what makes ``direct`` and ``http`` equal): every agent step of the instant runs
first (their requests reach the engines, ``submit`` at that time), then the engines decide, one wake-up at a time
in the order they were scheduled (``ENGINE_PRIORITY`` sorts them after SimPy's normal events), and each finished
request's answer is carried back through the gateway and the session server *inside* that wake-up, before any
agent moves again. A request's holder decides what "carried back" means: in-process (``sim.transports.direct``)
the rest of the request's step machine runs synchronously; over HTTP (``sim.transports.owner``) the owner
waits until the held HTTP answers have reached their agents.

An engine port is anything with ``next_event_time() -> float``, ``advance(until) -> list[(handle, answer)]``,
``notices() -> list[Notice]`` and ``transfer_ready(t)``; pure bookkeeping here, no I/O (the ports do it).

PD disaggregation: the clock owns the ``TransferFabric`` (``sim.engine.transfer``). After a wake-up has handed out
its answers, the engine's notices (a prefill finished, a decode worker pre-allocated) are posted; when a room's two
sides are known, the transfer goes to the prefill's engine (which answers its leg at ``ready``), then to the
decode's (which lets the request decode from ``ready``), and both are woken at their (possibly earlier) next events.
A notice is posted at its own time (the wake-up that produced it), and ``ready`` is never before either notice, so
no engine is told about a past it has already run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import simpy
from simpy.events import Event

from sim.engine.transfer import Notice, PrefillDone, Transfer, TransferFabric

# after simpy's URGENT (0) and NORMAL (1) events of the same instant: agents first, then the engines decide
ENGINE_PRIORITY = 2
SAMPLE_PRIORITY = 3  # time-series samples see an instant once everything at it is done


class EnginePort(Protocol):
    def next_event_time(self) -> float: ...

    def advance(self, until: float) -> list[tuple[int, Any]]:
        """Run the engine's decisions up to ``until``; (handle, answer) per request finished, in finish order."""
        ...

    def notices(self) -> list[Notice]:
        """The PD notices the engine produced since the last call (none off PD)."""
        ...

    def transfer_ready(self, t: Transfer) -> None:
        """The KV transfer of a room the engine may hold (ignored if it does not)."""
        ...


class _Wake(Event):
    """An event due at an absolute virtual time ``at`` with a given priority (``simpy.Timeout`` with a priority)."""

    def __init__(self, env: simpy.Environment, at: float, priority: int) -> None:
        self.env = env
        self.callbacks = []
        self._value = None
        self._ok = True
        self.at = at
        env.schedule(self, priority, max(at - env.now, 0.0))  # type: ignore[arg-type]


class EngineClock:
    """Wake-ups of the engines in the owner's SimPy environment, and who waits for which request."""

    def __init__(self, env: simpy.Environment, ports: Sequence[EnginePort]) -> None:
        self.env = env
        self.ports = list(ports)
        self._due = [math.inf] * len(self.ports)  # the wake-up in the queue, per engine
        self._holders: dict[tuple[int, int], Callable[[Any], None]] = {}
        self.wakeups = 0
        self.fabric = TransferFabric()
        self._sides: dict[tuple[int, bool], int] = {}  # (room, is the prefill side) -> the engine that posted it

    def hold(self, engine: int, handle: int, on_answer: Callable[[Any], None]) -> None:
        """Call ``on_answer(answer)`` when engine ``engine`` finishes request ``handle``."""
        self._holders[(engine, handle)] = on_answer

    def drop(self, engine: int, handles: Sequence[int]) -> list[Callable[[Any], None]]:
        """Forget the holders of requests an engine lost (its server died); their callbacks, to fail them."""
        return [cb for h in handles if (cb := self._holders.pop((engine, h), None)) is not None]

    def touched(self, engine: int, next_time: float | None = None) -> None:
        """Engine ``engine`` got a request (or was reset): wake it at its (possibly earlier) next event time."""
        t = self.ports[engine].next_event_time() if next_time is None else next_time
        if t < self._due[engine]:
            self._due[engine] = t
            _Wake(self.env, t, ENGINE_PRIORITY).callbacks.append(lambda ev, i=engine: self._wake(i, ev.at))

    def _wake(self, engine: int, at: float) -> None:
        if self._due[engine] != at:  # superseded by an earlier wake-up that already ran
            return
        self._due[engine] = math.inf
        self.wakeups += 1
        port = self.ports[engine]
        for handle, answer in port.advance(at):
            on_answer = self._holders.pop((engine, handle))
            on_answer(answer)
        for notice in port.notices():
            self._post(engine, notice)
        self.touched(engine)

    def _post(self, engine: int, notice: Notice) -> None:
        """One side of a room; with both known, the transfer to the prefill's engine, then to the decode's."""
        prefill_side = isinstance(notice, PrefillDone)
        t = self.fabric.post(notice)
        if t is None:
            self._sides[(notice.room, prefill_side)] = engine
            return
        other = self._sides.pop((notice.room, not prefill_side))
        pair = (engine, other) if prefill_side else (other, engine)
        for j in pair:
            self.ports[j].transfer_ready(t)
        for j in pair:
            self.touched(j)


def sample_series(env: simpy.Environment, interval: float, sample: Callable[[float], None],
                  running: Callable[[], bool]) -> None:
    """Call ``sample(t)`` every ``interval`` virtual seconds from 0, after everything else at ``t``, while
    ``running()`` says the workload is not done (then once more, at the last multiple of the interval)."""

    def tick(ev: Event) -> None:
        t = ev.at  # type: ignore[attr-defined]
        sample(t)
        if running():
            _Wake(env, t + interval, SAMPLE_PRIORITY).callbacks.append(tick)

    _Wake(env, 0.0, SAMPLE_PRIORITY).callbacks.append(tick)

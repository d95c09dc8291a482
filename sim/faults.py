"""Faults in the simulation: scenario ``[[faults]]`` entries and their state at a virtual time.

Scenario TOML (each entry is one fault; ``worker`` is a worker index, omitted = every worker;
``start``/``end`` are virtual seconds, omitted = from 0 / forever; the interval is ``[start, end)``)::

    [[faults]]
    kind = "dead"            # the worker's server is down: connection refused (http), the same
    worker = 1               # transport failure in ``direct``; load polls and health probes fail too
    start = 20.0
    end = 60.0

    [[faults]]
    kind = "slow"            # every modelled duration of the worker x factor (queueing feels it too)
    worker = 0
    factor = 3.0

    [[faults]]
    kind = "error_rate"      # share of inference requests answered 500 by the worker (upstream 5xx)
    rate = 0.05

    [[faults]]
    kind = "rollback_rate"   # share of requests carrying input_ids answered 400 "rollback failed"
    rate = 0.1

Overlapping entries combine: ``slow`` factors multiply, rates take the largest. The state is a pure
function of the virtual time (``FaultPlan.state(i, t)``); ``FaultInjector`` applies it to a transport
before each request, at the request's ``sim_time``: rates and factors go to the worker cores'
``Faults`` (``sim.worker.faults``), dead workers to ``transport.set_worker_dead(index, dead)`` (http:
the worker's uvicorn server is stopped and later restarted on the same port; direct: the in-process
gateway answers that worker's attempts, polls and probes as a connection failure); it comes back with
an empty radix cache, as a restarted SGLang does. Requests the worker's engine holds when it dies are lost
with it: their connections drop (the gateway sees a transport failure and may retry elsewhere) and the
engine restarts empty (``WorkerCore.abort_pending``; with the arrival-time engine every answer was given at
arrival, so nothing is held). Which requests
fail is drawn by each worker's own fault RNG (seeded from the pool seed and the worker name), so a
run is deterministic for a seed and identical in ``http`` and ``direct``.

Health probes in virtual time: the mock gateway probes every worker once per
``--health-check-interval-secs`` of *virtual* time, in the request that first reaches or passes the
due time (before routing it, after the due load poll), like the load monitor; the wall-clock health
loop stays off in virtual mode. The real SMG (specs/smg-live-observations.md §6) reacts to a dead
worker through retries first (the key re-pins at once: ``occupied_miss``), its breaker after
``--cb-failure-threshold`` transport failures, its health checker after ``--health-failure-threshold``
failed probes; ``manual`` keys return to their first worker once it is healthy and its breaker allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

FAULT_KINDS = ("dead", "slow", "error_rate", "rollback_rate")


class FaultError(ValueError):
    """A ``[[faults]]`` entry that cannot be used."""


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    worker: int | None = None  # None: every worker
    start: float = 0.0
    end: float = math.inf
    factor: float = 1.0  # slow
    rate: float = 0.0  # error_rate, rollback_rate

    def active(self, worker: int, t: float) -> bool:
        return (self.worker is None or self.worker == worker) and self.start <= t < self.end

    @classmethod
    def parse(cls, spec: Any, workers: int | None = None) -> FaultSpec:
        if isinstance(spec, FaultSpec):
            f = spec
        else:
            if not isinstance(spec, Mapping):
                raise FaultError(f"faults: expected a table, got {spec!r}")
            spec = dict(spec)
            kind = spec.pop("kind", None)
            if kind not in FAULT_KINDS:
                raise FaultError(f"faults: kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
            allowed = {"worker", "start", "end"} | ({"factor"} if kind == "slow" else set()) | (
                {"rate"} if kind in ("error_rate", "rollback_rate") else set())
            unknown = set(spec) - allowed
            if unknown:
                raise FaultError(f"faults: {kind}: unknown keys {sorted(unknown)} (known: {sorted(allowed)})")
            kw: dict[str, Any] = {"kind": kind}
            w = spec.get("worker")
            if w is not None:
                if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                    raise FaultError(f"faults: {kind}: worker must be a worker index >= 0, got {w!r}")
                kw["worker"] = w
            for k in ("start", "end", "factor", "rate"):
                if k in spec:
                    v = spec[k]
                    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
                        raise FaultError(f"faults: {kind}: {k} must be a number, got {v!r}")
                    kw[k] = float(v)
            if kind == "dead" and kw.get("worker") is None:
                raise FaultError("faults: dead: needs a worker index")
            if kind == "slow" and "factor" not in kw:
                raise FaultError("faults: slow: needs a factor")
            if kind in ("error_rate", "rollback_rate") and "rate" not in kw:
                raise FaultError(f"faults: {kind}: needs a rate")
            f = cls(**kw)
        if not 0.0 <= f.start < f.end:
            raise FaultError(f"faults: {f.kind}: needs 0 <= start < end")
        if f.kind == "dead" and math.isinf(f.end):
            raise FaultError("faults: dead: needs an end (a worker dead for good is a smaller pool)")
        if f.kind == "slow" and not (f.factor > 0 and math.isfinite(f.factor)):
            raise FaultError("faults: slow: factor must be a finite number > 0")
        if not 0.0 <= f.rate <= 1.0:
            raise FaultError(f"faults: {f.kind}: rate must be within [0, 1]")
        if workers is not None and f.worker is not None and f.worker >= workers:
            raise FaultError(f"faults: {f.kind}: worker {f.worker} does not exist ({workers} workers)")
        return f

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.worker is not None:
            out["worker"] = self.worker
        out["start"] = self.start
        if math.isfinite(self.end):
            out["end"] = self.end
        if self.kind == "slow":
            out["factor"] = self.factor
        if self.kind in ("error_rate", "rollback_rate"):
            out["rate"] = self.rate
        return out


@dataclass(frozen=True)
class WorkerFaultState:
    dead: bool = False
    slowdown: float = 1.0
    fail_rate: float = 0.0
    rollback_fail_rate: float = 0.0


@dataclass(frozen=True)
class FaultPlan:
    specs: tuple[FaultSpec, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.specs)

    def state(self, worker: int, t: float) -> WorkerFaultState:
        dead, slow, fail, rollback = False, 1.0, 0.0, 0.0
        for f in self.specs:
            if not f.active(worker, t):
                continue
            if f.kind == "dead":
                dead = True
            elif f.kind == "slow":
                slow *= f.factor
            elif f.kind == "error_rate":
                fail = max(fail, f.rate)
            else:
                rollback = max(rollback, f.rate)
        return WorkerFaultState(dead, slow, fail, rollback)


def parse_faults(value: Any, workers: int | None = None) -> tuple[FaultSpec, ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise FaultError("faults must be a list of tables (TOML: an array of tables named faults)")
    return tuple(FaultSpec.parse(v, workers) for v in value)


class FaultTarget(Protocol):
    """What a transport offers the injector: its worker cores in pool order and a dead switch."""

    def fault_cores(self) -> Sequence[Any]: ...

    def set_worker_dead(self, index: int, dead: bool) -> None: ...


class FaultInjector:
    """Applies a ``FaultPlan`` to a transport at each request's virtual time (only changes are applied)."""

    def __init__(self, plan: FaultPlan, target: FaultTarget) -> None:
        self.plan = plan
        self.target = target
        self._state: dict[int, WorkerFaultState] = {}

    def apply(self, t: float) -> None:
        import dataclasses

        for i, core in enumerate(self.target.fault_cores()):
            st = self.plan.state(i, t)
            old = self._state.get(i, WorkerFaultState())
            if st == old:
                continue
            if st.dead != old.dead:
                if not st.dead:  # a restarted worker starts with an empty cache (unless requests are in flight)
                    core.flush_cache(t)
                self.target.set_worker_dead(i, st.dead)
            core.faults = dataclasses.replace(core.faults, slowdown=st.slowdown, fail_rate=st.fail_rate,
                                              rollback_fail_rate=st.rollback_fail_rate)
            self._state[i] = st


class FaultyTransport:
    """A transport whose ``chat`` first brings the faults to the request's ``sim_time``; all else delegates."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.injector = FaultInjector(plan, inner)

    def chat(self, session_id: str, body: dict[str, Any]) -> Any:
        t = body.get("sim_time")
        if isinstance(t, int | float):
            self.injector.apply(float(t))
        return self.inner.chat(session_id, body)

    def chat_steps(self, session_id: str, body: dict[str, Any]) -> Any:
        """``chat`` under the co-simulated clock (``sim.cosim``): the faults first, then the inner turn's steps."""
        t = body.get("sim_time")
        if isinstance(t, int | float):
            self.injector.apply(float(t))
        return self.inner.chat_steps(session_id, body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def with_faults(transport: Any, faults: Sequence[FaultSpec]) -> Any:
    """``transport`` wrapped by ``FaultyTransport`` when there are faults (it must offer ``FaultTarget``)."""
    if not faults:
        return transport
    if not hasattr(transport, "set_worker_dead") or not hasattr(transport, "fault_cores"):
        raise FaultError(f"the {type(transport).__name__} cannot inject faults (virtual-time http or direct only)")
    return FaultyTransport(transport, FaultPlan(tuple(faults)))

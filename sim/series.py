"""Per-worker time series of a run on a fixed virtual interval: how each worker's batch, KV and reuse move.

``SeriesSampler`` is called by the co-simulated clock (``sim.cosim.sample_series``) at ``0, dt, 2 dt, ...`` after
everything else at each instant; it reads each iteration-level engine with ``IterationEngine.occupancy``, which
changes nothing (``load`` would: a run with sampling gives the very row of one without). ``WorkerSamples.table``
turns the samples into the row's ``timeseries``:

- ``interval`` (virtual seconds between points) and ``t`` (the points, shared by all workers);
- per worker (``workers[name]``): ``kv_capacity``, and one value per point of ``running`` and ``waiting``
  requests, ``kv_used`` tokens and ``kv_usage`` (used / capacity, 0 when unbounded) at the point, and over the
  interval that ends at it, ``(t - interval, t]``: ``hit_rate``, cached / prompt tokens of the requests whose
  first prefill was scheduled then (their records' ``start``; None when none was), and ``retractions``.

At most ``max_points`` points: a longer run keeps every ``f``-th sample counted back from the last (which is the
end of the run), and the interval becomes ``f * dt``; the interval measures are summed over it, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sim.agents import RequestRecord

SERIES_INTERVAL = 1.0  # virtual seconds; scenario-independent (the makespan is not known up front)
MAX_POINTS = 400  # per worker: enough to see a thrash spiral form and end, small enough for results.json


@dataclass
class WorkerSamples:
    """What the sampler saw: per sample its time, and per worker running, waiting, KV used, retractions so far."""

    interval: float
    names: list[str]
    capacities: list[int | None]
    t: list[float] = field(default_factory=list)
    running: list[list[int]] = field(default_factory=list)  # [sample][worker]
    waiting: list[list[int]] = field(default_factory=list)
    kv_used: list[list[int]] = field(default_factory=list)
    retractions: list[list[int]] = field(default_factory=list)  # cumulative

    def table(self, records: Sequence[RequestRecord], max_points: int = MAX_POINTS) -> dict[str, Any]:
        """The row's ``timeseries`` (module docstring); ``records``: the run's requests, for the hit rates."""
        n = len(self.t)
        if n == 0:
            return {"interval": self.interval, "t": [], "workers": {}}
        step = max(1, math.ceil(n / max_points))
        keep = np.arange(n - 1, -1, -step)[::-1]
        interval = self.interval * step
        before = keep - step  # the sample that ends the previous interval (< 0: none, the run's start)
        pos = {name: i for i, name in enumerate(self.names)}
        prompt, cached = np.zeros((n, len(self.names)), np.int64), np.zeros((n, len(self.names)), np.int64)
        for r in records:
            w = pos.get(r.worker) if r.ok and r.worker is not None else None
            if w is None:
                continue
            i = min(max(math.ceil(r.start / self.interval), 0), n - 1)  # the sample ending (t - dt, t] at or after it
            prompt[i, w] += r.prompt_tokens
            cached[i, w] += r.cached_tokens
        prompt_upto, cached_upto = np.cumsum(prompt, axis=0), np.cumsum(cached, axis=0)
        retracted = np.asarray(self.retractions, dtype=np.int64)

        def over_interval(cum: np.ndarray, w: int) -> np.ndarray:
            return cum[keep, w] - np.where(before >= 0, cum[np.maximum(before, 0), w], 0)

        workers: dict[str, dict[str, Any]] = {}
        for w, name in enumerate(self.names):
            cap = self.capacities[w]
            p, c = over_interval(prompt_upto, w), over_interval(cached_upto, w)
            used = [self.kv_used[i][w] for i in keep]
            workers[name] = {
                "kv_capacity": cap,
                "hit_rate": [float(ci / pi) if pi else None for ci, pi in zip(c, p, strict=True)],
                "running": [self.running[i][w] for i in keep],
                "waiting": [self.waiting[i][w] for i in keep],
                "kv_used": used,
                "kv_usage": [u / cap if cap else 0.0 for u in used],
                "retractions": over_interval(retracted, w).tolist(),
            }
        return {"interval": interval, "t": [self.t[i] for i in keep], "workers": workers}


class SeriesSampler:
    """Samples the iteration-level engines of in-process worker cores (``WorkerCore``) without changing them."""

    def __init__(self, cores: Sequence[Any], interval: float = SERIES_INTERVAL) -> None:
        if not interval > 0:
            raise ValueError(f"the series interval must be > 0, got {interval}")
        self.cores = list(cores)
        self.samples = WorkerSamples(interval, [c.name for c in self.cores],
                                     [c.config.kv_capacity_tokens for c in self.cores])

    @staticmethod
    def samplable(cores: Sequence[Any]) -> bool:
        """Whether every core runs the iteration-level engine (the arrival-time engine has no batch to follow)."""
        return bool(cores) and all(getattr(c, "iteration", False) for c in cores)

    def sample(self, t: float) -> None:
        s = self.samples
        s.t.append(t)
        running, waiting, used, retracted = [], [], [], []
        for core in self.cores:
            engine = core.engine  # read each time: a worker that died got a new engine (``abort_pending``)
            r, q, u = engine.occupancy(t)
            running.append(r)
            waiting.append(q)
            used.append(u)
            retracted.append(engine.stats.retractions)
        s.running.append(running)
        s.waiting.append(waiting)
        s.kv_used.append(used)
        s.retractions.append(retracted)

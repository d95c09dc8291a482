"""Prometheus series with SMG 1.13.0's names and label keys, in the gateway's own CollectorRegistry.

Hot paths reach label children through per-metric dicts from label values (a string for a one-label metric,
else the tuple in label order), filled by ``.labels()`` on first use, so a series appears exactly when it did
with ``.labels()`` (which costs ~4 us a call):

- ``series(metric)``: the children themselves;
- ``counts(counter)``: deferred increments: ``inc()`` bumps a plain running total; the difference is added to
  the child when the registry is next collected;
- ``gauges(gauge)``: deferred values: ``set()`` keeps the value; the child is set to it (if it changed) when
  the registry is next collected. Only for gauges that nothing else sets through ``.labels()``.
- ``manual_cache_entries`` (set on every manual decision) is itself such a deferred gauge (``set()`` only; the
  prometheus Gauge is ``manual_cache_entries_gauge``).

Deferred writes are applied by a collector registered before every series, so any reader (``render``, the
metrics server, ``registry.get_sample_value``) sees exactly the values immediate writes would have left. One
thread (the core's) writes; collection may run on another: a running total or a value has a single writer and
the collector only reads it, under its own lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RATIO_BUCKETS = tuple(round(0.1 * i, 1) for i in range(11))
# smg 1.13.0's buckets of the PD duration histograms (seen on its /metrics)
PD_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 45, 60, 90, 120, 180,
                       240, 300, 480, 900, 1200, 1800, 2700, 3600, 5400, 7200)


def _child(metric: Any, key: str | tuple[str, ...]) -> Any:
    return metric.labels(*key) if type(key) is tuple else metric.labels(key)


class Series(dict):
    """Label values -> child of one metric, created by ``metric.labels`` on first lookup."""

    __slots__ = ("metric",)

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, key: str | tuple[str, ...]) -> Any:
        child = self[key] = _child(self.metric, key)
        return child


class Tally:
    """A counter child's increments, added to it at the next collection."""

    __slots__ = ("applied", "child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0  # running total, written by the core's thread only
        self.applied = 0  # how much of it the child holds

    def inc(self, amount: int = 1) -> None:
        self.n += amount

    def flush(self) -> None:
        n = self.n
        if n != self.applied:
            self.child.inc(n - self.applied)
            self.applied = n


class DeferredGauge:
    """A gauge child's latest value, written to it at the next collection if it changed."""

    __slots__ = ("child", "value", "written")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.value: float | None = None
        self.written: float | None = None

    def set(self, value: float) -> None:
        self.value = value

    def flush(self) -> None:
        v = self.value
        if v is not None and v != self.written:
            self.child.set(v)
            self.written = v


class CountSeries(Series):
    __slots__ = ()

    def __missing__(self, key: str | tuple[str, ...]) -> Tally:
        t = self[key] = Tally(_child(self.metric, key))
        return t


class GaugeSeries(Series):
    __slots__ = ()

    def __missing__(self, key: str | tuple[str, ...]) -> DeferredGauge:
        g = self[key] = DeferredGauge(_child(self.metric, key))
        return g


class _Flush:
    """Registered first in the registry: applies the deferred writes before any series is collected."""

    def __init__(self, flush: Any) -> None:
        self.flush = flush

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        self.flush()
        return ()


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self._series: dict[int, Series] = {}
        self._deferred: list[CountSeries | GaugeSeries] = []
        self._deferred_single: list[DeferredGauge] = []  # unlabelled gauges
        self._flush_lock = threading.Lock()
        r.register(_Flush(self.flush))

        def c(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def g(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        # policies
        self.manual_branch = c("smg_manual_policy_branch", "Manual policy selection branch", ("branch",))
        self.manual_cache_entries_gauge = g(
            "smg_manual_policy_cache_entries", "Number of routing entries in manual policy cache"
        )
        # set() on every manual decision: deferred; every writer goes through this object, so the last set() wins
        self.manual_cache_entries = DeferredGauge(self.manual_cache_entries_gauge)
        self._deferred_single.append(self.manual_cache_entries)
        self.ch_branch = c(
            "smg_consistent_hashing_policy_branch", "Consistent hashing policy selection branch", ("branch",)
        )
        self.ca_branch = c("smg_cache_aware_policy_branch", "Cache-aware tree-mode selection branch", ("branch",))
        self.ca_match_ratio = Histogram(
            "smg_cache_aware_match_ratio",
            "Cache-aware tree-mode best prefix match ratio per request",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.ph_branch = c("smg_prefix_hash_policy_branch", "Prefix hash policy selection branch", ("branch",))
        self.key_source = c(
            "smg_routing_key_source", "Keyed requests by the source that supplied the sticky key", ("source",)
        )
        self.selection = c(
            "smg_worker_selection", "Worker selection events", ("worker_type", "connection_mode", "model", "policy")
        )
        self.cache_tree_chars = g("smg_cache_tree_chars", "Cache tree size in characters", ("model",))
        # workers
        self.worker_requests = c("smg_worker_requests", "Requests dispatched to a worker", ("worker", "model"))
        self.worker_active = g("smg_worker_requests_active", "Currently running requests per worker", ("worker",))
        self.worker_keys_active = g(
            "smg_worker_routing_keys_active", "Sticky routing keys currently held by a worker", ("worker",)
        )
        self.worker_health = g("smg_worker_health", "Worker health status (1=healthy, 0=unhealthy)", ("worker",))
        self.worker_pool_size = g(
            "smg_worker_pool_size", "Current worker pool size", ("worker_type", "connection_mode", "model")
        )
        self.health_checks = c("smg_worker_health_checks", "Health check results", ("worker_type", "result"))
        self.cb_state = g(
            "smg_worker_cb_state", "Circuit breaker state per worker (0=closed, 1=open, 2=half_open)", ("worker",)
        )
        self.cb_failures = g(
            "smg_worker_cb_consecutive_failures", "Current consecutive failure count per worker", ("worker",)
        )
        self.cb_successes = g(
            "smg_worker_cb_consecutive_successes", "Current consecutive success count per worker", ("worker",)
        )
        self.cb_outcomes = c("smg_worker_cb_outcomes", "Circuit breaker outcomes", ("worker", "outcome"))
        self.cb_transitions = c(
            "smg_worker_cb_transitions", "Circuit breaker state transitions", ("worker", "from", "to")
        )
        self.cb_readmissions = c("smg_worker_cb_health_readmissions", "Open breaker half-opened by health", ("worker",))
        self.worker_errors = c("smg_worker_errors", "Worker errors", ("worker_type", "connection_mode", "error_type"))
        self.retries = c("smg_worker_retries", "Total retry attempts", ("worker_type", "endpoint"))
        self.retries_exhausted = c(
            "smg_worker_retries_exhausted", "Requests that exhausted all retries", ("worker_type", "endpoint")
        )
        self.retry_backoff = Histogram(
            "smg_worker_retry_backoff_seconds", "Retry backoff duration by attempt", ("attempt",), registry=r
        )
        self.overload_fallback = c(
            "smg_worker_overload_fallback",
            "Requests routed to the least-loaded worker because every worker is overloaded",
            ("stage",),
        )
        self.overload_shed = c(
            "smg_worker_overload_shed", "Requests shed because every worker is overloaded", ("stage",)
        )
        self.workers_overloaded = g("smg_workers_overloaded", "Overloaded workers", ("model",))
        engine = ("worker", "model", "dp_rank")
        self.engine_running = g("smg_engine_running_requests", "Engine-reported running requests", engine)
        self.engine_waiting = g("smg_engine_waiting_requests", "Engine-reported waiting requests", engine)
        self.engine_token_usage = g("smg_engine_token_usage", "Engine-reported KV token usage ratio", engine)
        self.engine_gen_throughput = g("smg_engine_gen_throughput", "Engine-reported generation throughput", engine)
        self.engine_cache_hit_rate = g("smg_engine_cache_hit_rate", "Engine-reported prefix cache hit rate", engine)
        self.load_polls = c("smg_engine_load_polls", "Load-monitor tick decisions", ("worker", "mode"))
        # router / http
        router = ("router_type", "backend_type", "connection_mode", "model", "endpoint", "streaming")
        self.router_requests = c("smg_router_requests", "Total routed requests", router)
        self.router_duration = Histogram(
            "smg_router_request_duration_seconds", "Router request duration", router[:-1], registry=r
        )
        self.router_errors = c("smg_router_request_errors", "Router request errors", (*router[:-1], "error_type"))
        self.upstream_responses = c(
            "smg_router_upstream_responses",
            "Upstream backend HTTP responses",
            ("router_type", "status_code", "error_code"),
        )
        # PD mode (1.13.0's HTTP router records these two durations, by backend_type "pd", model, runtime "sglang")
        pd = ("backend_type", "model", "runtime")
        self.pd_ttft = Histogram(
            "smg_pd_ttft_seconds", "PD time to first token: prefill dispatch to the decode response head", pd,
            buckets=PD_DURATION_BUCKETS, registry=r,
        )
        self.pd_prefill_duration = Histogram(
            "smg_pd_prefill_duration_seconds", "PD prefill phase: prefill dispatch to the end of the prefill response",
            pd, buckets=PD_DURATION_BUCKETS, registry=r,
        )
        self.pd_rendezvous_failures = c(
            "smg_pd_rendezvous_failures",
            "PD rendezvous failures by leg and phase (probe: a bootstrap port refused the registration probe)",
            ("leg", "phase"),
        )
        self.http_requests = c("smg_http_requests", "Total HTTP requests by method and path", ("method", "path"))
        self.http_responses = c("smg_http_responses", "Total HTTP responses", ("path", "status_code", "error_code"))


    def _cached(self, metric: Any, kind: type[Series]) -> Any:
        s = self._series.get(id(metric))
        if s is None:
            s = self._series[id(metric)] = kind(metric)
            if kind is not Series:
                self._deferred.append(s)  # type: ignore[arg-type]
        assert type(s) is kind, f"{metric} is already used as a {type(s).__name__}"
        return s

    def series(self, metric: Any) -> Series:
        """The label children of ``metric`` (one of this object's metrics), cached."""
        return self._cached(metric, Series)

    def counts(self, counter: Counter) -> CountSeries:
        """Deferred increments of ``counter``'s children (see the module docstring)."""
        return self._cached(counter, CountSeries)

    def gauges(self, gauge: Gauge) -> GaugeSeries:
        """Deferred values of ``gauge``'s children; only for a gauge nothing sets through ``.labels()``."""
        return self._cached(gauge, GaugeSeries)

    def flush(self) -> None:
        """Apply every deferred write (runs before each collection of the registry)."""
        with self._flush_lock:
            for d in self._deferred_single:
                d.flush()
            for s in list(self._deferred):
                for d in list(s.values()):
                    d.flush()

    def render(self) -> bytes:
        return generate_latest(self.registry)

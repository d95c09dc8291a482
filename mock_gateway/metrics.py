"""Prometheus series with SMG 1.13.0's names and label keys, in the gateway's own CollectorRegistry.

Hot paths reach label children through ``GatewayMetrics.series(metric)``: a dict from label values (a string
for a one-label metric, else the tuple in label order) to the child, which ``.labels()`` creates on first use
(so a series appears exactly when it did before) and the dict keeps; ``.labels()`` itself costs ~4 us a call.
``gauge_series`` children also skip a ``set`` to the value they already hold: only for gauges that nothing
else sets through ``.labels()``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RATIO_BUCKETS = tuple(round(0.1 * i, 1) for i in range(11))


class Series(dict):
    """Label values -> child of one metric, created by ``metric.labels`` on first lookup."""

    __slots__ = ("metric",)

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, key: str | tuple[str, ...]) -> Any:
        child = self.metric.labels(*key) if type(key) is tuple else self.metric.labels(key)
        self[key] = child
        return child


class LastGauge:
    """A gauge child that remembers the value it was last set to and skips setting it again."""

    __slots__ = ("child", "last")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.last: float | None = None

    def set(self, value: float) -> None:
        if value != self.last:
            self.last = value
            self.child.set(value)


class GaugeSeries(Series):
    __slots__ = ()

    def __missing__(self, key: str | tuple[str, ...]) -> LastGauge:
        child = LastGauge(self.metric.labels(*key) if type(key) is tuple else self.metric.labels(key))
        self[key] = child
        return child


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)

        def c(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def g(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        # policies
        self.manual_branch = c("smg_manual_policy_branch", "Manual policy selection branch", ("branch",))
        self.manual_cache_entries = g(
            "smg_manual_policy_cache_entries", "Number of routing entries in manual policy cache"
        )
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
        self.http_requests = c("smg_http_requests", "Total HTTP requests by method and path", ("method", "path"))
        self.http_responses = c("smg_http_responses", "Total HTTP responses", ("path", "status_code", "error_code"))

        self._series: dict[int, Series] = {}

    def series(self, metric: Any) -> Series:
        """The cached label children of ``metric`` (one of this object's metrics)."""
        s = self._series.get(id(metric))
        if s is None:
            s = self._series[id(metric)] = Series(metric)
        return s

    def gauge_series(self, gauge: Gauge) -> GaugeSeries:
        """Cached children of a gauge that only the gateway core sets, skipping unchanged values."""
        s = self._series.get(id(gauge))
        if s is None:
            s = self._series[id(gauge)] = GaugeSeries(gauge)
        assert isinstance(s, GaugeSeries)
        return s

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""A mock worker's load reports: SMG's ``WorkerLoadResponse`` (``GET /v1/loads``) and Prometheus text
(``GET /metrics``, ``sglang:`` names), both read from the engine at the time asked, so they always agree."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sim.engine.types import EngineLoad, EngineStats


def loads_document(ld: EngineLoad, clock: float, worker: str, timestamp: str | None = None,
                   disaggregation: dict[str, Any] | None = None) -> dict[str, Any]:
    """SMG's ``WorkerLoadResponse``: ``{timestamp, dp_rank_count, loads: [one rank]}``, plus ``sim_time`` (the
    worker's clock) and ``worker``. ``disaggregation`` (``/v1/loads?include=disagg``): the rank's
    ``"disaggregation"`` section, SGLang's ``DisaggregationMetrics`` (``managers/load_snapshot.py``).

    ``timestamp`` (RFC 3339) defaults to the model time ``clock`` read as seconds since the Unix epoch, so the
    core stays clock-free; the HTTP app passes the wall-clock time as SGLang does."""
    if timestamp is None:
        timestamp = datetime.fromtimestamp(clock, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    total = ld.num_running_reqs + ld.num_waiting_reqs
    utilization = ld.num_running_reqs / ld.max_running_requests if ld.max_running_requests else 0.0
    doc = {
        "timestamp": timestamp,
        "dp_rank_count": 1,
        "loads": [
            {
                "dp_rank": 0,
                "num_running_reqs": ld.num_running_reqs,
                "num_waiting_reqs": ld.num_waiting_reqs,
                "num_waiting_uncached_tokens": ld.num_waiting_uncached_tokens,
                "num_total_reqs": total,
                "num_used_tokens": ld.num_used_tokens,
                "max_total_num_tokens": ld.max_total_num_tokens,
                "token_usage": ld.token_usage,
                "gen_throughput": ld.gen_throughput,
                "cache_hit_rate": ld.cache_hit_rate,
                "utilization": utilization,
                "max_running_requests": ld.max_running_requests,
            }
        ],
        "sim_time": clock,
        "worker": worker,
    }
    if disaggregation is not None:
        doc["loads"][0]["disaggregation"] = disaggregation
    return doc


def disaggregation_section(mode: str | None, queues: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0),
                           speed_gb_s: float = 0.0, latency_ms: float = 0.0) -> dict[str, Any]:
    """SGLang's ``DisaggregationMetrics``: ``mode`` ("null" when co-located), the prefill bootstrap and inflight
    queues, the decode prealloc, transfer and retracted queues (in that order in ``queues``) and the last KV
    transfer's speed and latency."""
    boot, inflight, prealloc, transfer, retracted = queues
    return {
        "mode": mode or "null",
        "prefill_bootstrap_queue_reqs": boot,
        "prefill_inflight_queue_reqs": inflight,
        "decode_prealloc_queue_reqs": prealloc,
        "decode_transfer_queue_reqs": transfer,
        "decode_retracted_queue_reqs": retracted,
        "kv_transfer_speed_gb_s": speed_gb_s,
        "kv_transfer_latency_ms": latency_ms,
    }


MetricsSample = tuple[EngineLoad, EngineStats, int]  # the load at the scrape time, the counters, failed requests


class PrometheusMetrics:
    """One worker's own Prometheus registry (labels ``model_name``, ``worker``); a scrape reads a fresh sample."""

    def __init__(self, model_name: str, worker: str, sample: Callable[[float], MetricsSample]) -> None:
        self._labels = ["model_name", "worker"]
        self._values = [model_name, worker]
        self._sample = sample
        self._now = 0.0
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def exposition(self, now: float) -> bytes:
        """The Prometheus text of this worker at ``now``."""
        self._now = now
        return generate_latest(self._registry)

    def collect(self) -> Iterator[Metric]:
        """The registry's collector callback."""
        ld, st, failed_requests = self._sample(self._now)
        labels, values = self._labels, self._values

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge("sglang:num_running_reqs", "The number of running requests.", ld.num_running_reqs)
        yield gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", ld.num_waiting_reqs)
        yield gauge("sglang:num_used_tokens", "The number of used KV tokens.", ld.num_used_tokens)
        yield gauge("sglang:max_total_num_tokens", "KV capacity in tokens.", ld.max_total_num_tokens)
        yield gauge("sglang:token_usage", "The token usage (KV used / capacity).", ld.token_usage)
        yield gauge("sglang:cache_hit_rate", "The prefix cache hit rate (cached / prompt tokens).", ld.cache_hit_rate)
        yield gauge("sglang:gen_throughput", "The generation throughput (token/s).", ld.gen_throughput)
        yield counter("sglang:num_requests", "Number of requests served.", st.requests)
        yield counter("sglang:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens)
        yield counter("sglang:cached_tokens", "Number of prompt tokens served from the prefix cache.", st.cached_tokens)
        yield counter("sglang:generation_tokens", "Number of generation tokens processed.", st.output_tokens)
        yield counter("sglang:evicted_tokens", "Number of KV tokens evicted from the prefix cache.", st.evicted_tokens)
        yield counter("sglang:failed_requests", "Requests answered with an injected fault.", failed_requests)

"""A mock worker's load reports: SMG's ``WorkerLoadResponse`` (``GET /v1/loads``) and Prometheus text
(``GET /metrics``, ``sglang:`` names), both read from the engine at the time asked, so they always agree."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

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


CACHE_SOURCES = ("device", "host", "storage")  # SGLang's cache_source label values
# SGLang's buckets of sglang:load_back_duration_seconds (observability/metrics_collector.py)
LOAD_BACK_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01, 0.02, 0.03, 0.04, 0.05,
                     0.1, 0.2, 0.5, 1.0)


class HiCacheAnswers:
    """What a HiCache worker counts from the answers it serves, as SGLang does at a request's finish: its cached
    tokens by source (a PD decode worker counts the prefill's, relayed), and the load-back copies of the requests it
    prefilled itself: host tokens x KV bytes / PCIe bandwidth each (SGLang times the host -> GPU copy loop, not
    what of it the compute hid)."""

    def __init__(self) -> None:
        self.cached_tokens = dict.fromkeys(CACHE_SOURCES, 0)
        self.load_back_counts = [0] * (len(LOAD_BACK_BUCKETS) + 1)  # per bucket (not cumulative), then +Inf
        self.load_back_sum = 0.0

    def observe(self, timing: Any, load_back_seconds: float | None) -> None:
        """One answer's ``IterationTiming``; ``load_back_seconds``: its load-back copy, None if this worker did not
        prefill it (a PD decode) or loaded nothing back."""
        c = self.cached_tokens
        c["device"] += timing.cached_device
        c["host"] += timing.cached_host
        c["storage"] += timing.cached_storage
        if load_back_seconds is not None:
            self.load_back_counts[bisect.bisect_left(LOAD_BACK_BUCKETS, load_back_seconds)] += 1
            self.load_back_sum += load_back_seconds

    def load_back_buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as a Prometheus histogram has them."""
        out, total = [], 0
        for le, n in zip((*map(str, LOAD_BACK_BUCKETS), "+Inf"), self.load_back_counts, strict=True):
            total += n
            out.append((le, total))
        return out


# the load at the scrape time, the counters, failed requests, and with HiCache what its answers counted
MetricsSample = tuple[EngineLoad, EngineStats, int, HiCacheAnswers | None]


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
        ld, st, failed_requests, hicache = self._sample(self._now)
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
        if hicache is None:
            yield counter("sglang:cached_tokens", "Number of prompt tokens served from the prefix cache.",
                          st.cached_tokens)
        yield counter("sglang:generation_tokens", "Number of generation tokens processed.", st.output_tokens)
        yield counter("sglang:evicted_tokens", "Number of KV tokens evicted from the prefix cache.", st.evicted_tokens)
        yield counter("sglang:failed_requests", "Requests answered with an injected fault.", failed_requests)
        if hicache is not None:
            yield from self._hicache(st, hicache)

    def _hicache(self, st: EngineStats, answers: HiCacheAnswers) -> Iterator[Metric]:
        """SGLang's HiCache metrics (``observability/metrics_collector.py``; created only with HiCache on)."""
        labels, values = self._labels, self._values

        def by(cls: type[Any], name: str, doc: str, label: str, samples: dict[str, float]) -> Metric:
            f = cls(name, doc, labels=[*labels, label])
            for v, x in samples.items():
                f.add_metric([*values, v], x)
            return f

        def gauge(name: str, doc: str, value: float) -> Metric:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        yield by(CounterMetricFamily, "sglang:cached_tokens", "Number of cached prompt tokens by source "
                 "(device/host/storage).", "cache_source", dict(answers.cached_tokens))
        yield gauge("sglang:hicache_host_used_tokens", "Number of tokens currently used in the host KV cache.",
                    st.host_used_tokens)
        yield gauge("sglang:hicache_host_total_tokens", "Total capacity of the host KV cache in tokens.",
                    st.host_total_tokens)
        yield by(CounterMetricFamily, "sglang:load_back_tokens", "The number of tokens loaded back from local host "
                 "DRAM (L2) to GPU, by host pool.", "pool", {"kv": st.load_back_tokens})
        h = HistogramMetricFamily("sglang:load_back_duration_seconds",
                                  "Time of a host-to-device load-back copy, per request loading back.", labels=labels)
        h.add_metric(values, answers.load_back_buckets(), answers.load_back_sum)
        yield h
        yield by(CounterMetricFamily, "sglang:hicache_backup_tokens", "The number of tokens backed up from GPU to "
                 "local host DRAM (L2), by host pool.", "pool", {"kv": st.backup_tokens})
        c = CounterMetricFamily("sglang:storage_prefetch_hit_tokens", "Storage-hit tokens prefetched from L3 into "
                                "host and used.", labels=labels)
        c.add_metric(values, st.storage_prefetch_hit_tokens)
        yield c
        yield by(CounterMetricFamily, "sglang:storage_prefetch_unfulfilled_tokens", "Storage-hit tokens not used, by "
                 "reason (deadline: the prefetch policy stopped waiting).", "reason",
                 {"deadline": st.storage_prefetch_unfulfilled_tokens})

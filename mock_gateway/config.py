"""Gateway configuration: ``parse_args(argv) -> GatewayConfig`` mirrors ``smg launch``'s flags and defaults (1.13.0).

Flags the mock does not model are accepted and reported in ``GatewayConfig.ignored`` (the CLI warns).
``--seed`` is a testbed extension: every random choice of the mock comes from one seeded ``random.Random``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

POLICIES = [
    "random",
    "round_robin",
    "passthrough",
    "cache_aware",
    "power_of_two",
    "least_load",
    "manual",
    "consistent_hashing",
    "prefix_hash",
    "bounded_load",  # testbed extension (mock_gateway/policies/testbed/bounded_load.py)
]


@dataclass
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = 30000
    worker_urls: list[str] = field(default_factory=list)
    policy: str = "cache_aware"
    # routing keys and manual / sticky
    routing_key_headers: list[str] = field(default_factory=lambda: ["x-smg-routing-key"])
    routing_key_override: bool = False
    assignment_mode: str | None = None
    max_idle_secs: float = 14400
    eviction_interval_secs: float = 60
    # cache_aware
    cache_threshold: float = 0.3
    balance_abs_threshold: float = 64
    balance_rel_threshold: float = 1.5
    balance_token_usage_threshold: float = 1.0
    overload_token_usage_threshold: float = 1.0
    max_tree_size: int = 67108864
    block_size: int = 16
    # prefix_hash
    prefix_token_count: int = 256
    prefix_hash_load_factor: float = 1.25
    prefix_hash_balance_abs_threshold: float = 10
    # expected-wait selector
    least_load_kv_pressure_weight: float = 0.15
    least_load_default_throughput: float = 2000.0
    least_load_mean_prefill_tokens: int = 1024
    least_load_max_waiting_requests: int = 0
    power_of_two_load_metric: str = "expected_wait"
    # load monitor and overload protection
    load_monitor_interval: float = 10
    disable_load_monitoring: bool = False
    worker_overload_waiting_requests: int = 8
    worker_overload_token_usage: float = 0.8
    disable_worker_overload_protection: bool = False
    worker_overload_shed: bool = False
    # health, breaker, retries
    health_check_interval_secs: float = 60
    health_check_timeout_secs: float = 5
    health_check_endpoint: str = "/health"
    health_failure_threshold: int = 3
    health_success_threshold: int = 2
    disable_health_check: bool = False
    worker_startup_check_interval: float = 30
    worker_startup_timeout_secs: float = 1800
    retry_max_retries: int = 5
    retry_initial_backoff_ms: float = 50
    retry_max_backoff_ms: float = 30000
    retry_backoff_multiplier: float = 1.5
    retry_jitter_factor: float = 0.2
    disable_retries: bool = False
    cb_failure_threshold: int = 10
    cb_success_threshold: int = 3
    cb_timeout_duration_secs: float = 60
    cb_window_duration_secs: float = 120
    disable_circuit_breaker: bool = False
    request_timeout_secs: float = 1800
    max_payload_size: int = 536870912
    api_key: str | None = None
    # metrics and logging
    prometheus_host: str = "0.0.0.0"
    prometheus_port: int = 29000
    log_level: str = "info"
    # testbed extension
    seed: int | None = None
    # testbed extensions beyond SMG: bounded_load policy, manual --assignment-mode min_kv (docs/beyond-smg.md)
    bounded_load_epsilon: float = 0.25
    bounded_load_measure: str = "requests"
    session_kv_idle_secs: float = 60.0
    kv_capacity_tokens: int | None = None
    kv_repin_queue_ratio: float = 1.5
    kv_hot_min_keys: int = 1
    kv_load_smoothing_secs: float = 20.0
    kv_repin_max_tokens: int = 4096
    kv_repin_headroom: float = 0.2
    kv_repin_cooldown_secs: float = 30.0
    kv_repin_load_epsilon: float | None = None  # min_kv: re-pin off a worker over the bounded-load bound (None: off)
    ignored: list[str] = field(default_factory=list)

    @property
    def max_attempts(self) -> int:
        """Attempts per request (``--disable-retries`` means one)."""
        return 1 if self.disable_retries else max(1, self.retry_max_retries)

    @property
    def overload_protection(self) -> bool:
        return not self.disable_worker_overload_protection


def build_parser() -> argparse.ArgumentParser:
    d = GatewayConfig()
    p = argparse.ArgumentParser(
        prog="smg-testbed gateway", description="Mock SMG gateway (smg launch flags).", allow_abbrev=False
    )
    a = p.add_argument
    a("--host", default=d.host)
    a("--port", type=int, default=d.port)
    a("--worker-urls", nargs="*", default=[])
    a("--policy", choices=POLICIES, default=d.policy)
    a("--routing-key-headers", nargs="*", default=None)
    a("--routing-key-override", "--sticky-sessions", action="store_true")
    a("--assignment-mode", choices=["random", "min_load", "min_group", "delegate", "min_kv"], default=None)
    a("--max-idle-secs", "--sticky-key-idle-secs", type=float, default=d.max_idle_secs)
    a("--eviction-interval-secs", type=float, default=d.eviction_interval_secs)
    a("--cache-threshold", "--cache-match-threshold", type=float, default=d.cache_threshold)
    a("--balance-abs-threshold", "--spill-abs-threshold", type=float, default=d.balance_abs_threshold)
    a("--balance-rel-threshold", "--spill-rel-threshold", type=float, default=d.balance_rel_threshold)
    a("--balance-token-usage-threshold", type=float, default=d.balance_token_usage_threshold)
    a("--overload-token-usage-threshold", type=float, default=d.overload_token_usage_threshold)
    a("--max-tree-size", type=int, default=d.max_tree_size)
    a("--block-size", type=int, default=d.block_size)
    a("--prefix-token-count", type=int, default=d.prefix_token_count)
    a("--prefix-hash-load-factor", type=float, default=d.prefix_hash_load_factor)
    a("--prefix-hash-balance-abs-threshold", type=float, default=d.prefix_hash_balance_abs_threshold)
    a("--least-load-kv-pressure-weight", type=float, default=d.least_load_kv_pressure_weight)
    a("--least-load-default-throughput", type=float, default=d.least_load_default_throughput)
    a("--least-load-mean-prefill-tokens", type=int, default=d.least_load_mean_prefill_tokens)
    a("--least-load-max-waiting-requests", type=int, default=d.least_load_max_waiting_requests)
    a(
        "--power-of-two-load-metric",
        choices=["expected_wait", "requests", "least_requests"],
        default=d.power_of_two_load_metric,
    )
    a("--load-monitor-interval", type=float, default=d.load_monitor_interval)
    a("--disable-load-monitoring", action="store_true")
    a("--worker-overload-waiting-requests", type=int, default=d.worker_overload_waiting_requests)
    a("--worker-overload-token-usage", type=float, default=d.worker_overload_token_usage)
    a("--worker-overload-protection", action="store_true")
    a("--disable-worker-overload-protection", action="store_true")
    a("--worker-overload-shed", action="store_true")
    a("--health-check-interval-secs", type=float, default=d.health_check_interval_secs)
    a("--health-check-timeout-secs", type=float, default=d.health_check_timeout_secs)
    a("--health-check-endpoint", default=d.health_check_endpoint)
    a("--health-failure-threshold", type=int, default=d.health_failure_threshold)
    a("--health-success-threshold", type=int, default=d.health_success_threshold)
    a("--disable-health-check", action="store_true")
    a("--worker-startup-check-interval", type=float, default=d.worker_startup_check_interval)
    a("--worker-startup-timeout-secs", type=float, default=d.worker_startup_timeout_secs)
    a("--retry-max-retries", type=int, default=d.retry_max_retries)
    a("--retry-initial-backoff-ms", type=float, default=d.retry_initial_backoff_ms)
    a("--retry-max-backoff-ms", type=float, default=d.retry_max_backoff_ms)
    a("--retry-backoff-multiplier", type=float, default=d.retry_backoff_multiplier)
    a("--retry-jitter-factor", type=float, default=d.retry_jitter_factor)
    a("--disable-retries", action="store_true")
    a("--cb-failure-threshold", type=int, default=d.cb_failure_threshold)
    a("--cb-success-threshold", type=int, default=d.cb_success_threshold)
    a("--cb-timeout-duration-secs", type=float, default=d.cb_timeout_duration_secs)
    a("--cb-window-duration-secs", type=float, default=d.cb_window_duration_secs)
    a("--disable-circuit-breaker", action="store_true")
    a("--request-timeout-secs", type=float, default=d.request_timeout_secs)
    a("--max-payload-size", type=int, default=d.max_payload_size)
    a("--api-key", default=None)
    a("--prometheus-host", default=d.prometheus_host)
    a("--prometheus-port", type=int, default=d.prometheus_port)
    a("--log-level", choices=["debug", "info", "warn", "error"], default=d.log_level)
    a("--seed", type=int, default=None, help="testbed extension: seed of the mock's random choices")
    # testbed extensions beyond SMG (docs/beyond-smg.md)
    a("--bounded-load-epsilon", type=float, default=d.bounded_load_epsilon, help="bounded_load: bound (1+eps)*avg")
    a(
        "--bounded-load-measure",
        choices=["requests", "kv"],
        default=d.bounded_load_measure,
        help="bounded_load: load = in-flight requests or projected resident session KV",
    )
    a(
        "--session-kv-idle-secs",
        type=float,
        default=d.session_kv_idle_secs,
        help="bounded_load kv / min_kv: a key's context counts in its worker's working set until idle this long",
    )
    a(
        "--kv-capacity-tokens",
        type=int,
        default=None,
        help="min_kv: KV capacity per worker in tokens (default: polled max_total_num_tokens)",
    )
    a("--kv-repin-queue-ratio", type=float, default=d.kv_repin_queue_ratio,
      help="min_kv: a worker is hot when its smoothed in-flight per live key is this many times the median")
    a("--kv-hot-min-keys", type=int, default=d.kv_hot_min_keys,
      help="min_kv: a worker's busy share is measured only while it holds this many live keys")
    a("--kv-load-smoothing-secs", type=float, default=d.kv_load_smoothing_secs)
    a("--kv-repin-max-tokens", type=int, default=d.kv_repin_max_tokens,
      help="min_kv: move a key off a hot worker only while its context is at most this (a move is a cold prefill)")
    a("--kv-repin-headroom", type=float, default=d.kv_repin_headroom)
    a("--kv-repin-cooldown-secs", type=float, default=d.kv_repin_cooldown_secs)
    a("--kv-repin-load-epsilon", type=float, default=d.kv_repin_load_epsilon,
      help="min_kv: re-pin a key off a worker whose in-flight requests reach ceil((1+eps)*average) (default off)")
    return p


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    """Parse ``smg launch``-style arguments; unknown flags land in ``ignored`` instead of failing."""
    ns, unknown = build_parser().parse_known_args(argv)
    values = vars(ns)
    names = {f.name for f in fields(GatewayConfig)}
    cfg = GatewayConfig(**{k: v for k, v in values.items() if k in names and v is not None})
    if values.get("routing_key_headers"):
        cfg.routing_key_headers = [h.lower() for h in values["routing_key_headers"]]
    cfg.ignored = [u for u in unknown if u.startswith("-")]
    return cfg
